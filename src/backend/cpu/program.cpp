// The oneDNN CPU backend. Compiling a graph (plan once):
//   1. picks a layout per value (layout.cpp): one channel block per graph, nChw16c
//      (AVX-512) or nChw8c (see channel_block; oneDNN's jit kernels work on it
//      natively, so no reorders between ops), nchw where the channel count allows no
//      block, nc for flat values;
//   2. fuses as the shared planning pass decides (graph/passes/fusion.h): for
//      inference, each conv absorbs the BatchNorm after it (folded into its weights
//      and bias), then a ReLU, or the residual sum (a sum post-op: the conv writes on
//      top of the shortcut's buffer) and the ReLU after it; other BatchNorms take a
//      following ReLU (oneDNN's fuse_norm_relu, the ReLU mask in a workspace for
//      training); other ReLUs run in place on their input; inference runs the 3x3,
//      1x3 / 3x1 and 1x7 / 7x1 convs where it pays as our own Winograd
//      (backend/cpu/winograd.h: transforms, oneDNN's matmul, transforms);
//   3. gives every value its memories (assign_buffers), then creates every primitive
//      once, node by node (emit_conv.cpp: convolutions; emit_ops.cpp: the rest), with
//      backward descriptors hinted by the forward ones and one shared scratchpad
//      sized to the largest need, and the reorders at the graph's edges;
//   4. plans memory by lifetime: every activation, gradient and workspace buffer is
//      a block of one arena, live from the first step that uses it to the last;
//      buffers that are never live together share bytes (backend/memory_plan.h).
// forward()/backward() then only execute the recorded steps (run many; execute.cpp). An inference
// program prepares its weights (folded, reordered to the conv's layout) at its first
// forward and again only when the store's version has moved; a training program
// reorders them at every forward, since every step changes them.
//
// Gradients: in backward, the consumers of a value run in reverse order. The first
// of them writes d(value); later ones add to it (fan-out, e.g. the block input that
// feeds both the residual branch and the shortcut, or the input of an Inception
// block's four branches). Primitives that cannot accumulate write into a shared
// temporary, followed by an in-place add; reorders add through their sum post-op,
// and our own loops take an `accumulate` flag.
#include <cstring>

#include "backend/cpu/cpu_program.h"
#include "backend/outputs.h"
#include "core/error.h"
#include "core/memory_info.h"

