// BatchRing (batch_ring.h describes the protocol).
#include "data/batch_ring.h"

#include <algorithm>
#include <exception>

#include "core/error.h"

namespace incres::data {

BatchRing::BatchRing(int slots, Shape batch_shape, int workers, int64_t batches, StartFn start, FillFn fill,
                     std::string owner, std::string what)
    : batches_(batches),
      start_(std::move(start)),
      fill_(std::move(fill)),
      owner_(std::move(owner)),
      what_(std::move(what)) {
  slots_.resize(static_cast<size_t>(slots));
  for (Batch& b : slots_) {
    b.images = Tensor(batch_shape);
    b.labels.reserve(static_cast<size_t>(batch_shape[0]));  // later resizes never allocate
  }
  ready_.assign(slots_.size(), -1);
  for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { worker_loop(); });
}

BatchRing::~BatchRing() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    ++generation_;
  }
  work_cv_.notify_all();
  done_cv_.notify_all();
  for (auto& t : threads_) t.join();  // a worker mid-fill finishes that batch first
}

void BatchRing::start_epoch(int64_t epoch, int64_t first_batch) {
  INCRES_CHECK(epoch >= 0, owner_, "::start_epoch: epoch is ", epoch, ", expected >= 0");
  INCRES_CHECK(first_batch >= 0 && first_batch <= batches_, owner_, "::start_epoch: first_batch is ",
               first_batch, ", expected 0..", batches_, " (batches per epoch)");
  std::unique_lock lk(mu_);
  // Stop new claims, then wait for fills in progress: after that no worker touches
  // the loader's epoch state or a slot, and the new epoch can reset them.
  ++generation_;
  active_ = false;
  done_cv_.wait(lk, [&] { return in_flight_ == 0; });
  start_(epoch);
  epoch_ = epoch;
  next_claim_ = released_ = next_out_ = first_batch;
  std::fill(ready_.begin(), ready_.end(), -1);
  error_batch_ = -1;
  error_.clear();
  active_ = true;
  lk.unlock();
  work_cv_.notify_all();
}

const Batch* BatchRing::next() {
  std::unique_lock lk(mu_);
  INCRES_CHECK(active_, owner_, "::next called before start_epoch");
  released_ = next_out_;  // gives back the batch handed out by the previous call
  work_cv_.notify_all();
  if (next_out_ >= batches_) return nullptr;
  const int64_t b = next_out_;
  const size_t slot = static_cast<size_t>(b) % slots_.size();
  if (threads_.empty() && ready_[slot] != b && error_batch_ != b) {
    std::string err = fill_slot(epoch_, b);
    if (err.empty()) {
      ready_[slot] = b;
    } else {
      error_batch_ = b;
      error_ = std::move(err);
    }
  }
  done_cv_.wait(lk, [&] { return ready_[slot] == b || (error_batch_ >= 0 && error_batch_ <= b); });
  if (ready_[slot] != b) fail(what_, ": batch ", error_batch_, " of epoch ", epoch_, " failed: ", error_);
  ++next_out_;
  return &slots_[slot];
}

std::string BatchRing::fill_slot(int64_t epoch, int64_t b) {
  try {
    fill_(slots_[static_cast<size_t>(b) % slots_.size()], epoch, b);
  } catch (const std::exception& e) {
    std::string err = e.what();
    return err.empty() ? "exception without a message" : err;
  } catch (...) {
    return "unknown exception";
  }
  return {};
}

void BatchRing::worker_loop() {
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
    std::string err = fill_slot(epoch, b);
    lk.lock();
    --in_flight_;
    if (gen == generation_) {  // else start_epoch or the destructor discarded it
      if (err.empty())
        ready_[static_cast<size_t>(b) % slots_.size()] = b;
      else if (error_batch_ < 0 || b < error_batch_) {
        error_batch_ = b;
        error_ = std::move(err);
      }
    }
    done_cv_.notify_all();
  }
}

}  // namespace incres::data
