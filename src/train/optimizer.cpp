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

// TF's ApplyRMSProp in float, element by element (see RmsProp::step). Not blocked
// like SGD: std::sqrt may set errno, which keeps GCC from vectorising it at -O2, and
// the optimizer is a negligible part of a step.
void rmsprop_update(float* __restrict p, const float* __restrict g, float* __restrict rms,
                    float* __restrict mom, int64_t n, float lr, float decay, float momentum,
                    float eps, float wd) {
  const float one_minus_decay = 1.f - decay;
  for (int64_t j = 0; j < n; ++j) {
    float d = g[j] + wd * p[j];
    float r = rms[j] + (d * d - rms[j]) * one_minus_decay;
    float m = momentum * mom[j] + lr * d / std::sqrt(r + eps);
    rms[j] = r;
    mom[j] = m;
    p[j] -= m;
  }
}

bool exempt_from_decay(graph::Role r) {
  return r == graph::Role::bias || r == graph::Role::bn_gamma || r == graph::Role::bn_beta;
}

}  // namespace

// ---- Optimizer ----

Optimizer::Optimizer(const graph::Graph& g, graph::ParamStore& store, const char* who,
                     DecayOptions decay)
    : graph_(&g), store_(&store), who_(who) {
  INCRES_CHECK(std::isfinite(decay.weight_decay) && decay.weight_decay >= 0, who,
               ": weight_decay must be finite and >= 0, got ", decay.weight_decay);
  const size_t P = g.params.size();
  INCRES_CHECK(store.values.size() == P && store.grads.size() == P, who, ": parameter store holds ",
               store.values.size(), " values and ", store.grads.size(), " grads, expected ", P,
               " (one per graph param); build the store from this graph");
  for (size_t i = 0; i < P; ++i) {
    const graph::Param& p = g.params[i];
    const Tensor& grad = store.grads[i];
    if (grad.empty()) {
      decay_.push_back(0);
      continue;
    }
    INCRES_CHECK(store.values[i].numel() == p.shape.numel() && grad.numel() == p.shape.numel(),
                 who, ": param '", p.name, "' expects ", p.shape.numel(), " elements, store has ",
                 store.values[i].numel(), " values and ", grad.numel(), " grads");
    bool exempt = decay.no_decay_bn_bias && exempt_from_decay(p.role);
    decay_.push_back(exempt ? 0.f : static_cast<float>(decay.weight_decay));
  }
}

void Optimizer::add_slot(std::string name, float init) {
  Slot s{std::move(name), {}};
  for (size_t i = 0; i < graph_->params.size(); ++i) {
    if (store_->grads[i].empty()) {
      s.tensors.emplace_back();
      continue;
    }
    s.tensors.emplace_back(graph_->params[i].shape);  // zero-initialised
    if (init != 0) s.tensors.back().fill(init);
  }
  slots_.push_back(std::move(s));
}

void Optimizer::check_state(size_t i, int64_t n) const {
  INCRES_CHECK(store_->grads[i].numel() == n, who_, ": gradient of '", graph_->params[i].name,
               "' has ", store_->grads[i].numel(), " elements, expected ", n);
  for (const Slot& s : slots_) {
    const Tensor& t = s.tensors[i];
    INCRES_CHECK(!t.empty() && t.numel() == n, who_, ": ", s.name, " buffer of '",
                 graph_->params[i].name, "' has ", t.numel(), " elements, expected ", n,
                 "; the optimizer state does not match the model");
  }
}

void Optimizer::check_lr(double lr) const {
  INCRES_CHECK(std::isfinite(lr) && lr >= 0, who_, ": learning rate must be finite and >= 0, got ",
               lr);
}

// ---- Sgd ----

Sgd::Sgd(const graph::Graph& g, graph::ParamStore& store, SgdOptions opt)
    : Optimizer(g, store, "sgd", {opt.weight_decay, opt.no_decay_bn_bias}), opt_(opt) {
  INCRES_CHECK(std::isfinite(opt.momentum) && opt.momentum >= 0,
               "sgd: momentum must be finite and >= 0, got ", opt.momentum);
  // PyTorch refuses the same combination: Nesterov without momentum is plain SGD.
  INCRES_CHECK(!opt.nesterov || opt.momentum > 0,
               "sgd: nesterov requires momentum > 0, got momentum ", opt.momentum);
  add_slot("momentum", 0.f);
}

