// ResNets, written to be checked against the papers' tables by eye.
//
// CIFAR (ResNet paper, Sec. 4.2): "The first layer is 3x3 convolutions. Then we use a
// stack of 6n layers with 3x3 convolutions on the feature maps of sizes {32, 16, 8}
// respectively, with 2n layers for each feature map size. The numbers of filters are
// {16, 32, 64} respectively." Then global average pooling and a fully connected layer.
//
//   output size | layers
//   32 x 32     | conv 3x3, 16          (conv1, bn1)
//   32 x 32     | 2n x [3x3, 16]        (layer1: n blocks)
//   16 x 16     | 2n x [3x3, 32]        (layer2: n blocks, first one stride 2)
//    8 x  8     | 2n x [3x3, 64]        (layer3: n blocks, first one stride 2)
//    1 x  1     | average pool, fc
//
// CIFAR bottleneck (Identity Mappings, Sec. 4, ResNet-164/1001, 9n+2 layers): the same
// three stages with [1x1, w; 3x3, w; 1x1, 4w] units, w = 16/32/64, outputs 64/128/256.
//
// ImageNet (ResNet paper, Table 1):
//   output size | 18-layer      34-layer      50-layer           101-layer  152-layer
//   112 x 112   | conv 7x7, 64, stride 2
//    56 x 56    | 3x3 max pool, stride 2
//    56 x 56    | [3x3,64]x2x2  [3x3,64]x2x3  [1x1,64;3x3,64;1x1,256]x3  x3  x3
//    28 x 28    | [3x3,128]..x2 ..x4          [.., 512] x4               x4  x8
//    14 x 14    | [3x3,256]..x2 ..x6          [.., 1024] x6              x23 x36
//     7 x 7     | [3x3,512]..x2 ..x3          [.., 2048] x3              x3  x3
//     1 x 1     | average pool, 1000-d fc
// (ResNet-200 of the Identity Mappings paper: 3, 24, 36, 3 bottleneck units.)
//
// Every unit is one function, residual_unit(), that follows the unit order and the
// shortcut map of the Identity Mappings paper (Fig. 2 and 4); the defaults give the
// ResNet paper's unit. Parameter names are torchvision's (conv1, bn1, layer1.0.conv1,
// layer1.0.downsample.0, fc).
#include "core/error.h"
#include "graph/builder.h"
#include "models/models.h"

