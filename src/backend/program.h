// Program: a Graph compiled once for (batch size, mode) on one backend. Compiling
// creates every primitive and allocates every buffer; forward() and backward()
// allocate nothing, except inside oneDNN's own primitive execution (a few small
// objects per primitive, which its API gives no way to avoid; see
// tests/backend/test_no_alloc.cpp). Parameters live in the ParamStore the program
// was compiled against (plain layout); the program reads them at every forward and
// writes parameter gradients into store.grads at every backward.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "graph/graph.h"
#include "graph/params.h"

namespace incres::backend {

enum class Mode { train, infer };

// The arithmetic of a program. bf16: activations in bfloat16 between oneDNN's bf16
// primitives (convolutions, BN, activations, sums, pools, concat), weights rounded to
// bf16 for the convs, accumulation, biases, BN statistics and the classifier in fp32;
// our own fp32 loops read and write fp32 copies (reorders where the precision
// changes); a training program writes f32 weight gradients for the f32 master
// weights. The cpu backend only, on CPUs with AVX512-BF16 or AMX.
enum class Precision { f32, bf16 };
Precision parse_precision(const std::string& s);  // "fp32" | "bf16", else an Error
const char* precision_name(Precision p);          // "fp32" | "bf16"
// Refuses (Error, one line naming the missing CPU feature) a precision this CPU, as
// capped by ONEDNN_MAX_CPU_ISA, cannot run. Compiling checks it; commands call it
// first to fail before they load anything.
void check_precision(Precision p);
// Whether this CPU runs bf16 programs (AVX512-BF16 or AMX, as oneDNN sees it).
bool bf16_supported();

// What one recorded step of a program is and, with profiling on, what it cost.
// How a program's memory is planned (bytes). arena: activations, gradients and
// workspaces, placed by lifetime; live_peak: the most of those live at one step (the
// least any plan could use); unplanned: their sum (one buffer each, no sharing);
// shared: the scratchpad and temporaries every step reuses.
struct MemoryPlan {
  int64_t total = 0, arena = 0, live_peak = 0, unplanned = 0, shared = 0, buffers = 0;
};

// A program whose planned memory exceeds what the machine has left
// (core/memory_info.h): thrown by compile before the memory is taken.
struct OutOfMemory : Error {
  OutOfMemory(const std::string& what, int64_t needed, int64_t available)
      : Error(what), needed(needed), available(available) {}
  int64_t needed, available;  // bytes
};

struct StepProfile {
  std::string phase;  // "prepare" (weights, inference), "forward" or "backward"
  std::string node;   // the graph node it belongs to ("" for the graph's edges)
  std::string op;     // that node's op ("conv2d", ...)
  std::string kind;   // oneDNN primitive kind ("convolution", "reorder", ...) or "loop" (ours)
  std::string impl;   // the implementation that runs ("jit:avx2", "ref:any", "incres")
  double seconds = 0;  // summed over calls, while profiling
  int64_t calls = 0;
};

struct Options {
  int64_t batch = 1;
  Mode mode = Mode::train;
  bool input_grad = false;  // also compute d(loss)/d(input) in backward (tests use it)
  uint64_t seed = 0;        // keys the dropout masks (backend/dropout_mask.h)
  // Inference: stride-1 3x3, 1x3 / 3x1 and 1x7 / 7x1 convs with enough channels and
  // output tiles run as Winograd (backend/cpu/winograd.h): 1.4-3.5x faster, results
  // within ~3e-5 relative of a direct conv. false: every conv direct.
  bool winograd = true;
  // Values kept intact from forward() until the next forward() for zero_fraction():
  // the memory plan may otherwise reuse a value's memory once its last reader has run.
  std::vector<int> probes = {};
  Precision precision = Precision::f32;
  // Data-parallel training (dist/). grad_ready(p) is called during backward() the
  // moment parameter p's gradient is final, once per trainable parameter and backward,
  // in grad_order(): the gradient exchange starts while backward goes on.
  std::function<void(int param)> grad_ready = {};
  // Global BatchNorm statistics (--sync-bn): sums n doubles in place across the
  // processes, each holding its share of the batch. Null: each program normalises by
  // its own batch. The cpu backend, fp32.
  std::function<void(double* values, int64_t n)> sum_across = {};
  // This program's first sample in the global batch: dropout masks are keyed by the
  // global sample, so N processes drop what one process would on the whole batch.
  int64_t sample_offset = 0;
};

class Program {
 public:
  virtual ~Program() = default;

