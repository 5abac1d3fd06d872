// Layer 4 of the test plan (STYLE.md §5): invariants of the model zoo, checked
// against the reference numbers. Parameter counts are torchvision's way of counting
// (trainable tensors only, BN running statistics excluded) for the CIFAR ResNets of
// the ResNet paper (He et al. 2016, Sec. 4.2 and Table 6: 0.27M, 0.46M, 0.66M,
// 0.85M, 1.7M, 19.4M); the exact figures follow from the architecture by hand, e.g.
// resnet20 = 432 + 32 (conv1, bn1) + 6 * (2304 + 32) (layer1)
// + (4608 + 64) + 5 * (9216 + 64) (layer2) + (18432 + 128) + 5 * (36864 + 128) (layer3)
// + 650 (fc) = 269,722.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <set>
#include <string>

#include "core/error.h"
#include "graph/builder.h"
#include "models/models.h"

namespace incres {
namespace {

using models::ModelConfig;
using models::Shortcut;

// The message of the Error that `build` throws, or "" when it throws none.
template <class F>
std::string error_of(F&& build) {
  try {
    build();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(Models, ParameterCounts) {
  const struct {
    const char* name;
    int64_t params;
  } expected[] = {
      {"resnet20", 269722},   {"resnet32", 464154},    {"resnet44", 658586},
      {"resnet56", 853018},   {"resnet110", 1727962},  {"resnet1202", 19421274},
  };
  for (const auto& e : expected)
    EXPECT_EQ(models::build_model(e.name, ModelConfig{}).param_count(), e.params) << e.name;

  // A grey-scale input only shrinks conv1: 16 x 1 x 3 x 3 instead of 16 x 3 x 3 x 3.
  ModelConfig grey;
  grey.in_channels = 1;
  EXPECT_EQ(models::build_model("resnet20", grey).param_count(), 269434);

  // Option B adds a 1x1 conv + BN where the shape changes (layer2.0, layer3.0):
  // (16*32 + 2*32) + (32*64 + 2*64) = 576 + 2176.
  ModelConfig b;
  b.shortcut = Shortcut::B;
  EXPECT_EQ(models::build_model("resnet20", b).param_count(), 269722 + 576 + 2176);
}

// Option A shortcuts have no parameters, so a plain net counts what its ResNet does.
TEST(Models, PlainNetsCountLikeOptionA) {
  for (int depth : {20, 32, 44, 56, 110}) {
    const std::string d = std::to_string(depth);
    EXPECT_EQ(models::build_model("plain" + d, ModelConfig{}).param_count(),
              models::build_model("resnet" + d, ModelConfig{}).param_count())
        << depth;
  }
}

// Multiply-adds per 32x32 image (conv and fc layers; the ResNet paper gives no
// figure for CIFAR). By hand: resnet20 = 442,368 (conv1) + 6 * 2,359,296 (layer1)
// + 2 * (1,179,648 + 5 * 2,359,296) (layer2, layer3) + 640 (fc) = 40,551,040.
TEST(Models, Macs) {
  const struct {
    const char* name;
    double macs;
  } expected[] = {{"resnet20", 40.6e6}, {"resnet56", 125.5e6}, {"resnet110", 252.9e6}};
  for (const auto& e : expected) {
    const int64_t macs = models::build_model(e.name, ModelConfig{}).macs();
    std::printf("%-10s %lld MACs per image\n", e.name, static_cast<long long>(macs));
    EXPECT_NEAR(static_cast<double>(macs), e.macs, 0.01 * e.macs) << e.name;
  }
}

TEST(Models, TorchvisionParameterNames) {
  const graph::Graph a = models::build_model("resnet20", ModelConfig{});
  for (const char* name : {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                           "bn1.running_var", "layer1.0.conv1.weight", "layer1.0.bn1.running_var",
                           "layer2.0.conv2.weight", "layer3.2.bn2.bias", "fc.weight", "fc.bias"})
    EXPECT_GE(a.find_param(name), 0) << name;
  EXPECT_EQ(a.params[a.find_param("layer2.0.conv1.weight")].shape, (Shape{32, 16, 3, 3}));
  EXPECT_EQ(a.params[a.find_param("fc.weight")].shape, (Shape{10, 64}));  // out x in
  EXPECT_FALSE(a.params[a.find_param("bn1.running_var")].trainable());
  EXPECT_LT(a.find_param("layer3.3.conv1.weight"), 0);  // resnet20 has 3 blocks per stage
  for (const graph::Param& p : a.params)
    EXPECT_FALSE(contains(p.name, "downsample")) << p.name << " in a net with option A shortcuts";

  ModelConfig cfg;
  cfg.shortcut = Shortcut::B;
  const graph::Graph b = models::build_model("resnet20", cfg);
  for (const char* name : {"layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
                           "layer2.0.downsample.1.running_mean", "layer3.0.downsample.0.weight"}) {
    EXPECT_GE(b.find_param(name), 0) << name;
  }
  EXPECT_EQ(b.params[b.find_param("layer2.0.downsample.0.weight")].shape, (Shape{32, 16, 1, 1}));
  // Only where the shape changes: identity elsewhere.
  EXPECT_LT(b.find_param("layer1.0.downsample.0.weight"), 0);
  EXPECT_LT(b.find_param("layer2.1.downsample.0.weight"), 0);
}

// Every registered model builds with its defaults, maps 3 x 32 x 32 to its classes,
// has unique parameter names, and every value but the output is consumed.
TEST(Models, RegistryInvariants) {
  ASSERT_FALSE(models::registry().empty());
  for (const models::ModelInfo& m : models::registry()) {
    SCOPED_TRACE(m.name);
    const graph::Graph g = m.build(m.defaults);
    EXPECT_EQ(g.input_shape(), (Shape{3, m.defaults.image, m.defaults.image}));
    EXPECT_EQ(g.output_shape(), (Shape{m.defaults.classes}));
    for (int aux : g.aux_outputs) EXPECT_EQ(g.values[aux].shape, (Shape{m.defaults.classes}));
    std::set<std::string> names;
    for (const graph::Param& p : g.params) EXPECT_TRUE(names.insert(p.name).second) << p.name;
    for (size_t v = 0; v < g.values.size(); ++v) {
      if (static_cast<int>(v) == g.output) continue;
      if (std::find(g.aux_outputs.begin(), g.aux_outputs.end(), static_cast<int>(v)) != g.aux_outputs.end()) continue;
      EXPECT_FALSE(g.values[v].consumers.empty()) << "value " << v;
    }
    EXPECT_FALSE(m.description.empty());
  }
  ModelConfig small;
  small.classes = 100;
  small.in_channels = 1;
  small.image = 28;
  const graph::Graph g = models::build_model("resnet32", small);
  EXPECT_EQ(g.input_shape(), (Shape{1, 28, 28}));
  EXPECT_EQ(g.output_shape(), (Shape{100}));
}

// Sizes that do not halve evenly round up at every stride-2 stage (pad 1 3x3 convs,
// the 1x1 projection and the option A subsampling all give ceil(H / 2)).
TEST(Models, OddImageSizes) {
  for (Shortcut s : {Shortcut::A, Shortcut::B}) {
    ModelConfig cfg;
    cfg.image = 9;  // 9 -> 5 -> 3
    cfg.shortcut = s;
    const graph::Graph g = models::build_model("resnet20", cfg);
    EXPECT_EQ(g.values[g.nodes.back().inputs[0]].shape, (Shape{64}));
  }
}

TEST(Models, BuildErrors) {
  ModelConfig tiny;
  tiny.image = 4;
  const std::string e = error_of([&] { models::build_model("resnet20", tiny); });
  EXPECT_TRUE(contains(e, "8x8") && contains(e, "got 4")) << "message: " << e;

  // A wrong shape fails at the layer that makes it, naming the layer.
  graph::Builder b(Shape{3, 4, 4});
  const std::string conv = error_of([&] { b.conv(b.input(), 8, 7, 1, 0, "stem"); });
  EXPECT_TRUE(contains(conv, "stem") && contains(conv, "empty output")) << "message: " << conv;
  const int y = b.conv(b.input(), 8, 3, 2, 1, "conv");
  const std::string stage = error_of([&] { b.expect(y, Shape{8, 4, 4}, "stage1"); });
  EXPECT_TRUE(contains(stage, "stage1") && contains(stage, "[8, 4, 4]") && contains(stage, "[8, 2, 2]"))
      << "message: " << stage;

  EXPECT_TRUE(contains(error_of([] { models::parse_shortcut("D"); }), "'D'"));
  EXPECT_TRUE(contains(error_of([] { models::parse_unit("preact2"); }), "full-preact"));
  EXPECT_TRUE(contains(error_of([] { models::parse_shortcut_map("gate"); }), "exclusive-gate"));
}

TEST(Models, UnknownNameListsKnownOnes) {
  const std::string e = error_of([] { models::find_model("resnet18x"); });
  EXPECT_TRUE(contains(e, "resnet18x")) << e;
  for (const models::ModelInfo& m : models::registry()) EXPECT_TRUE(contains(e, m.name)) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << "one line";
}

}  // namespace
}  // namespace incres
