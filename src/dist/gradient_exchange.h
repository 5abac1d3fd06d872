// The gradient exchange of data-parallel training, overlapped with backward as PyTorch
// DDP and Horovod do it: the gradient buffers, in the order backward finishes them, go
// into buckets of about 25 MB; the moment backward reports the last buffer of a bucket
// ready, the bucket is packed into one staging buffer and its sum across the ranks
// starts on the communication thread, while backward goes on with the next layers.
// finish() waits for the last sums and leaves every buffer holding the mean over the
// ranks. Buckets start in the same order on every rank and step, so the same world
// reduces the same way every time. Nothing is allocated after construction.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "dist/communicator.h"

namespace incres::dist {

class GradientExchange {
 public:
  static constexpr int64_t kBucketBytes = 25 << 20;

  // buffers: in the order backward finishes them.
  GradientExchange(Communicator& comm, std::vector<std::span<float>> buffers, int64_t bucket_bytes = kBucketBytes);

  // Buffer i holds its final value of this step.
  void ready(int i);
  // Starts the buckets not started yet (buffers never reported ready), waits for every
  // sum and writes each buffer's mean over the ranks back.
  void finish();

  int buckets() const { return static_cast<int>(buckets_.size()); }
  int64_t bytes() const;  // of every buffer
  // Seconds spent in finish() waiting for sums still running when backward ended: the
  // share of the exchange not hidden behind backward. Since construction.
  double exposed_seconds() const { return exposed_; }
  int64_t steps() const { return steps_; }

 private:
  struct Bucket {
    int first = 0, last = 0;  // its buffers [first, last)
    int pending = 0;          // buffers not yet ready this step
    bool started = false;
    std::vector<float> staging;
  };
  void start(Bucket& b);

  Communicator& comm_;
  std::vector<std::span<float>> buffers_;
  std::vector<int> bucket_of_;  // per buffer
  std::vector<Bucket> buckets_;
  double exposed_ = 0;
  int64_t steps_ = 0;
};

}  // namespace incres::dist
