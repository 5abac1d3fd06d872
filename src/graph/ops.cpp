// The shape and cost rule of every op.
#include "core/error.h"
#include "core/overload.h"
#include "graph/graph.h"

namespace incres::graph {

namespace {
int64_t conv_out(int64_t in, int k, int stride, int pad) { return (in + 2 * pad - k) / stride + 1; }
}  // namespace

int64_t pool_out(int64_t in, const Pool2d& p) {
  int64_t span = in + 2 * p.pad - p.kernel;
  if (span < 0) return 0;
  int64_t out = (p.ceil_mode ? (span + p.stride - 1) / p.stride : span / p.stride) + 1;
  // PyTorch: the last window must start inside the input or its left padding.
  if (p.ceil_mode && (out - 1) * p.stride >= in + p.pad) --out;
  return out;
}

const char* op_name(const Op& op) {
  return std::visit(Overload{
      [](const Input&) { return "input"; },
      [](const Conv2d&) { return "conv"; },
      [](const BatchNorm&) { return "batchnorm"; },
      [](const Relu&) { return "relu"; },
      [](const Add&) { return "add"; },
      [](const ShortcutA&) { return "shortcut_a"; },
      [](const GlobalAvgPool&) { return "avgpool"; },
      [](const Linear&) { return "linear"; },
      [](const Pool2d& p) { return p.kind == Pool2d::max ? "maxpool" : "avgpool2d"; },
      [](const Concat&) { return "concat"; },
      [](const Dropout&) { return "dropout"; },
      [](const Sigmoid&) { return "sigmoid"; },
      [](const Mul&) { return "mul"; },
      [](const ScaleShift&) { return "scale_shift"; },
  }, op);
}

OpTraits traits(const Op& op) {
  return std::visit(Overload{
      [](const Input&) { return OpTraits{}; },
      [](const Conv2d& c) {
        return OpTraits{.params = c.bias ? 2 : 1, .output_overwritable = true, .absorbs_epilogue = true};
      },
      [](const BatchNorm&) {
        return OpTraits{.params = 4, .output_overwritable = true, .per_channel_affine = true, .fuses_activation = true};
      },
      [](const Relu&) { return OpTraits{.backward_reads_output = true, .activation = true}; },
      [](const Add&) { return OpTraits{.sum = true}; },
      [](const ShortcutA&) { return OpTraits{}; },
      [](const GlobalAvgPool&) { return OpTraits{}; },
      [](const Linear& l) { return OpTraits{.params = l.bias ? 2 : 1}; },
      [](const Pool2d&) { return OpTraits{}; },
      [](const Concat&) { return OpTraits{}; },
      [](const Dropout&) { return OpTraits{}; },
      [](const Sigmoid&) { return OpTraits{.backward_reads_output = true}; },
      [](const Mul&) { return OpTraits{}; },
      [](const ScaleShift&) { return OpTraits{}; },
  }, op);
}

Shape infer_shape(const Op& op, const std::vector<Shape>& in) {
  auto need_chw = [&](const char* what) {
    INCRES_CHECK(in.size() >= 1 && in[0].rank() == 3, what, " needs a (C, H, W) input, got ",
                 in.empty() ? std::string("nothing") : in[0].str());
  };
  return std::visit(Overload{
      [&](const Input&) -> Shape { fail("input has no shape rule"); },
      [&](const Conv2d& c) -> Shape {
        need_chw("conv");
        int64_t P = conv_out(in[0][1], c.R, c.stride, c.pad_h);
        int64_t Q = conv_out(in[0][2], c.S, c.stride, c.pad_w);
        INCRES_CHECK(P > 0 && Q > 0, "conv ", c.R, "x", c.S, "/", c.stride, " on input ",
                     in[0].str(), " gives an empty output");
        return Shape{c.K, P, Q};
      },
      [&](const BatchNorm&) -> Shape {
        // (C, H, W) per channel, or a flat (F): one value per feature and image (the
        // paper's BN-auxiliary head normalises its fully connected layer).
        INCRES_CHECK(in.size() == 1 && (in[0].rank() == 3 || in[0].rank() == 1),
                     "batchnorm needs a (C, H, W) or flat input, got ", in.empty() ? std::string("nothing") : in[0].str());
        return in[0];
      },
      [&](const Relu&) -> Shape { return in[0]; },
      [&](const Add&) -> Shape {
        INCRES_CHECK(in.size() == 2 && in[0] == in[1], "add needs two equal shapes, got ",
                     in[0].str(), " and ", in.size() > 1 ? in[1].str() : "nothing");
        return in[0];
      },
      [&](const ShortcutA& s) -> Shape {
        need_chw("shortcut A");
        INCRES_CHECK(s.K >= in[0][0], "shortcut A cannot shrink channels from ", in[0][0], " to ", s.K);
        return Shape{s.K, (in[0][1] + s.stride - 1) / s.stride, (in[0][2] + s.stride - 1) / s.stride};
      },
      [&](const GlobalAvgPool&) -> Shape { need_chw("avgpool"); return Shape{in[0][0]}; },
      [&](const Linear& l) -> Shape {
        INCRES_CHECK(in.size() == 1 && in[0].rank() == 1, "linear needs a flat input, got ", in[0].str());
        return Shape{l.out};
      },
      [&](const Pool2d& p) -> Shape {
        need_chw(op_name(op));
        INCRES_CHECK(p.kernel >= 1 && p.stride >= 1 && p.pad >= 0 && 2 * p.pad <= p.kernel,
                     op_name(op), " ", p.kernel, "/", p.stride, " pad ", p.pad,
                     ": needs kernel, stride >= 1 and pad <= kernel / 2");
        int64_t P = pool_out(in[0][1], p), Q = pool_out(in[0][2], p);
        INCRES_CHECK(P > 0 && Q > 0, op_name(op), " ", p.kernel, "/", p.stride, " on input ",
                     in[0].str(), " gives an empty output");
        return Shape{in[0][0], P, Q};
      },
      [&](const Concat&) -> Shape {
        INCRES_CHECK(!in.empty(), "concat needs at least one input");
        int64_t C = 0;
        for (const Shape& s : in) {
          INCRES_CHECK(s.rank() == 3 && s[1] == in[0][1] && s[2] == in[0][2],
                       "concat needs (C, H, W) inputs of one size, got ", in[0].str(), " and ", s.str());
          C += s[0];
        }
        return Shape{C, in[0][1], in[0][2]};
      },
      [&](const Dropout& d) -> Shape {
        INCRES_CHECK(d.p >= 0.f && d.p < 1.f, "dropout probability must be in [0, 1), got ", d.p);
        return in[0];
      },
      [&](const Sigmoid&) -> Shape { return in[0]; },
      [&](const Mul&) -> Shape {
        INCRES_CHECK(in.size() == 2 && in[0] == in[1], "mul needs two equal shapes, got ",
                     in[0].str(), " and ", in.size() > 1 ? in[1].str() : "nothing");
        return in[0];
      },
      [&](const ScaleShift&) -> Shape { return in[0]; },
  }, op);
}

int64_t node_macs(const Graph& g, const Node& n) {
  const Shape& out = g.values[n.output].shape;
  if (auto* c = std::get_if<Conv2d>(&n.op)) {
    int64_t C = g.values[n.inputs[0]].shape[0];
    return out.numel() * C * c->R * c->S;
  }
  if (std::holds_alternative<Linear>(n.op)) return out.numel() * g.values[n.inputs[0]].shape[0];
  return 0;
}

int64_t Graph::param_count() const {
  int64_t n = 0;
  for (const Param& p : params)
    if (p.trainable()) n += p.shape.numel();
  return n;
}

int64_t Graph::macs() const {
  int64_t m = 0;
  for (const Node& n : nodes) m += node_macs(*this, n);
  return m;
}

int Graph::find_param(const std::string& name) const {
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].name == name) return static_cast<int>(i);
  return -1;
}

}  // namespace incres::graph
