// The oneDNN CPU backend. Compiling a graph (plan once):
//   1. picks a layout per value: one channel block per graph, nChw16c (AVX-512) or
//      nChw8c (see channel_block; oneDNN's jit kernels work on it natively, so no
//      reorders between ops), nchw where the channel count allows no block, nc for
//      flat values;
//   2. fuses as the shared planning pass decides (graph/passes/fusion.h): for inference, each conv absorbs the BatchNorm after it (folded into
//      its weights and bias), then a ReLU, or the residual sum (a sum post-op: the
//      conv writes on top of the shortcut's buffer) and the ReLU after it; other
//      BatchNorms take a following ReLU (oneDNN's fuse_norm_relu, the ReLU mask in a
//      workspace for training); other ReLUs run in place on their input;
//      inference runs the 3x3, 1x3 / 3x1 and 1x7 / 7x1 convs where it pays as our own
//      Winograd (backend/cpu/winograd.h: transforms, oneDNN's matmul, transforms);
//   3. creates every primitive once, with backward descriptors hinted by the forward
//      ones, and one shared scratchpad sized to the largest need;
//   4. plans memory by lifetime: every activation, gradient and workspace buffer is
//      a block of one arena, live from the first step that uses it to the last;
//      buffers that are never live together share bytes (backend/memory_plan.h).
// forward()/backward() then only execute the recorded steps (run many). An inference
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
#include <dnnl.hpp>
#include <oneapi/dnnl/dnnl_debug.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>

#include "backend/cpu/kernels.h"
#include "backend/cpu/winograd.h"
#include "backend/memory_plan.h"
#include "backend/outputs.h"
#include "backend/program.h"
#include "core/error.h"
#include "core/memory_info.h"
#include "graph/passes/fusion.h"

namespace incres::backend {

namespace {

// oneDNN's ISA values are sets of feature bits, not an order (avx2_vnni, 0x407, is
// above avx512_core, 0x27): an ISA includes another when it has all its bits.
bool cpu_isa_has(dnnl::cpu_isa want) {
  const auto have = static_cast<unsigned>(dnnl::get_effective_cpu_isa()), w = static_cast<unsigned>(want);
  return (have & w) == w;
}

}  // namespace

std::string cpu_isa() {
  using isa = dnnl::cpu_isa;
  // The widest first: each includes those after it.
  const std::pair<isa, const char*> names[] = {
      {isa::avx512_core_amx, "avx512_core_amx"}, {isa::avx512_core_bf16, "avx512_core_bf16"},
      {isa::avx512_core_vnni, "avx512_core_vnni"}, {isa::avx512_core, "avx512_core"},
      {isa::avx2_vnni, "avx2_vnni"}, {isa::avx2, "avx2"}, {isa::avx, "avx"}, {isa::sse41, "sse41"}};
  for (const auto& [i, name] : names)
    if (cpu_isa_has(i)) return name;
  return "none";
}

namespace {

using dnnl::memory;
using dnnl::primitive;
using tag = memory::format_tag;
using dt = memory::data_type;
using graph::Graph;
using graph::Node;

// One thing forward() or backward() executes: a primitive and its arguments, or our
// own loop.
struct Step {
  primitive prim;
  // The arguments as the C API's dnnl_primitive_execute takes them, built once: the
  // C++ primitive::execute(stream, unordered_map) builds a new vector at every call.
  // `held` keeps the memories they point to alive.
  std::vector<dnnl_exec_arg_t> args;
  std::vector<memory> held;
  std::function<void()> fn;  // our own loop when no primitive fits
  int node = -1;             // the graph node it belongs to; -1 for the graph's edges
  const char* kind = "loop";
  std::string impl = "incres";
  double seconds = 0;  // while profiling
  int64_t calls = 0;

  void add_arg(int arg, const memory& m) {
    args.push_back({arg, m.get()});
    held.push_back(m);
  }
};

// Our own loop, with every memory it reads or writes (the memory plan sees a step's
// buffers through `held`).
Step loop(std::initializer_list<memory> uses, std::function<void()> fn) {
  Step s;
  s.fn = std::move(fn);
  s.held.assign(uses.begin(), uses.end());
  return s;
}

// Buffers whose size is known only after every primitive exists (scratchpad, the
// gradient temporary): memories are created without a handle, then bound at the end.
struct SharedBuffer {
  std::vector<memory> users;
  size_t bytes = 0;
  Tensor storage;
  memory make(const memory::desc& md, const dnnl::engine& eng) {
    memory m(md, eng, DNNL_MEMORY_NONE);
    bytes = std::max(bytes, md.get_size());
    users.push_back(m);
    return m;
  }
  void bind() {
    storage = Tensor(Shape{static_cast<int64_t>(std::max<size_t>(bytes, 1))}, DType::u8);
    for (memory& m : users) m.set_data_handle(storage.raw());
  }
};

// The channel block of the activation layouts of a graph: the widest whose jit
// kernels this CPU has (nChw16c with AVX-512, nChw8c with AVX2), narrowed to 8 when
// some value's channel count is not a multiple of 16 (narrow nets: Inception at width
// 0.25 has 72 or 40 channels). oneDNN 2.6 has no jit kernel for a conv that mixes a
// plain nchw side with a blocked one, nor one that mixes nChw8c with nChw16c, so a
// graph keeps one block throughout; its AVX2 kernels run nChw8c on AVX-512 CPUs too.
// The graph's input (1 or 3 channels) stays nchw: every ISA has first-conv kernels
// for that. A value whose channel count fits no block of 8 is nchw.
int64_t cpu_block() {
  static const int64_t block = cpu_isa_has(dnnl::cpu_isa::avx512_core) ? 16 : 8;
  return block;
}

int64_t channel_block(const Graph& g) {
  int64_t block = cpu_block();
  for (size_t v = 0; v < g.values.size(); ++v) {
    const Shape& s = g.values[v].shape;
    if (static_cast<int>(v) != g.input && s.rank() == 3 && s[0] % block != 0 && s[0] % 8 == 0) block = 8;
  }
  return block;
}

tag blocked_tag(int64_t block) { return block == 16 ? tag::nChw16c : tag::nChw8c; }

// The format tag of one of our 4D values (nchw, nChw8c or nChw16c), for a desc of
// other dims in the same layout.
tag layout_of(const memory::desc& md) {
  for (tag t : {tag::nChw16c, tag::nChw8c})
    if (md == memory::desc(md.dims(), dt::f32, t)) return t;
  return tag::nchw;
}

memory::dims dims_of(const Shape& s, int64_t batch) {
  memory::dims d{batch};
  for (int64_t x : s.dims()) d.push_back(x);
  return d;
}

class CpuProgram final : public Program {
 public:
  CpuProgram(const Graph& g, graph::ParamStore& store, Options opt);

  void forward(const float* x) override;
  int num_outputs() const override { return static_cast<int>(outputs_.size()); }
  const float* input_grad() const override;
  void set_step(int64_t step) override { step_ = step; }
  int64_t planned_bytes() const override;
  MemoryPlan memory_plan() const override;
  std::string backend_name() const override { return "cpu"; }
  void set_profiling(bool on) override { profiling_ = on; }
  std::vector<StepProfile> steps() const override;

 private:
  const float* output_impl(int i) const override;
  void backward_impl(const float* dy, std::span<const float* const> aux_dy) override;
  bool training() const { return opt_.mode == Mode::train; }
  bool is_output(int v) const { return std::find(outputs_.begin(), outputs_.end(), v) != outputs_.end(); }
  void run(Step& s);
  memory alloc(const memory::desc& md);
  memory param(int param_id, bool grad);
  dnnl::primitive_attr attr() const;
  void add_scratch(Step& s, const memory::desc& scratch_md);
  template <class PD>
  Step step(const PD& pd, const std::unordered_map<int, memory>& args) {
    Step s;
    s.prim = primitive(pd.get());
    s.kind = dnnl_prim_kind2str(static_cast<dnnl_primitive_kind_t>(s.prim.get_kind()));
    s.impl = pd.impl_info_str();
    for (const auto& [arg, m] : args) s.add_arg(arg, m);
    add_scratch(s, pd.scratchpad_desc());
    return s;
  }
  // Reorder (or copy) `from` into a new memory of layout md, unless equal.
  memory converted(std::vector<Step>& steps, const memory& from, const memory::desc& md);

