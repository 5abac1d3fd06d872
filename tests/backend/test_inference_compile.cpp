// The inference compilation of the oneDNN backend: each conv absorbs the BatchNorm
// after it (folded into its weights), a ReLU, or the residual sum and the ReLU after
// it (post-ops). Checked against the reference on the fused patterns and on whole
// ResNet-50 and Inception-ResNet-v2 nets, and by looking at the compiled program:
// no BatchNorm, no stand-alone ReLU or add, no reorder between the convs but around
// the thin 3x3s that run in nhwc.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

#include "backend/program.h"
#include "inference_support.h"
#include "core/rng.h"
#include "graph/builder.h"
#include "models/models.h"

using namespace incres;
using graph::Builder;
using testing_support::randomise;
using testing_support::rel_err;

namespace {

// The cpu program's inference output against the reference's.
double infer_error(const graph::Graph& g, int64_t batch) { return testing_support::infer_error(g, {batch}); }

int count(const std::vector<backend::StepProfile>& steps, const std::string& phase, const std::string& kind) {
  int n = 0;
  for (const auto& s : steps) n += s.phase == phase && s.kind == kind;
  return n;
}

}  // namespace

TEST(InferenceCompile, FusedPatternsMatchTheReference) {
  {  // ResNet basic block: relu(bn(conv(relu(bn(conv(x))))) + x), x from a conv
    Builder b(Shape{16, 12, 12});
    int x = b.relu(b.batchnorm(b.conv(b.input(), 16, 3, 1, 1, "c0"), "bn0"));
    int y = b.relu(b.batchnorm(b.conv(x, 16, 3, 1, 1, "c1"), "bn1"));
    y = b.batchnorm(b.conv(y, 16, 3, 1, 1, "c2"), "bn2");
    EXPECT_LT(infer_error(b.finish(b.relu(b.add(y, x))), 3), 1e-5) << "basic block";
  }
  {  // projection shortcut: both inputs of the add are conv + BN
    Builder b(Shape{16, 12, 12});
    int x = b.relu(b.conv(b.input(), 16, 3, 1, 1, "c0"));
    int y = b.batchnorm(b.conv(x, 32, 3, 2, 1, "c1"), "bn1");
    int s = b.batchnorm(b.conv(x, 32, 1, 2, 0, "down"), "bnd");
    EXPECT_LT(infer_error(b.finish(b.relu(b.add(y, s))), 3), 1e-5) << "projection";
  }
  for (float scale : {1.f, 0.17f}) {  // Inception-ResNet: relu(x + scale * conv(...)), conv with bias
    Builder b(Shape{24, 9, 9});
    int x = b.relu(b.conv(b.input(), 32, 1, 1, 0, "c0"));
    int y = b.relu(b.batchnorm(b.conv(x, 16, 3, 1, 1, "c1"), "bn1"));
    y = b.conv(y, graph::Conv2d{32, 1, 1, 1, 0, 0, true}, "up");
    EXPECT_LT(infer_error(b.finish(b.relu(b.add(x, y, scale))), 2), 1e-5) << "scaled, conv second, " << scale;
    Builder c(Shape{24, 9, 9});  // the conv as the add's first input: the scale is on the other
    int u = c.relu(c.conv(c.input(), 32, 1, 1, 0, "c0"));
    int w = c.conv(c.relu(c.conv(u, 16, 3, 1, 1, "c1")), graph::Conv2d{32, 1, 1, 1, 0, 0, true}, "up");
    EXPECT_LT(infer_error(c.finish(c.add(w, u, scale)), 2), 1e-5) << "scaled, conv first, " << scale;
  }
  {  // a conv reading the add's other input itself cannot sum onto it: not fused, still right
    Builder b(Shape{16, 9, 9});
    int x = b.relu(b.conv(b.input(), 16, 1, 1, 0, "c0"));
    EXPECT_LT(infer_error(b.finish(b.relu(b.add(x, b.conv(x, 16, 3, 1, 1, "c1"), 0.2f))), 2), 1e-5);
  }
}

TEST(InferenceCompile, WholeModelsMatchTheReference) {
  models::ModelConfig r50 = models::find_model("resnet50").defaults;
  r50.image = 64;
  EXPECT_LT(infer_error(models::build_model("resnet50", r50), 2), 1e-4) << "resnet50";
  EXPECT_LT(infer_error(models::build_model("preact_resnet20", models::ModelConfig{}), 2), 1e-4) << "preact";
  models::ModelConfig ir = models::find_model("inception_resnet_v2").defaults;
  ir.image = 75;
  ir.width = 0.25;
  EXPECT_LT(infer_error(models::build_model("inception_resnet_v2", ir), 2), 1e-4) << "inception_resnet_v2";
}

