// The reference backend: the graph run node by node with the naive kernels of
// backend/ref/ops.h on float, NCHW throughout. It is the oracle other backends are
// tested against, so it does the simplest correct thing everywhere:
//   - one buffer per value (and, in train mode, one gradient buffer per value),
//     allocated at compile time; no buffer is reused or shared; values no computed
//     output needs (an auxiliary head in inference) get none, and their nodes are
//     skipped;
//   - forward copies the input into its own buffer and reads the parameters from the
//     store at every call (the optimizer changes them between steps);
//   - backward zeroes every value gradient and every parameter gradient, seeds
//     d(output) with dy (and each auxiliary output with its own), and runs the nodes
//     in reverse; each kernel ADDS its
//     contribution, so a value read by several nodes gets the sum of its consumers'
//     gradients, and store.grads ends up overwritten with this step's gradient.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <variant>

#include "backend/outputs.h"
#include "core/overload.h"
#include "backend/program.h"
#include "backend/ref/ops.h"
#include "core/error.h"

namespace incres::backend {

namespace {

using graph::Graph;
using graph::Node;

class RefProgram final : public Program {
 public:
  RefProgram(const Graph& g, graph::ParamStore& store, Options opt);

  void forward(const float* x) override;
  int num_outputs() const override { return static_cast<int>(outputs_.size()); }
  const float* input_grad() const override;
  void set_step(int64_t step) override { step_ = step; }
  int64_t planned_bytes() const override;
  double zero_fraction(int v) const override {
    INCRES_CHECK(std::find(opt_.probes.begin(), opt_.probes.end(), v) != opt_.probes.end(),
                 "ref backend: zero_fraction(", v, ") of a value not in Options::probes");
    if (act_[v].empty()) return std::nan("");
    const float* x = act_[v].data<float>();
    const int64_t n = count(v);
    return static_cast<double>(std::count(x, x + n, 0.f)) / static_cast<double>(n);
  }
  std::string backend_name() const override { return "ref"; }
  // Backward runs the nodes in reverse order; a node's parameters are final once it ran.
  std::vector<int> grad_order() const override {
    std::vector<int> order;
    for (int id = static_cast<int>(g_.nodes.size()) - 1; id >= 0; --id)
      if (live_[id])
        for (int p : g_.nodes[id].params)
          if (g_.params[p].trainable()) order.push_back(p);
    return order;
  }

 private:
  const float* output_impl(int i) const override;
  void backward_impl(const float* dy, std::span<const float* const> aux_dy) override;

  bool training() const { return opt_.mode == Mode::train; }
  // (N, C, H, W) of value v with the program's batch size.
  ref::Dims dims(int v) const {
    const Shape& s = g_.values[v].shape;
    if (s.rank() == 1) return {opt_.batch, s[0], 1, 1};  // flat values: features as channels
    return {opt_.batch, s[0], s[1], s[2]};
  }
  int64_t count(int v) const { return opt_.batch * g_.values[v].shape.numel(); }
  float* act(int v) { return act_[v].data<float>(); }
  // d(loss)/d(value v), or null where no one asked for it (the network input).
  float* grad(int v) { return grad_[v].empty() ? nullptr : grad_[v].data<float>(); }
  const float* param(const Node& n, size_t i) const { return store_.values[n.params[i]].data<float>(); }
  float* param_mut(const Node& n, size_t i) { return store_.values[n.params[i]].data<float>(); }
  float* param_grad(const Node& n, size_t i) { return store_.grads[n.params[i]].data<float>(); }

  void forward_node(int id);
  void backward_node(int id);