  // Where node `node` writes its contribution to the gradient of its input `slot`:
  // d(value) itself for the first contributor in backward order, else the temporary;
  // `finish` adds the latter. The first contributor is the value's last consumer, at
  // the first slot reading it (add(x, x) reads x twice). backward() seeds the outputs'
  // gradients itself, so a consumer of an output always adds.
  bool first_contribution(int node, size_t slot) const;
  memory contribution(int node, size_t slot);
  void finish_contribution(std::vector<Step>& steps, int node, size_t slot, const memory& written);
  // d(input slot) (= or +=) scale * from, for ops whose input gradient is a multiple of
  // another gradient (add, concat's aligned slices take `from` as a submemory view).
  void add_scaled(std::vector<Step>& steps, int node, size_t slot, const memory& from, float scale);

  template <class T>
  bool holds(int node) const { return node >= 0 && std::holds_alternative<T>(g_.nodes[node].op); }

  void compile_conv(const Node& n, const graph::Conv2d& c);
  void compile_conv_infer(const Node& n, const graph::Conv2d& c);
  // A conv that runs as Winograd (backend/cpu/winograd.h): its geometry, the line
  // transform for 1 x r / r x 1 kernels, the products and tiles it takes.
  struct WinogradPlan {
    winograd::Geometry g;
    std::optional<winograd::Line> line;
    int64_t points() const { return line ? line->f.alpha : winograd::kPoints; }
    int64_t tiles() const { return line ? line->tiles() : g.tiles(); }
  };
  std::optional<WinogradPlan> winograd_plan(const Node& n, const graph::Conv2d& c) const;
  void compile_conv_winograd(const Node& n, const graph::Conv2d& c, const WinogradPlan& plan);
  // An inference conv's weights and bias in plain layout (K x C x R x S, K): the BN
  // after it folded in by a prepare step, into a buffer of its own (`keep`) or the
  // shared one a later prepare step reads; else the parameters themselves (no bias:
  // a null memory).
  std::pair<memory, memory> plain_weights(const Node& n, const graph::Conv2d& c, bool keep);
  void compile_batchnorm(const Node& n, const graph::BatchNorm& bn);
  void compile_eltwise(const Node& n, dnnl::algorithm use_dst_algo);
  void compile_add(const Node& n, const graph::Add& a);
  void compile_shortcut_a(const Node& n, const graph::ShortcutA& s);
  void compile_avgpool(const Node& n);
  void compile_linear(const Node& n, const graph::Linear& l);
  void compile_pool(const Node& n, const graph::Pool2d& p);
  void compile_concat(const Node& n);
  void compile_dropout(const Node& n, const graph::Dropout& d);
  void compile_mul(const Node& n);
  void compile_scale_shift(const Node& n, const graph::ScaleShift& s);

