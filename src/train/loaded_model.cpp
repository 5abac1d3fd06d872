#include "train/loaded_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "data/image.h"
#include "io/model_params.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"

namespace incres::train {

void LoadedModel::build() {
  g = std::make_unique<graph::Graph>(models::build_model(name, mc));
  store = std::make_unique<graph::ParamStore>(*g);
}

void LoadedModel::load_weights(const std::string& path) {
  io::SafeTensors st = io::load_safetensors(path);
  io::load_params(st, *g, *store, /*strict=*/true);
}

void LoadedModel::load_checkpoint(const std::string& path, bool raw_weights) {
  // The decay given here is not used: the file's averages are.
  auto avg = std::make_unique<Ema>(*g, *store, 0.5);
  CheckpointState s = train::load_checkpoint(path, *g, *store, nullptr, raw_weights ? nullptr : avg.get());
  if (s.has_ema && !raw_weights) ema = std::move(avg);
}

LoadedModel load_checkpoint_model(const std::string& path, bool raw_weights) {
  const RunRecord record = read_run_record(path);
  INCRES_CHECK(record.classes > 0 && record.in_channels > 0, path,
               ": written before checkpoints recorded their classes and channels; evaluate it with `incres eval`");
  LoadedModel m;
  m.name = record.config.model;
  m.mc = model_config(record);
  m.mean = record.mean.empty() ? data::kImageNetMean : record.mean;
  m.std = record.std.empty() ? data::kImageNetStd : record.std;
  m.class_names = record.class_names;
  if (!is_image_folder(record.config.data)) m.crop_fraction = 1.0;
  m.record = record;
  m.build();
  m.load_checkpoint(path, raw_weights);
  return m;
}

LoadedModel load_weights_model(const std::string& path, const std::string& model, const models::ModelConfig& mc) {
  LoadedModel m;
  m.name = model;
  m.mc = mc;
  m.mean = data::kImageNetMean;
  m.std = data::kImageNetStd;
  m.build();
  m.load_weights(path);
  return m;
}

std::vector<std::pair<int64_t, double>> top_classes(const float* logits, int64_t K, int64_t k) {
  k = std::min(k, K);
  const double mx = *std::max_element(logits, logits + K);
  std::vector<double> p(static_cast<size_t>(K));
  double sum = 0;
  for (int64_t c = 0; c < K; ++c) sum += p[c] = std::exp(static_cast<double>(logits[c]) - mx);
  std::vector<int64_t> order(static_cast<size_t>(K));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return p[a] != p[b] ? p[a] > p[b] : a < b; });
  std::vector<std::pair<int64_t, double>> out;
  out.reserve(static_cast<size_t>(k));
  for (int64_t r = 0; r < k; ++r) out.emplace_back(order[r], p[order[r]] / sum);
  return out;
}

}  // namespace incres::train
