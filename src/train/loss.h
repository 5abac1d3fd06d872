// The classification loss and accuracy counts: the reference formulation (the oracle
// of the backends' Loss, backend/loss.h, and of the finite-difference tests).
#pragma once
#include <cstdint>
#include <vector>

#include "dist/communicator.h"

#include "backend/loss.h"

namespace incres::train {

// The loss over a batch and its top-1 hits, as the backends' Loss returns them.
using backend::LossResult;

// Softmax cross-entropy with label smoothing, as PyTorch's
// CrossEntropyLoss(label_smoothing=eps, reduction="mean") defines it: the target of
// row i is q = (1 - eps) * onehot(labels[i]) + eps / K, and
//   loss = -(1/N) * sum_i sum_j q_ij * log softmax(logits_i)_j.
// logits: N x K row-major; labels: N values in [0, K); smoothing in [0, 1].
// The log-softmax subtracts the row maximum and accumulates in double, so large
// logits neither overflow nor lose the small terms.
// dlogits (may be null): written (not accumulated) with scale * (softmax - q) / N,
// the gradient of scale * loss. Throws incres::Error naming the row of a bad label.
LossResult softmax_cross_entropy(const float* logits, const int32_t* labels, int64_t N,
                                 int64_t K, float smoothing, float* dlogits,
                                 double scale = 1.0);
// The same in double precision, for finite-difference checks.
LossResult softmax_cross_entropy(const double* logits, const int32_t* labels, int64_t N,
                                 int64_t K, double smoothing, double* dlogits,
                                 double scale = 1.0);

// Rows whose label is among the k largest logits (1 <= k <= K). Ties are broken by
// index, as a stable sort would: an equal logit at a smaller index ranks first, so
// k = 1 agrees with the `correct` count above (the first maximum wins).
int64_t topk_correct(const float* logits, const int32_t* labels, int64_t N, int64_t K, int k);

// Calibration: rows binned by their confidence (the softmax's largest probability)
// into `bins` equal bins of [0, 1]; per bin, the rows, their summed confidence and
// how many were right (the first maximum is the prediction, as above). The expected
// calibration error (Guo et al. 2017) is sum over bins of |right - confidence| / rows.
class Calibration {
 public:
  explicit Calibration(int bins = 15) : rows_(bins), right_(bins), confidence_(bins) {}
  void add(const float* logits, const int32_t* labels, int64_t N, int64_t K);
  // In percent, as the errors are; 0 before any row.
  double ece() const;
  // Every process's rows (data-parallel evaluation).
  void sum_across(dist::Communicator& comm);

 private:
  std::vector<int64_t> rows_, right_;
  std::vector<double> confidence_;
};

}  // namespace incres::train