  const Graph g_;  // a copy: the program stays valid when the caller's graph goes away
  graph::ParamStore& store_;
  Options opt_;
  std::vector<int> outputs_;        // the value of each output (outputs.h)
  std::vector<bool> live_;          // per node: run by this program
  std::vector<int> last_consumer_;  // per value: its last live consumer, or -1
  dnnl::engine eng_{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm_{eng_};

  int64_t block_ = 8;                 // the channel block of blocked values (channel_block)
  std::vector<memory::desc> md_;      // per value
  std::vector<memory> act_, grad_;    // per value
  graph::FusionPlan plan_;            // what runs fused, and in which buffers (graph/passes/fusion.h)
  // The memory plan: every buffer we allocate, with the memories that point into it.
  struct Buffer {
    Block block;
    bool pinned = false;  // live from the first step to the last, and between calls
    std::vector<memory> users;
  };
  std::vector<Buffer> bufs_;
  std::unordered_map<dnnl_memory_t, int> buf_of_;
  Tensor arena_;
  size_t live_peak_ = 0, unplanned_ = 0;
  memory view(const memory& base, const memory::desc& md);  // another memory on base's buffer
  void plan();
  std::vector<std::vector<Step>> node_fwd_, node_bwd_;
  std::vector<Step> prep_, fwd_, bwd_;
  uint64_t prepared_version_ = ~uint64_t{0};  // the store version prep_ last ran at
  bool profiling_ = false;
  bool forwarded_ = false;  // a forward() ran since the last backward()
  SharedBuffer scratch_, tmp_, fold_;
  memory in_plain_, din_plain_;
  // Per output computed (all in training, output 0 in inference): its plain NCHW copy
  // and, in training, a view of the caller's gradient and the reorder seeding d(value).
  struct Output {
    memory y, dy;
    Step seed;
  };
  std::vector<Output> out_;
  int64_t step_ = 0;        // the step the next train-mode forward draws dropout masks with
  int64_t drawn_step_ = 0;  // the step of the last one, which backward uses
};

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
  for (int t = 0; t < F; ++t) for (const memory& m : fwd_[t].held) touch(m, t);
  for (size_t i = 0; i < out_.size(); ++i) {
    pin(out_[i].y);
    for (const memory& m : out_[i].seed.held) touch(m, F);
    if (training()) touch(grad_[outputs_[i]], F);
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

bool CpuProgram::first_contribution(int node, size_t slot) const {
  const std::vector<int>& inputs = g_.nodes[node].inputs;
  const int v = inputs[slot];
  return !is_output(v) && last_consumer_[v] == node &&
         std::find(inputs.begin(), inputs.end(), v) == inputs.begin() + static_cast<std::ptrdiff_t>(slot);
}

memory CpuProgram::contribution(int node, size_t slot) {
  const int v = g_.nodes[node].inputs[slot];
  return first_contribution(node, slot) ? grad_[v] : tmp_.make(md_[v], eng_);
}

void CpuProgram::finish_contribution(std::vector<Step>& steps, int node, size_t slot, const memory& t) {
  if (first_contribution(node, slot)) return;
  const int v = g_.nodes[node].inputs[slot];
  dnnl::binary::desc d(dnnl::algorithm::binary_add, md_[v], md_[v], md_[v]);
  dnnl::binary::primitive_desc pd(d, attr(), eng_);
  steps.push_back(step(pd, {{DNNL_ARG_SRC_0, grad_[v]}, {DNNL_ARG_SRC_1, t}, {DNNL_ARG_DST, grad_[v]}}));
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
  dnnl::reorder::primitive_desc pd(eng_, from.get_desc(), eng_, md_[v], a);
  steps.push_back(step(pd, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, grad_[v]}}));
}

CpuProgram::CpuProgram(const Graph& g, graph::ParamStore& store, Options opt)
    : g_(g), store_(store), opt_(opt) {
  INCRES_CHECK(opt.batch > 0, "batch size must be positive, got ", opt.batch);
  const size_t V = g_.values.size(), Nn = g_.nodes.size();
  outputs_ = output_values(g_);
  live_ = live_nodes(g_, opt.mode);
  last_consumer_.assign(V, -1);
  for (size_t i = 0; i < Nn; ++i)
    if (live_[i])
      for (int v : g_.nodes[i].inputs) last_consumer_[v] = static_cast<int>(i);

  // 1. Layouts, for the values the live nodes read and write.
  md_.resize(V);
  act_.resize(V);
  grad_.resize(V);
  block_ = channel_block(g_);
  const int64_t blk = block_;
  for (size_t v = 0; v < V; ++v) {
    const Shape& s = g_.values[v].shape;
    memory::dims d = dims_of(s, opt.batch);
    tag t = s.rank() == 1 ? tag::nc : (s[0] % blk == 0 ? blocked_tag(blk) : tag::nchw);
    INCRES_CHECK(s.rank() == 1 || s.rank() == 3, "cpu backend: value ", v, " has unsupported shape ", s.str());
    md_[v] = memory::desc(d, dt::f32, t);
  }

  // 2. Fusion decisions: the planning pass every backend shares.
  plan_ = graph::plan_fusion(g_, live_, outputs_, training());

  // 3. Buffers.
  for (size_t v = 0; v < V; ++v) {
    const graph::Value& val = g_.values[v];
    bool needed = static_cast<int>(v) == g_.input || (val.producer >= 0 && live_[val.producer]);
    if (plan_.values[v].hidden || !needed) continue;
    bool needs_grad = training() && (static_cast<int>(v) != g_.input || opt.input_grad);
    if (const int alias = plan_.values[v].alias; alias >= 0) {
      act_[v] = view(act_[alias], md_[v]);
      if (needs_grad) grad_[v] = view(grad_[alias], md_[v]);
    } else {
      act_[v] = alloc(md_[v]);
      if (needs_grad) grad_[v] = alloc(md_[v]);
    }
  }
  // A fused BN writes straight into its ReLU's output.
  for (size_t i = 0; i < Nn; ++i) {
    const int relu = plan_.nodes[i].fused_relu;
    if (relu < 0) continue;
    int bn_out = g_.nodes[i].output, relu_out = g_.nodes[relu].output;
    act_[bn_out] = act_[relu_out];
    grad_[bn_out] = grad_[relu_out];
  }

  // 4. Primitives, node by node.
  node_fwd_.resize(Nn);
  node_bwd_.resize(Nn);
  for (size_t i = 0; i < Nn; ++i) {
    const Node& n = g_.nodes[i];
    if (!live_[i] || plan_.nodes[i].skip || std::holds_alternative<graph::Input>(n.op)) continue;
    const size_t prep_before = prep_.size();
    std::visit([&](const auto& op) {
      using T = std::decay_t<decltype(op)>;
      if constexpr (std::is_same_v<T, graph::Conv2d>) compile_conv(n, op);
      else if constexpr (std::is_same_v<T, graph::BatchNorm>) compile_batchnorm(n, op);
      else if constexpr (std::is_same_v<T, graph::Relu>) compile_eltwise(n, dnnl::algorithm::eltwise_relu_use_dst_for_bwd);
      else if constexpr (std::is_same_v<T, graph::Add>) compile_add(n, op);
      else if constexpr (std::is_same_v<T, graph::ShortcutA>) compile_shortcut_a(n, op);
      else if constexpr (std::is_same_v<T, graph::GlobalAvgPool>) compile_avgpool(n);
      else if constexpr (std::is_same_v<T, graph::Linear>) compile_linear(n, op);
      else if constexpr (std::is_same_v<T, graph::Pool2d>) compile_pool(n, op);
      else if constexpr (std::is_same_v<T, graph::Concat>) compile_concat(n);
      else if constexpr (std::is_same_v<T, graph::Dropout>) compile_dropout(n, op);
      else if constexpr (std::is_same_v<T, graph::Sigmoid>) compile_eltwise(n, dnnl::algorithm::eltwise_logistic_use_dst_for_bwd);
      else if constexpr (std::is_same_v<T, graph::Mul>) compile_mul(n);
      else if constexpr (std::is_same_v<T, graph::ScaleShift>) compile_scale_shift(n, op);
      else static_assert(std::is_same_v<T, graph::Input>, "an op without a cpu implementation");
    }, n.op);
    for (auto* list : {&node_fwd_[i], &node_bwd_[i]})
      for (Step& st : *list) st.node = static_cast<int>(i);
    for (size_t k = prep_before; k < prep_.size(); ++k) prep_[k].node = static_cast<int>(i);
  }

  // 5. The graph's edges: plain NCHW in and out, reorders only here.
  auto plain = [](const memory::desc& md) {
    return memory::desc(md.dims(), dt::f32, md.dims().size() == 2 ? tag::nc : tag::nchw);
  };
  const int in = g_.input;
  in_plain_ = memory(plain(md_[in]), eng_, DNNL_MEMORY_NONE);
  {
    dnnl::reorder::primitive_desc pd(eng_, plain(md_[in]), eng_, md_[in], attr());
    fwd_.push_back(step(pd, {{DNNL_ARG_FROM, in_plain_}, {DNNL_ARG_TO, act_[in]}}));
  }
  for (auto& s : node_fwd_) for (auto& st : s) fwd_.push_back(std::move(st));
  for (size_t i = 0; i < (training() ? outputs_.size() : 1); ++i) {
    const int v = outputs_[i];
    const memory::desc md = plain(md_[v]);
    Output o;
    o.y = md == md_[v] ? act_[v] : alloc(md);
    if (o.y != act_[v]) {
      dnnl::reorder::primitive_desc pd(eng_, md_[v], eng_, md, attr());
      fwd_.push_back(step(pd, {{DNNL_ARG_FROM, act_[v]}, {DNNL_ARG_TO, o.y}}));
    }
    if (training()) {
      o.dy = memory(md, eng_, DNNL_MEMORY_NONE);
      dnnl::reorder::primitive_desc pd(eng_, md, eng_, md_[v], attr());
      o.seed = step(pd, {{DNNL_ARG_FROM, o.dy}, {DNNL_ARG_TO, grad_[v]}});
    }
    out_.push_back(std::move(o));
  }
  if (training()) {
    for (size_t i = Nn; i-- > 0;) for (auto& st : node_bwd_[i]) bwd_.push_back(std::move(st));
    if (opt.input_grad) {
      din_plain_ = alloc(plain(md_[in]));
      dnnl::reorder::primitive_desc rpd(eng_, md_[in], eng_, plain(md_[in]), attr());
      bwd_.push_back(step(rpd, {{DNNL_ARG_FROM, grad_[in]}, {DNNL_ARG_TO, din_plain_}}));
    }
  }
  node_fwd_.clear();
  node_bwd_.clear();
  plan();
  scratch_.bind();
  tmp_.bind();
  fold_.bind();
}

// A conv's strides and paddings as oneDNN takes them, from its input and output dims.
struct ConvGeometry {
  memory::dims strides, pad_l, pad_r;
  ConvGeometry(const graph::Conv2d& c, const memory::dims& xd, const memory::dims& yd)
      : strides{c.stride, c.stride},
        pad_l{c.pad_h, c.pad_w},
        // oneDNN wants both paddings; PyTorch's output size floor((H + 2p - R) / s) + 1
        // can leave the right/bottom padding smaller than the left/top one.
        pad_r{(yd[2] - 1) * c.stride + c.R - xd[2] - c.pad_h, (yd[3] - 1) * c.stride + c.S - xd[3] - c.pad_w} {}
};

void CpuProgram::compile_conv(const Node& n, const graph::Conv2d& c) {
  if (!training()) return compile_conv_infer(n, c);
  const int x = n.inputs[0], y = n.output;
  const int64_t K = c.K, C = md_[x].dims()[1];
  const auto [strides, pad_l, pad_r] = ConvGeometry(c, md_[x].dims(), md_[y].dims());
  memory::desc w_any({K, C, c.R, c.S}, dt::f32, tag::any);
  memory::desc b_md({K}, dt::f32, tag::a);
  const auto algo = dnnl::algorithm::convolution_direct;
  const auto pk = training() ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  auto fd = c.bias ? dnnl::convolution_forward::desc(pk, algo, md_[x], w_any, b_md, md_[y], strides, pad_l, pad_r)
                   : dnnl::convolution_forward::desc(pk, algo, md_[x], w_any, md_[y], strides, pad_l, pad_r);
  dnnl::convolution_forward::primitive_desc fpd(fd, attr(), eng_);
  auto& fs = node_fwd_[&n - g_.nodes.data()];
  auto& bs = node_bwd_[&n - g_.nodes.data()];
  const int w_id = n.params[0];
  memory w_user = param(w_id, false);
  memory w = converted(fs, w_user, fpd.weights_desc());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, act_[y]}};
  if (c.bias) args[DNNL_ARG_BIAS] = param(n.params[1], false);
  fs.push_back(step(fpd, std::move(args)));
  if (!training()) return;

