// A tiny graph and random gradients, shared by the optimizer, moving-average and
// checkpoint tests.
#pragma once
#include <cstdint>

#include "core/rng.h"
#include "graph/builder.h"
#include "graph/params.h"

namespace incres::train::tiny {

// conv (with bias) -> BN -> ReLU -> pool -> fc: every parameter role, and tensors
// both longer than the optimizer's 16-element block (conv1.weight: 54) and shorter.
inline graph::Graph tiny_graph() {
  graph::Builder b(Shape{2, 4, 4});
  int x = b.conv(b.input(), graph::Conv2d{3, 3, 3, 1, 1, 1, true}, "conv1");
  x = b.batchnorm(x, "bn1");
  x = b.relu(x);
  x = b.global_avg_pool(x);
  x = b.linear(x, 2, "fc");
  return b.finish(x);
}

// Random gradients, as a backward pass would leave them.
inline void fill_grads(graph::ParamStore& s, uint64_t seed) {
  Rng rng(seed);
  for (Tensor& g : s.grads) {
    if (g.empty()) continue;
    float* p = g.data<float>();
    for (int64_t i = 0; i < g.numel(); ++i) p[i] = static_cast<float>(rng.normal());
  }
}

// Moves every value (weights and BN running statistics) a little, as a training step
// with a forward pass would.
inline void nudge_values(graph::ParamStore& s, uint64_t seed) {
  Rng rng(seed);
  for (Tensor& v : s.values) {
    float* p = v.data<float>();
    for (int64_t i = 0; i < v.numel(); ++i) p[i] += static_cast<float>(0.1 * rng.normal());
  }
}

}  // namespace incres::train::tiny