  Graph g_;  // a copy: the program stays valid when the caller's graph goes away
  graph::ParamStore& store_;
  Options opt_;
  std::vector<int> outputs_;                // the value of each output (outputs.h)
  std::vector<bool> live_;                  // per node: run by this program
  std::vector<Tensor> act_, grad_;          // per value
  std::vector<Tensor> bn_mean_, bn_inv_std_;  // per node; saved by BN training forward
  // Per concat node, its inputs' buffers and channel counts (so a step allocates nothing).
  struct ConcatArgs {
    std::vector<const float*> xs;
    std::vector<float*> dxs;
    std::vector<int64_t> channels;
  };
  std::vector<ConcatArgs> concat_;  // per node
  int64_t step_ = 0;        // the step the next train-mode forward draws dropout masks with
  int64_t drawn_step_ = 0;  // the step of the last one, which backward uses
};

RefProgram::RefProgram(const Graph& g, graph::ParamStore& store, Options opt)
    : g_(g), store_(store), opt_(opt) {
  INCRES_CHECK(opt.batch >= 1, "ref backend: batch size must be at least 1, got ", opt.batch);
  INCRES_CHECK(g_.input >= 0 && g_.output >= 0, "ref backend: the graph has no input or output");
  INCRES_CHECK(!opt.sum_across, "ref backend: no global BatchNorm statistics (--sync-bn); use the cpu backend");
  INCRES_CHECK(store.values.size() == g_.params.size() && store.grads.size() == g_.params.size(),
               "ref backend: the parameter store holds ", store.values.size(),
               " tensors but the graph has ", g_.params.size(), " parameters");
  for (size_t i = 0; i < g_.params.size(); ++i) {
    const graph::Param& p = g_.params[i];
    const Tensor& t = store.values[i];
    INCRES_CHECK(t.dtype() == DType::f32 && t.shape() == p.shape, "ref backend: parameter ", p.name,
                 " is stored as ", dtype_name(t.dtype()), " ", t.shape().str(), ", expected F32 ",
                 p.shape.str());
    INCRES_CHECK(!training() || !p.trainable() || store.grads[i].shape() == p.shape,
                 "ref backend: parameter ", p.name, " has no gradient tensor of shape ", p.shape.str());
  }
  for (const Node& n : g_.nodes) {
    INCRES_CHECK(!std::holds_alternative<graph::Input>(n.op), "ref backend: node ", n.name,
                 " is an input op, which cannot be executed");
    INCRES_CHECK(n.params.size() == static_cast<size_t>(graph::traits(n.op).params), "ref backend: node ", n.name, " (",
                 graph::op_name(n.op), ") has ", n.params.size(), " parameters, expected ",
                 static_cast<size_t>(graph::traits(n.op).params));
  }

  outputs_ = output_values(g_);
  live_ = live_nodes(g_, opt.mode);
  for (size_t v = 0; v < g_.values.size(); ++v) {
    const int producer = g_.values[v].producer;
    const bool needed = static_cast<int>(v) == g_.input || (producer >= 0 && live_[producer]);
    Shape s = g_.values[v].shape.with_batch(opt.batch);
    act_.push_back(needed ? Tensor(s) : Tensor());
    bool needs_grad = needed && training() && (static_cast<int>(v) != g_.input || opt.input_grad);
    grad_.push_back(needs_grad ? Tensor(s) : Tensor());
  }
  for (size_t id = 0; id < g_.nodes.size(); ++id) {
    const Node& n = g_.nodes[id];
    const bool bn = live_[id] && std::holds_alternative<graph::BatchNorm>(n.op);
    if (bn && training()) {
      ref::Dims d = dims(n.inputs[0]);
      INCRES_CHECK(d.N * d.H * d.W > 1, "ref backend: batchnorm ", n.name,
                   " in training needs more than one value per channel, got batch ", d.N, " x ",
                   d.H, "x", d.W);
    }
    int64_t C = bn ? g_.values[n.inputs[0]].shape[0] : 0;
    bn_mean_.push_back(bn && training() ? Tensor(Shape{C}) : Tensor());
    bn_inv_std_.push_back(bn && training() ? Tensor(Shape{C}) : Tensor());
    ConcatArgs& c = concat_.emplace_back();
    if (std::holds_alternative<graph::Concat>(n.op))
      for (int v : n.inputs) {
        c.xs.push_back(act(v));
        c.dxs.push_back(grad(v));
        c.channels.push_back(g_.values[v].shape[0]);
      }
  }
}

void RefProgram::forward(const float* x) {
  if (training()) drawn_step_ = step_++;
  std::memcpy(act(g_.input), x, static_cast<size_t>(count(g_.input)) * sizeof(float));
  for (int id = 0; id < static_cast<int>(g_.nodes.size()); ++id)
    if (live_[id]) forward_node(id);
}

const float* RefProgram::output_impl(int i) const {
  INCRES_CHECK(i >= 0 && i < num_outputs(), "ref backend: output ", i, " asked of a graph with ",
               num_outputs(), " outputs (the output and ", num_outputs() - 1, " auxiliary ones)");
  INCRES_CHECK(i == 0 || training(), "ref backend: auxiliary output ", i,
               " is not computed by an inference program (it runs only what output 0 needs); "
               "compile in train mode to read it");
  return act_[outputs_[i]].data<float>();
}

void RefProgram::forward_node(int id) {
  const Node& n = g_.nodes[id];
  const int in = n.inputs.empty() ? -1 : n.inputs[0];
  float* y = act(n.output);
  std::visit(Overload{
      [&](const graph::Input&) {},
      [&](const graph::Conv2d& c) {
        ref::Dims d = dims(in);
        ref::conv2d_forward(y, act(in), param(n, 0), c.bias ? param(n, 1) : nullptr,
                            ref::ConvDims::make(d.N, d.C, d.H, d.W, c));
      },
      [&](const graph::BatchNorm& bn) {
        if (training())
          ref::batchnorm_train_forward(y, bn_mean_[id].data<float>(), bn_inv_std_[id].data<float>(),
                                       act(in), param(n, 0), param(n, 1), param_mut(n, 2),
                                       param_mut(n, 3), dims(in), bn.eps, bn.momentum);
        else
          ref::batchnorm_infer_forward(y, act(in), param(n, 0), param(n, 1), param(n, 2),
                                       param(n, 3), dims(in), bn.eps);
      },
      [&](const graph::Relu&) { ref::relu_forward(y, act(in), count(in)); },
      [&](const graph::Add& a) { ref::add_forward(y, act(n.inputs[0]), act(n.inputs[1]), count(in), a.scale); },
      [&](const graph::ShortcutA& s) {
        ref::Dims d = dims(in);
        ref::shortcut_a_forward(y, act(in), ref::ShortcutDims::make(d.N, d.C, d.H, d.W, s));
      },
      [&](const graph::GlobalAvgPool&) { ref::avgpool_forward(y, act(in), dims(in)); },
      [&](const graph::Linear& l) {
        ref::linear_forward(y, act(in), param(n, 0), l.bias ? param(n, 1) : nullptr, opt_.batch,
                            g_.values[in].shape[0], l.out);
      },
      [&](const graph::Pool2d& p) {
        ref::Dims d = dims(in);
        ref::pool2d_forward(y, act(in), ref::PoolDims::make(d.N, d.C, d.H, d.W, p));
      },
      [&](const graph::Concat&) {
        const ConcatArgs& c = concat_[id];
        ref::concat_forward<float>(y, c.xs, c.channels, opt_.batch, dims(in).H * dims(in).W);
      },
      [&](const graph::Dropout& d) {
        if (training())
          ref::dropout_forward(y, act(in), count(in), DropoutMask(opt_.seed, drawn_step_, id, d.p, opt_.sample_offset * (count(in) / opt_.batch)));
        else
          std::memcpy(y, act(in), static_cast<size_t>(count(in)) * sizeof(float));
      },
      [&](const graph::Sigmoid&) { ref::sigmoid_forward(y, act(in), count(in)); },
      [&](const graph::Mul&) { ref::mul_forward(y, act(n.inputs[0]), act(n.inputs[1]), count(in)); },
      [&](const graph::ScaleShift& s) { ref::scale_shift_forward(y, act(in), count(in), s.scale, s.shift); },
  }, n.op);
}

void RefProgram::backward_impl(const float* dy, std::span<const float* const> aux_dy) {
  INCRES_CHECK(training(), "ref backend: backward() needs a program compiled in train mode");
  INCRES_CHECK(aux_dy.empty() || aux_dy.size() + 1 == outputs_.size(), "ref backend: backward() got ",
               aux_dy.size(), " auxiliary gradients for ", outputs_.size() - 1, " auxiliary outputs");
  for (Tensor& t : grad_)
    if (!t.empty()) std::memset(t.raw(), 0, t.nbytes());
  store_.zero_grads();
  // Seeds: d(output i) = the caller's gradient, zero where none was given. The
  // outputs' consumers (if any) add to them.
  for (size_t i = 0; i < outputs_.size(); ++i) {
    const float* seed = i == 0 ? dy : aux_dy.empty() ? nullptr : aux_dy[i - 1];
    if (seed) std::memcpy(grad(outputs_[i]), seed, static_cast<size_t>(count(outputs_[i])) * sizeof(float));
  }
  for (int id = static_cast<int>(g_.nodes.size()) - 1; id >= 0; --id) {
    if (!live_[id]) continue;
    backward_node(id);
    if (opt_.grad_ready)
      for (int p : g_.nodes[id].params)
        if (g_.params[p].trainable()) opt_.grad_ready(p);
  }
}

void RefProgram::backward_node(int id) {
  const Node& n = g_.nodes[id];
  const int in = n.inputs.empty() ? -1 : n.inputs[0];
  const float* dy = grad(n.output);
  std::visit(Overload{
      [&](const graph::Input&) {},
      [&](const graph::Conv2d& c) {
        ref::Dims d = dims(in);
        ref::conv2d_backward(grad(in), param_grad(n, 0), c.bias ? param_grad(n, 1) : nullptr, dy,
                             act(in), param(n, 0), ref::ConvDims::make(d.N, d.C, d.H, d.W, c));
      },
      [&](const graph::BatchNorm&) {
        ref::batchnorm_backward(grad(in), param_grad(n, 0), param_grad(n, 1), dy, act(in),
                                param(n, 0), bn_mean_[id].data<float>(),
                                bn_inv_std_[id].data<float>(), dims(in));
      },
      [&](const graph::Relu&) {
        if (float* dx = grad(in)) ref::relu_backward(dx, dy, act(in), count(in));
      },
      [&](const graph::Add& a) {
        ref::add_backward(grad(n.inputs[0]), grad(n.inputs[1]), dy, count(in), a.scale);
      },
      [&](const graph::ShortcutA& s) {
        ref::Dims d = dims(in);
        if (float* dx = grad(in))
          ref::shortcut_a_backward(dx, dy, ref::ShortcutDims::make(d.N, d.C, d.H, d.W, s));
      },
      [&](const graph::GlobalAvgPool&) {
        if (float* dx = grad(in)) ref::avgpool_backward(dx, dy, dims(in));
      },
      [&](const graph::Linear& l) {
        ref::linear_backward(grad(in), param_grad(n, 0), l.bias ? param_grad(n, 1) : nullptr, dy,
                             act(in), param(n, 0), opt_.batch, g_.values[in].shape[0], l.out);
      },
      [&](const graph::Pool2d& p) {
        ref::Dims d = dims(in);
        if (float* dx = grad(in)) ref::pool2d_backward(dx, dy, act(in), ref::PoolDims::make(d.N, d.C, d.H, d.W, p));
      },
      [&](const graph::Concat&) {
        const ConcatArgs& c = concat_[id];
        ref::concat_backward<float>(c.dxs, dy, c.channels, opt_.batch, dims(in).H * dims(in).W);
      },
      [&](const graph::Dropout& d) {
        if (float* dx = grad(in))
          ref::dropout_backward(dx, dy, count(in), DropoutMask(opt_.seed, drawn_step_, id, d.p, opt_.sample_offset * (count(in) / opt_.batch)));
      },
      [&](const graph::Sigmoid&) {
        if (float* dx = grad(in)) ref::sigmoid_backward(dx, dy, act(n.output), count(in));
      },
      [&](const graph::Mul&) {
        const int a = n.inputs[0], b = n.inputs[1];
        ref::mul_backward(grad(a), grad(b), dy, act(a), act(b), count(in));
      },
      [&](const graph::ScaleShift& s) {
        if (float* dx = grad(in)) ref::scale_shift_backward(dx, dy, count(in), s.scale);
      },
  }, n.op);
}

const float* RefProgram::input_grad() const {
  INCRES_CHECK(training() && opt_.input_grad,
               "ref backend: input_grad() needs a program compiled in train mode with Options::input_grad");
  return grad_[g_.input].data<float>();
}

int64_t RefProgram::planned_bytes() const {
  int64_t bytes = 0;
  for (const auto* list : {&act_, &grad_, &bn_mean_, &bn_inv_std_})
    for (const Tensor& t : *list)
      if (!t.empty()) bytes += static_cast<int64_t>(t.nbytes());
  return bytes;
}

}  // namespace

std::unique_ptr<Program> compile_ref(const graph::Graph& g, graph::ParamStore& store, Options opt) {
  return std::make_unique<RefProgram>(g, store, opt);
}

}  // namespace incres::backend