  const int node = static_cast<int>(&n - g_.nodes.data());
  if (grad_[x]) {  // d(input): not needed for the graph's input
    // A strided conv whose last window ends before the map does (Inception's stride-2
    // 3x3 on an even grid: 16 -> 7 reads rows 0-14) has a negative right padding, for
    // which oneDNN 2.6 has only its reference backward-data loop. Its unread rows and
    // columns get no gradient: backward-data runs on the map without them, into a
    // buffer of its own, copied into d(input) with zeros around.
    memory::dims xd = md_[x].dims(), crop_r = pad_r;
    for (int i : {0, 1}) xd[2 + i] += std::min<int64_t>(pad_r[i], 0), crop_r[i] = std::max<int64_t>(pad_r[i], 0);
    const bool crop = xd != md_[x].dims();
    const memory::desc dx_md = crop ? memory::desc(xd, dt::f32, layout_of(md_[x])) : md_[x];
    dnnl::convolution_backward_data::desc bd(algo, dx_md, w_any, md_[y], strides, pad_l, crop_r);
    dnnl::convolution_backward_data::primitive_desc bpd(bd, attr(), eng_, fpd);
    // The weights were reordered for the forward pass; backward-data reuses them
    // when it wants the same layout, else reorders the user weights once more.
    memory wb = bpd.weights_desc() == w.get_desc() ? w : converted(bs, w_user, bpd.weights_desc());
    memory dx = crop ? alloc(dx_md) : contribution(node, 0);
    bs.push_back(step(bpd, {{DNNL_ARG_DIFF_DST, grad_[y]}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DIFF_SRC, dx}}));
    if (!crop) {
      finish_contribution(bs, node, 0, dx);
    } else {
      const bool first = first_contribution(node, 0);
      memory full = grad_[x];
      if (first) {
        const size_t bytes = md_[x].get_size();
        bs.push_back(loop({full}, [=]() { std::memset(full.get_data_handle(), 0, bytes); }));
      }
      dnnl::primitive_attr a = attr();
      if (!first) {
        dnnl::post_ops po;
        po.append_sum(1.f);
        a.set_post_ops(po);
      }
      memory part = view(full, md_[x].submemory_desc(xd, {0, 0, 0, 0}));
      dnnl::reorder::primitive_desc rpd(eng_, dx_md, eng_, part.get_desc(), a);
      bs.push_back(step(rpd, {{DNNL_ARG_FROM, dx}, {DNNL_ARG_TO, part}}));
    }
  }
  // Backward-weights chooses its own source layout: with a few input channels (the
  // first conv) the jit kernels want a layout other than the plain nchw the forward
  // pass reads, and the plain one would fall back to oneDNN's slow reference code.
  auto weights_pd = [&](const memory::desc& src_md, const memory::desc& dy_md) {
    auto wd = c.bias ? dnnl::convolution_backward_weights::desc(algo, src_md, w_any, b_md, dy_md, strides, pad_l, pad_r)
                     : dnnl::convolution_backward_weights::desc(algo, src_md, w_any, dy_md, strides, pad_l, pad_r);
    return dnnl::convolution_backward_weights::primitive_desc(wd, attr(), eng_, fpd);
  };
  auto wpd = weights_pd(memory::desc(md_[x].dims(), dt::f32, tag::any), md_[y]);
  // Where the padding is as large as the map (Inception's 7x1 and 3x3 convs on the
  // 3x3 and 1x1 grids of small inputs) oneDNN 2.6 has no jit backward-weights kernel
  // on blocked layouts and falls back to its reference loop; its gemm kernel on nhwc
  // does the same work much faster (inception_v3 training at 75x75, batch 16: 8.5 ->
  // 141-171 images/s).
  // The source and d(output) are small there: reorder them for it.
  if (std::string(wpd.impl_info_str()).find("ref") != std::string::npos) {
    auto gemm = weights_pd(memory::desc(md_[x].dims(), dt::f32, tag::nhwc), memory::desc(md_[y].dims(), dt::f32, tag::nhwc));
    if (std::string(gemm.impl_info_str()).find("ref") == std::string::npos) wpd = gemm;
  }
  memory src = converted(bs, act_[x], wpd.src_desc());
  memory dy = converted(bs, grad_[y], wpd.diff_dst_desc());
  memory dw_user = param(w_id, true);
  memory dw = wpd.diff_weights_desc() == dw_user.get_desc() ? dw_user : alloc(wpd.diff_weights_desc());
  std::unordered_map<int, memory> wargs{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
  if (c.bias) wargs[DNNL_ARG_DIFF_BIAS] = param(n.params[1], true);
  bs.push_back(step(wpd, std::move(wargs)));
  if (dw != dw_user) {
    dnnl::reorder::primitive_desc rpd(eng_, dw.get_desc(), eng_, dw_user.get_desc(), attr());
    bs.push_back(step(rpd, {{DNNL_ARG_FROM, dw}, {DNNL_ARG_TO, dw_user}}));
  }
}

std::pair<memory, memory> CpuProgram::plain_weights(const Node& n, const graph::Conv2d& c, bool keep) {
  const graph::ConvChain& ch = plan_.nodes[&n - g_.nodes.data()].chain;
  memory w_user = param(n.params[0], false), b_user = c.bias ? param(n.params[1], false) : memory();
  if (ch.bn < 0 && ch.conv_scale == 1.f) return {w_user, b_user};
  memory folded = keep ? alloc(w_user.get_desc()) : fold_.make(w_user.get_desc(), eng_);
  memory b = ch.bn >= 0 || c.bias ? alloc(memory::desc({c.K}, dt::f32, tag::a)) : memory();
  std::vector<memory> bn;  // gamma, beta, mean, var
  float eps = 0.f;
  if (ch.bn >= 0) {
    const Node& bn_node = g_.nodes[ch.bn];
    eps = std::get<graph::BatchNorm>(bn_node.op).eps;
    for (int i = 0; i < 4; ++i) bn.push_back(param(bn_node.params[i], false));
  }
  const int64_t K = c.K, per_k = w_user.get_desc().dims()[1] * c.R * c.S;
  const float scale = ch.conv_scale;
  auto f = [](const memory& m) { return m ? static_cast<float*>(m.get_data_handle()) : nullptr; };
  prep_.push_back(loop({folded, b}, [=]() {
    const float* stats[4] = {};
    for (size_t i = 0; i < bn.size(); ++i) stats[i] = f(bn[i]);
    kernels::fold_conv(f(folded), f(b), f(w_user), f(b_user), bn.empty() ? nullptr : stats, eps, scale, K, per_k);
  }));
  return {folded, b};
}

