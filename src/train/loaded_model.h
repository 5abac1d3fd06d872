// A trained model ready to run: built from a checkpoint `incres train` wrote (it
// records the architecture, the input normalisation and the class names) or from a
// parameters-only file (a converted torchvision state_dict) with the model's name and
// configuration. `incres eval`, `predict` and `export` and the embedding API
// (include/incres/incres.h) load models through it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "graph/graph.h"
#include "graph/params.h"
#include "models/models.h"
#include "train/ema.h"
#include "train/trainer.h"

namespace incres::train {

struct LoadedModel {
  std::string name;
  models::ModelConfig mc;
  std::unique_ptr<graph::Graph> g;
  std::unique_ptr<graph::ParamStore> store;
  std::unique_ptr<Ema> ema;  // set when the checkpoint's moving average is what runs
  // The normalisation the input expects: the checkpoint's, else ImageNet's.
  std::vector<float> mean, std;
  std::vector<std::string> class_names;  // empty: unknown
  // The evaluation crop of an image file (data::CenterCrop): ImageNet's 0.875, or 1.0
  // for a checkpoint trained on an in-memory dataset (CIFAR), whose images were seen whole.
  double crop_fraction = 0.875;
  // A checkpoint's record of its run (load_checkpoint_model); for a weights file, as
  // much of one as the caller fills in.
  RunRecord record;

  // Builds g and store from name and mc (store uninitialised).
  void build();
  void load_weights(const std::string& path);  // strict, by name
  // The checkpoint's weights, and its moving average unless raw_weights.
  void load_checkpoint(const std::string& path, bool raw_weights);
  // What runs: the moving average where there is one, else the weights.
  graph::ParamStore& weights() { return ema ? ema->averages() : *store; }
};

// A checkpoint written by `incres train`, its architecture as recorded. An Error names
// the file when it records no classes and channels (written by an older incres).
LoadedModel load_checkpoint_model(const std::string& path, bool raw_weights = false);

// Parameters only, for `model` built with `mc`; ImageNet's normalisation.
LoadedModel load_weights_model(const std::string& path, const std::string& model, const models::ModelConfig& mc);

// The k most probable classes of one row of K logits, most probable first (ties by
// index), with their softmax probabilities (computed in double, shifted by the maximum).
std::vector<std::pair<int64_t, double>> top_classes(const float* logits, int64_t K, int64_t k);

}  // namespace incres::train