  // x: batch x input_shape, NCHW, float. In train mode BatchNorm uses batch
  // statistics and updates the running statistics in the store (momentum per node);
  // in infer mode it uses the running statistics.
  virtual void forward(const float* x) = 0;

  // The graph's outputs: 0 is Graph::output, i >= 1 is Graph::aux_outputs[i - 1]
  // (Inception's auxiliary classifier). An inference program computes only what
  // output 0 depends on (an auxiliary head costs it neither time nor memory), so
  // there output(i >= 1) throws.
  virtual int num_outputs() const = 0;
  // Output i after forward(): batch x its shape, row-major (NCHW / NF).
  const float* output(int i = 0) const { return output_impl(i); }
  // dy: d(loss)/d(output 0), same layout as output(0); aux_dy[i - 1]: d(loss)/d(output
  // i), each either empty or num_outputs() - 1 long, a null entry meaning zero (no loss
  // on that head). Train mode only. Overwrites every gradient in store.grads. Once per
  // forward(): the memory plan lets gradients reuse the memory of activations that
  // backward has finished with, so a second backward() needs a forward() before it.
  void backward(const float* dy, std::span<const float* const> aux_dy = {}) { backward_impl(dy, aux_dy); }
  // The trainable parameters in the order backward() finishes their gradients (the
  // order Options::grad_ready reports them in).
  virtual std::vector<int> grad_order() const = 0;
  // d(loss)/d(input) after backward(), NCHW; requires Options::input_grad.
  virtual const float* input_grad() const = 0;

  // Dropout draws its mask from (Options::seed, step, node, element). The step is 0
  // after compiling and advances by one at each train-mode forward(); backward() uses
  // the mask of the forward before it. A resumed run sets the step the next forward
  // draws with (the number of training steps already taken), so it drops what an
  // uninterrupted run would have dropped.
  virtual void set_step(int64_t step) = 0;

  // The fraction of value v's elements (the whole batch) that are exactly 0 after the
  // last forward() (backward() leaves probed values alone): a probe for units that have
  // died (Inception-v4 paper, Sec. 3.3). v must be one of Options::probes; NaN where
  // the program keeps no buffer of its own for it (an inference program's BN output
  // folded into its conv, a value not computed).
  virtual double zero_fraction(int v) const = 0;

  // Bytes the program holds for activations, gradients and workspaces.
  virtual int64_t planned_bytes() const = 0;
  virtual MemoryPlan memory_plan() const {
    const int64_t b = planned_bytes();
    return {b, b, b, b, 0, 0};
  }

  // Every step the program runs, in order; with profiling on, each step's time is
  // measured (one clock read per step) and summed. The reference backend has no steps.
  virtual void set_profiling(bool on) { (void)on; }
  virtual std::vector<StepProfile> steps() const { return {}; }
  virtual std::string backend_name() const = 0;

 private:
  // What the backends implement; output() and backward() keep their default
  // arguments here, in one place.
  virtual const float* output_impl(int i) const = 0;
  virtual void backward_impl(const float* dy, std::span<const float* const> aux_dy) = 0;
};

// The naive reference: plain loops over NCHW, the oracle in tests.
std::unique_ptr<Program> compile_ref(const graph::Graph& g, graph::ParamStore& store, Options opt);
// oneDNN on the CPU: blocked layouts end to end, primitives created once.
std::unique_ptr<Program> compile_cpu(const graph::Graph& g, graph::ParamStore& store, Options opt);
// The instruction set the oneDNN backend's kernels use on this CPU, as capped by
// ONEDNN_MAX_CPU_ISA: "avx512_core_bf16", "avx512_core", "avx2", ...
std::string cpu_isa();
// By name: "cpu" or "ref".
std::unique_ptr<Program> compile(const std::string& backend, const graph::Graph& g,
                                 graph::ParamStore& store, Options opt);

}  // namespace incres::backend