// Winograd where it beats oneDNN's direct conv (bench/winograd, batch 1 and 16): 3x3
// convs as F(4x4, 3x3), 1x3 / 3x1 as F(4, 3) along their axis, 1x7 / 7x1 as F(4, 7);
// stride 1, blocked layouts in and out, at least 16 output tiles, and enough input
// channels: 64 on AVX2, 32 on AVX-512.
//  - AVX2 (nChw8c): 1.5-3.5x (3x3), 1.5-2.6x (1x3), 1.4-2x (1x7); with 32 channels
//    the transforms, bound by memory, cost as much as the products (Inception-v3's
//    Conv2d_2a / 2b: 0.9-1.3x, varying from run to run).
//  - AVX-512 (nChw16c, 16-lane transforms): 1.4-4.2x (3x3), 1.4-1.6x (1x3),
//    1.1-1.7x (1x7) at batch 16; the 32-channel Conv2d_2a / 2b 1.2-1.6x at batch 16
//    and 1.5-2x at batch 1 (two runs on a Xeon with AVX512-BF16, 2 threads).
// With fewer than 16 tiles (ResNet-50's 7x7 grid or Inception's 8x8 at batch 1) the
// products are too thin to pay for reading 4x the weights (0.3-0.6x there).
std::optional<CpuProgram::WinogradPlan> CpuProgram::winograd_plan(const Node& n, const graph::Conv2d& c) const {
  const bool square = c.R == 3 && c.S == 3;
  const bool line = (c.R == 1 && (c.S == 3 || c.S == 7)) || (c.S == 1 && (c.R == 3 || c.R == 7));
  if (!opt_.winograd || !(square || line) || c.stride != 1) return std::nullopt;
  const int x = n.inputs[0], y = plan_.nodes[&n - g_.nodes.data()].chain.out;
  const int64_t block = block_;
  const tag t = blocked_tag(block);
  if (md_[x] != memory::desc(md_[x].dims(), dt::f32, t) || md_[y] != memory::desc(md_[y].dims(), dt::f32, t))
    return std::nullopt;
  const memory::dims xd = md_[x].dims(), yd = md_[y].dims();
  WinogradPlan plan;
  plan.g = winograd::Geometry{opt_.batch, xd[1], yd[1], xd[2], xd[3], yd[2], yd[3], c.pad_h, c.pad_w, block};
  if (line) {
    const int r = std::max(c.R, c.S);
    plan.line = winograd::Line{plan.g, winograd::filter_1d(4, r), c.S > 1};
  }
  const int64_t min_channels = block == 16 ? 32 : 64;
  if (xd[1] < min_channels || plan.tiles() < 16) return std::nullopt;
  return plan;
}

void CpuProgram::compile_conv_winograd(const Node& n, const graph::Conv2d& c, const WinogradPlan& plan) {
  namespace wg = winograd;
  const int node = static_cast<int>(&n - g_.nodes.data());
  const graph::ConvChain& ch = plan_.nodes[node].chain;
  const int x = n.inputs[0], y = ch.out;
  const wg::Geometry& g = plan.g;
  const std::optional<wg::Line>& line = plan.line;
  const int64_t C = g.C, K = g.K, points = plan.points(), tiles = plan.tiles();
  // Tiles go through in chunks whose transformed input and output (points x chunk x
  // (C + K) floats) take ~6 MB: the sizes bench/winograd found fastest, at least 64
  // tiles (fewer make the products thin), split evenly (a short last chunk costs a
  // full one).
  const int64_t want = std::max<int64_t>(64, (6 << 20) / (points * (C + K) * 4));
  const int64_t pieces = (tiles + want - 1) / want, chunk = (tiles + pieces - 1) / pieces;

  // Blocked values have whole blocks of channels (the layout rule above), so C and K
  // need no padding here and the bias is read as it is.
  auto [w, b] = plain_weights(n, c, false);
  memory u = alloc(memory::desc({points, C, K}, dt::f32, tag::abc));
  auto f = [](const memory& m) { return static_cast<float*>(m.get_data_handle()); };
  prep_.push_back(loop({u}, [=]() {
    if (line) wg::transform_weights(*line, f(w), K, C, f(u));
    else wg::transform_weights(g, f(w), K, C, f(u));
  }));

  memory v = alloc(memory::desc({points, chunk, C}, dt::f32, tag::abc));
  memory m = alloc(memory::desc({points, chunk, K}, dt::f32, tag::abc));
  dnnl::matmul::primitive_desc mpd(dnnl::matmul::desc(v.get_desc(), u.get_desc(), m.get_desc()), attr(), eng_);
  Step mm = step(mpd, {{DNNL_ARG_SRC, v}, {DNNL_ARG_WEIGHTS, u}, {DNNL_ARG_DST, m}});
  wg::Epilogue e;
  e.relu = ch.relu >= 0;
  e.scale = 1.f;  // in the weights (plain_weights)
  e.sum = ch.sum_scale;
  e.post_relu = ch.post_relu >= 0;
  const memory src = act_[x], dst = act_[y];
  Step s = loop({src, dst, v, m, u}, [=, this]() mutable {
    e.bias = b ? f(b) : nullptr;  // bound by plan()
    for (int64_t first = 0; first < tiles; first += chunk) {
      const int64_t count = std::min(chunk, tiles - first);
      if (line) wg::transform_input(*line, f(src), first, count, chunk, f(v));
      else wg::transform_input(g, f(src), first, count, chunk, f(v));
      run(mm);
      if (line) wg::transform_output(*line, f(m), first, count, chunk, e, f(dst));
      else wg::transform_output(g, f(m), first, count, chunk, e, f(dst));
    }
  });
  s.kind = "winograd";
  s.impl = std::string(line ? "F(4," + std::to_string(line->f.r) + ")" : "F(4x4,3x3)") + ":avx2+" + mm.impl;
  for (const memory& h : mm.held) s.held.push_back(h);
  node_fwd_[node].push_back(std::move(s));
}

void CpuProgram::compile_conv_infer(const Node& n, const graph::Conv2d& c) {
  if (auto plan = winograd_plan(n, c)) return compile_conv_winograd(n, c, *plan);
  const int node = static_cast<int>(&n - g_.nodes.data());
  const graph::ConvChain& ch = plan_.nodes[node].chain;
  const int x = n.inputs[0], y = ch.out;
  const int64_t K = c.K, C = md_[x].dims()[1];
  const auto [strides, pad_l, pad_r] = ConvGeometry(c, md_[x].dims(), md_[y].dims());
  const bool bias = c.bias || ch.bn >= 0;
  memory::desc w_any({K, C, c.R, c.S}, dt::f32, tag::any);
  memory::desc b_md({K}, dt::f32, tag::a);
  dnnl::post_ops po;
  const auto relu = dnnl::algorithm::eltwise_relu;
  if (ch.relu >= 0) po.append_eltwise(1.f, relu, 0.f, 0.f);
  // The other input of the add is already in the destination; the conv's own scale is
  // in its weights (plain_weights: oneDNN 2.6 has no jit kernel for a linear post-op
  // before a sum, only its reference loop).
  if (ch.add >= 0) po.append_sum(ch.sum_scale);
  if (ch.post_relu >= 0) po.append_eltwise(1.f, relu, 0.f, 0.f);
  dnnl::primitive_attr a = attr();
  a.set_post_ops(po);
  const auto algo = dnnl::algorithm::convolution_direct;
  const auto pk = dnnl::prop_kind::forward_inference;
  auto fd = bias ? dnnl::convolution_forward::desc(pk, algo, md_[x], w_any, b_md, md_[y], strides, pad_l, pad_r)
                 : dnnl::convolution_forward::desc(pk, algo, md_[x], w_any, md_[y], strides, pad_l, pad_r);
  dnnl::convolution_forward::primitive_desc fpd(fd, a, eng_);

  // The weights the conv reads, prepared when the store changes: folded with the BN
  // and/or reordered to the conv's layout.
  const memory::desc w_plain = param(n.params[0], false).get_desc();
  auto [w, b] = plain_weights(n, c, fpd.weights_desc() == w_plain);
  if (fpd.weights_desc() != w_plain) {
    memory from = w;
    w = alloc(fpd.weights_desc());
    dnnl::reorder::primitive_desc rpd(eng_, from.get_desc(), eng_, w.get_desc(), attr());
    prep_.push_back(step(rpd, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, w}}));
  }
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, act_[y]}};
  if (bias) args[DNNL_ARG_BIAS] = b;
  node_fwd_[node].push_back(step(fpd, std::move(args)));
}

