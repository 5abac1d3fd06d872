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
#include "core/error.h"
#include "graph/builder.h"
#include "models/models.h"

namespace incres::models {

using graph::Builder;

namespace {

// The shortcut of a block whose input x has C channels and whose output has K.
int shortcut(Builder& b, int x, int64_t K, int stride, Shortcut kind) {
  int64_t C = b.shape(x)[0];
  if (C == K && stride == 1) return x;  // identity
  if (kind == Shortcut::A) return b.shortcut_a(x, K, stride);
  // Option B: 1x1 projection + BN where dimensions change (torchvision's "downsample").
  auto s = b.scope("downsample");
  int y = b.conv(x, K, 1, stride, 0, "0");
  return b.batchnorm(y, "1");
}

// Basic block: conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU (ResNet paper, Fig. 2).
int basic_block(Builder& b, int x, int64_t K, int stride, bool residual, Shortcut kind) {
  int y = b.relu(b.batchnorm(b.conv(x, K, 3, stride, 1, "conv1"), "bn1"));
  y = b.batchnorm(b.conv(y, K, 3, 1, 1, "conv2"), "bn2");
  if (residual) y = b.add(y, shortcut(b, x, K, stride, kind));
  return b.relu(y);
}

int stage(Builder& b, const char* name, int x, int blocks, int64_t K, int stride, bool residual,
          Shortcut kind) {
  auto s = b.scope(name);
  for (int i = 0; i < blocks; ++i) {
    auto blk = b.scope(std::to_string(i));
    x = basic_block(b, x, K, i == 0 ? stride : 1, residual, kind);
  }
  return x;
}

}  // namespace

graph::Graph cifar_resnet(int n, bool residual, const ModelConfig& cfg) {
  INCRES_CHECK(cfg.image >= 8, "CIFAR ResNets need an input of at least 8x8, got ", cfg.image);
  Builder b(Shape{cfg.in_channels, cfg.image, cfg.image});
  const int64_t H = cfg.image, H2 = (H + 1) / 2, H4 = (H2 + 1) / 2;
  int x = b.relu(b.batchnorm(b.conv(b.input(), 16, 3, 1, 1, "conv1"), "bn1"));
  x = stage(b, "layer1", x, n, 16, 1, residual, cfg.shortcut);
  b.expect(x, Shape{16, H, H}, "layer1");
  x = stage(b, "layer2", x, n, 32, 2, residual, cfg.shortcut);
  b.expect(x, Shape{32, H2, H2}, "layer2");
  x = stage(b, "layer3", x, n, 64, 2, residual, cfg.shortcut);
  b.expect(x, Shape{64, H4, H4}, "layer3");
  x = b.linear(b.global_avg_pool(x), cfg.classes, "fc");
  return b.finish(x);
}

Shortcut parse_shortcut(const std::string& s) {
  if (s == "A" || s == "a") return Shortcut::A;
  if (s == "B" || s == "b") return Shortcut::B;
  fail("unknown shortcut option '", s, "': expected A (zero-padded identity) or B (projection)");
}

}  // namespace incres::models
