// The model zoo: names -> graph builders.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "graph/graph.h"

namespace incres::models {

enum class Shortcut { A, B };  // ResNet paper, Sec. 3.3 (C joins with the ImageNet nets)

struct ModelConfig {
  int64_t in_channels = 3;
  int64_t classes = 10;
  int64_t image = 32;           // input height = width
  Shortcut shortcut = Shortcut::A;
};

struct ModelInfo {
  std::string name;
  std::string description;
  ModelConfig defaults;
  std::function<graph::Graph(const ModelConfig&)> build;
};

const std::vector<ModelInfo>& registry();
// Throws an Error listing the known names when `name` is not registered.
const ModelInfo& find_model(const std::string& name);
graph::Graph build_model(const std::string& name, const ModelConfig& cfg);

// CIFAR ResNet of 6n+2 layers (ResNet paper, Sec. 4.2); residual=false gives the plain net.
graph::Graph cifar_resnet(int n, bool residual, const ModelConfig& cfg);

Shortcut parse_shortcut(const std::string& s);

}  // namespace incres::models