void CpuProgram::compile_batchnorm(const Node& n, const graph::BatchNorm& bn) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int x = n.inputs[0], y = n.output;
  auto& fs = node_fwd_[node];
  auto& bs = node_bwd_[node];
  const bool fuse = plan_.nodes[node].fused_relu >= 0;
  using nf = dnnl::normalization_flags;
  nf flags = nf::use_scale | nf::use_shift;
  if (fuse) flags = flags | nf::fuse_norm_relu;
  memory gamma = param(n.params[0], false), beta = param(n.params[1], false);
  memory rmean = param(n.params[2], false), rvar = param(n.params[3], false);

  if (!training()) {
    dnnl::batch_normalization_forward::desc d(dnnl::prop_kind::forward_inference, md_[x], bn.eps,
                                              flags | nf::use_global_stats);
    dnnl::batch_normalization_forward::primitive_desc pd(d, attr(), eng_);
    fs.push_back(step(pd, {{DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_DST, act_[y]}, {DNNL_ARG_SCALE, gamma},
                           {DNNL_ARG_SHIFT, beta}, {DNNL_ARG_MEAN, rmean}, {DNNL_ARG_VARIANCE, rvar}}));
    return;
  }
  dnnl::batch_normalization_forward::desc d(dnnl::prop_kind::forward_training, md_[x], bn.eps, flags);
  dnnl::batch_normalization_forward::primitive_desc pd(d, attr(), eng_);
  memory mean = alloc(pd.mean_desc()), var = alloc(pd.variance_desc());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_DST, act_[y]}, {DNNL_ARG_SCALE, gamma},
                                       {DNNL_ARG_SHIFT, beta}, {DNNL_ARG_MEAN, mean}, {DNNL_ARG_VARIANCE, var}};
  memory ws;
  if (fuse) args[DNNL_ARG_WORKSPACE] = ws = alloc(pd.workspace_desc());
  fs.push_back(step(pd, std::move(args)));
  // Running statistics as PyTorch keeps them: the variance is the unbiased one.
  const auto& xd = md_[x].dims();
  const int64_t C = xd[1], count = xd[0] * (xd.size() == 4 ? xd[2] * xd[3] : 1);
  const float m = bn.momentum, unbias = count > 1 ? float(count) / float(count - 1) : 1.f;
  fs.push_back(loop({mean, var}, [=]() mutable {
    kernels::update_running_stats(static_cast<float*>(rmean.get_data_handle()),
                                  static_cast<float*>(rvar.get_data_handle()),
                                  static_cast<const float*>(mean.get_data_handle()),
                                  static_cast<const float*>(var.get_data_handle()), C, m, unbias);
  }));

  dnnl::batch_normalization_backward::desc bd(dnnl::prop_kind::backward, md_[x], md_[x], bn.eps, flags);
  dnnl::batch_normalization_backward::primitive_desc bpd(bd, attr(), eng_, pd);
  memory dx = contribution(node, 0);
  std::unordered_map<int, memory> bargs{
      {DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_MEAN, mean}, {DNNL_ARG_VARIANCE, var},
      {DNNL_ARG_DIFF_DST, grad_[y]}, {DNNL_ARG_SCALE, gamma}, {DNNL_ARG_SHIFT, beta},
      {DNNL_ARG_DIFF_SRC, dx},
      {DNNL_ARG_DIFF_SCALE, param(n.params[0], true)}, {DNNL_ARG_DIFF_SHIFT, param(n.params[1], true)}};
  if (fuse) bargs[DNNL_ARG_WORKSPACE] = ws;
  bs.push_back(step(bpd, std::move(bargs)));
  finish_contribution(bs, node, 0, dx);
}

void CpuProgram::compile_eltwise(const Node& n, dnnl::algorithm algo) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int x = n.inputs[0], y = n.output;
  // The "use_dst" forms: backward reads the output (ReLU: d(x) = d(y) [y > 0];
  // sigmoid: d(x) = d(y) y (1 - y)), so the op may overwrite its input (ReLUs do).
  const auto pk = training() ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  dnnl::eltwise_forward::desc d(pk, algo, md_[x], 0.f, 0.f);
  dnnl::eltwise_forward::primitive_desc pd(d, attr(), eng_);
  node_fwd_[node].push_back(step(pd, {{DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_DST, act_[y]}}));
  if (!training() || !grad_[x]) return;
  dnnl::eltwise_backward::desc bd(algo, md_[y], md_[y], 0.f, 0.f);
  dnnl::eltwise_backward::primitive_desc bpd(bd, attr(), eng_, pd);
  auto& bs = node_bwd_[node];
  memory dx = contribution(node, 0);
  bs.push_back(step(bpd, {{DNNL_ARG_DST, act_[y]}, {DNNL_ARG_DIFF_DST, grad_[y]}, {DNNL_ARG_DIFF_SRC, dx}}));
  finish_contribution(bs, node, 0, dx);
}

void CpuProgram::compile_add(const Node& n, const graph::Add& add) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int a = n.inputs[0], b = n.inputs[1], y = n.output;
  INCRES_CHECK(md_[a] == md_[b], "cpu backend: add of two layouts at ", n.name);
  // In place on the second input (unscaled): b + a, since oneDNN sums in place onto
  // its first source.
  const int slot = plan_.nodes[node].in_place_slot;
  const int s0 = slot == 1 ? b : a, s1 = slot == 1 ? a : b;
  dnnl::binary::desc d(dnnl::algorithm::binary_add, md_[s0], md_[s1], md_[y]);
  dnnl::primitive_attr at = attr();
  if (add.scale != 1.f) at.set_scales(DNNL_ARG_SRC_1, 0, {add.scale});  // y = a + scale * b
  dnnl::binary::primitive_desc pd(d, at, eng_);
  node_fwd_[node].push_back(step(pd, {{DNNL_ARG_SRC_0, act_[s0]}, {DNNL_ARG_SRC_1, act_[s1]}, {DNNL_ARG_DST, act_[y]}}));
  if (!training()) return;
  // d(a) = d(y), d(b) = scale * d(y): written by a first contributor, added by a later
  // one. The input summed over in place has d(y) as its gradient already.
  if (grad_[a] && slot != 0) add_scaled(node_bwd_[node], node, 0, grad_[y], 1.f);
  if (grad_[b] && slot != 1) add_scaled(node_bwd_[node], node, 1, grad_[y], add.scale);
}

kernels::Blocked blocked(const memory::desc& md) {
  const auto& d = md.dims();
  if (d.size() == 2) return kernels::Blocked{d[0], d[1], 1, 1, 1};  // nc
  const tag t = layout_of(md);  // nchw or nChw{8,16}c (see channel_block)
  const int64_t block = t == tag::nChw16c ? 16 : t == tag::nChw8c ? 8 : 1;
  return kernels::Blocked{d[0], d[1], d[2], d[3], block};
}

void CpuProgram::compile_shortcut_a(const Node& n, const graph::ShortcutA& s) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int x = n.inputs[0], y = n.output;
  auto X = blocked(md_[x]), Y = blocked(md_[y]);
  memory xm = act_[x], ym = act_[y];
  int stride = s.stride;
  node_fwd_[node].push_back(loop({xm, ym}, [=]() {
    kernels::shortcut_a_forward(static_cast<float*>(ym.get_data_handle()), Y,
                                static_cast<const float*>(xm.get_data_handle()), X, stride);
  }));
  if (!training() || !grad_[x]) return;
  memory dx = grad_[x], dy = grad_[y];
  bool accumulate = !first_contribution(node, 0);
  node_bwd_[node].push_back(loop({dx, dy}, [=]() {
    kernels::shortcut_a_backward(static_cast<float*>(dx.get_data_handle()), X,
                                 static_cast<const float*>(dy.get_data_handle()), Y, stride, accumulate);
  }));
}

void CpuProgram::compile_avgpool(const Node& n) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int x = n.inputs[0], y = n.output;
  auto X = blocked(md_[x]);
  memory xm = act_[x], ym = act_[y];
  node_fwd_[node].push_back(loop({xm, ym}, [=]() {
    kernels::avgpool_forward(static_cast<float*>(ym.get_data_handle()),
                             static_cast<const float*>(xm.get_data_handle()), X);
  }));
  if (!training() || !grad_[x]) return;
  memory dx = grad_[x], dy = grad_[y];
  bool accumulate = !first_contribution(node, 0);
  node_bwd_[node].push_back(loop({dx, dy}, [=]() {
    kernels::avgpool_backward(static_cast<float*>(dx.get_data_handle()), X,
                              static_cast<const float*>(dy.get_data_handle()), accumulate);
  }));
}

