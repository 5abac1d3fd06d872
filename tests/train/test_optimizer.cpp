// Sgd against a scalar, double-precision transcription of torch.optim.SGD.step;
// RmsProp against hand-computed steps and a transcription of TF's ApplyRMSProp;
// clipping by global norm.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "graph/builder.h"
#include "graph/params.h"
#include "train/optimizer.h"
#include "train/tiny_model.h"

namespace incres::train {
namespace {

using graph::Role;
using tiny::fill_grads;
using tiny::tiny_graph;

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

// ---- RmsProp ----

// Every value `w`, every gradient `g` (a constant gradient makes the steps easy to
// follow by hand).
void fill_all(graph::ParamStore& s, float w, float g) {
  for (Tensor& v : s.values) v.fill(w);
  for (Tensor& d : s.grads)
    if (!d.empty()) d.fill(g);
}

TEST(RmsProp, HandComputedSteps) {
  // w = 1, g = 0.5, lr = 0.1, decay 0.9, momentum 0.9, epsilon 1, no weight decay.
  //   step 1: rms = 1 + (0.25 - 1) * 0.1 = 0.925
  //           mom = 0.1 * 0.5 / sqrt(1.925)           = 0.0360374985...
  //           w   = 1 - mom                           = 0.9639625014...
  //   step 2: rms = 0.925 + (0.25 - 0.925) * 0.1 = 0.8575
  //           mom = 0.9 * 0.0360375 + 0.05 / sqrt(1.8575) = 0.0691201905...
  //           w   = 0.8948423109...
  //   step 3: rms = 0.79675, mom = 0.0995096613..., w = 0.7953326496...
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  fill_all(s, 1.f, 0.5f);
  RmsProp opt(g, s, {0.9, 1.0, 0.9, 0.0, false});
  const double want_w[] = {0.9639625014921777, 0.8948423109227849, 0.7953326496150305};
  const double want_rms[] = {0.925, 0.8575, 0.79675};
  const double want_mom[] = {0.03603749850782236, 0.06912019056939278, 0.09950966130775438};
  const int fc = g.find_param("fc.weight");
  for (int k = 0; k < 3; ++k) {
    opt.step(0.1);
    for (size_t i = 0; i < g.params.size(); ++i) {
      if (!g.params[i].trainable()) continue;
      for (int64_t j = 0; j < s.values[i].numel(); ++j)
        ASSERT_NEAR(s.values[i].data<float>()[j], want_w[k], 1e-6) << g.params[i].name << " step " << k + 1;
    }
    EXPECT_NEAR(opt.slot(0)[fc].data<float>()[0], want_rms[k], 1e-6) << "rms, step " << k + 1;
    EXPECT_NEAR(opt.slot(1)[fc].data<float>()[0], want_mom[k], 1e-6) << "momentum, step " << k + 1;
  }
  // Running statistics are not parameters: the optimizer leaves them alone.
  EXPECT_EQ(s.values[g.find_param("bn1.running_mean")].data<float>()[0], 1.f);
}

TEST(RmsProp, HandComputedWeightDecayAndLrChange) {
  // w = 2, g = 0.5, weight decay 0.1 on weights only (not on BN or biases), lr 0.1,
  // 0.1, then 0.05.
  //   step 1: d = 0.5 + 0.1 * 2 = 0.7, rms = 1 + (0.49 - 1) * 0.1 = 0.949,
  //           mom = 0.1 * 0.7 / sqrt(1.949) = 0.0501408994..., w = 1.9498591005...
  //   step 2: d = 0.5 + 0.1 * 1.94985910 = 0.6949859100..., rms = 0.9024005415...,
  //           mom = 0.0955145657..., w = 1.8543445347...
  //   step 3 (lr 0.05): d = 0.6854344534..., rms = 0.8591425263...,
  //           mom = 0.9 * 0.0955145657 + 0.05 * d / sqrt(1.8591425) = 0.1110981498...,
  //           w = 1.7432463849...
  // Exempt parameters follow the decay-free path from 2: 2 - (1 - 0.7953326496...).
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  fill_all(s, 2.f, 0.5f);
  RmsProp opt(g, s, {0.9, 1.0, 0.9, 0.1, true});
  for (double lr : {0.1, 0.1, 0.05}) opt.step(lr);
  for (size_t i = 0; i < g.params.size(); ++i) {
    if (!g.params[i].trainable()) continue;
    bool decayed = g.params[i].role == Role::weight;
    double want = decayed ? 1.7432463849559612 : 2.0 - (1.0 - 0.7953326496150305);
    if (!decayed) {
      // The exempt path saw lr 0.05 at step 3: recompute it here rather than reuse
      // the lr-0.1 numbers of the test above.
      double w = 2, rms = 1, mom = 0;
      for (double lr : {0.1, 0.1, 0.05}) {
        rms += (0.25 - rms) * 0.1;
        mom = 0.9 * mom + lr * 0.5 / std::sqrt(rms + 1.0);
        w -= mom;
      }
      want = w;
    }
    for (int64_t j = 0; j < s.values[i].numel(); ++j)
      ASSERT_NEAR(s.values[i].data<float>()[j], want, 1e-6) << g.params[i].name;
  }
}

// TF's ApplyRMSProp in double, with weight decay folded into the gradient.
struct RmsReference {
  std::vector<std::vector<double>> p, rms, mom;
  explicit RmsReference(const graph::ParamStore& s) {
    for (const Tensor& v : s.values) {
      const float* x = v.data<float>();
      p.emplace_back(x, x + v.numel());
      rms.emplace_back(v.numel(), 1.0);
      mom.emplace_back(v.numel(), 0.0);
    }
  }
  void step(const graph::Graph& g, const graph::ParamStore& s, const RmsPropOptions& o, double lr) {
    for (size_t i = 0; i < p.size(); ++i) {
      if (s.grads[i].empty()) continue;
      Role r = g.params[i].role;
      bool exempt = o.no_decay_bn_bias && (r == Role::bias || r == Role::bn_gamma || r == Role::bn_beta);
      double wd = exempt ? 0.0 : o.weight_decay;
      const float* grad = s.grads[i].data<float>();
      for (size_t j = 0; j < p[i].size(); ++j) {
        double d = grad[j] + wd * p[i][j];
        rms[i][j] = o.decay * rms[i][j] + (1 - o.decay) * d * d;
        mom[i][j] = o.momentum * mom[i][j] + lr * d / std::sqrt(rms[i][j] + o.epsilon);
        p[i][j] -= mom[i][j];
      }
    }
  }
};

TEST(RmsProp, MatchesTensorFlowTranscription) {
  for (RmsPropOptions o : {RmsPropOptions{}, RmsPropOptions{0.95, 0.1, 0.5, 1e-2, false},
                           RmsPropOptions{0.9, 1.0, 0.0, 0.0, false}}) {
    graph::Graph g = tiny_graph();
    graph::ParamStore s(g);
    s.init(g, 11);
    RmsReference ref(s);
    RmsProp opt(g, s, o);
    const double lrs[] = {0.045, 0.045, 0.02, 0.1, 0.01, 0.045};
    for (int k = 0; k < 6; ++k) {
      fill_grads(s, 200 + k);
      opt.step(lrs[k]);
      ref.step(g, s, o, lrs[k]);
    }
    for (size_t i = 0; i < g.params.size(); ++i) {
      expect_close(s.values[i], ref.p[i], g.params[i].name);
      if (s.grads[i].empty()) continue;
      expect_close(opt.slot(0)[i], ref.rms[i], "rms of " + g.params[i].name);
      expect_close(opt.slot(1)[i], ref.mom[i], "momentum of " + g.params[i].name);
    }
  }
}

TEST(RmsProp, SlotsAreNamedAndRestoredStateContinuesTheRun) {
  graph::Graph g = tiny_graph();
  graph::ParamStore a(g), b(g);
  a.init(g, 4);
  RmsProp oa(g, a, {});
  ASSERT_EQ(oa.num_slots(), 2u);
  EXPECT_EQ(oa.slot_name(0), "rms");
  EXPECT_EQ(oa.slot_name(1), "momentum");
  EXPECT_STREQ(oa.name(), "rmsprop");
  EXPECT_TRUE(oa.slot(0)[g.find_param("bn1.running_var")].empty());
  EXPECT_EQ(oa.slot(0)[g.find_param("conv1.weight")].data<float>()[0], 1.f);  // TF starts rms at 1
  for (int k = 0; k < 3; ++k) {
    fill_grads(a, k);
    oa.step(0.045);
  }
  // What a checkpoint does: weights and every slot into a fresh optimizer.
  for (size_t i = 0; i < a.values.size(); ++i) b.values[i] = a.values[i].clone();
  RmsProp ob(g, b, {});
  Optimizer& from = oa;  // through the interface, as checkpoints see it
  Optimizer& to = ob;
  for (size_t k = 0; k < from.num_slots(); ++k)
    for (size_t i = 0; i < g.params.size(); ++i) to.slot(k)[i] = from.slot(k)[i].clone();
  for (int k = 3; k < 6; ++k) {
    fill_grads(a, k);
    fill_grads(b, k);
    oa.step(0.045);
    ob.step(0.045);
  }
  for (size_t i = 0; i < a.values.size(); ++i)
    EXPECT_EQ(std::memcmp(a.values[i].raw(), b.values[i].raw(), a.values[i].nbytes()), 0)
        << g.params[i].name;
}

TEST(RmsProp, RejectsBadOptionsAndState) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  EXPECT_THROW(RmsProp(g, s, {1.0, 1.0, 0.9, 0, false}), Error);   // decay 1 never learns
  EXPECT_THROW(RmsProp(g, s, {0.9, 0.0, 0.9, 0, false}), Error);   // epsilon 0
  EXPECT_THROW(RmsProp(g, s, {0.9, 1.0, -0.1, 0, false}), Error);
  EXPECT_THROW(RmsProp(g, s, {0.9, 1.0, 0.9, -1, false}), Error);
  RmsProp opt(g, s, {});
  EXPECT_THROW(opt.step(std::nan("")), Error);
  opt.slot(0)[g.find_param("fc.bias")] = Tensor(Shape{3});
  try {
    opt.step(0.1);
    FAIL() << "wrong-sized rms buffer accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rms buffer of 'fc.bias'"), std::string::npos) << e.what();
  }
}

