// Moving a model's parameters and buffers between a ParamStore and safetensors, by the
// torchvision names the graph gives them ("layer1.0.conv1.weight", "bn1.running_mean").
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "graph/graph.h"
#include "graph/params.h"
#include "io/safetensors.h"

namespace incres::io {

// How a file's tensors line up with a graph's params.
struct LoadReport {
  std::vector<std::string> missing;     // in the graph, not in the file (graph order)
  std::vector<std::string> unexpected;  // in the file, not in the graph (name order)
  std::vector<std::string> mismatched;  // "name: expected [16, 3, 3, 3] F32, file has [..] F64"
  // Loadable: nothing missing or mismatched, and (when strict) nothing unexpected.
  bool ok(bool strict) const {
    return missing.empty() && mismatched.empty() && (!strict || unexpected.empty());
  }
};

// Compares without loading. Keys ending in ".num_batches_tracked" (PyTorch's BN step
// counters, which incres does not keep) are neither used nor reported.
LoadReport check_params(const SafeTensors& st, const graph::Graph& g);

// Copies every graph param from `st` into `store` (which must be ParamStore(g)-shaped).
// All checks come first: if the report is not ok(strict), throws ONE Error listing
// every missing, unexpected (when strict) and mismatched tensor, and `store` is left
// untouched. A non-strict load ignores unexpected tensors (returned in the report),
// never missing or mismatched ones. Params are F32 and must match shapes exactly.
LoadReport load_params(const SafeTensors& st, const graph::Graph& g, graph::ParamStore& store,
                       bool strict = true);

// (name, values tensor) of every graph param in graph order, to pass to save_safetensors.
// The pointers point into `store` and live as long as it does.
std::vector<std::pair<std::string, const Tensor*>> param_entries(const graph::Graph& g,
                                                                 const graph::ParamStore& store);

}  // namespace incres::io
