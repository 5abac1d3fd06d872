// The dropout mask every backend draws (graph::Dropout): element i of a node's
// input, i its logical NCHW (or N x F) index, is kept when a uniform draw keyed by
// (program seed, step, node id, i) is at least p. A pure function, so the ref and cpu
// backends drop the same elements whatever their layouts and thread schedules, and
// backward re-derives the mask instead of storing it.
#pragma once
#include <cstdint>

#include "core/rng.h"

namespace incres::backend {

struct DropoutMask {
  uint64_t key;  // mix_key(seed, step, node)
  float p;       // drop probability, in [0, 1)
  int64_t offset;  // the index of the program's first element in the global batch (data-parallel ranks)

  DropoutMask(uint64_t seed, int64_t step, int node, float p_, int64_t offset_ = 0)
      : key(mix_key(seed, static_cast<uint64_t>(step), static_cast<uint64_t>(node))), p(p_), offset(offset_) {}

  // Uniform in [0, 1) from 53 bits of the element's hash, as Rng::uniform.
  bool keep(int64_t i) const {
    return (mix64(key ^ static_cast<uint64_t>(i + offset)) >> 11) * 0x1.0p-53 >= p;
  }
  // Inverted dropout (PyTorch): kept elements are scaled so the expectation is x.
  float scale() const { return 1.f / (1.f - p); }
};

}  // namespace incres::backend
