// Checkpoints: one .safetensors file holding everything a run needs to continue
// bit-for-bit: parameters and BN buffers under their torchvision names, the
// optimizer's state under "optimizer.<slot>.<name>" (SGD: "momentum"; RMSProp: "rms"
// and "momentum"), the moving average of the weights under "ema.<name>" when the run
// keeps one, and in the metadata the step, the seed (which fixes data order and
// augmentation), the optimizer's name and the run's configuration. Written atomically
// (temp file, fsync, rename).
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "graph/graph.h"
#include "graph/params.h"
#include "train/ema.h"
#include "train/optimizer.h"

namespace incres::train {

struct CheckpointState {
  int64_t step = 0;     // optimizer steps taken
  uint64_t seed = 0;
  std::string model;
  std::string config;   // the run's configuration, JSON
  double train_seconds = 0;  // spent training so far, resumed sessions included
  // Filled by load_checkpoint:
  std::string optimizer;  // "sgd" | "rmsprop"; "" when the file holds no optimizer state
  bool has_ema = false;   // the file holds "ema.*" tensors
};

// Refuses (Error) to write non-finite weights or averages: the previous checkpoint
// stays. `opt` and `ema` may be null (nothing of theirs is written).
void save_checkpoint(const std::string& path, const graph::Graph& g, const graph::ParamStore& store,
                     const Optimizer* opt, const Ema* ema, const CheckpointState& state);

// Strict: every name, shape and dtype must match the graph (all mismatches listed,
// store untouched on error). When `opt` is given and the file holds optimizer state,
// that state must be the same optimizer's (else an Error naming both) and complete;
// it is then loaded. Likewise `ema` and the file's "ema.*" tensors. Nothing is
// modified unless every check passes. Tensors of state not asked for are skipped.
CheckpointState load_checkpoint(const std::string& path, const graph::Graph& g,
                                graph::ParamStore& store, Optimizer* opt, Ema* ema = nullptr);

// The first parameter or buffer holding NaN or Inf, or "" when all are finite.
std::string first_non_finite(const graph::Graph& g, const graph::ParamStore& store);

}  // namespace incres::train
