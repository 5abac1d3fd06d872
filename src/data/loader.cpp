// Loader: fills the batches of a BatchRing (batch_ring.h) from an in-memory Dataset.
// What a batch contains depends only on (seed, epoch, index).
#include "data/loader.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"

namespace incres::data {

Loader::Loader(const Dataset& ds, LoaderOptions opts) : ds_(ds), opts_(std::move(opts)) {
  validate(ds_, "Loader dataset");
  const LoaderOptions& o = opts_;
  INCRES_CHECK(o.batch >= 1, "LoaderOptions.batch is ", o.batch, ", expected >= 1");
  INCRES_CHECK(o.prefetch >= 1 && o.prefetch <= 1024, "LoaderOptions.prefetch is ", o.prefetch,
               ", expected 1..1024 ring slots");
  INCRES_CHECK(o.workers >= 0 && o.workers <= 256, "LoaderOptions.workers is ", o.workers,
               ", expected 0..256 (0 fills batches inside next())");
  INCRES_CHECK(o.crop_pad >= 0 && o.crop_pad <= 4096, "LoaderOptions.crop_pad is ", o.crop_pad,
               ", expected 0..4096");
  const int64_t C = ds_.channels;
  INCRES_CHECK(o.mean.empty() || static_cast<int64_t>(o.mean.size()) == C, "LoaderOptions.mean has ",
               o.mean.size(), " values, expected 0 or ", C, " (one per channel of ", ds_.source, ")");
  INCRES_CHECK(o.std.empty() || static_cast<int64_t>(o.std.size()) == C, "LoaderOptions.std has ",
               o.std.size(), " values, expected 0 or ", C, " (one per channel of ", ds_.source, ")");

  C_ = C;
  H_ = ds_.height;
  W_ = ds_.width;
  if (o.out_size != 0) {
    INCRES_CHECK(o.out_size >= std::max(H_, W_) && o.out_size <= 65536, "LoaderOptions.out_size is ",
                 o.out_size, ", expected 0 or at least the image size ", H_, "x", W_,
                 " (it only pads)");
    top_ = (o.out_size - H_) / 2;
    left_ = (o.out_size - W_) / 2;
    H_ = W_ = o.out_size;
  }

  INCRES_CHECK(o.shard.count >= 1 && o.shard.index >= 0 && o.shard.index < o.shard.count, "LoaderOptions.shard is ",
               o.shard.index, " of ", o.shard.count);
  batches_ = o.shard.batches(ds_.count, o.batch, o.drop_last);
  INCRES_CHECK(batches_ > 0, "Loader: ", ds_.source, " has ", ds_.count,
               " samples, not one full batch of ", o.batch * o.shard.count, (o.drop_last ? " with drop_last" : ""),
               "; lower LoaderOptions.batch");

  // One table per channel: the normalised value of each of the 256 pixel bytes,
  // computed in double exactly as (p/255 - mean) / std.
  lut_.resize(static_cast<size_t>(C) * 256);
  for (int64_t c = 0; c < C; ++c) {
    double mean = o.mean.empty() ? 0.0 : o.mean[c], sd = o.std.empty() ? 1.0 : o.std[c];
    INCRES_CHECK(std::isfinite(mean), "LoaderOptions.mean[", c, "] is ", mean, ", expected finite");
    INCRES_CHECK(std::isfinite(sd) && sd > 0, "LoaderOptions.std[", c, "] is ", sd,
                 ", expected finite and > 0");
    for (int p = 0; p < 256; ++p) lut_[c * 256 + p] = static_cast<float>((p / 255.0 - mean) / sd);
  }

  order_.resize(static_cast<size_t>(ds_.count));
  ring_.emplace(
      o.prefetch, Shape{o.batch, C_, H_, W_}, o.workers, batches_,
      [this](int64_t epoch) { compute_order(epoch); },
      [this](Batch& out, int64_t epoch, int64_t index) { fill(out, epoch, index); }, "Loader", "data loader");
}

Loader::~Loader() = default;  // ring_ goes first and joins its workers

Shape Loader::sample_shape() const { return Shape{C_, H_, W_}; }

void Loader::compute_order(int64_t epoch) {
  std::iota(order_.begin(), order_.end(), int64_t{0});
  if (!opts_.shuffle) return;
  // Fisher-Yates (Knuth, TAOCP vol. 2, Algorithm 3.4.2P). The stream is keyed apart
  // from the per-sample augmentation streams mix_key(seed, epoch, position).
  constexpr uint64_t kShuffleStream = 0x53485546464c45ull;  // "SHUFFLE"
  Rng rng(mix_key(opts_.seed ^ kShuffleStream, static_cast<uint64_t>(epoch)));
  for (size_t i = order_.size(); i > 1; --i) std::swap(order_[i - 1], order_[rng.below(i)]);
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) { ring_->start_epoch(epoch, first_batch); }

const Batch* Loader::next() { return ring_->next(); }

void Loader::fill(Batch& out, int64_t epoch, int64_t index) const {
  const int64_t n = opts_.batch, per = C_ * H_ * W_;
  const int64_t start = opts_.shard.start(index, n), size = opts_.shard.size(index, n, ds_.count);
  // The dataset is only referenced: catch one changed since construction rather than
  // read out of bounds.
  INCRES_CHECK(ds_.images.size() == static_cast<size_t>(ds_.count * ds_.channels * ds_.height * ds_.width) &&
                   ds_.labels.size() == static_cast<size_t>(ds_.count),
               "Loader: ", ds_.source, " changed size after the Loader was built");
  out.index = index;
  out.size = size;
  out.labels.resize(static_cast<size_t>(size));  // within the reserved capacity
  float* images = out.images.data<float>();
  for (int64_t r = 0; r < size; ++r) {
    const int64_t sample = order_[static_cast<size_t>(start + r)];
    const int32_t label = ds_.labels[static_cast<size_t>(sample)];
    INCRES_CHECK(label >= 0 && label < ds_.classes, "Loader: ", ds_.source, ": label ", label,
                 " of sample ", sample, " outside [0, ", ds_.classes, ")");
    out.labels[static_cast<size_t>(r)] = label;
    fill_sample(images + r * per, epoch, start + r);
  }
  std::fill(images + size * per, images + n * per, 0.0f);  // unused rows of a partial batch
}

void Loader::fill_sample(float* out, int64_t epoch, int64_t position) const {
  const int64_t Hs = ds_.height, Ws = ds_.width, Cs = ds_.channels;
  const uint8_t* img = ds_.images.data() + order_[static_cast<size_t>(position)] * Hs * Ws * Cs;
  // Output pixel (y, x) shows pixel (y + dy, xs + dx) of the padded image, where
  // xs = flip ? W-1-x : x; padded pixel (py, px) is source pixel (py - top, px - left).
  int64_t dy = 0, dx = 0;
  bool flip = false;
  if (opts_.augment) {
    Rng rng(mix_key(opts_.seed, static_cast<uint64_t>(epoch), static_cast<uint64_t>(position)));
    const uint64_t span = 2 * static_cast<uint64_t>(opts_.crop_pad) + 1;
    dy = static_cast<int64_t>(rng.below(span)) - opts_.crop_pad;
    dx = static_cast<int64_t>(rng.below(span)) - opts_.crop_pad;
    const bool coin = rng.uniform() < 0.5;  // drawn even when flip is off: same crops
    flip = opts_.flip && coin;
  }
  for (int64_t c = 0; c < C_; ++c) {
    const float* lut = lut_.data() + c * 256;
    const float pad = lut[0];  // a black (zero) pixel, normalised
    for (int64_t y = 0; y < H_; ++y) {
      float* row = out + (c * H_ + y) * W_;
      const int64_t iy = y + dy - top_;
      if (iy < 0 || iy >= Hs) {
        std::fill(row, row + W_, pad);
        continue;
      }
      const uint8_t* src = img + iy * Ws * Cs + c;
      for (int64_t x = 0; x < W_; ++x) {
        const int64_t ix = (flip ? W_ - 1 - x : x) + dx - left_;
        row[x] = (ix >= 0 && ix < Ws) ? lut[src[ix * Cs]] : pad;
      }
    }
  }
}

}  // namespace incres::data