void CpuProgram::compile_linear(const Node& n, const graph::Linear& l) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int x = n.inputs[0], y = n.output;
  memory w = param(n.params[0], false), b = l.bias ? param(n.params[1], false) : memory();
  const auto pk = training() ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  auto d = l.bias ? dnnl::inner_product_forward::desc(pk, md_[x], w.get_desc(), b.get_desc(), md_[y])
                  : dnnl::inner_product_forward::desc(pk, md_[x], w.get_desc(), md_[y]);
  dnnl::inner_product_forward::primitive_desc pd(d, attr(), eng_);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, act_[y]}};
  if (l.bias) args[DNNL_ARG_BIAS] = b;
  node_fwd_[node].push_back(step(pd, std::move(args)));
  if (!training()) return;
  auto& bs = node_bwd_[node];
  if (grad_[x]) {
    dnnl::inner_product_backward_data::desc bd(md_[x], w.get_desc(), md_[y]);
    dnnl::inner_product_backward_data::primitive_desc bpd(bd, attr(), eng_, pd);
    memory dx = contribution(node, 0);
    bs.push_back(step(bpd, {{DNNL_ARG_DIFF_DST, grad_[y]}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, dx}}));
    finish_contribution(bs, node, 0, dx);
  }
  memory dw = param(n.params[0], true), db = l.bias ? param(n.params[1], true) : memory();
  auto wd = l.bias ? dnnl::inner_product_backward_weights::desc(md_[x], dw.get_desc(), db.get_desc(), md_[y])
                   : dnnl::inner_product_backward_weights::desc(md_[x], dw.get_desc(), md_[y]);
  dnnl::inner_product_backward_weights::primitive_desc wpd(wd, attr(), eng_, pd);
  std::unordered_map<int, memory> wargs{{DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_DIFF_DST, grad_[y]}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
  if (l.bias) wargs[DNNL_ARG_DIFF_BIAS] = db;
  bs.push_back(step(wpd, std::move(wargs)));
}

void CpuProgram::compile_pool(const Node& n, const graph::Pool2d& p) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int x = n.inputs[0], y = n.output;
  const auto& xd = md_[x].dims();
  const auto& yd = md_[y].dims();
  // oneDNN takes both paddings; the right one is whatever gives PyTorch's output size:
  // smaller than the left one in floor mode, larger in ceil mode.
  memory::dims strides{p.stride, p.stride}, kernel{p.kernel, p.kernel}, pad_l{p.pad, p.pad};
  memory::dims pad_r{(yd[2] - 1) * p.stride + p.kernel - xd[2] - p.pad,
                     (yd[3] - 1) * p.stride + p.kernel - xd[3] - p.pad};
  auto& bs = node_bwd_[node];
  // oneDNN's avg_include_padding divides by the whole kernel, PyTorch by the window
  // clipped to [-pad, H + pad): they differ where a ceil-mode window reaches past the
  // padding (right padding > pad), so that case runs our own loop.
  if (p.kind == graph::Pool2d::avg && p.count_include_pad && (pad_r[0] > p.pad || pad_r[1] > p.pad)) {
    auto X = blocked(md_[x]), Y = blocked(md_[y]);
    memory xm = act_[x], ym = act_[y];
    node_fwd_[node].push_back(loop({xm, ym}, [=]() {
      kernels::avg_pool2d_forward(static_cast<float*>(ym.get_data_handle()), Y,
                                  static_cast<const float*>(xm.get_data_handle()), X, p);
    }));
    if (!training() || !grad_[x]) return;
    memory dx = grad_[x], dy = grad_[y];
    bool accumulate = !first_contribution(node, 0);
    bs.push_back(loop({dx, dy}, [=]() {
      kernels::avg_pool2d_backward(static_cast<float*>(dx.get_data_handle()), X,
                                   static_cast<const float*>(dy.get_data_handle()), Y, p, accumulate);
    }));
    return;
  }
  const auto algo = p.kind == graph::Pool2d::max ? dnnl::algorithm::pooling_max
                    : p.count_include_pad        ? dnnl::algorithm::pooling_avg_include_padding
                                                 : dnnl::algorithm::pooling_avg_exclude_padding;
  const auto pk = training() ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  dnnl::pooling_forward::desc d(pk, algo, md_[x], md_[y], strides, kernel, pad_l, pad_r);
  dnnl::pooling_forward::primitive_desc pd(d, attr(), eng_);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_DST, act_[y]}};
  memory ws;  // max pooling in training: where each maximum was, for backward
  if (pd.workspace_desc().get_size() > 0) args[DNNL_ARG_WORKSPACE] = ws = alloc(pd.workspace_desc());
  node_fwd_[node].push_back(step(pd, std::move(args)));
  if (!training() || !grad_[x]) return;
  dnnl::pooling_backward::desc bd(algo, md_[x], md_[y], strides, kernel, pad_l, pad_r);
  dnnl::pooling_backward::primitive_desc bpd(bd, attr(), eng_, pd);
  memory dx = contribution(node, 0);
  std::unordered_map<int, memory> bargs{{DNNL_ARG_DIFF_DST, grad_[y]}, {DNNL_ARG_DIFF_SRC, dx}};
  if (ws) bargs[DNNL_ARG_WORKSPACE] = ws;
  bs.push_back(step(bpd, std::move(bargs)));
  finish_contribution(bs, node, 0, dx);
}

void CpuProgram::compile_concat(const Node& n) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int y = n.output;
  const kernels::Blocked Y = blocked(md_[y]);
  // A channel slice of the output is a oneDNN view (submemory) only when it starts
  // and ends on a block boundary; other slices are copied by our own loop.
  auto aligned = [&](int64_t offset, int64_t C) { return offset % Y.block == 0 && C % Y.block == 0; };
  std::vector<int64_t> offsets;
  bool all_aligned = true;
  for (int64_t offset = 0; int v : n.inputs) {
    offsets.push_back(offset);
    all_aligned = all_aligned && aligned(offset, md_[v].dims()[1]);
    offset += md_[v].dims()[1];
  }
  auto& fs = node_fwd_[node];
  auto& bs = node_bwd_[node];
  if (all_aligned) {
    std::vector<memory::desc> srcs;
    std::unordered_map<int, memory> args{{DNNL_ARG_DST, act_[y]}};
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      srcs.push_back(md_[n.inputs[i]]);
      args[DNNL_ARG_MULTIPLE_SRC + static_cast<int>(i)] = act_[n.inputs[i]];
    }
    dnnl::concat::primitive_desc pd(md_[y], 1, srcs, eng_, attr());
    fs.push_back(step(pd, std::move(args)));
  } else {
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const int v = n.inputs[i];
      const kernels::Blocked X = blocked(md_[v]);
      memory xm = act_[v], ym = act_[y];
      const int64_t offset = offsets[i];
      fs.push_back(loop({xm, ym}, [=]() {
        kernels::copy_channels(static_cast<float*>(ym.get_data_handle()), Y, offset,
                               static_cast<const float*>(xm.get_data_handle()), X, 0, X.C, false);
      }));
    }
  }
  if (!training()) return;
  // Each input's gradient is its slice of d(y).
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    const int v = n.inputs[i];
    if (!grad_[v]) continue;
    const auto& xd = md_[v].dims();
    if (aligned(offsets[i], xd[1])) {
      memory::desc slice = md_[y].submemory_desc(xd, {0, offsets[i], 0, 0});
      add_scaled(bs, node, i, view(grad_[y], slice), 1.f);
      continue;
    }
    const kernels::Blocked X = blocked(md_[v]);
    memory dx = grad_[v], dy = grad_[y];
    const int64_t offset = offsets[i];
    const bool accumulate = !first_contribution(node, i);
    bs.push_back(loop({dx, dy}, [=]() {
      kernels::copy_channels(static_cast<float*>(dx.get_data_handle()), X, 0,
                             static_cast<const float*>(dy.get_data_handle()), Y, offset, X.C, accumulate);
    }));
  }
}