void Sgd::step(double lr) {
  check_lr(lr);
  const float m = static_cast<float>(opt_.momentum);
  std::vector<Tensor>& buf = state();
  for (size_t i = 0; i < buf.size(); ++i) {
    Tensor& grad = store_->grads[i];
    if (grad.empty()) continue;
    Tensor& p = store_->values[i];
    const int64_t n = p.numel();
    check_state(i, n);
    if (opt_.nesterov)
      sgd_update<true>(p.data<float>(), grad.data<float>(), buf[i].data<float>(), n,
                       static_cast<float>(lr), m, decay_[i]);
    else
      sgd_update<false>(p.data<float>(), grad.data<float>(), buf[i].data<float>(), n,
                        static_cast<float>(lr), m, decay_[i]);
  }
  store_->changed();
}

// ---- RmsProp ----

RmsProp::RmsProp(const graph::Graph& g, graph::ParamStore& store, RmsPropOptions opt)
    : Optimizer(g, store, "rmsprop", {opt.weight_decay, opt.no_decay_bn_bias}), opt_(opt) {
  INCRES_CHECK(std::isfinite(opt.decay) && opt.decay >= 0 && opt.decay < 1,
               "rmsprop: decay must be in [0, 1), got ", opt.decay);
  INCRES_CHECK(std::isfinite(opt.epsilon) && opt.epsilon > 0,
               "rmsprop: epsilon must be finite and > 0, got ", opt.epsilon);
  INCRES_CHECK(std::isfinite(opt.momentum) && opt.momentum >= 0 && opt.momentum < 1,
               "rmsprop: momentum must be in [0, 1), got ", opt.momentum);
  add_slot("rms", 1.f);  // TF's RMSPropOptimizer initialises the mean square to ones
  add_slot("momentum", 0.f);
}

void RmsProp::step(double lr) {
  check_lr(lr);
  std::vector<Tensor>& rms = slot(0);
  std::vector<Tensor>& mom = slot(1);
  for (size_t i = 0; i < rms.size(); ++i) {
    Tensor& grad = store_->grads[i];
    if (grad.empty()) continue;
    Tensor& p = store_->values[i];
    const int64_t n = p.numel();
    check_state(i, n);
    rmsprop_update(p.data<float>(), grad.data<float>(), rms[i].data<float>(), mom[i].data<float>(),
                   n, static_cast<float>(lr), static_cast<float>(opt_.decay),
                   static_cast<float>(opt_.momentum), static_cast<float>(opt_.epsilon), decay_[i]);
  }
  store_->changed();
}

// ---- Clipping ----

double clip_grad_norm(const graph::Graph& g, graph::ParamStore& store, double max_norm) {
  INCRES_CHECK(std::isfinite(max_norm) && max_norm >= 0,
               "clip_grad_norm: max_norm must be finite and >= 0 (0 = measure only), got ", max_norm);
  double sum_sq = 0;
  for (size_t i = 0; i < g.params.size(); ++i) {
    const Tensor& grad = store.grads[i];
    if (grad.empty() || !g.params[i].trainable()) continue;
    const float* d = grad.data<float>();
    // Per-tensor partial sums keep the double accumulation short.
    double part = 0;
    for (int64_t j = 0; j < grad.numel(); ++j) part += static_cast<double>(d[j]) * d[j];
    sum_sq += part;
  }
  const double norm = std::sqrt(sum_sq);
  if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / norm);
    for (size_t i = 0; i < g.params.size(); ++i) {
      Tensor& grad = store.grads[i];
      if (grad.empty() || !g.params[i].trainable()) continue;
      float* d = grad.data<float>();
      for (int64_t j = 0; j < grad.numel(); ++j) d[j] *= scale;
    }
  }
  return norm;
}

}  // namespace incres::train
