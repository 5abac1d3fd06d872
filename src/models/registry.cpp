#include "core/error.h"
#include "models/models.h"

namespace incres::models {

const std::vector<ModelInfo>& registry() {
  static const std::vector<ModelInfo> zoo = [] {
    std::vector<ModelInfo> r;
    // CIFAR family, 6n+2 layers (ResNet paper, Table 6).
    for (int n : {3, 5, 7, 9, 18, 200}) {
      int depth = 6 * n + 2;
      r.push_back({"resnet" + std::to_string(depth),
                   "CIFAR ResNet-" + std::to_string(depth) + " (n=" + std::to_string(n) +
                       ", 16/32/64 filters, 32x32)",
                   ModelConfig{}, [n](const ModelConfig& c) { return cifar_resnet(n, true, c); }});
    }
    for (int n : {3, 5, 7, 9, 18}) {
      int depth = 6 * n + 2;
      r.push_back({"plain" + std::to_string(depth),
                   "CIFAR plain net of " + std::to_string(depth) + " layers (no shortcuts)",
                   ModelConfig{}, [n](const ModelConfig& c) { return cifar_resnet(n, false, c); }});
    }
    return r;
  }();
  return zoo;
}

const ModelInfo& find_model(const std::string& name) {
  std::string known;
  for (const ModelInfo& m : registry()) {
    if (m.name == name) return m;
    known += (known.empty() ? "" : ", ") + m.name;
  }
  fail("unknown model '", name, "'; known models: ", known, " (see `incres models`)");
}

graph::Graph build_model(const std::string& name, const ModelConfig& cfg) {
  return find_model(name).build(cfg);
}

}  // namespace incres::models