// ---- Clipping by global norm ----

TEST(ClipGradNorm, ScalesAllGradientsToTheNormAboveTheThreshold) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  int64_t n = 0;  // trainable elements
  for (size_t i = 0; i < g.params.size(); ++i)
    if (g.params[i].trainable()) n += g.params[i].shape.numel();
  fill_all(s, 0.f, 0.5f);
  const double norm = 0.5 * std::sqrt(static_cast<double>(n));  // every element 0.5
  ASSERT_GT(norm, 2.0);
  EXPECT_NEAR(clip_grad_norm(g, s, 2.0), norm, 1e-9);
  double sum_sq = 0;
  for (const Tensor& d : s.grads)
    for (int64_t j = 0; j < (d.empty() ? 0 : d.numel()); ++j) {
      ASSERT_NEAR(d.data<float>()[j], 0.5 * 2.0 / norm, 1e-7);  // one common factor
      sum_sq += double(d.data<float>()[j]) * d.data<float>()[j];
    }
  EXPECT_NEAR(std::sqrt(sum_sq), 2.0, 1e-5);
  // Now below the threshold: measured, not changed.
  EXPECT_NEAR(clip_grad_norm(g, s, 2.5), 2.0, 1e-5);
  EXPECT_NEAR(s.grads[g.find_param("fc.weight")].data<float>()[0], 0.5 * 2.0 / norm, 1e-7);
}

TEST(ClipGradNorm, MeasureOnlyAndNonFinite) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  fill_grads(s, 1);
  const int fc = g.find_param("fc.weight");
  const float before = s.grads[fc].data<float>()[1];
  // Hand check on one tensor's share: the total is the root of the sum of squares.
  double sum_sq = 0;
  for (const Tensor& d : s.grads)
    for (int64_t j = 0; j < (d.empty() ? 0 : d.numel()); ++j) sum_sq += double(d.data<float>()[j]) * d.data<float>()[j];
  EXPECT_NEAR(clip_grad_norm(g, s, 0.0), std::sqrt(sum_sq), 1e-9);
  EXPECT_EQ(s.grads[fc].data<float>()[1], before);
  s.grads[fc].data<float>()[0] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(std::isfinite(clip_grad_norm(g, s, 1.0)));
  EXPECT_EQ(s.grads[fc].data<float>()[1], before);  // nothing scaled by inf / NaN
  EXPECT_THROW(clip_grad_norm(g, s, -1.0), Error);
}

}  // namespace
}  // namespace incres::train
