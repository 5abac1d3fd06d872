// Loader: turns a Dataset into normalised f32 NCHW batches on worker threads, in a
// fixed order that depends only on (seed, epoch): never on the number of workers or
// on timing, so a run resumed at (epoch, first_batch) sees the same batches.
//
// Per epoch e, the sample order is a Fisher-Yates permutation drawn from
// Rng(mix_key(seed, e)) (identity when shuffle is off). The sample at position i of
// the epoch is augmented with Rng(mix_key(seed, e, i)): first its crop offsets dy, dx
// (each below(2*crop_pad + 1)), then the flip (uniform() < 0.5). The draws are made
// in that order whatever the options, so turning flip off keeps the crops.
//
// Per sample: zero-pad HxW to out_size x out_size (if set; an odd difference puts
// the extra row/column at the bottom/right), then, with augment, pad by crop_pad
// zeros on each side and crop back at (dy, dx) (torchvision RandomCrop(padding=4)),
// then flip left-right, then normalise (pixel/255 - mean[c]) / std[c]. Padding is
// black pixels (value 0 before normalisation), as in torchvision.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "core/shape.h"
#include "core/tensor.h"
#include "data/batch_ring.h"
#include "data/batch_source.h"
#include "data/dataset.h"

namespace incres::data {

struct LoaderOptions {
  int64_t batch = 128;
  bool shuffle = true;
  bool drop_last = true;   // drop the last partial batch of an epoch
  bool augment = false;    // random pad-crop (crop_pad) and flip (flip)
  int64_t out_size = 0;    // pad symmetrically with zeros to out_size x out_size; 0 = keep
  int crop_pad = 4;
  bool flip = true;
  std::vector<float> mean, std;  // per channel, [0,1] pixel units; empty = 0 and 1
  uint64_t seed = 0;
  int workers = 2;   // 0 = fill batches on the calling thread inside next()
  int prefetch = 4;  // ring slots: batches filled ahead, plus the one handed out
  Shard shard;       // data-parallel: this process's share of each batch (batch_source.h)
};

class Loader : public BatchSource {
 public:
  // ds must outlive the Loader and stay unchanged while an epoch runs. Throws Error on
  // an inconsistent dataset or options. Allocates every batch buffer here.
  Loader(const Dataset& ds, LoaderOptions opts);
  Loader(Dataset&&, LoaderOptions) = delete;  // a temporary dataset would dangle
  ~Loader() override;  // stops and joins the workers, also mid-epoch
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  int64_t batches_per_epoch() const override { return batches_; }
  Shape sample_shape() const override;  // C, H, W after out_size padding

  // As BatchSource (batch_source.h).
  using BatchSource::start_epoch;
  void start_epoch(int64_t epoch, int64_t first_batch) override;
  const Batch* next() override;

 private:
  void fill(Batch& b, int64_t epoch, int64_t index) const;
  void fill_sample(float* out, int64_t epoch, int64_t position) const;
  void compute_order(int64_t epoch);

  const Dataset& ds_;
  LoaderOptions opts_;
  int64_t batches_ = 0;
  int64_t C_ = 0, H_ = 0, W_ = 0;       // output sample shape
  int64_t top_ = 0, left_ = 0;          // out_size padding before the image
  std::vector<float> lut_;              // C x 256: normalised value of each pixel byte
  std::vector<int64_t> order_;          // epoch position -> sample index
  // Last, so that it is destroyed first: its workers stop before what they read goes.
  // Built once the options are checked.
  std::optional<BatchRing> ring_;
};

}  // namespace incres::data
