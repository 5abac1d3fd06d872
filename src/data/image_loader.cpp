// ImageFolderLoader: the ring of preallocated batches of Loader (loader.cpp describes
// the protocol: batch b lives in slot b % S and is claimed by a worker only once
// next() has given back batch b - S), filled by decoding files on the fly.
//
// The ring is a copy of Loader's; when the trainer takes either loader through one
// interface, both should share it (see the report of the image-folder issue).
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
  batches_ = o.drop_last ? n / o.batch : (n + o.batch - 1) / o.batch;
  INCRES_CHECK(batches_ > 0, "ImageFolderLoader: ", folder_.root, " has ", n, " images, not one full batch of ",
               o.batch, (o.drop_last ? " with drop_last" : ""), "; lower the batch size");

  order_.resize(static_cast<size_t>(n));
  slots_.resize(static_cast<size_t>(o.prefetch));
  for (Batch& b : slots_) {
    b.images = Tensor(Shape{o.batch, 3, size_, size_});
    b.labels.reserve(static_cast<size_t>(o.batch));
  }
  ready_.assign(slots_.size(), -1);
  for (int i = 0; i < o.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

ImageFolderLoader::~ImageFolderLoader() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    ++generation_;
  }
  work_cv_.notify_all();
  done_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ImageFolderLoader::compute_order(int64_t epoch) {
  std::iota(order_.begin(), order_.end(), int64_t{0});
  if (!opts_.shuffle) return;
  // The Loader's shuffle stream, keyed apart from the per-sample streams.
  constexpr uint64_t kShuffleStream = 0x53485546464c45ull;  // "SHUFFLE"
  Rng rng(mix_key(opts_.seed ^ kShuffleStream, static_cast<uint64_t>(epoch)));
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
}

void ImageFolderLoader::start_epoch(int64_t epoch, int64_t first_batch) {
  INCRES_CHECK(epoch >= 0, "ImageFolderLoader::start_epoch: epoch is ", epoch, ", expected >= 0");
  INCRES_CHECK(first_batch >= 0 && first_batch <= batches_, "ImageFolderLoader::start_epoch: first_batch is ",
               first_batch, ", expected 0..", batches_, " (batches per epoch)");
  std::unique_lock lk(mu_);
  ++generation_;
  active_ = false;
  done_cv_.wait(lk, [&] { return in_flight_ == 0; });
  compute_order(epoch);
  epoch_ = epoch;
  next_claim_ = released_ = next_out_ = first_batch;
  std::fill(ready_.begin(), ready_.end(), -1);
  error_batch_ = -1;
  error_.clear();
  active_ = true;
  lk.unlock();
  work_cv_.notify_all();
}

const Batch* ImageFolderLoader::next() {
  std::unique_lock lk(mu_);
  INCRES_CHECK(active_, "ImageFolderLoader::next called before start_epoch");
  released_ = next_out_;
  work_cv_.notify_all();
  if (next_out_ >= batches_) return nullptr;
  const int64_t b = next_out_;
  const size_t slot = static_cast<size_t>(b) % slots_.size();
  if (threads_.empty() && ready_[slot] != b && error_batch_ != b) {
    try {
      fill(slots_[slot], epoch_, b);
      ready_[slot] = b;
    } catch (const std::exception& e) {
      error_batch_ = b;
      error_ = e.what();
    }
  }
  done_cv_.wait(lk, [&] { return ready_[slot] == b || (error_batch_ >= 0 && error_batch_ <= b); });
  if (ready_[slot] != b) fail("image loader: batch ", error_batch_, " of epoch ", epoch_, " failed: ", error_);
  ++next_out_;
  return &slots_[slot];
}

void ImageFolderLoader::worker_loop() {
  std::unique_lock lk(mu_);
  for (;;) {
    work_cv_.wait(lk, [&] {
      return stopping_ ||
             (active_ && next_claim_ < batches_ && next_claim_ < released_ + static_cast<int64_t>(slots_.size()));
    });
    if (stopping_) return;
    const int64_t b = next_claim_++;
    const uint64_t gen = generation_;
    const int64_t epoch = epoch_;
    ++in_flight_;
    lk.unlock();
    std::string err;
    try {
      fill(slots_[static_cast<size_t>(b) % slots_.size()], epoch, b);
    } catch (const std::exception& e) {
      err = e.what();
      if (err.empty()) err = "exception without a message";
    } catch (...) {
      err = "unknown exception";
    }
    lk.lock();
    --in_flight_;
    if (gen == generation_) {
      if (err.empty())
        ready_[static_cast<size_t>(b) % slots_.size()] = b;
      else if (error_batch_ < 0 || b < error_batch_) {
        error_batch_ = b;
        error_ = err;
      }
    }
    done_cv_.notify_all();
  }
}

void ImageFolderLoader::fill(Batch& out, int64_t epoch, int64_t index) const {
  const int64_t n = opts_.batch, per = 3 * size_ * size_;
  const int64_t start = index * n, size = std::min(n, folder_.count() - start);
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
