// An exponential moving average of a model's weights, for evaluation: the Inception
// papers evaluate "using a running average of the parameters computed over time"
// (Inception-v3, Sec. 8), TF's tf.train.ExponentialMovingAverage.
#pragma once
#include <cstdint>

#include "graph/graph.h"
#include "graph/params.h"

namespace incres::train {

class Ema {
 public:
  // Averages every tensor of `store`, which must outlive this object and match `g`.
  // The averages start at the store's current values, as TF's shadow variables start
  // at their variable's value. decay in (0, 1).
  //
  // BN running statistics are averaged like the weights, not copied: TF-slim's
  // train_image_classifier averages slim.get_model_variables(), which include the
  // moving mean and variance, and timm's ModelEma does the same. The averaged
  // statistics then lag the live ones as the averaged weights lag theirs.
  Ema(const graph::Graph& g, const graph::ParamStore& store, double decay);

  // The decay used at the update after `step` optimizer steps have been taken
  // (0 for the first update): min(decay, (1 + step) / (10 + step)), TF's num_updates
  // rule, so that the average follows the weights early in a run instead of staying
  // near the initialisation for ~1/(1 - decay) steps.
  double decay_at(int64_t step) const;

  // After an optimizer step: avg -= (1 - d) * (avg - value) for every tensor (TF's
  // form of avg = d * avg + (1 - d) * value), d = decay_at(step). A pure function of
  // the averages, the values and `step`, so a resumed run continues bit for bit.
  void update(int64_t step);

  double decay() const { return decay_; }
  // The averages as a ParamStore (values only; every grad is an empty Tensor):
  // compile an inference Program against it to evaluate the averaged model. The
  // tensors are updated in place, so such a program sees every update. Checkpoints
  // store average i as "ema.<param name>".
  graph::ParamStore& averages() { return avg_; }
  const graph::ParamStore& averages() const { return avg_; }

 private:
  const graph::ParamStore* store_;
  double decay_;
  graph::ParamStore avg_;
};

}  // namespace incres::train
