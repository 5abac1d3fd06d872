#include "train/checkpoint.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "io/model_params.h"
#include "io/safetensors.h"

namespace incres::train {

namespace {
const std::string kMomentum = "optimizer.momentum.";
}

std::string first_non_finite(const graph::Graph& g, const graph::ParamStore& store) {
  for (size_t i = 0; i < g.params.size(); ++i) {
    const float* p = store.values[i].data<float>();
    for (int64_t j = 0; j < store.values[i].numel(); ++j)
      if (!std::isfinite(p[j])) return g.params[i].name;
  }
  return "";
}

void save_checkpoint(const std::string& path, const graph::Graph& g, const graph::ParamStore& store,
                     const Sgd* sgd, const CheckpointState& state) {
  std::string bad = first_non_finite(g, store);
  INCRES_CHECK(bad.empty(), "refusing to save ", path, ": tensor ", bad,
               " holds NaN or Inf (the previous checkpoint is kept)");
  auto entries = io::param_entries(g, store);
  std::vector<std::string> names;  // keeps the momentum names alive for the entries
  if (sgd) {
    for (size_t i = 0; i < g.params.size(); ++i)
      if (!sgd->state()[i].empty()) names.push_back(kMomentum + g.params[i].name);
    size_t k = 0;
    for (size_t i = 0; i < g.params.size(); ++i)
      if (!sgd->state()[i].empty()) entries.emplace_back(names[k++], &sgd->state()[i]);
  }
  std::map<std::string, std::string> meta{{"format", "incres-checkpoint-1"},
                                          {"model", state.model},
                                          {"step", std::to_string(state.step)},
                                          {"seed", std::to_string(state.seed)},
                                          {"config", state.config}};
  io::save_safetensors(path, entries, meta);
}

CheckpointState load_checkpoint(const std::string& path, const graph::Graph& g,
                                graph::ParamStore& store, Sgd* sgd) {
  io::SafeTensors st = io::load_safetensors(path);
  // Split the optimizer state from the model's tensors before the strict model check.
  io::SafeTensors model;
  model.path = st.path;
  std::map<std::string, Tensor> momentum;
  for (auto& [name, t] : st.tensors) {
    if (name.rfind(kMomentum, 0) == 0) momentum.emplace(name.substr(kMomentum.size()), std::move(t));
    else model.tensors.emplace(name, std::move(t));
  }
  if (sgd && !momentum.empty()) {  // check before touching anything
    for (size_t i = 0; i < g.params.size(); ++i) {
      if (sgd->state()[i].empty()) continue;
      auto it = momentum.find(g.params[i].name);
      INCRES_CHECK(it != momentum.end(), path, ": optimizer state for ", g.params[i].name, " is missing");
      INCRES_CHECK(it->second.shape() == g.params[i].shape && it->second.dtype() == DType::f32, path,
                   ": optimizer state for ", g.params[i].name, " has shape ", it->second.shape().str(),
                   ", expected ", g.params[i].shape.str());
    }
  }
  io::load_params(model, g, store, /*strict=*/true);
  if (sgd && !momentum.empty()) {
    for (size_t i = 0; i < g.params.size(); ++i) {
      Tensor& dst = sgd->state()[i];
      if (!dst.empty()) std::memcpy(dst.raw(), momentum.at(g.params[i].name).raw(), dst.nbytes());
    }
  }
  CheckpointState s;
  auto meta = [&](const char* key) -> std::string {
    auto it = st.metadata.find(key);
    return it == st.metadata.end() ? "" : it->second;
  };
  s.model = meta("model");
  s.config = meta("config");
  try {
    s.step = meta("step").empty() ? 0 : std::stoll(meta("step"));
    s.seed = meta("seed").empty() ? 0 : std::stoull(meta("seed"));
  } catch (const std::exception&) {
    fail(path, ": metadata step/seed is not a number ('", meta("step"), "', '", meta("seed"), "')");
  }
  return s;
}

}  // namespace incres::train
