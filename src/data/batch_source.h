// BatchSource: what the trainer and evaluate() read batches from, whichever loader
// fills them (the in-memory Loader, the decoding ImageFolderLoader).
//
// The contract both loaders keep: a batch's content is a function of (seed, epoch,
// batch index) and the data only, never of worker count or timing, so a run resumed
// with start_epoch(epoch, first_batch) sees the batches a straight run sees.
#pragma once
#include <cstdint>
#include <vector>

#include "core/shape.h"
#include "core/tensor.h"

namespace incres::data {

struct Batch {
  Tensor images;                // N, C, H, W f32 normalised; N = the loader's batch size
  std::vector<int32_t> labels;  // size values (labels.size() == size)
  int64_t index = 0;            // batch index within the epoch
  int64_t size = 0;             // rows in use; < N only for a last partial batch,
                                // whose unused rows are zero
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