namespace incres::backend {
namespace cpu {

memory CpuProgram::alloc(const memory::desc& md) {
  memory m(md, eng_, DNNL_MEMORY_NONE);  // bound by plan()
  Buffer b;
  b.block.bytes = std::max<size_t>(md.get_size(), 1);
  b.users.push_back(m);
  buf_of_[m.get()] = static_cast<int>(bufs_.size());
  bufs_.push_back(std::move(b));
  return m;
}

memory CpuProgram::view(const memory& base, const memory::desc& md) {
  const int id = buf_of_.at(base.get());
  memory m(md, eng_, DNNL_MEMORY_NONE);
  bufs_[id].users.push_back(m);
  buf_of_[m.get()] = id;
  return m;
}

void CpuProgram::plan() {
  // Each buffer's span over one call of forward() then backward(): forward steps,
  // the seeding of the outputs' gradients, backward steps. Prepared weights, the
  // outputs and d(input) stay (the caller reads them between calls).
  const int F = static_cast<int>(fwd_.size()), T = F + 1 + static_cast<int>(bwd_.size());
  for (Buffer& b : bufs_) b.block.first = T, b.block.last = -1;
  auto touch = [&](const memory& m, int t) {
    if (auto it = buf_of_.find(m.get()); it != buf_of_.end()) {
      Block& b = bufs_[it->second].block;
      b.first = std::min(b.first, t);
      b.last = std::max(b.last, t);
    }
  };
  auto pin = [&](const memory& m) {
    if (auto it = buf_of_.find(m.get()); it != buf_of_.end()) bufs_[it->second].pinned = true;
  };
  for (const Step& s : prep_) for (const memory& m : s.held) pin(m);
  for (int v : opt_.probes)
    if (val_.at(v).act) pin(val_[v].act);
  for (int t = 0; t < F; ++t) for (const memory& m : fwd_[t].held) touch(m, t);
  for (size_t i = 0; i < out_.size(); ++i) {
    pin(out_[i].y);
    for (const memory& m : out_[i].seed.held) touch(m, F);
    if (training()) touch(val_[outputs_[i]].grad, F);
  }
  for (int t = 0; t < T - F - 1; ++t) for (const memory& m : bwd_[t].held) touch(m, F + 1 + t);
  if (din_plain_) pin(din_plain_);
  std::vector<Block> blocks;
  for (Buffer& b : bufs_) {
    if (b.pinned || b.block.last < 0) b.block.first = 0, b.block.last = T;  // unused ones too: safe
    blocks.push_back(b.block);
    unplanned_ += b.block.bytes;
  }
  const size_t bytes = plan_memory(blocks);
  live_peak_ = live_peak(blocks);
  // Refused before any of it is taken: an allocation past the machine's memory either
  // fails or, with overcommit, kills the process later.
  const int64_t needed = static_cast<int64_t>(bytes + scratch_.bytes + tmp_.bytes + fold_.bytes);
  if (const int64_t available = available_memory(); available >= 0 && needed > available)
    throw OutOfMemory(cat("the ", training() ? "training" : "inference", " program at batch ", opt_.batch, " needs ",
                          bytes_text(static_cast<double>(needed)), " for activations, gradients and workspaces; ",
                          bytes_text(static_cast<double>(available)), " of memory are available"),
                      needed, available);
  arena_ = Tensor(Shape{static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8);
  for (size_t i = 0; i < bufs_.size(); ++i) {
    bufs_[i].block = blocks[i];
    for (memory& m : bufs_[i].users) m.set_data_handle(static_cast<char*>(arena_.raw()) + blocks[i].offset);
  }
}

memory CpuProgram::param(int id, bool grad) {
  const graph::Param& p = g_.params[id];
  tag t = p.shape.rank() == 4 ? tag::oihw : p.shape.rank() == 2 ? tag::ab : tag::a;
  memory::desc md(memory::dims(p.shape.dims().begin(), p.shape.dims().end()), dt::f32, t);
  Tensor& t_ = grad ? store_.grads[id] : store_.values[id];
  return memory(md, eng_, t_.raw());
}

dnnl::primitive_attr CpuProgram::attr() const {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

void CpuProgram::add_scratch(Step& s, const memory::desc& md) {
  if (md.get_size() > 0) s.add_arg(DNNL_ARG_SCRATCHPAD, scratch_.make(md, eng_));
}

memory CpuProgram::converted(std::vector<Step>& steps, const memory& from, const memory::desc& md) {
  if (from.get_desc() == md) return from;
  memory to = alloc(md);
  dnnl::reorder::primitive_desc pd(eng_, from.get_desc(), eng_, md, attr());
  steps.push_back(step(pd, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}}));
  return to;
}

memory CpuProgram::f32_in(std::vector<Step>& steps, const memory& m) {
  if (m.get_desc().data_type() == dt::f32) return m;
  return converted(steps, m, with_type(m.get_desc(), dt::f32));
}

memory CpuProgram::f32_out(const memory& m) {
  return m.get_desc().data_type() == dt::f32 ? m : alloc(with_type(m.get_desc(), dt::f32));
}

void CpuProgram::f32_flush(std::vector<Step>& steps, const memory& written, const memory& m) {
  if (written == m) return;
  dnnl::reorder::primitive_desc pd(eng_, written.get_desc(), eng_, m.get_desc(), attr());
  steps.push_back(step(pd, {{DNNL_ARG_FROM, written}, {DNNL_ARG_TO, m}}));
}

bool CpuProgram::first_contribution(int node, size_t slot) const {
  const std::vector<int>& inputs = g_.nodes[node].inputs;
  const int v = inputs[slot];
  return !is_output(v) && val_[v].last_consumer == node &&
         std::find(inputs.begin(), inputs.end(), v) == inputs.begin() + static_cast<std::ptrdiff_t>(slot);
}

memory CpuProgram::contribution(int node, size_t slot) {
  const int v = g_.nodes[node].inputs[slot];
  return first_contribution(node, slot) ? val_[v].grad : tmp_.make(val_[v].md, eng_);
}

void CpuProgram::finish_contribution(std::vector<Step>& steps, int node, size_t slot, const memory& t) {
  if (first_contribution(node, slot)) return;
  const int v = g_.nodes[node].inputs[slot];
  dnnl::binary::desc d(dnnl::algorithm::binary_add, val_[v].md, val_[v].md, val_[v].md);
  dnnl::binary::primitive_desc pd(d, attr(), eng_);
  steps.push_back(step(pd, {{DNNL_ARG_SRC_0, val_[v].grad}, {DNNL_ARG_SRC_1, t}, {DNNL_ARG_DST, val_[v].grad}}));
}

void CpuProgram::add_scaled(std::vector<Step>& steps, int node, size_t slot, const memory& from, float scale) {
  // One reorder: it converts layouts, reads views, scales (output scales) and, for a
  // later contributor, adds to what is there (the sum post-op).
  const int v = g_.nodes[node].inputs[slot];
  dnnl::primitive_attr a = attr();
  if (scale != 1.f) a.set_output_scales(0, {scale});
  if (!first_contribution(node, slot)) {
    dnnl::post_ops po;
    po.append_sum(1.f);
    a.set_post_ops(po);
  }
  dnnl::reorder::primitive_desc pd(eng_, from.get_desc(), eng_, val_[v].md, a);
  steps.push_back(step(pd, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, val_[v].grad}}));
}

