// One data setup for training and evaluation: a --data source (a dataset read into
// memory, or an image folder's DIR/train and DIR/val) turned into loaders for a
// model. It is opened in two steps, since the model's input size, which the loaders
// need, follows from the data's channels and classes:
//
//   DataSource d(spec, Splits::train_and_test, train_limit, test_limit);  // read or scan
//   ModelConfig mc = ...(d.in_channels, d.classes);
//   d.open(mc.image, settings);                                           // the loaders
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/batch_source.h"
#include "data/image_folder.h"
#include "models/models.h"
#include "train/trainer.h"

namespace incres::train {

// The splits a command reads: a training run both, evaluation the test split alone
// (DIR/val of an image folder; an in-memory dataset is read whole, since its
// normalisation comes from the training split).
enum class Splits { train_and_test, test };

// How the loaders read: the recipe's transform (image folders), the batch, the seed
// of the shuffle and augmentation, the worker threads, and whether image files that
// fail to decode are skipped (logged and counted).
struct LoaderSettings {
  std::string recipe = "resnet";
  int64_t batch = 128;
  bool augment = false;
  uint64_t seed = 0;
  int workers = 2;
  bool skip_bad = false;
  // Data-parallel: this process's share of every batch, training and test (`batch` is
  // the share's size).
  data::Shard shard;
};

class DataSource {
 public:
  // Reads the dataset or scans the folder's splits, each cut to its limit (0 = all).
  DataSource(const std::string& spec, Splits splits, int64_t train_limit = 0, int64_t test_limit = 0);

  // The loaders for a model of input `image` x `image`: the test one always, the
  // training one with Splits::train_and_test (shuffled, augmented as `s` says). An
  // in-memory dataset is normalised by `mean` and `std` where given (a checkpoint's
  // record), else by its training split's statistics; image folders by ImageNet's.
  void open(int64_t image, const LoaderSettings& s, const std::vector<float>& mean = {},
            const std::vector<float>& std = {});

  // Throws, naming the flag to change, unless a model of config `mc` reads these
  // images and has these classes.
  void check_model(const models::ModelConfig& mc) const;

  // Image folders with skip_bad: the files skipped so far, both splits.
  int64_t bad_images() const;

  const std::string spec;
  const bool folder;
  int64_t in_channels = 3, classes = 0;
  int64_t count = 0;   // the images one epoch reads: the training split's, else the test split's
  std::string source;  // where they come from, for messages
  std::vector<std::string> class_names;
  std::vector<float> mean = data::kImageNetMean, std = data::kImageNetStd;  // as the loaders normalise
  std::unique_ptr<data::BatchSource> train, test;  // train: null with Splits::test

 private:
  Splits splits_;
  int64_t train_limit_, test_limit_;
  DataPair raw_;       // in memory: as read, until open() fits it
  FittedData fitted_;  // ... and as the loaders read it
  data::ImageFolder train_folder_, val_folder_;
  data::ImageFolderLoader *train_images_ = nullptr, *val_images_ = nullptr;  // for their bad-file counts
};

}  // namespace incres::train
