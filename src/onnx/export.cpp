#include "onnx/export.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <map>

#include "backend/cpu/kernels.h"
#include "backend/outputs.h"
#include "core/error.h"
#include "core/overload.h"
#include "io/atomic_file.h"

namespace incres::onnx {
namespace {

namespace pb = ::onnx;

// The IR version that goes with an opset: ONNX 1.8 (opset 13, 14) wrote IR 7, ONNX
// 1.10-1.12 (opset 15-17) IR 8. A runtime reads a model whose IR it knows.
int64_t ir_version(int opset) { return opset <= 14 ? 7 : 8; }

// Emits one graph's ONNX nodes, in the graph's order. Each value is one ONNX tensor,
// named after the node that produces it; a value that needs no node of its own
// (dropout's output, a BN folded into its conv) takes another one's name.
class Emitter {
 public:
  Emitter(const graph::Graph& g, const graph::ParamStore& p, const ExportOptions& o, pb::GraphProto& out)
      : g_(g), p_(p), o_(o), out_(out), names_(g.values.size()) {}

  void run() {
    const std::vector<bool> live = backend::live_nodes(g_, backend::Mode::infer);
    names_[g_.input] = kInputName;
    std::vector<bool> folded(g_.nodes.size(), false);
    for (size_t id = 0; id < g_.nodes.size(); ++id) {
      if (!live[id] || folded[id]) continue;
      const graph::Node& n = g_.nodes[id];
      const int bn = o_.fold_bn ? foldable_bn(n) : -1;
      if (bn >= 0) folded[bn] = true;
      emit(n, bn);
    }
    // The graph's output under its fixed name.
    if (names_[g_.output] != kOutputName) node("Identity", "output", {names_[g_.output]}, kOutputName);
    add_io(out_.add_input(), kInputName, g_.input_shape());
    add_io(out_.add_output(), kOutputName, g_.output_shape());
  }

 private:
  // The BN node a conv's output goes to alone, or -1.
  int foldable_bn(const graph::Node& n) const {
    if (!std::holds_alternative<graph::Conv2d>(n.op) || n.output == g_.output) return -1;
    const std::vector<int>& users = g_.values[n.output].consumers;
    if (users.size() != 1 || !std::holds_alternative<graph::BatchNorm>(g_.nodes[users[0]].op)) return -1;
    return users[0];
  }

  // A unique node name: the graph's (torchvision's scope names), with a count when
  // a scope holds several ("layer1.0.relu", "layer1.0.relu_1").
  std::string unique(const std::string& base) {
    int& seen = name_count_[base];
    return seen++ ? cat(base, "_", seen - 1) : base;
  }

