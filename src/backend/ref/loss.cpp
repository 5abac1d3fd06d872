// The reference loss: the naive kernel of ref/ops.h.
#include "backend/loss.h"
#include "backend/ref/ops.h"

namespace incres::backend {

namespace {

class RefLoss final : public Loss {
 public:
  RefLoss(int64_t batch, int64_t K, float smoothing) : batch_(batch), K_(K), eps_(smoothing) {}
  LossResult run(const float* logits, const int32_t* labels, int64_t n, float* dlogits, double scale) override {
    INCRES_CHECK(n >= 1 && n <= batch_, "loss: ", n, " rows for a loss planned for batch ", batch_);
    LossResult r;
    ref::softmax_cross_entropy(&r.loss, &r.correct, dlogits, logits, labels, n, K_, eps_, scale);
    r.loss /= static_cast<double>(n);
    return r;
  }
  std::string backend_name() const override { return "ref"; }

 private:
  int64_t batch_, K_;
  double eps_;
};

}  // namespace

std::unique_ptr<Loss> compile_ref_loss(int64_t batch, int64_t classes, float smoothing) {
  return std::make_unique<RefLoss>(batch, classes, smoothing);
}

}  // namespace incres::backend