void CpuProgram::compile_dropout(const Node& n, const graph::Dropout& d) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int x = n.inputs[0], y = n.output;
  const kernels::Blocked X = blocked(md_[x]);
  memory xm = act_[x], ym = act_[y];
  if (!training()) {  // the identity
    const int64_t count = static_cast<int64_t>(md_[x].get_size() / sizeof(float));
    node_fwd_[node].push_back(loop({xm, ym}, [=]() {
      kernels::copy(static_cast<float*>(ym.get_data_handle()), static_cast<const float*>(xm.get_data_handle()), count);
    }));
    return;
  }
  // The mask of the current step, drawn by element index (backend/dropout_mask.h).
  const float p = d.p;
  node_fwd_[node].push_back(loop({xm, ym}, [=, this]() {
    kernels::dropout_forward(static_cast<float*>(ym.get_data_handle()),
                             static_cast<const float*>(xm.get_data_handle()), X,
                             DropoutMask(opt_.seed, drawn_step_, node, p));
  }));
  if (!grad_[x]) return;
  memory dx = grad_[x], dy = grad_[y];
  const bool accumulate = !first_contribution(node, 0);
  node_bwd_[node].push_back(loop({dx, dy}, [=, this]() {
    kernels::dropout_backward(static_cast<float*>(dx.get_data_handle()),
                              static_cast<const float*>(dy.get_data_handle()), X,
                              DropoutMask(opt_.seed, drawn_step_, node, p), accumulate);
  }));
}

void CpuProgram::compile_mul(const Node& n) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int y = n.output;
  INCRES_CHECK(md_[n.inputs[0]] == md_[n.inputs[1]], "cpu backend: mul of two layouts at ", n.name);
  dnnl::binary::desc d(dnnl::algorithm::binary_mul, md_[n.inputs[0]], md_[n.inputs[1]], md_[y]);
  dnnl::binary::primitive_desc pd(d, attr(), eng_);
  node_fwd_[node].push_back(step(pd, {{DNNL_ARG_SRC_0, act_[n.inputs[0]]}, {DNNL_ARG_SRC_1, act_[n.inputs[1]]},
                                      {DNNL_ARG_DST, act_[y]}}));
  if (!training()) return;
  // d(a) = d(y) * b, d(b) = d(y) * a.
  auto& bs = node_bwd_[node];
  for (size_t slot : {0, 1}) {
    const int v = n.inputs[slot], other = n.inputs[1 - slot];
    if (!grad_[v]) continue;
    memory dx = contribution(node, slot);
    bs.push_back(step(pd, {{DNNL_ARG_SRC_0, grad_[y]}, {DNNL_ARG_SRC_1, act_[other]}, {DNNL_ARG_DST, dx}}));
    finish_contribution(bs, node, slot, dx);
  }
}

void CpuProgram::compile_scale_shift(const Node& n, const graph::ScaleShift& s) {
  const int node = static_cast<int>(&n - g_.nodes.data());
  const int x = n.inputs[0], y = n.output;
  dnnl::eltwise_forward::desc d(dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_linear, md_[x],
                                s.scale, s.shift);
  dnnl::eltwise_forward::primitive_desc pd(d, attr(), eng_);
  node_fwd_[node].push_back(step(pd, {{DNNL_ARG_SRC, act_[x]}, {DNNL_ARG_DST, act_[y]}}));
  if (training() && grad_[x]) add_scaled(node_bwd_[node], node, 0, grad_[y], s.scale);  // d(x) = scale * d(y)
}

void CpuProgram::run(Step& s) {
  if (profiling_) {
    auto t0 = std::chrono::steady_clock::now();
    profiling_ = false;
    run(s);
    profiling_ = true;
    s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++s.calls;
    return;
  }
  if (s.fn) return s.fn();
  dnnl_status_t status = dnnl_primitive_execute(s.prim.get(), strm_.get(), static_cast<int>(s.args.size()),
                                                s.args.data());
  INCRES_CHECK(status == dnnl_success, "cpu backend: oneDNN could not execute a primitive (status ",
               static_cast<int>(status), ")");
}

void CpuProgram::forward(const float* x) {
  if (!training() && store_.version != prepared_version_) {
    for (Step& s : prep_) run(s);
    prepared_version_ = store_.version;
  }
  if (training()) drawn_step_ = step_++;
  forwarded_ = true;
  in_plain_.set_data_handle(const_cast<float*>(x));
  for (Step& s : fwd_) run(s);
  strm_.wait();
  if (training()) store_.changed();  // the running statistics moved
}

std::vector<StepProfile> CpuProgram::steps() const {
  std::vector<StepProfile> out;
  auto add = [&](const char* phase, const Step& s) {
    const bool edge = s.node < 0;
    out.push_back({phase, edge ? "" : g_.nodes[s.node].name, edge ? "" : graph::op_name(g_.nodes[s.node].op),
                   s.kind, s.impl, s.seconds, s.calls});
  };
  for (const Step& s : prep_) add("prepare", s);
  for (const Step& s : fwd_) add("forward", s);
  for (const Output& o : out_)
    if (o.seed.prim) add("backward", o.seed);
  for (const Step& s : bwd_) add("backward", s);
  return out;
}

const float* CpuProgram::output_impl(int i) const {
  INCRES_CHECK(i >= 0 && i < num_outputs(), "cpu backend: output ", i, " asked of a graph with ",
               num_outputs(), " outputs (the output and ", num_outputs() - 1, " auxiliary ones)");
  INCRES_CHECK(i < static_cast<int>(out_.size()), "cpu backend: auxiliary output ", i,
               " is not computed by an inference program (it runs only what output 0 needs); "
               "compile in train mode to read it");
  return static_cast<const float*>(out_[i].y.get_data_handle());
}

void CpuProgram::backward_impl(const float* dy, std::span<const float* const> aux_dy) {
  INCRES_CHECK(training(), "backward() on a program compiled for inference");
  INCRES_CHECK(forwarded_, "backward() needs a forward() before it (one backward per forward: gradients reuse "
               "the memory of the activations backward has finished with)");
  forwarded_ = false;
  INCRES_CHECK(aux_dy.empty() || aux_dy.size() + 1 == outputs_.size(), "cpu backend: backward() got ",
               aux_dy.size(), " auxiliary gradients for ", outputs_.size() - 1, " auxiliary outputs");
  // Seeds: d(output i) = the caller's gradient, zero where none was given.
  for (size_t i = 0; i < out_.size(); ++i) {
    const float* seed = i == 0 ? dy : aux_dy.empty() ? nullptr : aux_dy[i - 1];
    if (seed) {
      out_[i].dy.set_data_handle(const_cast<float*>(seed));
      run(out_[i].seed);
    } else {
      const memory& d = grad_[outputs_[i]];
      std::memset(d.get_data_handle(), 0, d.get_desc().get_size());
    }
  }
  for (Step& s : bwd_) run(s);
  strm_.wait();
}

const float* CpuProgram::input_grad() const {
  INCRES_CHECK(opt_.input_grad, "input_grad() needs a program compiled with Options::input_grad");
  return static_cast<const float*>(din_plain_.get_data_handle());
}

int64_t CpuProgram::planned_bytes() const {
  return static_cast<int64_t>(arena_.nbytes() + scratch_.bytes + tmp_.bytes + fold_.bytes);
}

MemoryPlan CpuProgram::memory_plan() const {
  return {planned_bytes(), static_cast<int64_t>(arena_.nbytes()), static_cast<int64_t>(live_peak_),
          static_cast<int64_t>(unplanned_), static_cast<int64_t>(scratch_.bytes + tmp_.bytes + fold_.bytes),
          static_cast<int64_t>(bufs_.size())};
}

}  // namespace

std::unique_ptr<Program> compile_cpu(const graph::Graph& g, graph::ParamStore& store, Options opt) {
  try {
    return std::make_unique<CpuProgram>(g, store, opt);
  } catch (const dnnl::error& e) {
    fail("oneDNN could not compile the graph (batch ", opt.batch, "): ", e.what());
  }
}

}  // namespace incres::backend