  pb::NodeProto* node(const std::string& op_type, const std::string& name, const std::vector<std::string>& inputs,
                      const std::string& output) {
    pb::NodeProto* n = out_.add_node();
    n->set_op_type(op_type);
    n->set_name(name);
    for (const std::string& i : inputs) n->add_input(i);
    n->add_output(output);
    return n;
  }
  static void ints(pb::NodeProto* n, const char* name, const std::vector<int64_t>& v) {
    pb::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::INTS);
    for (int64_t x : v) a->add_ints(x);
  }
  static void integer(pb::NodeProto* n, const char* name, int64_t v) {
    pb::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::INT);
    a->set_i(v);
  }
  static void real(pb::NodeProto* n, const char* name, float v) {
    pb::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto::FLOAT);
    a->set_f(v);
  }

  // An initializer; returns its name.
  template <class T>
  std::string constant(const std::string& name, const std::vector<int64_t>& dims, const T* data, int64_t count) {
    pb::TensorProto* t = out_.add_initializer();
    t->set_name(name);
    t->set_data_type(std::is_same_v<T, float> ? pb::TensorProto::FLOAT : pb::TensorProto::INT64);
    for (int64_t d : dims) t->add_dims(d);
    t->set_raw_data(data, static_cast<size_t>(count) * sizeof(T));  // little-endian, as ONNX stores raw data
    return name;
  }
  std::string param(const graph::Node& n, int i) {
    const graph::Param& q = g_.params[n.params[i]];
    const Tensor& t = p_.values[n.params[i]];
    return constant(q.name, q.shape.dims(), t.data<float>(), t.numel());
  }
  std::string scalar(const std::string& name, float v) { return constant(name, {}, &v, 1); }
  std::string int64s(const std::string& name, const std::vector<int64_t>& v) {
    return constant(name, {static_cast<int64_t>(v.size())}, v.data(), static_cast<int64_t>(v.size()));
  }

  // The name of value v's tensor, chosen when its producer is emitted.
  std::string out_name(const graph::Node& n, const std::string& node_name) {
    return names_[n.output] = n.output == g_.output ? std::string(kOutputName) : node_name;
  }

  void emit(const graph::Node& n, int folded_bn) {
    // The ONNX nodes of n are named `name`, or `name.suffix` when it takes several.
    const std::string name = unique(n.name.empty() ? graph::op_name(n.op) : n.name);
    const std::string x = n.inputs.empty() ? "" : names_[n.inputs[0]];
    std::visit(
        Overload{
            [&](const graph::Input&) {},
            [&](const graph::Conv2d& c) {
              std::vector<std::string> in{x};
              if (folded_bn >= 0) {
                const graph::Node& bn = g_.nodes[folded_bn];
                fold(n, bn, c, in);
                pb::NodeProto* conv = node("Conv", name, in, out_name(bn, name));
                conv_attrs(conv, c);
                names_[n.output] = names_[bn.output];
                return;
              }
              in.push_back(param(n, 0));
              if (c.bias) in.push_back(param(n, 1));
              conv_attrs(node("Conv", name, in, out_name(n, name)), c);
            },
            [&](const graph::BatchNorm& b) {
              pb::NodeProto* bn = node("BatchNormalization", name,
                                       {x, param(n, 0), param(n, 1), param(n, 2), param(n, 3)}, out_name(n, name));
              real(bn, "epsilon", b.eps);
              real(bn, "momentum", 1.f - b.momentum);  // ONNX: running = momentum * running + ...
            },
            [&](const graph::Relu&) { node("Relu", name, {x}, out_name(n, name)); },
            [&](const graph::Sigmoid&) { node("Sigmoid", name, {x}, out_name(n, name)); },
            [&](const graph::Add& a) {
              std::string b = names_[n.inputs[1]];
              if (a.scale != 1.f) b = mul(name + ".scaled", b, scalar(name + ".scale", a.scale));
              node("Add", name, {x, b}, out_name(n, name));
            },
            [&](const graph::Mul&) { node("Mul", name, {x, names_[n.inputs[1]]}, out_name(n, name)); },
            [&](const graph::ScaleShift& s) {
              std::string y = x;
              if (s.scale != 1.f) y = mul(name + ".mul", y, scalar(name + ".scale", s.scale));
              if (s.shift != 0.f) y = add(name + ".add", y, scalar(name + ".shift", s.shift));
              if (y == x) y = identity(name, x);
              rename(n, name, y);
            },
            [&](const graph::ShortcutA& s) {
              // x[:, :, ::s, ::s], then K - C zero channels after the C of x.
              const int64_t C = g_.values[n.inputs[0]].shape[0];
              std::string y = x;
              if (s.stride > 1) {
                y = name + ".subsampled";
                node("Slice", name + ".slice",
                     {x, int64s(name + ".starts", {0, 0}), int64s(name + ".ends", {INT64_MAX, INT64_MAX}),
                      int64s(name + ".axes", {2, 3}), int64s(name + ".steps", {s.stride, s.stride})},
                     y);
              }
              if (s.K > C) {
                const std::string in = y;
                y = name + ".padded";
                node("Pad", name + ".pad", {in, int64s(name + ".pads", {0, 0, 0, 0, 0, s.K - C, 0, 0})}, y);
              }
              if (y == x) y = identity(name, x);
              rename(n, name, y);
            },
            [&](const graph::GlobalAvgPool&) {
              const std::string pooled = name + ".pooled";
              node("GlobalAveragePool", name, {x}, pooled);
              integer(node("Flatten", name + ".flatten", {pooled}, out_name(n, name + ".flat")), "axis", 1);
            },
            [&](const graph::Linear& l) {
              std::string in = x;
              if (g_.values[n.inputs[0]].shape.rank() > 1) {
                in = name + ".flat";
                integer(node("Flatten", name + ".flatten", {x}, in), "axis", 1);
              }
              std::vector<std::string> ins{in, param(n, 0)};
              if (l.bias) ins.push_back(param(n, 1));
              integer(node("Gemm", name, ins, out_name(n, name)), "transB", 1);
            },
            [&](const graph::Pool2d& p) { pool(n, p, name, x); },
            [&](const graph::Concat&) {
              std::vector<std::string> ins;
              for (int v : n.inputs) ins.push_back(names_[v]);
              integer(node("Concat", name, ins, out_name(n, name)), "axis", 1);
            },
            [&](const graph::Dropout&) {  // the identity in inference
              if (n.output == g_.output) node("Identity", name, {x}, kOutputName);
              names_[n.output] = n.output == g_.output ? std::string(kOutputName) : x;
            },
        },
        n.op);
  }

  std::string mul(const std::string& name, const std::string& a, const std::string& b) {
    node("Mul", name, {a, b}, name);
    return name;
  }
  std::string add(const std::string& name, const std::string& a, const std::string& b) {
    node("Add", name, {a, b}, name);
    return name;
  }
  std::string identity(const std::string& name, const std::string& x) {
    node("Identity", name, {x}, name);
    return name;
  }
  // A node whose last ONNX node wrote tensor y: y is its value's name, unless the value
  // is the graph output, which gets an Identity under the output's name.
  void rename(const graph::Node& n, const std::string& name, const std::string& y) {
    if (n.output == g_.output) node("Identity", name + ".out", {y}, kOutputName);
    names_[n.output] = n.output == g_.output ? std::string(kOutputName) : y;
  }

  static void conv_attrs(pb::NodeProto* n, const graph::Conv2d& c) {
    ints(n, "kernel_shape", {c.R, c.S});
    ints(n, "strides", {c.stride, c.stride});
    ints(n, "pads", {c.pad_h, c.pad_w, c.pad_h, c.pad_w});
  }

  // The conv's weights and bias with the BN after it folded in (the inference
  // backend's arithmetic, backend/cpu/kernels.h), as initializers named after the conv.
  void fold(const graph::Node& conv, const graph::Node& bn, const graph::Conv2d& c, std::vector<std::string>& in) {
    const Tensor& w = p_.values[conv.params[0]];
    const int64_t K = c.K, per_k = w.numel() / K;
    std::vector<float> wf(static_cast<size_t>(w.numel())), bf(static_cast<size_t>(K));
    const float* stats[4];
    for (int i = 0; i < 4; ++i) stats[i] = p_.values[bn.params[i]].data<float>();
    backend::kernels::fold_conv(wf.data(), bf.data(), w.data<float>(), c.bias ? p_.values[conv.params[1]].data<float>() : nullptr,
                                stats, std::get<graph::BatchNorm>(bn.op).eps, 1.f, K, per_k);
    const std::string& wname = g_.params[conv.params[0]].name;
    const std::string base = wname.ends_with(".weight") ? wname.substr(0, wname.size() - 7) : wname;
    in.push_back(constant(wname, w.shape().dims(), wf.data(), w.numel()));
    in.push_back(constant(base + ".bias", {K}, bf.data(), K));
  }

  // Pooling in floor mode. A ceil-mode pool is floor mode over a longer right padding
  // (padding that ONNX's pools ignore: -inf for max, left out of the count for an
  // average that excludes padding); its output size is incres's (graph::pool_out),
  // whatever a runtime's own ceil-mode rule would give.
  void pool(const graph::Node& n, const graph::Pool2d& p, const std::string& name, const std::string& x) {
    const Shape& in = g_.values[n.inputs[0]].shape;
    std::vector<int64_t> end(2);
    for (int i = 0; i < 2; ++i) {
      const int64_t size = in[1 + i], out = graph::pool_out(size, p);
      end[i] = p.pad + std::max<int64_t>(0, (out - 1) * p.stride + p.kernel - (size + 2 * p.pad));
      INCRES_CHECK(end[i] == p.pad || p.kind == graph::Pool2d::max || !p.count_include_pad, n.name,
                   ": a ceil-mode average pool that counts padding and whose last window passes the padding has no "
                   "ONNX equivalent (ONNX would count the extra padding too)");
    }
    pb::NodeProto* pn = node(p.kind == graph::Pool2d::max ? "MaxPool" : "AveragePool", name, {x}, out_name(n, name));
    ints(pn, "kernel_shape", {p.kernel, p.kernel});
    ints(pn, "strides", {p.stride, p.stride});
    ints(pn, "pads", {p.pad, p.pad, end[0], end[1]});
    if (p.kind == graph::Pool2d::avg) integer(pn, "count_include_pad", p.count_include_pad ? 1 : 0);
  }

  void add_io(pb::ValueInfoProto* v, const char* name, const Shape& per_sample) {
    v->set_name(name);
    pb::TypeProto_Tensor* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(pb::TensorProto::FLOAT);
    pb::TensorShapeProto* s = t->mutable_shape();
    if (o_.batch > 0) s->add_dim()->set_dim_value(o_.batch);
    else s->add_dim()->set_dim_param(kBatchName);
    for (int64_t d : per_sample.dims()) s->add_dim()->set_dim_value(d);
  }

  const graph::Graph& g_;
  const graph::ParamStore& p_;
  const ExportOptions& o_;
  pb::GraphProto& out_;
  std::vector<std::string> names_;          // per value: its ONNX tensor
  std::map<std::string, int> name_count_;   // node names used so far
};

