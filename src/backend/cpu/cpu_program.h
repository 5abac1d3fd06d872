// The oneDNN CPU backend's program, shared by the files that build it (private to
// backend/cpu): layout.cpp picks the layouts, program.cpp plans the buffers and the
// graph's edges, emit_conv.cpp and emit_ops.cpp turn nodes into steps, execute.cpp
// runs them. program.cpp opens with the whole picture.
#pragma once

#include <dnnl.hpp>
#include <oneapi/dnnl/dnnl_debug.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/winograd.h"
#include "backend/memory_plan.h"
#include "backend/program.h"
#include "graph/passes/fusion.h"

namespace incres::backend::cpu {

using dnnl::memory;
using dnnl::primitive;
using tag = memory::format_tag;
using dt = memory::data_type;
using graph::Graph;
using graph::Node;

// What a memory points at, as T (float unless said); null for a null memory. The
// handle is bound by the memory plan, so loops read it when they run, not before.
template <class T = float>
T* data(const memory& m) {
  return m ? static_cast<T*>(m.get_data_handle()) : nullptr;
}

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
inline Step loop(std::initializer_list<memory> uses, std::function<void()> fn) {
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

// Layouts (layout.cpp).
bool cpu_isa_has(dnnl::cpu_isa want);
int64_t channel_block(const Graph& g);   // the channel block of a graph's blocked values
tag blocked_tag(int64_t block);          // nChw16c or nChw8c
tag layout_of(const memory::desc& md);   // nchw, nChw8c or nChw16c
bool is_nhwc(const memory::desc& md);    // a bf16 layout (layout.cpp)
memory::desc with_type(const memory::desc& md, dt type);  // the same layout in another data type
kernels::Blocked blocked(const memory::desc& md);  // a 4D or 2D value as our loops index it
memory::dims dims_of(const Shape& s, int64_t batch);

class CpuProgram final : public Program {
 public:
  CpuProgram(const Graph& g, graph::ParamStore& store, Options opt);

  void forward(const float* x) override;
  int num_outputs() const override { return static_cast<int>(outputs_.size()); }
  const float* input_grad() const override;
  void set_step(int64_t step) override { step_ = step; }
  double zero_fraction(int v) const override;
  int64_t planned_bytes() const override;
  MemoryPlan memory_plan() const override;
  std::string backend_name() const override { return "cpu"; }
  void set_profiling(bool on) override { profiling_ = on; }
  std::vector<StepProfile> steps() const override;
  std::vector<int> grad_order() const override;

 private:
  // A value's layout and memories: its activation and, in training, its gradient.
  struct ValueMemory {
    memory::desc md;
    memory act, grad;
    int last_consumer = -1;  // its last live consumer, or -1
  };
  // The node being emitted, with the steps it adds to forward and to backward.
  struct Site {
    int id;
    const Node& n;
    std::vector<Step> fwd, bwd;
  };

  // The phases of the constructor, in order.
  void assign_layouts();  // layout.cpp
  void assign_buffers();
  std::vector<std::vector<Step>> emit_nodes();  // returns each node's backward steps
  void emit_edges(std::vector<std::vector<Step>> node_bwd);
  void plan();  // the memory plan: every buffer a block of one arena
  void order_grads();  // where each parameter's gradient is final (grad_ready)

  const float* output_impl(int i) const override;
  void backward_impl(const float* dy, std::span<const float* const> aux_dy) override;
  bool training() const { return opt_.mode == Mode::train; }
  bool is_output(int v) const { return std::find(outputs_.begin(), outputs_.end(), v) != outputs_.end(); }
  void run(Step& s);
  memory alloc(const memory::desc& md);
  memory view(const memory& base, const memory::desc& md);  // another memory on base's buffer
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
  // Our own loops compute in f32. In a bf16 program one reads the f32 copy f32_in
  // makes of a bf16 value (a reorder into a buffer of its own), writes the f32 buffer
  // f32_out gives for it, and f32_flush stores that into the value; on f32 values all
  // three are the value itself and no step.
  memory f32_in(std::vector<Step>& steps, const memory& m);
  memory f32_out(const memory& m);
  void f32_flush(std::vector<Step>& steps, const memory& written, const memory& m);

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

  // Convolutions (emit_conv.cpp): training, inference, inference as Winograd.
  void compile_conv(Site& at, const graph::Conv2d& c);
  void compile_conv_infer(Site& at, const graph::Conv2d& c);
  // A conv that runs as Winograd (backend/cpu/winograd.h): its geometry, the line
  // transform for 1 x r / r x 1 kernels, the products and tiles it takes.
  struct WinogradPlan {
    winograd::Geometry g;
    std::optional<winograd::Line> line;
    int64_t points() const { return line ? line->f.alpha : winograd::kPoints; }
    int64_t tiles() const { return line ? line->tiles() : g.tiles(); }
  };
  std::optional<WinogradPlan> winograd_plan(const Site& at, const graph::Conv2d& c) const;
  void compile_conv_winograd(Site& at, const graph::Conv2d& c, const WinogradPlan& plan);
  // An inference conv's weights and bias in plain layout (K x C x R x S, K): the BN
  // after it folded in by a prepare step, into a buffer of its own (`keep`) or the
  // shared one a later prepare step reads; else the parameters themselves (no bias:
  // a null memory).
  std::pair<memory, memory> plain_weights(const Site& at, const graph::Conv2d& c, bool keep);
  // The other ops (emit_ops.cpp).
  void compile_batchnorm(Site& at, const graph::BatchNorm& bn);
  void compile_batchnorm_synced(Site& at, const graph::BatchNorm& bn, dnnl::normalization_flags flags);
  void compile_eltwise(Site& at, dnnl::algorithm use_dst_algo);
  void compile_add(Site& at, const graph::Add& a);
  void compile_shortcut_a(Site& at, const graph::ShortcutA& s);
  void compile_avgpool(Site& at);
  void compile_linear(Site& at, const graph::Linear& l);
  void compile_pool(Site& at, const graph::Pool2d& p);
  void compile_concat(Site& at);
  void compile_dropout(Site& at, const graph::Dropout& d);
  void compile_mul(Site& at);
  void compile_scale_shift(Site& at, const graph::ScaleShift& s);

  const Graph g_;  // a copy: the program stays valid when the caller's graph goes away
  graph::ParamStore& store_;
  Options opt_;
  std::vector<int> outputs_;  // the value of each output (outputs.h)
  std::vector<bool> live_;    // per node: run by this program
  dnnl::engine eng_{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm_{eng_};

  int64_t block_ = 8;               // the channel block of blocked values (channel_block)
  std::vector<ValueMemory> val_;    // per value
  graph::FusionPlan plan_;          // what runs fused, and in which buffers (graph/passes/fusion.h)
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
  std::vector<Step> prep_, fwd_, bwd_;
  // Per backward step, the trainable parameters whose gradients are final after it;
  // then those no step writes (their gradients stay zero).
  std::vector<std::vector<int>> ready_after_;
  std::vector<int> ready_at_end_;
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

}  // namespace incres::backend::cpu
