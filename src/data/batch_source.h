// BatchSource: what the trainer and evaluate() read batches from, whichever loader
// fills them (the in-memory Loader, the decoding ImageFolderLoader).
//
// The contract both loaders keep: a batch's content is a function of (seed, epoch,
// batch index) and the data only, never of worker count or timing, so a run resumed
// with start_epoch(epoch, first_batch) sees the batches a straight run sees.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/shape.h"
#include "core/tensor.h"

namespace incres::data {

// A process's share of every batch in data-parallel training. With `count` processes
// and a per-process batch b, batch i of an epoch covers the epoch positions
// [i * b * count, (i + 1) * b * count), and shard k reads the k-th b of them: together
// the shards read what one process reading b * count at a time reads. Augmentation is
// keyed by the epoch position, so a sample gets the same crop and flip whatever count is.
struct Shard {
  int index = 0, count = 1;
  // The first position and the size of batch i of an epoch of n samples (size 0 for a
  // shard past the end of a last partial batch).
  int64_t start(int64_t i, int64_t b) const { return (i * count + index) * b; }
  int64_t size(int64_t i, int64_t b, int64_t n) const {
    return std::clamp<int64_t>(n - start(i, b), 0, b);
  }
  // Batches per epoch of n samples.
  int64_t batches(int64_t n, int64_t b, bool drop_last) const {
    return drop_last ? n / (b * count) : (n + b * count - 1) / (b * count);
  }
};

struct Batch {
  Tensor images;                // N, C, H, W f32 normalised; N = the loader's batch size
  std::vector<int32_t> labels;  // size values (labels.size() == size)
  int64_t index = 0;            // batch index within the epoch
  int64_t size = 0;             // rows in use; < N only for a last partial batch,
                                // whose unused rows are zero (0: a shard past its end)
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;

  virtual int64_t batches_per_epoch() const = 0;
  virtual Shape sample_shape() const = 0;  // C, H, W of one image of a batch

  // Starts (or restarts, also mid-epoch) epoch `epoch` at batch first_batch
  // (0 <= first_batch <= batches_per_epoch()). Batches of a previous epoch still in
  // flight are discarded.
  virtual void start_epoch(int64_t epoch, int64_t first_batch) = 0;
  void start_epoch(int64_t epoch) { start_epoch(epoch, 0); }

  // The next batch of the epoch in order, nullptr after the last. The pointer is valid
  // until the next call to next() or start_epoch(). A failure while filling a batch is
  // thrown as Error when that batch is reached.
  virtual const Batch* next() = 0;
};

}  // namespace incres::data
