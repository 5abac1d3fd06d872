#include "train/checkpoint.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "io/model_params.h"
#include "io/safetensors.h"

namespace incres::train {

namespace {
const std::string kOptimizer = "optimizer.";
const std::string kEma = "ema.";

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// Checks that `t` (a file's tensor, or null when absent) can be copied into `dst`.
void check_tensor(const std::string& path, const std::string& key, const Tensor* t, const Tensor& dst,
                  const char* hint) {
  INCRES_CHECK(t, path, ": tensor ", key, " is missing; ", hint);
  INCRES_CHECK(t->shape() == dst.shape() && t->dtype() == DType::f32, path, ": tensor ", key,
               " has shape ", t->shape().str(), ", expected ", dst.shape().str(), " F32");
}

const Tensor* find(const std::map<std::string, Tensor>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? nullptr : &it->second;
}
}  // namespace

std::string first_non_finite(const graph::Graph& g, const graph::ParamStore& store) {
  for (size_t i = 0; i < g.params.size(); ++i) {
    const float* p = store.values[i].data<float>();
    for (int64_t j = 0; j < store.values[i].numel(); ++j)
      if (!std::isfinite(p[j])) return g.params[i].name;
  }
  return "";
}

void save_checkpoint(const std::string& path, const graph::Graph& g, const graph::ParamStore& store,
                     const Optimizer* opt, const Ema* ema, const CheckpointState& state) {
  std::string bad = first_non_finite(g, store);
  INCRES_CHECK(bad.empty(), "refusing to save ", path, ": tensor ", bad,
               " holds NaN or Inf (the previous checkpoint is kept)");
  if (ema) {
    bad = first_non_finite(g, ema->averages());
    INCRES_CHECK(bad.empty(), "refusing to save ", path, ": the moving average of ", bad,
                 " holds NaN or Inf (the previous checkpoint is kept)");
  }
  auto entries = io::param_entries(g, store);
  if (opt) {
    for (size_t k = 0; k < opt->num_slots(); ++k)
      for (size_t i = 0; i < g.params.size(); ++i)
        if (!opt->slot(k)[i].empty())
          entries.emplace_back(kOptimizer + opt->slot_name(k) + "." + g.params[i].name, &opt->slot(k)[i]);
  }
  if (ema) {
    for (size_t i = 0; i < g.params.size(); ++i)
      entries.emplace_back(kEma + g.params[i].name, &ema->averages().values[i]);
  }
  std::map<std::string, std::string> meta{{"format", "incres-checkpoint-1"},
                                          {"model", state.model},
                                          {"step", std::to_string(state.step)},
                                          {"seed", std::to_string(state.seed)},
                                          {"config", state.config},
                                          {"train_seconds", std::to_string(state.train_seconds)}};
  if (opt) meta["optimizer"] = opt->name();
  io::save_safetensors(path, entries, meta);
}

CheckpointState load_checkpoint(const std::string& path, const graph::Graph& g,
                                graph::ParamStore& store, Optimizer* opt, Ema* ema) {
  io::SafeTensors st = io::load_safetensors(path);
  auto meta = [&](const char* key) -> std::string {
    auto it = st.metadata.find(key);
    return it == st.metadata.end() ? "" : it->second;
  };
  // Split the optimizer state and the averages from the model's tensors before the
  // strict model check.
  io::SafeTensors model;
  model.path = st.path;
  std::map<std::string, Tensor> opt_state, averages;  // keyed without the prefix
  for (auto& [name, t] : st.tensors) {
    if (starts_with(name, kOptimizer)) opt_state.emplace(name.substr(kOptimizer.size()), std::move(t));
    else if (starts_with(name, kEma)) averages.emplace(name.substr(kEma.size()), std::move(t));
    else model.tensors.emplace(name, std::move(t));
  }
  CheckpointState s;
  s.has_ema = !averages.empty();
  // Files from before optimizers were named hold SGD's momentum only.
  s.optimizer = opt_state.empty() ? "" : meta("optimizer").empty() ? "sgd" : meta("optimizer");

  // Every check before anything is touched; the model's own first, so that a wrong
  // model is reported as such (listing every mismatch) rather than by its optimizer.
  if (!io::check_params(model, g).ok(/*strict=*/true)) io::load_params(model, g, store, true);
  const bool load_opt = opt && !opt_state.empty();
  if (load_opt) {
    INCRES_CHECK(s.optimizer == opt->name(), path, ": holds ", s.optimizer,
                 " optimizer state but this run uses ", opt->name(),
                 "; resume with the original run's --optimizer ", s.optimizer);
    size_t expected = 0;
    for (size_t k = 0; k < opt->num_slots(); ++k)
      for (size_t i = 0; i < g.params.size(); ++i) {
        const Tensor& dst = opt->slot(k)[i];
        if (dst.empty()) continue;
        const std::string key = opt->slot_name(k) + "." + g.params[i].name;
        check_tensor(path, kOptimizer + key, find(opt_state, key), dst,
                     "the optimizer state is incomplete");
        ++expected;
      }
    // A tensor of no slot (another model's, another optimizer's) is not ignored.
    INCRES_CHECK(opt_state.size() == expected, path, ": holds ", opt_state.size(),
                 " optimizer tensors, expected ", expected, " for ", opt->name(), " on this model");
  }
  const bool load_ema = ema && !averages.empty();
  if (load_ema) {
    for (size_t i = 0; i < g.params.size(); ++i)
      check_tensor(path, kEma + g.params[i].name, find(averages, g.params[i].name),
                   ema->averages().values[i], "the moving average is incomplete");
    INCRES_CHECK(averages.size() == g.params.size(), path, ": holds ", averages.size(),
                 " ema tensors, expected ", g.params.size(), " for this model");
  }
  io::load_params(model, g, store, /*strict=*/true);
  if (load_opt) {
    for (size_t k = 0; k < opt->num_slots(); ++k)
      for (size_t i = 0; i < g.params.size(); ++i) {
        Tensor& dst = opt->slot(k)[i];
        if (!dst.empty())
          std::memcpy(dst.raw(), opt_state.at(opt->slot_name(k) + "." + g.params[i].name).raw(),
                      dst.nbytes());
      }
  }
  if (load_ema) {
    for (size_t i = 0; i < g.params.size(); ++i) {
      Tensor& dst = ema->averages().values[i];
      std::memcpy(dst.raw(), averages.at(g.params[i].name).raw(), dst.nbytes());
    }
    ema->averages().changed();
  }
  s.model = meta("model");
  s.config = meta("config");
  try {
    s.step = meta("step").empty() ? 0 : std::stoll(meta("step"));
    s.seed = meta("seed").empty() ? 0 : std::stoull(meta("seed"));
    s.train_seconds = meta("train_seconds").empty() ? 0 : std::stod(meta("train_seconds"));  // older files: none
  } catch (const std::exception&) {
    fail(path, ": metadata step/seed/train_seconds is not a number ('", meta("step"), "', '", meta("seed"), "', '",
         meta("train_seconds"), "')");
  }
  return s;
}

}  // namespace incres::train
