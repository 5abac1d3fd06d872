// The loss on oneDNN: a logsoftmax primitive over the batch's logits (planned once),
// then one pass that forms the smoothed cross-entropy and its gradient from the log
// probabilities: loss_i = -(1 - eps) logp_iy - (eps / K) sum_j logp_ij and
// d_ij = g * (exp(logp_ij) - q_ij).
#include <dnnl.hpp>

#include <cmath>

#include "backend/loss.h"
#include "backend/ref/ops.h"
#include "core/error.h"
#include "core/tensor.h"

namespace incres::backend {

namespace {

using dnnl::memory;

class CpuLoss final : public Loss {
 public:
  CpuLoss(int64_t batch, int64_t K, float smoothing)
      : batch_(batch), K_(K), eps_(smoothing), logp_(Shape{batch, K}) {
    INCRES_CHECK(batch >= 1 && K >= 1, "loss: needs rows and classes, got ", batch, " x ", K);
    INCRES_CHECK(smoothing >= 0 && smoothing <= 1, "loss: label smoothing must be in [0, 1], got ", smoothing);
    memory::desc md({batch, K}, memory::data_type::f32, memory::format_tag::nc);
    dnnl::logsoftmax_forward::desc d(dnnl::prop_kind::forward_inference, md, 1);
    dnnl::logsoftmax_forward::primitive_desc pd(d, eng_);
    prim_ = dnnl::logsoftmax_forward(pd);
    src_ = memory(md, eng_, DNNL_MEMORY_NONE);
    dst_ = memory(md, eng_, logp_.raw());
    args_[0] = {DNNL_ARG_SRC, src_.get()};
    args_[1] = {DNNL_ARG_DST, dst_.get()};
  }

  LossResult run(const float* logits, const int32_t* labels, int64_t n, float* dlogits, double scale) override {
    INCRES_CHECK(n >= 1 && n <= batch_, "loss: ", n, " rows for a loss planned for batch ", batch_);
    ref::check_labels(labels, n, K_);
    src_.set_data_handle(const_cast<float*>(logits));
    // The C API with arguments prepared once: dnnl.hpp's execute() builds a vector per call.
    dnnl::error::wrap_c_api(dnnl_primitive_execute(prim_.get(), strm_.get(), 2, args_), "loss: logsoftmax");
    strm_.wait();
    const double off = eps_ / static_cast<double>(K_), on = 1.0 - eps_ + off;
    const double g = scale / static_cast<double>(n);
    LossResult r;
    const float* logp = logp_.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      const float* x = logits + i * K_;
      const float* lp = logp + i * K_;
      const int32_t y = labels[i];
      int64_t arg = 0;
      double sum_lp = 0;
      for (int64_t j = 0; j < K_; ++j) {
        if (x[j] > x[arg]) arg = j;
        sum_lp += lp[j];
      }
      r.correct += arg == y;
      r.loss += -(1.0 - eps_) * lp[y] - off * sum_lp;
      if (dlogits)
        for (int64_t j = 0; j < K_; ++j)
          dlogits[i * K_ + j] = static_cast<float>(g * (std::exp(static_cast<double>(lp[j])) - (j == y ? on : off)));
    }
    r.loss /= static_cast<double>(n);
    return r;
  }
  std::string backend_name() const override { return "cpu"; }

 private:
  int64_t batch_, K_;
  double eps_;
  Tensor logp_;
  dnnl::engine eng_{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm_{eng_};
  dnnl::primitive prim_;
  memory src_, dst_;
  dnnl_exec_arg_t args_[2];
};

}  // namespace

std::unique_ptr<Loss> compile_cpu_loss(int64_t batch, int64_t classes, float smoothing) {
  try {
    return std::make_unique<CpuLoss>(batch, classes, smoothing);
  } catch (const dnnl::error& e) {
    fail("oneDNN could not plan the loss (batch ", batch, ", ", classes, " classes): ", e.what());
  }
}

}  // namespace incres::backend