CpuProgram::CpuProgram(const Graph& g, graph::ParamStore& store, Options opt)
    : g_(g), store_(store), opt_(opt) {
  INCRES_CHECK(opt.batch > 0, "batch size must be positive, got ", opt.batch);
  check_precision(opt.precision);
  outputs_ = output_values(g_);
  live_ = live_nodes(g_, opt.mode);
  assign_layouts();                                             // 1. layouts (layout.cpp)
  plan_ = graph::plan_fusion(g_, live_, outputs_, training());  // 2. fusion: the pass every backend shares
  assign_buffers();                                             // 3. buffers
  emit_edges(emit_nodes());                                     // 4. primitives; 5. the graph's edges
  plan();
  scratch_.bind();
  tmp_.bind();
  fold_.bind();
  if (training()) order_grads();
}

// A parameter's gradient is final after the last backward step that holds its buffer
// (the conv's weight-gradient primitive, or the reorder into the f32 master gradient
// of a bf16 program).
void CpuProgram::order_grads() {
  std::unordered_map<const void*, int> param_of;
  for (size_t p = 0; p < g_.params.size(); ++p)
    if (g_.params[p].trainable() && !store_.grads[p].empty()) param_of[store_.grads[p].raw()] = static_cast<int>(p);
  std::vector<int> last(g_.params.size(), -1);
  for (size_t i = 0; i < bwd_.size(); ++i)
    for (const memory& m : bwd_[i].held)
      if (auto it = param_of.find(m ? m.get_data_handle() : nullptr); it != param_of.end())
        last[it->second] = static_cast<int>(i);
  ready_after_.assign(bwd_.size(), {});
  for (const auto& [raw, p] : param_of) (last[p] >= 0 ? ready_after_[last[p]] : ready_at_end_).push_back(p);
  for (auto& r : ready_after_) std::sort(r.begin(), r.end());
  std::sort(ready_at_end_.begin(), ready_at_end_.end());
}

std::vector<int> CpuProgram::grad_order() const {
  std::vector<int> order;
  for (const auto& r : ready_after_) order.insert(order.end(), r.begin(), r.end());
  order.insert(order.end(), ready_at_end_.begin(), ready_at_end_.end());
  return order;
}

// Every value a live node reads or writes gets its memories: its own buffer, or a
// view of the one the fusion plan aliases it to (a sum or an activation computed in
// place over its input).
void CpuProgram::assign_buffers() {
  for (size_t i = 0; i < g_.nodes.size(); ++i)
    if (live_[i])
      for (int v : g_.nodes[i].inputs) val_[v].last_consumer = static_cast<int>(i);
  for (size_t v = 0; v < g_.values.size(); ++v) {
    const graph::Value& value = g_.values[v];
    ValueMemory& m = val_[v];
    const bool needed = static_cast<int>(v) == g_.input || (value.producer >= 0 && live_[value.producer]);
    if (plan_.values[v].hidden || !needed) continue;
    const bool needs_grad = training() && (static_cast<int>(v) != g_.input || opt_.input_grad);
    if (const int alias = plan_.values[v].alias; alias >= 0) {
      m.act = view(val_[alias].act, m.md);
      if (needs_grad) m.grad = view(val_[alias].grad, m.md);
    } else {
      m.act = alloc(m.md);
      if (needs_grad) m.grad = alloc(m.md);
    }
  }
  // A fused BN writes straight into its ReLU's output.
  for (size_t i = 0; i < g_.nodes.size(); ++i) {
    const int relu = plan_.nodes[i].fused_relu;
    if (relu < 0) continue;
    ValueMemory &bn_out = val_[g_.nodes[i].output], &relu_out = val_[g_.nodes[relu].output];
    bn_out.act = relu_out.act;
    bn_out.grad = relu_out.grad;
  }
}

