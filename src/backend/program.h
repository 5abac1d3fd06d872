// Program: a Graph compiled once for (batch size, mode) on one backend. Compiling
// creates every primitive and allocates every buffer; forward() and backward()
// allocate nothing. Parameters live in the ParamStore the program was compiled
// against (plain layout); the program reads them at every forward and writes
// parameter gradients into store.grads at every backward.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "graph/graph.h"
#include "graph/params.h"

namespace incres::backend {

enum class Mode { train, infer };

struct Options {
  int64_t batch = 1;
  Mode mode = Mode::train;
  bool input_grad = false;  // also compute d(loss)/d(input) in backward (tests use it)
  uint64_t seed = 0;        // keys the dropout masks (backend/dropout_mask.h)
};

class Program {
 public:
  virtual ~Program() = default;

  // x: batch x input_shape, NCHW, float. In train mode BatchNorm uses batch
  // statistics and updates the running statistics in the store (momentum per node);
  // in infer mode it uses the running statistics.
  virtual void forward(const float* x) = 0;
  // The graph's output after forward(): batch x output_shape, row-major (NCHW / NF).
  virtual const float* output() const = 0;
  // dy: d(loss)/d(output), same layout as output(). Train mode only. Overwrites
  // every gradient in store.grads.
  virtual void backward(const float* dy) = 0;
  // d(loss)/d(input) after backward(), NCHW; requires Options::input_grad.
  virtual const float* input_grad() const = 0;

  // Dropout draws its mask from (Options::seed, step, node, element). The step is 0
  // after compiling and advances by one at each train-mode forward(); backward() uses
  // the mask of the forward before it. A resumed run sets the step the next forward
  // draws with (the number of training steps already taken), so it drops what an
  // uninterrupted run would have dropped.
  virtual void set_step(int64_t step) = 0;

  // Bytes the program holds for activations, gradients and workspaces.
  virtual int64_t planned_bytes() const = 0;
  virtual std::string backend_name() const = 0;
};

// The naive reference: plain loops over NCHW, the oracle in tests.
std::unique_ptr<Program> compile_ref(const graph::Graph& g, graph::ParamStore& store, Options opt);
// oneDNN on the CPU: blocked layouts end to end, primitives created once.
std::unique_ptr<Program> compile_cpu(const graph::Graph& g, graph::ParamStore& store, Options opt);
// By name: "cpu" or "ref".
std::unique_ptr<Program> compile(const std::string& backend, const graph::Graph& g,
                                 graph::ParamStore& store, Options opt);

}  // namespace incres::backend
