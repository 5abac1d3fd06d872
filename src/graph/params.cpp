#include "graph/params.h"

#include <cmath>
#include <cstring>

#include "core/rng.h"

namespace incres::graph {

ParamStore::ParamStore(const Graph& g) {
  for (const Param& p : g.params) {
    values.emplace_back(p.shape);
    grads.push_back(p.trainable() ? Tensor(p.shape) : Tensor());
  }
}

void ParamStore::init(const Graph& g, uint64_t seed) {
  for (size_t i = 0; i < g.params.size(); ++i) {
    const Param& p = g.params[i];
    // One stream per parameter, keyed by its index: adding a layer at the end of a
    // model does not change the initial values of the layers before it.
    Rng rng(mix_key(seed, i));
    float* w = values[i].data<float>();
    int64_t n = p.shape.numel();
    switch (p.init) {
      case Init::kaiming_normal_fan_out: {
        double sd = std::sqrt(2.0 / static_cast<double>(p.fan_out));
        for (int64_t j = 0; j < n; ++j) w[j] = static_cast<float>(sd * rng.normal());
        break;
      }
      case Init::uniform_fan_in: {
        double b = 1.0 / std::sqrt(static_cast<double>(p.fan_in));
        for (int64_t j = 0; j < n; ++j) w[j] = static_cast<float>((2 * rng.uniform() - 1) * b);
        break;
      }
      case Init::truncated_normal: {
        // torch.nn.init.trunc_normal_(std=value, a=-2, b=2), as torchvision's Inception-v3.
        for (int64_t j = 0; j < n; ++j) {
          double v;
          do v = p.init_value * rng.normal(); while (v < -2.0 || v > 2.0);
          w[j] = static_cast<float>(v);
        }
        break;
      }
      case Init::constant: values[i].fill(p.init_value); break;
      case Init::ones: values[i].fill(1.f); break;
      case Init::zeros: values[i].fill(0.f); break;
    }
  }
  changed();
}

void ParamStore::zero_grads() {
  for (Tensor& t : grads)
    if (!t.empty()) std::memset(t.raw(), 0, t.nbytes());
}

}  // namespace incres::graph