// The guard: resnet50's inference program, as compiled for 224x224. Every BN is
// folded, every ReLU and residual sum is a post-op of a conv, and the reorders of
// the forward pass are the input's (plain NCHW into the blocked layout) and, on
// AVX-512, the two around each thin 3x3 that runs in nhwc (emit_conv.cpp: at batch 1
// layer3.0's stride-2 one and layer 4's three). The 3x3 stride-1 convs of layers 1-3
// (3 + 3 + 5) run as Winograd at batch 1, layer 4's (7x7: 4 tiles) as direct convs;
// without Winograd all 53 are oneDNN convs.
TEST(InferenceCompile, ResNet50HasBatchNormFoldedAndNoReorderBetweenConvs) {
  const models::ModelConfig cfg = models::find_model("resnet50").defaults;  // 224x224, projection shortcuts
  ASSERT_EQ(cfg.image, 224);
  graph::Graph g = models::build_model("resnet50", cfg);
  graph::ParamStore store(g);
  backend::Options direct{1, backend::Mode::infer};
  direct.winograd = false;
  EXPECT_EQ(count(backend::compile_cpu(g, store, direct)->steps(), "forward", "convolution"), 53);
  auto p = backend::compile_cpu(g, store, {1, backend::Mode::infer});
  const auto steps = p->steps();
  EXPECT_EQ(count(steps, "forward", "convolution"), 53 - 11);
  EXPECT_EQ(count(steps, "forward", "winograd"), 11);
  EXPECT_EQ(count(steps, "forward", "batch_normalization"), 0);
  EXPECT_EQ(count(steps, "forward", "eltwise"), 0);
  EXPECT_EQ(count(steps, "forward", "binary"), 0);
  std::set<std::string> nhwc;  // the convs run by the nhwc brgemm kernel
  for (const auto& s : steps)
    if (s.kind == "convolution" && s.impl.starts_with("brgconv")) nhwc.insert(s.node);
  const bool avx512 = backend::cpu_isa().starts_with("avx512");
  const std::set<std::string> thin{"layer3.0.conv2", "layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"};
  EXPECT_EQ(nhwc, avx512 ? thin : std::set<std::string>());
  EXPECT_EQ(count(steps, "forward", "reorder"), 1 + 2 * static_cast<int>(nhwc.size()));
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].phase != "forward") continue;
    if (steps[i].kind == "reorder") {
      EXPECT_TRUE(steps[i].node.empty() || nhwc.contains(steps[i].node)) << "a reorder inside the net, step " << i;
    }
    EXPECT_EQ(steps[i].impl.find("ref"), std::string::npos) << steps[i].node << " runs " << steps[i].impl;
  }
}

// Weights are prepared once and again only after the store changes.
TEST(InferenceCompile, PreparesWeightsAgainWhenTheStoreChanges) {
  Builder b(Shape{8, 6, 6});
  graph::Graph g = b.finish(b.relu(b.batchnorm(b.conv(b.input(), 16, 3, 1, 1, "c"), "bn")));
  graph::ParamStore cpu_store(g), ref_store(g);
  randomise(g, cpu_store, ref_store, 3);
  auto cpu = backend::compile_cpu(g, cpu_store, {2, backend::Mode::infer});
  std::vector<float> x(2 * 8 * 6 * 6, 0.5f);
  const int64_t n = 2 * g.output_shape().numel();
  cpu->forward(x.data());
  for (int round = 0; round < 2; ++round) {
    for (auto* s : {&cpu_store, &ref_store}) {
      s->values[0].data<float>()[0] += 1.f;  // a weight
      s->values[4].data<float>()[3] *= 2.f;  // a running variance
      s->changed();
    }
    auto ref = backend::compile_ref(g, ref_store, {2, backend::Mode::infer});
    cpu->forward(x.data());
    ref->forward(x.data());
    EXPECT_LT(rel_err(cpu->output(), ref->output(), n), 1e-5) << "round " << round;
  }
  int prepared = 0;
  cpu->set_profiling(true);
  cpu->forward(x.data());  // the store has not changed: nothing to prepare
  for (const auto& s : cpu->steps()) prepared += s.phase == "prepare" ? static_cast<int>(s.calls) : 0;
  EXPECT_EQ(prepared, 0);
}
