// The shared planning pass (graph/passes/fusion.h), asserted on the plan itself: what
// each node absorbs or fuses, which values have no buffer, which share one. Plus the
// op traits it reads: every node of every model uses the parameters its op's traits
// say.
#include <gtest/gtest.h>

#include <string>

#include "backend/outputs.h"
#include "graph/passes/fusion.h"
#include "models/models.h"

namespace incres {
namespace {

graph::FusionPlan plan_of(const graph::Graph& g, backend::Mode mode) {
  return graph::plan_fusion(g, backend::live_nodes(g, mode), backend::output_values(g), mode == backend::Mode::train);
}

int node(const graph::Graph& g, const std::string& name) {
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (g.nodes[i].name == name) return static_cast<int>(i);
  ADD_FAILURE() << "no node " << name;
  return -1;
}

// The only consumer of node n's output.
int next(const graph::Graph& g, int n) {
  const auto& cons = g.values[g.nodes[n].output].consumers;
  EXPECT_EQ(cons.size(), 1u) << g.nodes[n].name;
  return cons.empty() ? -1 : cons[0];
}

TEST(FusionPlan, InceptionConvAbsorbsItsBnAndRelu) {
  models::ModelConfig cfg = models::find_model("inception_v3").defaults;
  const graph::Graph g = models::build_model("inception_v3", cfg);
  const int conv = node(g, "Mixed_6e.branch7x7_2.conv"), bn = node(g, "Mixed_6e.branch7x7_2.bn");
  const int relu = node(g, "Mixed_6e.branch7x7_2.relu");
  // Inference: the conv runs all three; the values between them have no buffer.
  const graph::FusionPlan infer = plan_of(g, backend::Mode::infer);
  const graph::ConvChain& ch = infer.nodes[conv].chain;
  EXPECT_EQ(ch.bn, bn);
  EXPECT_EQ(ch.relu, relu);
  EXPECT_EQ(ch.add, -1);
  EXPECT_EQ(ch.out, g.nodes[relu].output);
  EXPECT_TRUE(infer.nodes[bn].skip && infer.nodes[relu].skip);
  EXPECT_FALSE(infer.nodes[conv].skip);
  EXPECT_TRUE(infer.values[g.nodes[conv].output].hidden && infer.values[g.nodes[bn].output].hidden);
  // Training: the conv absorbs nothing; the BN runs the ReLU (its output then has no
  // buffer of its own: the BN writes the ReLU's).
  const graph::FusionPlan train = plan_of(g, backend::Mode::train);
  EXPECT_EQ(train.nodes[conv].chain.bn, -1);
  EXPECT_EQ(train.nodes[bn].fused_relu, relu);
  EXPECT_TRUE(train.nodes[relu].skip);
  EXPECT_TRUE(train.values[g.nodes[bn].output].hidden);
  EXPECT_FALSE(train.values[g.nodes[conv].output].hidden);
}

TEST(FusionPlan, ResNetResidualSum) {
  const graph::Graph g = models::build_model("resnet50", models::find_model("resnet50").defaults);
  const int conv3 = node(g, "layer1.0.conv3"), bn3 = node(g, "layer1.0.bn3");
  const int down = node(g, "layer1.0.downsample.0"), down_bn = node(g, "layer1.0.downsample.1");
  const int add = node(g, "layer1.0.add"), relu = next(g, add);
  // Inference: the projection conv comes after bn3, so it is the one that writes onto
  // the other branch's buffer: its BN, the sum and the ReLU after it, in one conv.
  const graph::FusionPlan infer = plan_of(g, backend::Mode::infer);
  EXPECT_EQ(infer.nodes[conv3].chain.bn, bn3);
  EXPECT_EQ(infer.nodes[conv3].chain.add, -1) << "the projection is computed after conv3";
  const graph::ConvChain& ch = infer.nodes[down].chain;
  EXPECT_EQ(ch.bn, down_bn);
  EXPECT_EQ(ch.add, add);
  EXPECT_EQ(ch.post_relu, relu);
  EXPECT_EQ(ch.other, g.nodes[bn3].output);
  EXPECT_EQ(ch.sum_scale, 1.f);
  EXPECT_EQ(infer.values[ch.out].alias, g.nodes[bn3].output) << "the conv writes onto bn3's buffer";
  // Training: the sum runs in place over an input whose producer's output may be
  // overwritten (a BN), and the ReLU after it in place over the sum.
  const graph::FusionPlan train = plan_of(g, backend::Mode::train);
  const int slot = train.nodes[add].in_place_slot;
  ASSERT_GE(slot, 0);
  EXPECT_EQ(train.values[g.nodes[add].output].alias, g.nodes[add].inputs[slot]);
  EXPECT_EQ(train.values[g.nodes[relu].output].alias, g.nodes[add].output);
  EXPECT_FALSE(train.nodes[relu].skip);
}

TEST(FusionPlan, InceptionResNetScaledSum) {
  // y = x + 0.17 * up(branches): the up-projection conv is the sum's second input, so
  // it absorbs the sum with its own scale and the destination's scale 1.
  const graph::Graph g = models::build_model("inception_resnet_v2", models::find_model("inception_resnet_v2").defaults);
  const graph::FusionPlan infer = plan_of(g, backend::Mode::infer);
  int scaled = 0;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const graph::ConvChain& ch = infer.nodes[i].chain;
    if (ch.add < 0 || ch.conv_scale == 1.f) continue;
    ++scaled;
    EXPECT_EQ(ch.sum_scale, 1.f) << g.nodes[i].name;
    EXPECT_EQ(ch.conv_scale, std::get<graph::Add>(g.nodes[ch.add].op).scale) << g.nodes[i].name;
  }
  EXPECT_EQ(scaled, 10 + 20 + 9) << "every block of the 10/20/10 layout but the last, unscaled one";
}

TEST(FusionPlan, OutputsAreNeverHiddenNorOverwritten) {
  for (const char* name : {"resnet20", "inception_v3"}) {
    const graph::Graph g = models::build_model(name, models::find_model(name).defaults);
    for (backend::Mode mode : {backend::Mode::train, backend::Mode::infer}) {
      const graph::FusionPlan p = plan_of(g, mode);
      for (int v : backend::output_values(g)) {
        EXPECT_FALSE(p.values[v].hidden) << name;
        for (const auto& vp : p.values) EXPECT_NE(vp.alias, v) << name << ": a value overwrites an output";
      }
    }
  }
}

TEST(OpTraits, EveryNodeUsesTheParametersItsTraitsName) {
  for (const models::ModelInfo& m : models::registry()) {
    const graph::Graph g = m.build(m.defaults);
    for (const graph::Node& n : g.nodes)
      ASSERT_EQ(static_cast<int>(n.params.size()), graph::traits(n.op).params) << m.name << ": " << n.name;
  }
}

}  // namespace
}  // namespace incres
