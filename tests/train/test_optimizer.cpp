// Sgd against a scalar, double-precision transcription of torch.optim.SGD.step.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "graph/builder.h"
#include "graph/params.h"
#include "train/optimizer.h"

namespace incres::train {
namespace {

using graph::Role;

// conv (with bias) -> BN -> ReLU -> pool -> fc: every parameter role, and tensors
// both longer than the optimizer's 16-element block (conv1.weight: 54) and shorter.
graph::Graph tiny_graph() {
  graph::Builder b(Shape{2, 4, 4});
  int x = b.conv(b.input(), graph::Conv2d{3, 3, 3, 1, 1, 1, true}, "conv1");
  x = b.batchnorm(x, "bn1");
  x = b.relu(x);
  x = b.global_avg_pool(x);
  x = b.linear(x, 2, "fc");
  return b.finish(x);
}

// Random gradients, as a backward pass would leave them.
void fill_grads(graph::ParamStore& s, uint64_t seed) {
  Rng rng(seed);
  for (Tensor& g : s.grads) {
    if (g.empty()) continue;
    float* p = g.data<float>();
    for (int64_t i = 0; i < g.numel(); ++i) p[i] = static_cast<float>(rng.normal());
  }
}

// torch/optim/sgd.py (_single_tensor_sgd, dampening 0, maximize False), element by
// element in double, with PyTorch's own first step (buf = clone(d)).
struct Reference {
  std::vector<std::vector<double>> p, buf;
  std::vector<bool> has_buf;

  explicit Reference(const graph::ParamStore& s) {
    for (const Tensor& v : s.values) {
      const float* x = v.data<float>();
      p.emplace_back(x, x + v.numel());
      buf.emplace_back(v.numel(), 0.0);
      has_buf.push_back(false);
    }
  }
  void step(const graph::Graph& g, const graph::ParamStore& s, const SgdOptions& o, double lr) {
    for (size_t i = 0; i < p.size(); ++i) {
      if (s.grads[i].empty()) continue;
      Role r = g.params[i].role;
      bool exempt = o.no_decay_bn_bias && (r == Role::bias || r == Role::bn_gamma || r == Role::bn_beta);
      double wd = exempt ? 0.0 : o.weight_decay;
      const float* grad = s.grads[i].data<float>();
      for (size_t j = 0; j < p[i].size(); ++j) {
        double d = grad[j] + wd * p[i][j];
        if (o.momentum != 0) {
          buf[i][j] = has_buf[i] ? o.momentum * buf[i][j] + d : d;
          d = o.nesterov ? d + o.momentum * buf[i][j] : buf[i][j];
        }
        p[i][j] -= lr * d;
      }
      has_buf[i] = true;
    }
  }
};

void expect_close(const Tensor& t, const std::vector<double>& want, const std::string& what) {
  const float* x = t.data<float>();
  for (int64_t j = 0; j < t.numel(); ++j)
    ASSERT_NEAR(x[j], want[j], 1e-5 * (1 + std::abs(want[j]))) << what << " element " << j;
}

void run_against_reference(SgdOptions o) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  s.init(g, 7);
  Reference ref(s);
  Sgd sgd(g, s, o);
  const double lrs[] = {0.1, 0.1, 0.05, 0.2, 0.01, 0.1};
  for (int k = 0; k < 6; ++k) {
    fill_grads(s, 100 + k);
    sgd.step(lrs[k]);
    ref.step(g, s, o, lrs[k]);
  }
  for (size_t i = 0; i < g.params.size(); ++i) {
    expect_close(s.values[i], ref.p[i], g.params[i].name);
    if (!s.grads[i].empty() && o.momentum != 0)
      expect_close(sgd.state()[i], ref.buf[i], "momentum of " + g.params[i].name);
  }
}

TEST(Sgd, MatchesPyTorchMomentum) { run_against_reference({0.9, 1e-4, false, false}); }
TEST(Sgd, MatchesPyTorchNesterov) { run_against_reference({0.9, 5e-4, true, false}); }
TEST(Sgd, MatchesPyTorchNoDecayBnBias) { run_against_reference({0.9, 0.1, false, true}); }
TEST(Sgd, MatchesPyTorchWithoutMomentum) { run_against_reference({0.0, 1e-3, false, false}); }

TEST(Sgd, NoDecayExemptsBiasAndBatchNorm) {
  // With zero gradients only weight decay moves a parameter.
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  s.init(g, 3);
  for (Tensor& v : s.values) v.fill(1.f);
  Sgd sgd(g, s, {0.0, 0.5, false, true});
  sgd.step(0.1);
  for (size_t i = 0; i < g.params.size(); ++i) {
    Role r = g.params[i].role;
    bool decayed = r == Role::weight;
    float want = decayed ? 1.f - 0.1f * 0.5f : 1.f;
    EXPECT_FLOAT_EQ(s.values[i].data<float>()[0], want) << g.params[i].name;
  }
}

TEST(Sgd, LeavesBuffersUntouched) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  s.init(g, 5);
  s.values[g.find_param("bn1.running_mean")].fill(0.25f);
  s.values[g.find_param("bn1.running_var")].fill(3.f);
  Sgd sgd(g, s, {});
  for (int k = 0; k < 3; ++k) {
    fill_grads(s, k);
    sgd.step(0.1);
  }
  for (size_t i = 0; i < g.params.size(); ++i) {
    if (g.params[i].trainable()) {
      EXPECT_FALSE(sgd.state()[i].empty()) << g.params[i].name;
      EXPECT_EQ(sgd.state()[i].shape(), g.params[i].shape) << g.params[i].name;
      continue;
    }
    EXPECT_TRUE(sgd.state()[i].empty()) << g.params[i].name;
    float want = g.params[i].role == Role::running_mean ? 0.25f : 3.f;
    for (int64_t j = 0; j < s.values[i].numel(); ++j)
      EXPECT_EQ(s.values[i].data<float>()[j], want) << g.params[i].name;
  }
}