namespace incres::models {

using graph::Builder;

namespace {

// One conv of a unit's residual branch: kernel, output channels, stride.
struct ConvSpec {
  int kernel;
  int64_t K;
  int stride;
};

bool preact(Unit u) { return u == Unit::relu_preact || u == Unit::full_preact; }

// The shortcut of a unit whose input x has C channels and whose output has K. In
// pre-activation units a projection reads the activated input `xa` and has no BN.
int shortcut(Builder& b, int x, int xa, int64_t K, int stride, const ModelConfig& cfg) {
  const int64_t C = b.shape(x)[0];
  const bool reshapes = C != K || stride != 1;
  const bool project = cfg.shortcut == Shortcut::C || cfg.shortcut_map == ShortcutMap::conv1x1 ||
                       (reshapes && cfg.shortcut == Shortcut::B);
  if (!project) return reshapes ? b.shortcut_a(x, K, stride) : x;
  auto s = b.scope("downsample");
  if (preact(cfg.unit)) return b.conv(xa, K, 1, stride, 0, "0");
  return b.batchnorm(b.conv(x, K, 1, stride, 0, "0"), "1");
}

// A residual unit (or, with residual = false, a plain one) of the given convs. `x_active`
// says the input is already BN-ReLU'd by the layer before (the network's first unit in
// pre-activation nets), so a full pre-activation unit does not repeat it.
int residual_unit(Builder& b, int x, const std::vector<ConvSpec>& convs, bool residual,
                  bool x_active, const ModelConfig& cfg) {
  const Unit u = residual ? cfg.unit : Unit::original;
  const int64_t K = convs.back().K;
  int stride = 1;
  for (const ConvSpec& c : convs) stride *= c.stride;
  const int64_t C = b.shape(x)[0];
  const bool reshapes = C != K || stride != 1;

  // Full pre-activation: "the first unit of a stage applies BN-ReLU before splitting"
  // when its shortcut is a projection; otherwise BN-ReLU starts the residual branch only.
  int xa = x;  // the activated input the branch (and a projection) reads
  const bool shared_preact = u == Unit::full_preact && !x_active &&
                             (reshapes || cfg.shortcut == Shortcut::C ||
                              cfg.shortcut_map == ShortcutMap::conv1x1) && cfg.shortcut != Shortcut::A;
  if (shared_preact) xa = b.relu(b.batchnorm(x, "bn1"));

  int y = xa;
  for (size_t i = 0; i < convs.size(); ++i) {
    const ConvSpec& c = convs[i];
    const std::string n = std::to_string(i + 1);
    const bool last = i + 1 == convs.size();
    if (u == Unit::full_preact) {
      if (i > 0 || (!shared_preact && !x_active)) y = b.relu(b.batchnorm(y, "bn" + n));
      y = b.conv(y, c.K, c.kernel, c.stride, c.kernel / 2, "conv" + n);
    } else if (u == Unit::relu_preact) {
      if (i > 0 || !x_active) y = b.relu(y);
      y = b.batchnorm(b.conv(y, c.K, c.kernel, c.stride, c.kernel / 2, "conv" + n), "bn" + n);
    } else {
      y = b.conv(y, c.K, c.kernel, c.stride, c.kernel / 2, "conv" + n);
      if (!(last && u == Unit::bn_after_add)) y = b.batchnorm(y, "bn" + n);
      if (!last || u == Unit::relu_before_add) y = b.relu(y);
    }
  }
  if (!residual) return b.relu(y);

  int h = shortcut(b, x, xa, K, stride, cfg);
  const float lambda = cfg.shortcut_param;
  switch (cfg.shortcut_map) {
    case ShortcutMap::identity:
    case ShortcutMap::conv1x1: {
      float s = cfg.residual_scale < 0 ? 1.f : cfg.residual_scale;
      y = b.add(h, y, s);
      break;
    }
    case ShortcutMap::scaling: {
      float s = cfg.residual_scale < 0 ? 1.f - lambda : cfg.residual_scale;
      y = b.add(b.scale_shift(h, lambda, 0.f), y, s);
      break;
    }
    case ShortcutMap::exclusive_gate:
    case ShortcutMap::shortcut_gate: {
      // g = sigmoid(W_g x + b_g), a 1x1 conv on the unit's input; its bias starts at
      // shortcut_param (the paper's b_g: 0 or -6 and so on).
      int z = b.conv(xa, graph::Conv2d{K, 1, 1, stride, 0, 0, true}, "gate");
      b.init_param("gate.bias", graph::Init::constant, cfg.shortcut_param);
      int g = b.sigmoid(z);
      int gated_h = b.mul(b.scale_shift(g, -1.f, 1.f), h);  // (1 - g) h
      int f = cfg.shortcut_map == ShortcutMap::exclusive_gate ? b.mul(g, y) : y;
      y = b.add(gated_h, f);
      break;
    }
    case ShortcutMap::dropout:
      y = b.add(b.dropout(h, cfg.shortcut_param), y);
      break;
  }
  if (u == Unit::original) y = b.relu(y);
  if (u == Unit::bn_after_add) y = b.relu(b.batchnorm(y, "bn" + std::to_string(convs.size())));
  return y;
}

// The convs of a basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with 4x the width out)
// unit; the stride sits on the first 3x3 of a basic unit, on the 3x3 (v1.5) or the
// first 1x1 (v1) of a bottleneck.
std::vector<ConvSpec> unit_convs(bool bottleneck, int64_t width, int stride, const ModelConfig& cfg) {
  if (!bottleneck) return {{3, width, stride}, {3, width, 1}};
  const int s1 = cfg.stride_on_3x3 ? 1 : stride, s3 = cfg.stride_on_3x3 ? stride : 1;
  return {{1, width, s1}, {3, width, s3}, {1, 4 * width, 1}};
}

int stage(Builder& b, const std::string& name, int x, int units, bool bottleneck, int64_t width,
          int stride, bool residual, bool first_active, const ModelConfig& cfg) {
  auto s = b.scope(name);
  for (int i = 0; i < units; ++i) {
    auto blk = b.scope(std::to_string(i));
    x = residual_unit(b, x, unit_convs(bottleneck, width, i == 0 ? stride : 1, cfg), residual,
                      i == 0 && first_active, cfg);
  }
  return x;
}

// After the last unit: pre-activation nets end with BN-ReLU (full) or ReLU (ReLU-only),
// since their units leave the sum unactivated; then pool and classify.
int head(Builder& b, int x, const ModelConfig& cfg) {
  if (cfg.unit == Unit::full_preact) x = b.relu(b.batchnorm(x, "bn_final"));
  if (cfg.unit == Unit::relu_preact) x = b.relu(x);
  return b.linear(b.global_avg_pool(x), cfg.classes, "fc");
}

void check_ablation(const ModelConfig& cfg, bool residual) {
  if (!residual)
    INCRES_CHECK(cfg.unit == Unit::original && cfg.shortcut_map == ShortcutMap::identity,
                 "plain nets have no shortcut: --unit and --shortcut-map apply to ResNets only");
  if (cfg.shortcut_map == ShortcutMap::dropout)
    INCRES_CHECK(cfg.shortcut_param > 0 && cfg.shortcut_param < 1,
                 "the dropout shortcut needs a probability in (0, 1), got ", cfg.shortcut_param);
}

}  // namespace

graph::Graph cifar_resnet(int n, bool residual, const ModelConfig& cfg) {
  INCRES_CHECK(cfg.image >= 8, "CIFAR ResNets need an input of at least 8x8, got ", cfg.image);
  check_ablation(cfg, residual);
  Builder b(Shape{cfg.in_channels, cfg.image, cfg.image});
  const int64_t H = cfg.image, H2 = (H + 1) / 2, H4 = (H2 + 1) / 2;
  int x = b.relu(b.batchnorm(b.conv(b.input(), 16, 3, 1, 1, "conv1"), "bn1"));
  x = stage(b, "layer1", x, n, false, 16, 1, residual, true, cfg);
  b.expect(x, Shape{16, H, H}, "layer1");
  x = stage(b, "layer2", x, n, false, 32, 2, residual, false, cfg);
  b.expect(x, Shape{32, H2, H2}, "layer2");
  x = stage(b, "layer3", x, n, false, 64, 2, residual, false, cfg);
  b.expect(x, Shape{64, H4, H4}, "layer3");
  return b.finish(head(b, x, cfg));
}

graph::Graph cifar_bottleneck_resnet(int n, const ModelConfig& cfg) {
  INCRES_CHECK(cfg.image >= 8, "CIFAR ResNets need an input of at least 8x8, got ", cfg.image);
  check_ablation(cfg, true);
  Builder b(Shape{cfg.in_channels, cfg.image, cfg.image});
  const int64_t H = cfg.image, H2 = (H + 1) / 2, H4 = (H2 + 1) / 2;
  int x = b.relu(b.batchnorm(b.conv(b.input(), 16, 3, 1, 1, "conv1"), "bn1"));
  x = stage(b, "layer1", x, n, true, 16, 1, true, true, cfg);
  b.expect(x, Shape{64, H, H}, "layer1");
  x = stage(b, "layer2", x, n, true, 32, 2, true, false, cfg);
  b.expect(x, Shape{128, H2, H2}, "layer2");
  x = stage(b, "layer3", x, n, true, 64, 2, true, false, cfg);
  b.expect(x, Shape{256, H4, H4}, "layer3");
  return b.finish(head(b, x, cfg));
}

graph::Graph imagenet_resnet(const std::vector<int>& blocks, bool bottleneck, bool residual,
                             const ModelConfig& cfg) {
  INCRES_CHECK(blocks.size() == 4, "ImageNet ResNets have four stages");
  INCRES_CHECK(cfg.image >= 32, "ImageNet ResNets need an input of at least 32x32, got ", cfg.image);
  check_ablation(cfg, residual);
  Builder b(Shape{cfg.in_channels, cfg.image, cfg.image});
  int x = b.relu(b.batchnorm(b.conv(b.input(), 64, 7, 2, 3, "conv1"), "bn1"));
  x = b.max_pool(x, 3, 2, 1);
  const int64_t out = bottleneck ? 4 : 1;
  x = stage(b, "layer1", x, blocks[0], bottleneck, 64, 1, residual, true, cfg);
  x = stage(b, "layer2", x, blocks[1], bottleneck, 128, 2, residual, false, cfg);
  x = stage(b, "layer3", x, blocks[2], bottleneck, 256, 2, residual, false, cfg);
  x = stage(b, "layer4", x, blocks[3], bottleneck, 512, 2, residual, false, cfg);
  b.expect(x, Shape{512 * out, b.shape(x)[1], b.shape(x)[2]}, "layer4");
  return b.finish(head(b, x, cfg));
}

Shortcut parse_shortcut(const std::string& s) {
  if (s == "A" || s == "a") return Shortcut::A;
  if (s == "B" || s == "b") return Shortcut::B;
  if (s == "C" || s == "c") return Shortcut::C;
  fail("unknown shortcut option '", s,
       "': expected A (zero-padded identity), B (projection where shapes change) or C (projection everywhere)");
}

Unit parse_unit(const std::string& s) {
  if (s == "original") return Unit::original;
  if (s == "bn-after-add") return Unit::bn_after_add;
  if (s == "relu-before-add") return Unit::relu_before_add;
  if (s == "relu-preact") return Unit::relu_preact;
  if (s == "full-preact" || s == "preact") return Unit::full_preact;
  fail("unknown unit '", s, "': expected original, bn-after-add, relu-before-add, relu-preact or full-preact");
}

ShortcutMap parse_shortcut_map(const std::string& s) {
  if (s == "identity") return ShortcutMap::identity;
  if (s == "scaling") return ShortcutMap::scaling;
  if (s == "exclusive-gate") return ShortcutMap::exclusive_gate;
  if (s == "shortcut-gate") return ShortcutMap::shortcut_gate;
  if (s == "conv1x1") return ShortcutMap::conv1x1;
  if (s == "dropout") return ShortcutMap::dropout;
  fail("unknown shortcut map '", s,
       "': expected identity, scaling, exclusive-gate, shortcut-gate, conv1x1 or dropout");
}

}  // namespace incres::models
