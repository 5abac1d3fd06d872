// Checkpoints: one .safetensors file holding everything a run needs to continue
// bit-for-bit: parameters and BN buffers under their torchvision names, the
// optimizer's momentum buffers under "optimizer.momentum.<name>", and in the
// metadata the step, the epoch, the seed (which fixes data order and augmentation)
// and the run's configuration. Written atomically (temp file, fsync, rename).
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "graph/graph.h"
#include "graph/params.h"
#include "train/optimizer.h"

namespace incres::train {

struct CheckpointState {
  int64_t step = 0;     // optimizer steps taken
  uint64_t seed = 0;
  std::string model;
  std::string config;   // the run's configuration, JSON
};

// Refuses (Error) to write non-finite weights: the previous checkpoint stays.
void save_checkpoint(const std::string& path, const graph::Graph& g, const graph::ParamStore& store,
                     const Sgd* sgd, const CheckpointState& state);

// Strict: every name, shape and dtype must match the graph (all mismatches listed,
// store untouched on error). Loads momentum buffers when `sgd` is given and the
// file has them.
CheckpointState load_checkpoint(const std::string& path, const graph::Graph& g,
                                graph::ParamStore& store, Sgd* sgd);

// The first parameter or buffer holding NaN or Inf, or "" when all are finite.
std::string first_non_finite(const graph::Graph& g, const graph::ParamStore& store);

}  // namespace incres::train
