// ParamStore: the values (and gradients) of a graph's parameters and buffers, in
// plain row-major layout (OIHW for convs), indexed like Graph::params. Programs bind
// to these buffers; optimizers, checkpoints and interop read and write them.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "graph/graph.h"

namespace incres::graph {

struct ParamStore {
  ParamStore() = default;
  explicit ParamStore(const Graph& g);  // allocates; values zero, grads zero

  // Initialises every parameter as torchvision does (see Init); same seed, same values.
  void init(const Graph& g, uint64_t seed);
  void zero_grads();

  // Whoever writes `values` calls changed(): optimizer steps, the moving average,
  // loads, init, and a training program's forward (running statistics). An
  // inference program prepares its weights (BN folded, reordered) once and again
  // only when `version` has moved since.
  void changed() { ++version; }
  uint64_t version = 0;

  std::vector<Tensor> values;
  std::vector<Tensor> grads;  // empty Tensor for buffers
};

}  // namespace incres::graph
