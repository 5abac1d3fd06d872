#include "dist/gradient_exchange.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "core/error.h"

namespace incres::dist {

GradientExchange::GradientExchange(Communicator& comm, std::vector<std::span<float>> buffers, int64_t bucket_bytes)
    : comm_(comm), buffers_(std::move(buffers)), bucket_of_(buffers_.size()) {
  INCRES_CHECK(bucket_bytes > 0, "gradient exchange: bucket size must be positive, got ", bucket_bytes);
  int64_t filled = 0;
  for (size_t i = 0; i < buffers_.size(); ++i) {
    if (buckets_.empty() || filled >= bucket_bytes) {
      buckets_.push_back({.first = static_cast<int>(i), .last = static_cast<int>(i)});
      filled = 0;
    }
    Bucket& b = buckets_.back();
    b.last = static_cast<int>(i) + 1;
    filled += static_cast<int64_t>(buffers_[i].size() * sizeof(float));
    bucket_of_[i] = static_cast<int>(buckets_.size()) - 1;
  }
  for (Bucket& b : buckets_) {
    size_t n = 0;
    for (int i = b.first; i < b.last; ++i) n += buffers_[i].size();
    b.staging.resize(n);
    b.pending = b.last - b.first;
  }
}

int64_t GradientExchange::bytes() const {
  int64_t n = 0;
  for (const auto& s : buffers_) n += static_cast<int64_t>(s.size() * sizeof(float));
  return n;
}

void GradientExchange::start(Bucket& b) {
  float* out = b.staging.data();
  for (int i = b.first; i < b.last; ++i) {
    std::memcpy(out, buffers_[i].data(), buffers_[i].size() * sizeof(float));
    out += buffers_[i].size();
  }
  b.started = true;
  comm_.start_sum(b.staging.data(), static_cast<int64_t>(b.staging.size()), "the sum of a gradient bucket");
}

void GradientExchange::ready(int i) {
  INCRES_CHECK(i >= 0 && i < static_cast<int>(buffers_.size()), "gradient exchange: buffer ", i, " of ",
               buffers_.size());
  Bucket& b = buckets_[bucket_of_[i]];
  if (--b.pending == 0 && !b.started) {
    // Buckets start in order: a later one never overtakes an earlier one still waiting
    // for a buffer, so every rank issues the same sequence of sums.
    for (Bucket& e : buckets_) {
      if (&e == &b) break;
      if (!e.started) return;
    }
    start(b);
    for (size_t k = bucket_of_[i] + 1; k < buckets_.size() && buckets_[k].pending == 0 && !buckets_[k].started; ++k)
      start(buckets_[k]);
  }
}

void GradientExchange::finish() {
  for (Bucket& b : buckets_)
    if (!b.started) start(b);
  const auto t0 = std::chrono::steady_clock::now();
  comm_.wait();
  exposed_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++steps_;
  const float inv = 1.f / static_cast<float>(comm_.size());
  for (Bucket& b : buckets_) {
    const float* in = b.staging.data();
    for (int i = b.first; i < b.last; ++i) {
      float* d = buffers_[i].data();
      for (size_t j = 0; j < buffers_[i].size(); ++j) d[j] = in[j] * inv;
      in += buffers_[i].size();
    }
    b.pending = b.last - b.first;
    b.started = false;
  }
}

}  // namespace incres::dist
