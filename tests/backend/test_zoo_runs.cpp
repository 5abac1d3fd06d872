// Every registered model, forward and backward on the oneDNN backend, at a reduced
// resolution where the architecture allows: finite outputs of the right shape, and a
// non-zero gradient for every trainable parameter (auxiliary heads included).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "backend/program.h"
#include "core/rng.h"
#include "graph/params.h"
#include "models/models.h"

namespace incres {
namespace {

// The input each family runs at here: CIFAR nets at their own 32x32; ImageNet
// ResNets at 64x64 (layer4 still 2x2); Inception-v3 at 299x299, which its auxiliary
// head needs; the low-resolution variants without it at 75 and 43 (Mixed_7 still
// 3x3, where every conv has a jit kernel); Inception-v4 and Inception-ResNet at 139.
models::ModelConfig test_config(const models::ModelInfo& m) {
  models::ModelConfig c = m.defaults;
  const std::string& n = m.name;
  if (n == "inception_v3_151" || n == "inception_v3_79") {
    c.aux = false;
    c.image = n == "inception_v3_151" ? 75 : 43;
  } else if (n.rfind("inception_v3", 0) != 0 && n.rfind("inception", 0) == 0) {
    c.image = 139;
  } else if (c.image == 224) {
    c.image = 64;
  }
  return c;
}

TEST(ZooRuns, EveryModelTrainsOneStepAndEveryParameterGetsAGradient) {
  for (const models::ModelInfo& m : models::registry()) {
    SCOPED_TRACE(m.name);
    const models::ModelConfig cfg = test_config(m);
    const graph::Graph g = models::build_model(m.name, cfg);
    graph::ParamStore store(g);
    store.init(g, 1);
    const int64_t batch = 2;
    auto prog = backend::compile("cpu", g, store, {.batch = batch, .mode = backend::Mode::train});
    std::vector<float> x(static_cast<size_t>(batch * g.input_shape().numel()));
    Rng rng(5);
    for (float& v : x) v = static_cast<float>(rng.normal());
    prog->forward(x.data());
    const int64_t K = g.output_shape().numel();
    ASSERT_EQ(K, cfg.classes);
    std::vector<std::vector<float>> dys(static_cast<size_t>(prog->num_outputs()));
    for (int o = 0; o < prog->num_outputs(); ++o) {
      const float* y = prog->output(o);
      for (int64_t i = 0; i < batch * K; ++i) ASSERT_TRUE(std::isfinite(y[i])) << "output " << o;
      dys[static_cast<size_t>(o)].resize(static_cast<size_t>(batch * K));
      for (float& v : dys[static_cast<size_t>(o)]) v = static_cast<float>(rng.normal() / batch);
    }
    std::vector<const float*> aux;
    for (size_t o = 1; o < dys.size(); ++o) aux.push_back(dys[o].data());
    prog->backward(dys[0].data(), aux);
    for (size_t i = 0; i < g.params.size(); ++i) {
      if (!g.params[i].trainable()) continue;
      const Tensor& d = store.grads[i];
      const float* p = d.data<float>();
      bool finite = true, nonzero = false;
      for (int64_t j = 0; j < d.numel(); ++j) {
        finite = finite && std::isfinite(p[j]);
        nonzero = nonzero || p[j] != 0.f;
      }
      EXPECT_TRUE(finite && nonzero) << g.params[i].name << (finite ? " has no gradient" : " has a non-finite gradient");
    }
  }
}

}  // namespace
}  // namespace incres
