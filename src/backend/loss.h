// The loss that closes a training step, on a backend: softmax cross-entropy with label
// smoothing, as PyTorch's CrossEntropyLoss(label_smoothing=eps, reduction="mean"):
// row i's target is q = (1 - eps) * onehot(labels[i]) + eps / K and
//   loss = -(1/n) * sum_i sum_j q_ij * log softmax(logits_i)_j,
//   dlogits = scale * (softmax - q) / n   (the gradient of scale * loss).
// Planned once for (batch, classes) like a Program; run() allocates nothing.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

namespace incres::backend {

struct LossResult {
  double loss = 0;      // mean over the rows
  int64_t correct = 0;  // rows whose first maximum is the label (top-1 hits)
};

class Loss {
 public:
  virtual ~Loss() = default;
  // logits: batch x K row-major (a Program's output; rows past n are ignored);
  // labels: n values in [0, K), n <= batch. dlogits (may be null): batch x K, rows
  // past n left as they are. Throws Error naming the row of a label out of range.
  virtual LossResult run(const float* logits, const int32_t* labels, int64_t n, float* dlogits,
                         double scale = 1.0) = 0;
  virtual std::string backend_name() const = 0;
};

// "ref": the naive kernel of backend/ref/ops.h (double accumulation); "cpu": oneDNN's
// logsoftmax primitive, then the smoothing and the gradient in one pass.
std::unique_ptr<Loss> compile_loss(const std::string& backend, int64_t batch, int64_t classes, float smoothing);
std::unique_ptr<Loss> compile_ref_loss(int64_t batch, int64_t classes, float smoothing);
std::unique_ptr<Loss> compile_cpu_loss(int64_t batch, int64_t classes, float smoothing);

}  // namespace incres::backend