TEST(Sgd, RestoredStateContinuesTheRun) {
  // Three steps, copy weights and momentum into a fresh optimizer (what a checkpoint
  // does), three more: the same as six straight.
  graph::Graph g = tiny_graph();
  graph::ParamStore a(g), b(g);
  a.init(g, 9);
  SgdOptions o{0.9, 1e-4, true, false};
  Sgd sa(g, a, o);
  for (int k = 0; k < 3; ++k) {
    fill_grads(a, k);
    sa.step(0.1);
  }
  for (size_t i = 0; i < a.values.size(); ++i) b.values[i] = a.values[i].clone();
  Sgd sb(g, b, o);
  for (size_t i = 0; i < sa.state().size(); ++i) sb.state()[i] = sa.state()[i].clone();
  for (int k = 3; k < 6; ++k) {
    fill_grads(a, k);
    fill_grads(b, k);
    sa.step(0.1);
    sb.step(0.1);
  }
  for (size_t i = 0; i < a.values.size(); ++i)
    EXPECT_EQ(std::memcmp(a.values[i].raw(), b.values[i].raw(), a.values[i].nbytes()), 0)
        << g.params[i].name;
}

TEST(Sgd, RejectsBadOptionsAndState) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  EXPECT_THROW(Sgd(g, s, {0.0, 1e-4, true, false}), Error);  // nesterov without momentum
  EXPECT_THROW(Sgd(g, s, {-0.9, 1e-4, false, false}), Error);
  EXPECT_THROW(Sgd(g, s, {0.9, -1.0, false, false}), Error);
  graph::ParamStore empty;
  EXPECT_THROW(Sgd(g, empty, {}), Error);
  Sgd sgd(g, s, {});
  EXPECT_THROW(sgd.step(-0.1), Error);
  EXPECT_THROW(sgd.step(std::nan("")), Error);
  // A checkpoint's momentum of the wrong size is caught, naming the parameter.
  int fc = g.find_param("fc.weight");
  sgd.state()[fc] = Tensor(Shape{5});
  try {
    sgd.step(0.1);
    FAIL() << "wrong-sized momentum buffer accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fc.weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace incres::train
