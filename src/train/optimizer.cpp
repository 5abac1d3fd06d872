#include "train/optimizer.h"

#include <cmath>

#include "core/error.h"

namespace incres::train {

namespace {

// The update of n elements, in float like PyTorch's. Nesterov is a template
// argument, out of the loop.
template <bool Nesterov>
inline void sgd_span(float* __restrict p, const float* __restrict g, float* __restrict buf,
                     int64_t n, float lr, float momentum, float wd) {
  for (int64_t j = 0; j < n; ++j) {
    float d = g[j] + wd * p[j];
    float b = momentum * buf[j] + d;
    buf[j] = b;
    p[j] -= lr * (Nesterov ? d + momentum * b : b);
  }
}

// The update of one tensor in blocks of a fixed 16 elements: GCC 12's -O2
// vectoriser (the "very cheap" cost model) only vectorises loops whose trip count is
// a known multiple of the vector width, so the blocks become AVX2 code (checked with
// -fopt-info-vec) and the tail runs scalar.
template <bool Nesterov>
void sgd_update(float* p, const float* g, float* buf, int64_t n, float lr, float momentum,
                float wd) {
  constexpr int64_t kBlock = 16;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock)
    sgd_span<Nesterov>(p + i, g + i, buf + i, kBlock, lr, momentum, wd);
  sgd_span<Nesterov>(p + i, g + i, buf + i, n - i, lr, momentum, wd);
}

bool exempt_from_decay(graph::Role r) {
  return r == graph::Role::bias || r == graph::Role::bn_gamma || r == graph::Role::bn_beta;
}

}  // namespace

Sgd::Sgd(const graph::Graph& g, graph::ParamStore& store, SgdOptions opt)
    : graph_(&g), store_(&store), opt_(opt) {
  INCRES_CHECK(std::isfinite(opt.momentum) && opt.momentum >= 0,
               "sgd: momentum must be finite and >= 0, got ", opt.momentum);
  INCRES_CHECK(std::isfinite(opt.weight_decay) && opt.weight_decay >= 0,
               "sgd: weight_decay must be finite and >= 0, got ", opt.weight_decay);
  // PyTorch refuses the same combination: Nesterov without momentum is plain SGD.
  INCRES_CHECK(!opt.nesterov || opt.momentum > 0,
               "sgd: nesterov requires momentum > 0, got momentum ", opt.momentum);
  const size_t P = g.params.size();
  INCRES_CHECK(store.values.size() == P && store.grads.size() == P,
               "sgd: parameter store holds ", store.values.size(), " values and ",
               store.grads.size(), " grads, expected ", P,
               " (one per graph param); build the store from this graph");
  for (size_t i = 0; i < P; ++i) {
    const graph::Param& p = g.params[i];
    const Tensor& grad = store.grads[i];
    if (grad.empty()) {
      decay_.push_back(0);
      buf_.emplace_back();
      continue;
    }
    INCRES_CHECK(store.values[i].numel() == p.shape.numel() && grad.numel() == p.shape.numel(),
                 "sgd: param '", p.name, "' expects ", p.shape.numel(), " elements, store has ",
                 store.values[i].numel(), " values and ", grad.numel(), " grads");
    bool exempt = opt.no_decay_bn_bias && exempt_from_decay(p.role);
    decay_.push_back(exempt ? 0.f : static_cast<float>(opt.weight_decay));
    buf_.emplace_back(p.shape);  // zero-initialised
  }
}

void Sgd::step(double lr) {
  INCRES_CHECK(std::isfinite(lr) && lr >= 0, "sgd: learning rate must be finite and >= 0, got ", lr);
  const float m = static_cast<float>(opt_.momentum);
  for (size_t i = 0; i < buf_.size(); ++i) {
    Tensor& grad = store_->grads[i];
    if (grad.empty()) continue;
    Tensor& p = store_->values[i];
    Tensor& b = buf_[i];
    const int64_t n = p.numel();
    INCRES_CHECK(!b.empty() && b.numel() == n && grad.numel() == n, "sgd: momentum buffer of '",
                 graph_->params[i].name, "' has ", b.numel(), " elements and its grad ",
                 grad.numel(), ", expected ", n, "; the optimizer state does not match the model");
    if (opt_.nesterov)
      sgd_update<true>(p.data<float>(), grad.data<float>(), b.data<float>(), n,
                       static_cast<float>(lr), m, decay_[i]);
    else
      sgd_update<false>(p.data<float>(), grad.data<float>(), b.data<float>(), n,
                        static_cast<float>(lr), m, decay_[i]);
  }
}

}  // namespace incres::train
