// BatchRing: the fixed ring of preallocated batches that Loader and ImageFolderLoader
// fill on worker threads. A loader supplies two callbacks, what to do when an epoch
// starts (compute its order) and how to fill batch `index` of an epoch into a slot;
// the ring owns the threads, the slots and the protocol.
//
// Batch b always lives in slot b % S (S slots). A worker may claim batch b only when
// b < released + S, i.e. when next() has given back batch b - S, the slot's previous
// tenant; so at most one thread writes a slot and never while the caller reads it,
// and each batch is claimed once. next() hands out batches strictly in index order,
// so what the caller sees depends only on what the fill callback makes of
// (epoch, index), never on which worker filled it or when.
//
// A fill that throws fails its batch: next() throws when it reaches the smallest
// failed batch, naming it. start_epoch stops new claims and waits for the fills in
// progress before the epoch callback runs, so that callback may rewrite whatever the
// fills read; results of the old epoch are dropped (a generation counter). With no
// workers, next() fills each batch itself on the calling thread.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/shape.h"
#include "data/batch_source.h"

namespace incres::data {

class BatchRing {
 public:
  // Called with no fill in progress, before the first batch of an epoch is claimed.
  using StartFn = std::function<void(int64_t epoch)>;
  // Fills batch `index` of `epoch` into `out` (images of the ring's batch shape,
  // labels with capacity N); must not allocate, and may run on several threads at once
  // for different batches.
  using FillFn = std::function<void(Batch& out, int64_t epoch, int64_t index)>;

  // `slots` batches of shape N, C, H, W are allocated here, the only allocation.
  // owner names the loader in errors about calls ("Loader::next called before
  // start_epoch"); what names it in batch failures ("data loader: batch 2 of epoch 0
  // failed: ..."). The callbacks must stay callable until the ring is destroyed.
  BatchRing(int slots, Shape batch_shape, int workers, int64_t batches, StartFn start, FillFn fill,
            std::string owner, std::string what);
  ~BatchRing();  // stops and joins the workers, also mid-epoch
  BatchRing(const BatchRing&) = delete;
  BatchRing& operator=(const BatchRing&) = delete;

  // As BatchSource (batch_source.h).
  void start_epoch(int64_t epoch, int64_t first_batch);
  const Batch* next();

 private:
  void worker_loop();
  std::string fill_slot(int64_t epoch, int64_t b);  // the error message, empty if none

  const int64_t batches_;
  const StartFn start_;
  const FillFn fill_;
  const std::string owner_, what_;
  std::vector<Batch> slots_;    // batch b lives in slots_[b % slots_.size()]
  std::vector<int64_t> ready_;  // per slot: the batch index filled in it, or -1

  // Everything below is guarded by mu_.
  std::mutex mu_;
  std::condition_variable work_cv_;  // workers wait for a batch they may fill
  std::condition_variable done_cv_;  // next() and start_epoch wait for workers
  bool stopping_ = false;
  bool active_ = false;              // an epoch was started
  uint64_t generation_ = 0;          // bumped by start_epoch: stale fills are dropped
  int64_t epoch_ = 0;
  int64_t next_claim_ = 0;           // next batch index a worker takes
  int64_t released_ = 0;             // batches < released_ are given back by next()
  int64_t next_out_ = 0;             // the batch next() returns next
  int in_flight_ = 0;                // workers filling a slot right now
  int64_t error_batch_ = -1;         // smallest failed batch of this generation
  std::string error_;
  std::vector<std::thread> threads_;
};

}  // namespace incres::data
