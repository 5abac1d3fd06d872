#include "train/ema.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace incres::train {

Ema::Ema(const graph::Graph& g, const graph::ParamStore& store, double decay)
    : store_(&store), decay_(decay) {
  INCRES_CHECK(std::isfinite(decay) && decay > 0 && decay < 1, "ema: decay must be in (0, 1), got ",
               decay);
  INCRES_CHECK(store.values.size() == g.params.size(), "ema: parameter store holds ",
               store.values.size(), " values, expected ", g.params.size(),
               " (one per graph param); build the store from this graph");
  for (size_t i = 0; i < g.params.size(); ++i) {
    INCRES_CHECK(store.values[i].shape() == g.params[i].shape, "ema: param '", g.params[i].name,
                 "' has shape ", store.values[i].shape().str(), ", expected ",
                 g.params[i].shape.str());
    avg_.values.push_back(store.values[i].clone());
    avg_.grads.emplace_back();  // programs index grads by param; inference uses none
  }
}

double Ema::decay_at(int64_t step) const {
  INCRES_CHECK(step >= 0, "ema: step must be >= 0, got ", step);
  const double s = static_cast<double>(step);
  return std::min(decay_, (1 + s) / (10 + s));
}

void Ema::update(int64_t step) {
  const float one_minus = static_cast<float>(1 - decay_at(step));
  for (size_t i = 0; i < avg_.values.size(); ++i) {
    float* a = avg_.values[i].data<float>();
    const float* v = store_->values[i].data<float>();
    const int64_t n = avg_.values[i].numel();
    for (int64_t j = 0; j < n; ++j) a[j] -= one_minus * (a[j] - v[j]);
  }
  avg_.changed();
}

}  // namespace incres::train
