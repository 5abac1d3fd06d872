#include "train/loss.h"

#include <cmath>

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

// One implementation for float (training) and double (gradient checks).
template <class T>
LossResult cross_entropy(const T* logits, const int32_t* labels, int64_t N, int64_t K,
                         double eps, T* dlogits, double scale) {
  check_args("softmax_cross_entropy", labels, N, K);
  INCRES_CHECK(eps >= 0 && eps <= 1, "softmax_cross_entropy: label smoothing must be in [0, 1], got ",
               eps);
  const double off = eps / static_cast<double>(K);  // smoothing mass on every class
  const double on = 1.0 - eps + off;                // target of the labelled class
  const double g = scale / static_cast<double>(N);
  LossResult r;
  for (int64_t i = 0; i < N; ++i) {
    const T* x = logits + i * K;
    const int64_t y = labels[i];
    int64_t arg = 0;  // first maximum, as the top-1 prediction
    for (int64_t j = 1; j < K; ++j)
      if (x[j] > x[arg]) arg = j;
    if (arg == y) ++r.correct;
    // log softmax_j = x_j - lse, lse = m + log(sum exp(x_j - m)): every exponent <= 0.
    const double m = static_cast<double>(x[arg]);
    double sum = 0, sum_x = 0;
    for (int64_t j = 0; j < K; ++j) {
      double xj = static_cast<double>(x[j]);
      sum += std::exp(xj - m);
      sum_x += xj;
    }
    const double lse = m + std::log(sum);
    // -sum_j q_j log p_j = -(1 - eps) log p_y - (eps / K) sum_j log p_j
    //                    = -(1 - eps) (x_y - lse) - (eps / K) (sum_x - K lse).
    const double logp_y = static_cast<double>(x[y]) - lse;
    r.loss += -(1.0 - eps) * logp_y - off * (sum_x - static_cast<double>(K) * lse);
    if (dlogits) {
      T* d = dlogits + i * K;
      for (int64_t j = 0; j < K; ++j) {
        double p = std::exp(static_cast<double>(x[j]) - lse);
        d[j] = static_cast<T>(g * (p - (j == y ? on : off)));
      }
    }
  }
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

}  // namespace incres::train
