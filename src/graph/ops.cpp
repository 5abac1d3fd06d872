// The shape and cost rule of every op.
#include "core/error.h"
#include "graph/graph.h"

namespace incres::graph {

namespace {
template <class... F> struct Overload : F... { using F::operator()...; };
template <class... F> Overload(F...) -> Overload<F...>;

int64_t conv_out(int64_t in, int k, int stride, int pad) { return (in + 2 * pad - k) / stride + 1; }
}  // namespace

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
      [&](const BatchNorm&) -> Shape { need_chw("batchnorm"); return in[0]; },
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
