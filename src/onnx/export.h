// ONNX export: a graph and its parameters as an ONNX model, in inference form (BN
// on its running statistics, dropout the identity, the main head only). Another
// target of the IR beside the backends: each op becomes the ONNX nodes that compute
// it (docs/onnx.md lists the mapping).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "graph/graph.h"
#include "graph/params.h"

namespace incres::onnx {

struct ExportOptions {
  int opset = 13;        // 13 to 17
  int64_t batch = 0;     // 0: a dynamic batch dimension ("batch_size"); else fixed
  bool fold_bn = false;  // BN after a conv folded into its weights and bias
  std::string model_name;                                   // the graph's name
  std::vector<std::pair<std::string, std::string>> metadata;  // model metadata_props
};

// The tensor names, as PyTorch's ONNX export examples name them.
inline constexpr const char* kInputName = "input";
inline constexpr const char* kOutputName = "output";
inline constexpr const char* kBatchName = "batch_size";

// The serialised ModelProto. It has passed ONNX's checker and its shape inference,
// which must give the graph's own output shape; an Error says which check failed.
std::string export_model(const graph::Graph& g, const graph::ParamStore& params, const ExportOptions& o);

// The same, written atomically to `path` (no partial file on failure).
void export_file(const std::string& path, const graph::Graph& g, const graph::ParamStore& params,
                 const ExportOptions& o);

}  // namespace incres::onnx
