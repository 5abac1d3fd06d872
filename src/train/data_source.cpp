#include "train/data_source.h"

#include "core/error.h"
#include "data/loader.h"

namespace incres::train {

DataSource::DataSource(const std::string& spec_, Splits splits, int64_t train_limit, int64_t test_limit)
    : spec(spec_), folder(is_image_folder(spec_)), splits_(splits), train_limit_(train_limit),
      test_limit_(test_limit) {
  if (!folder) {
    raw_ = load_data(spec);
    in_channels = raw_.train.channels;
    classes = raw_.train.classes;
    class_names = raw_.train.class_names;
    if (splits == Splits::test) source = raw_.test.source + " test set";
    return;
  }
  if (splits == Splits::test) {
    val_folder_ = limit_files(scan_split(spec, "val"), test_limit);
    classes = static_cast<int64_t>(val_folder_.classes.size());
    count = val_folder_.count();
    source = val_folder_.root;
    class_names = val_folder_.class_names;
    return;
  }
  train_folder_ = limit_files(scan_split(spec, "train"), train_limit);
  val_folder_ = limit_files(scan_split(spec, "val", train_folder_.classes), test_limit);
  classes = static_cast<int64_t>(train_folder_.classes.size());
  count = train_folder_.count();
  source = train_folder_.root;
  class_names = train_folder_.class_names;
}

void DataSource::open(int64_t image, const LoaderSettings& s, const std::vector<float>& given_mean,
                      const std::vector<float>& given_std) {
  const bool training = splits_ == Splits::train_and_test;
  if (folder) {
    INCRES_CHECK(!training || count >= s.batch * s.shard.count, "the training set has ", count,
                 " images, fewer than one batch of ", s.batch * s.shard.count);
    auto images = [&](const data::ImageFolder& f, bool train_split) {
      data::ImageLoaderOptions o = image_loader_options(s.recipe, image, s.batch, train_split,
                                                        train_split && s.augment, s.seed, s.workers, s.skip_bad);
      o.shard = s.shard;
      return std::make_unique<data::ImageFolderLoader>(f, std::move(o));
    };
    if (training) {
      auto t = images(train_folder_, true);
      train_images_ = t.get();
      train = std::move(t);
    }
    auto v = images(val_folder_, false);
    val_images_ = v.get();
    test = std::move(v);
    return;
  }
  fitted_ = fit_data(std::move(raw_), image, training ? train_limit_ : 0, test_limit_);
  if (!given_mean.empty()) {  // a checkpoint's own normalisation
    fitted_.mean = given_mean;
    fitted_.std = given_std;
  }
  mean = fitted_.mean;
  std = fitted_.std;
  auto loader = [&](const data::Dataset& d, bool train_split) {
    data::LoaderOptions o = loader_options(fitted_, image, s.batch, train_split, train_split && s.augment, s.seed,
                                           s.workers);
    o.shard = s.shard;
    return std::make_unique<data::Loader>(d, std::move(o));
  };
  if (training) {
    INCRES_CHECK(fitted_.train.count >= s.batch * s.shard.count, "the training set has ", fitted_.train.count,
                 " images, fewer than one batch of ", s.batch * s.shard.count);
    count = fitted_.train.count;
    source = fitted_.train.source;
    train = loader(fitted_.train, true);
  } else {
    count = fitted_.test.count;
  }
  test = loader(fitted_.test, false);
}

void DataSource::check_model(const models::ModelConfig& mc) const {
  INCRES_CHECK(mc.in_channels == in_channels, spec, " has ", in_channels, "-channel images; the model takes ",
               mc.in_channels, " (--in-channels)");
  INCRES_CHECK(mc.classes == classes, source.empty() ? spec : source, " has ", classes, " classes; the model has ",
               mc.classes,
               folder ? " (--classes N; for ImageNet weights the class folders must be ImageNet's 1000, "
                        "whose sorted order is torchvision's class order)"
                      : " (--classes N)");
}

int64_t DataSource::bad_images() const {
  return (train_images_ ? train_images_->bad_count() : 0) + (val_images_ ? val_images_->bad_count() : 0);
}

}  // namespace incres::train
