// The moving average of the weights: TF's decay rule and update, BN statistics
// averaged, an inference program that follows the average.
#include <gtest/gtest.h>

#include <cmath>

#include "../support.h"
#include "core/error.h"
#include "train/ema.h"
#include "train/tiny_model.h"

namespace incres::train {
namespace {

using testing_support::contains;
using testing_support::error_of;
using tiny::tiny_graph;

TEST(Ema, DecayFollowsTensorFlowsNumUpdatesRule) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  Ema ema(g, s, 0.9999);
  EXPECT_DOUBLE_EQ(ema.decay_at(0), 1.0 / 10);   // (1 + 0) / (10 + 0)
  EXPECT_DOUBLE_EQ(ema.decay_at(10), 11.0 / 20);
  EXPECT_DOUBLE_EQ(ema.decay_at(9989), 9990.0 / 9999);
  EXPECT_DOUBLE_EQ(ema.decay_at(89990), 0.9999);  // (1 + t) / (10 + t) >= 0.9999 from t = 89990
  EXPECT_DOUBLE_EQ(ema.decay_at(1000000), 0.9999);
  Ema low(g, s, 0.5);
  EXPECT_DOUBLE_EQ(low.decay_at(0), 0.1);
  EXPECT_DOUBLE_EQ(low.decay_at(8), 0.5);  // 9 / 18: the configured decay caps it
  EXPECT_DOUBLE_EQ(low.decay_at(100), 0.5);
}

TEST(Ema, HandComputedUpdatesOfWeightsAndRunningStatistics) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  for (Tensor& v : s.values) v.fill(1.f);
  Ema ema(g, s, 0.5);  // starts at the values: 1
  for (Tensor& v : s.values) v.fill(3.f);
  ema.update(0);  // d = 0.1: 1 - 0.9 * (1 - 3) = 2.8
  for (Tensor& v : s.values) v.fill(5.f);
  ema.update(20);  // d = 0.5: 2.8 - 0.5 * (2.8 - 5) = 3.9
  for (size_t i = 0; i < g.params.size(); ++i)
    for (int64_t j = 0; j < s.values[i].numel(); ++j)
      ASSERT_NEAR(ema.averages().values[i].data<float>()[j], 3.9f, 1e-6) << g.params[i].name;
  // The running statistics are averaged too (the decision documented in ema.h).
  EXPECT_NEAR(ema.averages().values[g.find_param("bn1.running_var")].data<float>()[0], 3.9f, 1e-6);
  // The live weights are untouched.
  EXPECT_EQ(s.values[g.find_param("fc.weight")].data<float>()[0], 5.f);
}

TEST(Ema, AveragesAreAnInferenceStore) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  s.init(g, 2);
  Ema ema(g, s, 0.9);
  const graph::ParamStore& a = ema.averages();
  ASSERT_EQ(a.values.size(), g.params.size());
  ASSERT_EQ(a.grads.size(), g.params.size());
  for (size_t i = 0; i < g.params.size(); ++i) {
    EXPECT_TRUE(a.grads[i].empty()) << g.params[i].name;
    EXPECT_EQ(a.values[i].shape(), g.params[i].shape) << g.params[i].name;
    EXPECT_NE(a.values[i].raw(), s.values[i].raw()) << "a copy, not an alias: " << g.params[i].name;
  }
}

TEST(Ema, RejectsBadDecay) {
  graph::Graph g = tiny_graph();
  graph::ParamStore s(g);
  EXPECT_TRUE(contains(error_of([&] { Ema(g, s, 0.0); }), "decay"));
  EXPECT_TRUE(contains(error_of([&] { Ema(g, s, 1.0); }), "(0, 1)"));
  EXPECT_TRUE(contains(error_of([&] { Ema(g, s, std::nan("")); }), "decay"));
  graph::ParamStore empty;
  EXPECT_TRUE(contains(error_of([&] { Ema(g, empty, 0.9); }), "one per graph param"));
}

}  // namespace
}  // namespace incres::train
