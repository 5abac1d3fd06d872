// ImageFolderLoader: fills the batches of a BatchRing (batch_ring.h) by decoding files
// on the fly, on the ring's workers.
#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"
#include "data/image_folder.h"

namespace incres::data {

ImageFolderLoader::ImageFolderLoader(const ImageFolder& folder, ImageLoaderOptions opts)
    : folder_(folder), opts_(std::move(opts)) {
  const ImageLoaderOptions& o = opts_;
  INCRES_CHECK(folder_.count() > 0 && folder_.labels.size() == folder_.files.size(), "ImageFolderLoader: ",
               folder_.root, " has ", folder_.count(), " files and ", folder_.labels.size(),
               " labels; build it with scan_image_folder");
  INCRES_CHECK(o.batch >= 1, "ImageLoaderOptions.batch is ", o.batch, ", expected >= 1");
  INCRES_CHECK(o.prefetch >= 1 && o.prefetch <= 1024, "ImageLoaderOptions.prefetch is ", o.prefetch,
               ", expected 1..1024 ring slots");
  INCRES_CHECK(o.workers >= 0 && o.workers <= 256, "ImageLoaderOptions.workers is ", o.workers,
               ", expected 0..256 (0 decodes inside next())");
  validate(o.transform);
  validate_normalization(o.mean, o.std);
  for (int32_t label : folder_.labels)
    INCRES_CHECK(label >= 0 && static_cast<size_t>(label) < folder_.classes.size(), "ImageFolderLoader: ",
                 folder_.root, ": label ", label, " outside [0, ", folder_.classes.size(), ")");
  size_ = output_size(o.transform);

  const int64_t n = folder_.count();
  INCRES_CHECK(o.shard.count >= 1 && o.shard.index >= 0 && o.shard.index < o.shard.count,
               "ImageLoaderOptions.shard is ", o.shard.index, " of ", o.shard.count);
  batches_ = o.shard.batches(n, o.batch, o.drop_last);
  INCRES_CHECK(batches_ > 0, "ImageFolderLoader: ", folder_.root, " has ", n, " images, not one full batch of ",
               o.batch, (o.drop_last ? " with drop_last" : ""), "; lower the batch size");

  order_.resize(static_cast<size_t>(n));
  ring_.emplace(
      o.prefetch, Shape{o.batch, 3, size_, size_}, o.workers, batches_,
      [this](int64_t epoch) { compute_order(epoch); },
      [this](Batch& out, int64_t epoch, int64_t index) { fill(out, epoch, index); }, "ImageFolderLoader",
      "image loader");
}

ImageFolderLoader::~ImageFolderLoader() = default;  // ring_ goes first and joins its workers

void ImageFolderLoader::compute_order(int64_t epoch) {
  std::iota(order_.begin(), order_.end(), int64_t{0});
  if (!opts_.shuffle) return;
  // The Loader's shuffle stream, keyed apart from the per-sample streams.
  constexpr uint64_t kShuffleStream = 0x53485546464c45ull;  // "SHUFFLE"
  Rng rng(mix_key(opts_.seed ^ kShuffleStream, static_cast<uint64_t>(epoch)));
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
}

void ImageFolderLoader::start_epoch(int64_t epoch, int64_t first_batch) { ring_->start_epoch(epoch, first_batch); }

const Batch* ImageFolderLoader::next() { return ring_->next(); }

void ImageFolderLoader::fill(Batch& out, int64_t epoch, int64_t index) const {
  const int64_t n = opts_.batch, per = 3 * size_ * size_;
  const int64_t start = opts_.shard.start(index, n), size = opts_.shard.size(index, n, folder_.count());
  out.index = index;
  out.size = size;
  out.labels.resize(static_cast<size_t>(size));
  float* images = out.images.data<float>();
  for (int64_t r = 0; r < size; ++r) out.labels[static_cast<size_t>(r)] = fill_sample(images + r * per, epoch, start + r);
  std::fill(images + size * per, images + n * per, 0.0f);
}

int32_t ImageFolderLoader::fill_sample(float* out, int64_t epoch, int64_t position) const {
  const int64_t n = folder_.count();
  for (int64_t k = 0; k < n; ++k) {
    const int64_t sample = order_[static_cast<size_t>((position + k) % n)];
    if (opts_.skip_bad && known_bad(sample)) continue;
    Image img;
    try {
      img = decode_image(folder_.files[static_cast<size_t>(sample)], opts_.decode);
    } catch (const Error& e) {
      if (!opts_.skip_bad) throw;  // the message names the file
      note_bad(sample, e.what());
      continue;
    }
    // The stream of the position, not of the file: a replacement for a bad file is
    // cropped as the bad one would have been.
    Rng rng(mix_key(opts_.seed, static_cast<uint64_t>(epoch), static_cast<uint64_t>(position)));
    normalize(apply(opts_.transform, img, rng), opts_.mean, opts_.std, out);
    return folder_.labels[static_cast<size_t>(sample)];
  }
  fail("image loader: all ", n, " images of ", folder_.root, " fail to decode (skip_bad); see the warnings above");
}

bool ImageFolderLoader::known_bad(int64_t sample) const {
  std::lock_guard lk(bad_mu_);
  return bad_.count(sample) != 0;
}

void ImageFolderLoader::note_bad(int64_t sample, const std::string& message) const {
  size_t total;
  {
    std::lock_guard lk(bad_mu_);
    if (!bad_.emplace(sample, message).second) return;  // another worker logged it
    total = bad_.size();
  }
  log_warn(cat("skipping bad image (", total, " so far): ", message));
}

int64_t ImageFolderLoader::bad_count() const {
  std::lock_guard lk(bad_mu_);
  return static_cast<int64_t>(bad_.size());
}

std::vector<std::string> ImageFolderLoader::bad_files() const {
  std::vector<std::string> out;
  {
    std::lock_guard lk(bad_mu_);
    for (const auto& [sample, msg] : bad_) out.push_back(folder_.files[static_cast<size_t>(sample)]);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace incres::data