// Each live node's steps, in graph order: its forward steps go to fwd_ (after the
// input's reorder, which emit_edges puts first), its backward steps are returned per
// node, for emit_edges to run in reverse.
std::vector<std::vector<Step>> CpuProgram::emit_nodes() {
  std::vector<std::vector<Step>> node_bwd(g_.nodes.size());
  for (size_t i = 0; i < g_.nodes.size(); ++i) {
    const Node& n = g_.nodes[i];
    if (!live_[i] || plan_.nodes[i].skip || std::holds_alternative<graph::Input>(n.op)) continue;
    Site at{static_cast<int>(i), n, {}, {}};
    const size_t prep_before = prep_.size();
    std::visit([&](const auto& op) {
      using T = std::decay_t<decltype(op)>;
      using dnnl::algorithm;
      if constexpr (std::is_same_v<T, graph::Conv2d>) compile_conv(at, op);
      else if constexpr (std::is_same_v<T, graph::BatchNorm>) compile_batchnorm(at, op);
      else if constexpr (std::is_same_v<T, graph::Relu>) compile_eltwise(at, algorithm::eltwise_relu_use_dst_for_bwd);
      else if constexpr (std::is_same_v<T, graph::Add>) compile_add(at, op);
      else if constexpr (std::is_same_v<T, graph::ShortcutA>) compile_shortcut_a(at, op);
      else if constexpr (std::is_same_v<T, graph::GlobalAvgPool>) compile_avgpool(at);
      else if constexpr (std::is_same_v<T, graph::Linear>) compile_linear(at, op);
      else if constexpr (std::is_same_v<T, graph::Pool2d>) compile_pool(at, op);
      else if constexpr (std::is_same_v<T, graph::Concat>) compile_concat(at);
      else if constexpr (std::is_same_v<T, graph::Dropout>) compile_dropout(at, op);
      else if constexpr (std::is_same_v<T, graph::Sigmoid>)
        compile_eltwise(at, algorithm::eltwise_logistic_use_dst_for_bwd);
      else if constexpr (std::is_same_v<T, graph::Mul>) compile_mul(at);
      else if constexpr (std::is_same_v<T, graph::ScaleShift>) compile_scale_shift(at, op);
      else static_assert(std::is_same_v<T, graph::Input>, "an op without a cpu implementation");
    }, n.op);
    for (auto* list : {&at.fwd, &at.bwd})
      for (Step& st : *list) st.node = at.id;
    for (size_t k = prep_before; k < prep_.size(); ++k) prep_[k].node = at.id;
    for (Step& st : at.fwd) fwd_.push_back(std::move(st));
    node_bwd[i] = std::move(at.bwd);
  }
  return node_bwd;
}

// The graph's edges: plain NCHW in and out, reorders only here. Forward starts with
// the input's reorder and ends with the outputs' ones; backward runs the nodes in
// reverse, then reorders d(input) when asked for.
void CpuProgram::emit_edges(std::vector<std::vector<Step>> node_bwd) {
  auto plain = [](const memory::desc& md) {
    return memory::desc(md.dims(), dt::f32, md.dims().size() == 2 ? tag::nc : tag::nchw);
  };
  const ValueMemory& in = val_[g_.input];
  in_plain_ = memory(plain(in.md), eng_, DNNL_MEMORY_NONE);
  {
    dnnl::reorder::primitive_desc pd(eng_, plain(in.md), eng_, in.md, attr());
    fwd_.insert(fwd_.begin(), step(pd, {{DNNL_ARG_FROM, in_plain_}, {DNNL_ARG_TO, in.act}}));
  }
  for (size_t i = 0; i < (training() ? outputs_.size() : 1); ++i) {
    const ValueMemory& v = val_[outputs_[i]];
    const memory::desc md = plain(v.md);
    Output o;
    o.y = md == v.md ? v.act : alloc(md);
    if (o.y != v.act) {
      dnnl::reorder::primitive_desc pd(eng_, v.md, eng_, md, attr());
      fwd_.push_back(step(pd, {{DNNL_ARG_FROM, v.act}, {DNNL_ARG_TO, o.y}}));
    }
    if (training()) {
      o.dy = memory(md, eng_, DNNL_MEMORY_NONE);
      dnnl::reorder::primitive_desc pd(eng_, md, eng_, v.md, attr());
      o.seed = step(pd, {{DNNL_ARG_FROM, o.dy}, {DNNL_ARG_TO, v.grad}});
    }
    out_.push_back(std::move(o));
  }
  if (!training()) return;
  for (size_t i = node_bwd.size(); i-- > 0;)
    for (Step& st : node_bwd[i]) bwd_.push_back(std::move(st));
  if (opt_.input_grad) {
    din_plain_ = alloc(plain(in.md));
    dnnl::reorder::primitive_desc pd(eng_, in.md, eng_, plain(in.md), attr());
    bwd_.push_back(step(pd, {{DNNL_ARG_FROM, in.grad}, {DNNL_ARG_TO, din_plain_}}));
  }
}

}  // namespace cpu

std::unique_ptr<Program> compile_cpu(const graph::Graph& g, graph::ParamStore& store, Options opt) {
  try {
    return std::make_unique<cpu::CpuProgram>(g, store, opt);
  } catch (const dnnl::error& e) {
    fail("oneDNN could not compile the graph (batch ", opt.batch, "): ", e.what());
  }
}

}  // namespace incres::backend
