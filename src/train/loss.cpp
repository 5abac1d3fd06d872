#include "train/loss.h"

#include <algorithm>
#include <cmath>

#include "backend/ref/ops.h"
#include "core/error.h"

namespace incres::train {

namespace {

void check_args(const char* what, const int32_t* labels, int64_t N, int64_t K) {
  INCRES_CHECK(N > 0, what, ": batch size N must be positive, got ", N);
  INCRES_CHECK(K > 0, what, ": class count K must be positive, got ", K);
  for (int64_t i = 0; i < N; ++i)
    INCRES_CHECK(labels[i] >= 0 && labels[i] < K, what, ": label of row ", i, " is ",
                 labels[i], ", expected a class in [0, ", K,
                 "); check the dataset's labels against the model's class count");
}

// The reference kernel (backend/ref/ops.h), averaged; float for training, double for
// the gradient checks.
template <class T>
LossResult cross_entropy(const T* logits, const int32_t* labels, int64_t N, int64_t K,
                         double eps, T* dlogits, double scale) {
  check_args("softmax_cross_entropy", labels, N, K);
  LossResult r;
  backend::ref::softmax_cross_entropy(&r.loss, &r.correct, dlogits, logits, labels, N, K, eps, scale);
  r.loss /= static_cast<double>(N);
  return r;
}

}  // namespace

LossResult softmax_cross_entropy(const float* logits, const int32_t* labels, int64_t N,
                                 int64_t K, float smoothing, float* dlogits, double scale) {
  return cross_entropy<float>(logits, labels, N, K, smoothing, dlogits, scale);
}

LossResult softmax_cross_entropy(const double* logits, const int32_t* labels, int64_t N,
                                 int64_t K, double smoothing, double* dlogits, double scale) {
  return cross_entropy<double>(logits, labels, N, K, smoothing, dlogits, scale);
}

int64_t topk_correct(const float* logits, const int32_t* labels, int64_t N, int64_t K, int k) {
  check_args("topk_correct", labels, N, K);
  INCRES_CHECK(k >= 1 && k <= K, "topk_correct: k must be in [1, K = ", K, "], got ", k);
  int64_t hits = 0;
  for (int64_t i = 0; i < N; ++i) {
    const float* x = logits + i * K;
    const int64_t y = labels[i];
    // The label's rank: how many classes come before it in a stable descending sort.
    int64_t rank = 0;
    for (int64_t j = 0; j < K; ++j)
      rank += (x[j] > x[y]) || (x[j] == x[y] && j < y);
    hits += rank < k;
  }
  return hits;
}

void Calibration::add(const float* logits, const int32_t* labels, int64_t N, int64_t K) {
  check_args("Calibration::add", labels, N, K);
  const int bins = static_cast<int>(rows_.size());
  for (int64_t i = 0; i < N; ++i) {
    const float* x = logits + i * K;
    const int64_t top = std::max_element(x, x + K) - x;
    double sum = 0;  // of exp(x_j - max): the top class's probability is 1 / sum
    for (int64_t j = 0; j < K; ++j) sum += std::exp(static_cast<double>(x[j]) - static_cast<double>(x[top]));
    const double p = 1.0 / sum;
    const int b = std::min(bins - 1, static_cast<int>(p * bins));
    ++rows_[b];
    right_[b] += top == labels[i];
    confidence_[b] += p;
  }
}

void Calibration::sum_across(dist::Communicator& comm) {
  comm.sum(rows_.data(), static_cast<int64_t>(rows_.size()), "the sum of the calibration bins");
  comm.sum(right_.data(), static_cast<int64_t>(right_.size()), "the sum of the calibration bins");
  comm.sum(confidence_.data(), static_cast<int64_t>(confidence_.size()), "the sum of the calibration bins");
}

double Calibration::ece() const {
  int64_t n = 0;
  double gap = 0;
  for (size_t b = 0; b < rows_.size(); ++b) {
    n += rows_[b];
    gap += std::abs(static_cast<double>(right_[b]) - confidence_[b]);
  }
  return n ? 100.0 * gap / static_cast<double>(n) : 0;
}

}  // namespace incres::train