// The checker, then shape inference, which must reach the graph's own output shape.
void check(pb::ModelProto& m, const graph::Graph& g) {
  try {
    pb::checker::check_model(m);
    pb::shape_inference::InferShapes(m, pb::OpSchemaRegistry::Instance(),
                                     pb::ShapeInferenceOptions(/*check_type=*/true, /*strict=*/1));
  } catch (const std::exception& e) {
    fail("the exported model fails ONNX's checks: ", e.what());
  }
  const pb::TensorShapeProto& s = m.graph().output(0).type().tensor_type().shape();
  const Shape want = g.output_shape();
  bool same = s.dim_size() == want.rank() + 1;
  for (int i = 0; same && i < want.rank(); ++i) same = s.dim(i + 1).dim_value() == want[i];
  INCRES_CHECK(same, "the exported model's output shape (ONNX shape inference) differs from the model's ",
               want.str(), " per sample");
}

}  // namespace

std::string export_model(const graph::Graph& g, const graph::ParamStore& params, const ExportOptions& o) {
  INCRES_CHECK(o.opset >= 13 && o.opset <= 17, "--opset ", o.opset, ": incres writes opsets 13 to 17");
  INCRES_CHECK(o.batch >= 0, "batch ", o.batch, ": give 0 (dynamic) or a positive batch size");
  INCRES_CHECK(g.input_shape().rank() == 3, "ONNX export takes image models (C, H, W input); this one's input is ",
               g.input_shape().str());
  pb::ModelProto m;
  m.set_ir_version(ir_version(o.opset));
  m.set_producer_name("incres");
  m.set_model_version(1);
  pb::OperatorSetIdProto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(o.opset);
  for (const auto& [k, v] : o.metadata) {
    pb::StringStringEntryProto* e = m.add_metadata_props();
    e->set_key(k);
    e->set_value(v);
  }
  pb::GraphProto* graph = m.mutable_graph();
  graph->set_name(o.model_name.empty() ? "incres" : o.model_name);
  Emitter(g, params, o, *graph).run();
  check(m, g);
  std::string bytes;
  INCRES_CHECK(m.SerializeToString(&bytes), "the ONNX model could not be serialised (over protobuf's 2 GB limit?)");
  return bytes;
}

void export_file(const std::string& path, const graph::Graph& g, const graph::ParamStore& params,
                 const ExportOptions& o) {
  const std::string bytes = export_model(g, params, o);
  io::write_file_atomic(path, bytes);
}

}  // namespace incres::onnx
