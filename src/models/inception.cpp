// The Inception family, written block by block like the papers' figures.
//
// Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception Architecture", Table 1)
// in torchvision's released layout and parameter names:
//   299x299x3  | Conv2d_1a_3x3 /2, Conv2d_2a_3x3, Conv2d_2b_3x3 (pad), max pool 3/2
//   73x73x64   | Conv2d_3b_1x1, Conv2d_4a_3x3, max pool 3/2
//   35x35x192  | Mixed_5b, 5c, 5d   (Fig. 5: 5x5 as 5x5 in the release, two 3x3)
//   35x35x288  | Mixed_6a           (Fig. 10: grid reduction, conv and pool in parallel)
//   17x17x768  | Mixed_6b..6e       (Fig. 6: 7x7 factorised into 1x7 and 7x1)
//              |   AuxLogits on 6e: avg pool 5/3, 1x1 128, 5x5 768, fc
//   17x17x768  | Mixed_7a           (grid reduction)
//   8x8x1280   | Mixed_7b, 7c       (Fig. 7: expanded 1x3 / 3x1 outputs)
//   8x8x2048   | average pool, dropout 0.5, fc
//
// Inception-v4 and Inception-ResNet (Szegedy et al. 2017), with timm's names
// (features.N for v4; conv2d_1a, mixed_5b, repeat, ... for Inception-ResNet):
//   v4:   stem (Fig. 3) -> 4 x Inception-A (Fig. 4) -> Reduction-A (Fig. 7, k, l, m, n =
//         192, 224, 256, 384) -> 7 x Inception-B (Fig. 5) -> Reduction-B (Fig. 8) ->
//         3 x Inception-C (Fig. 6) -> average pool, dropout (keep 0.8), fc
//   IR-v2 (released): v3-like stem, Mixed_5b -> 10 x block35 (x0.17) -> Mixed_6a ->
//         20 x block17 (x0.10) -> Mixed_7a -> 9 x block8 (x0.20) + block8 without ReLU ->
//         conv 1x1 1536 -> average pool, fc
//   IR-v1: stem (Fig. 14) -> 5 x block35 (Fig. 10) -> Reduction-A (192, 192, 256, 384) ->
//         10 x block17 (Fig. 11) -> Reduction-B (Fig. 12) -> 5 x block8 (Fig. 13)
// Every conv but the residual up-projections is conv (no bias) + BN (eps 1e-3) + ReLU;
// the up-projection of a residual block has a bias and no BN, and its output is
// scaled before the sum (Inception-v4 paper, Sec. 3.3).
#include <cmath>

#include "core/error.h"
#include "graph/builder.h"
#include "models/models.h"

namespace incres::models {

using graph::Builder;

namespace {

struct K2 {
  int h, w;
};

// A network under construction: the builder and the channel multiplier.
struct Net {
  Builder& b;
  double width;

  // Channels scaled by the width multiplier, rounded to a multiple of 8 (every width
  // of the released models is one, so width 1 changes nothing).
  int64_t ch(int64_t c) const {
    if (width == 1.0) return c;
    return std::max<int64_t>(8, std::llround(static_cast<double>(c) * width / 8.0) * 8);
  }

  // torchvision's / timm's BasicConv2d: <name>.conv (no bias), <name>.bn (eps 1e-3), ReLU.
  int conv(int x, int64_t K, K2 k, int stride, K2 pad, const std::string& name) {
    auto s = b.scope(name);
    int y = b.conv(x, graph::Conv2d{ch(K), k.h, k.w, stride, pad.h, pad.w, false}, "conv");
    return b.relu(b.batchnorm(y, "bn", graph::BatchNorm{1e-3f}));
  }
  int conv(int x, int64_t K, int k, int stride, int pad, const std::string& name) {
    return conv(x, K, K2{k, k}, stride, K2{pad, pad}, name);
  }
  int conv(int x, int64_t K, int k, const std::string& name) { return conv(x, K, k, 1, k / 2, name); }
  // 1 x n and n x 1 convs, padded to keep the grid.
  int conv_1xn(int x, int64_t K, int n, const std::string& name) {
    return conv(x, K, K2{1, n}, 1, K2{0, n / 2}, name);
  }
  int conv_nx1(int x, int64_t K, int n, const std::string& name) {
    return conv(x, K, K2{n, 1}, 1, K2{n / 2, 0}, name);
  }
};

// ---- Inception-v3 (torchvision's InceptionA..E and InceptionAux) ----

// 35x35 (Fig. 5 as released: a 5x5 branch and a double-3x3 branch).
int v3_a(Net& n, int x, int64_t pool_features, const std::string& name) {
  auto s = n.b.scope(name);
  int b1 = n.conv(x, 64, 1, "branch1x1");
  int b5 = n.conv(n.conv(x, 48, 1, "branch5x5_1"), 64, 5, "branch5x5_2");
  int b3 = n.conv(x, 64, 1, "branch3x3dbl_1");
  b3 = n.conv(n.conv(b3, 96, 3, "branch3x3dbl_2"), 96, 3, "branch3x3dbl_3");
  int bp = n.conv(n.b.avg_pool(x, 3, 1, 1), pool_features, 1, "branch_pool");
  return n.b.concat({b1, b5, b3, bp});
}

// 35 -> 17 grid reduction (Fig. 10).
int v3_b(Net& n, int x, const std::string& name) {
  auto s = n.b.scope(name);
  int b3 = n.conv(x, 384, 3, 2, 0, "branch3x3");
  int bd = n.conv(n.conv(x, 64, 1, "branch3x3dbl_1"), 96, 3, "branch3x3dbl_2");
  bd = n.conv(bd, 96, 3, 2, 0, "branch3x3dbl_3");
  return n.b.concat({b3, bd, n.b.max_pool(x, 3, 2)});
}

// 17x17 with 7x7 factorised into 1x7 and 7x1 (Fig. 6), c7 channels inside.
int v3_c(Net& n, int x, int64_t c7, const std::string& name) {
  auto s = n.b.scope(name);
  int b1 = n.conv(x, 192, 1, "branch1x1");
  int b7 = n.conv(x, c7, 1, "branch7x7_1");
  b7 = n.conv_nx1(n.conv_1xn(b7, c7, 7, "branch7x7_2"), 192, 7, "branch7x7_3");
  int bd = n.conv(x, c7, 1, "branch7x7dbl_1");
  bd = n.conv_1xn(n.conv_nx1(bd, c7, 7, "branch7x7dbl_2"), c7, 7, "branch7x7dbl_3");
  bd = n.conv_1xn(n.conv_nx1(bd, c7, 7, "branch7x7dbl_4"), 192, 7, "branch7x7dbl_5");
  int bp = n.conv(n.b.avg_pool(x, 3, 1, 1), 192, 1, "branch_pool");
  return n.b.concat({b1, b7, bd, bp});
}

// 17 -> 8 grid reduction.
int v3_d(Net& n, int x, const std::string& name) {
  auto s = n.b.scope(name);
  int b3 = n.conv(n.conv(x, 192, 1, "branch3x3_1"), 320, 3, 2, 0, "branch3x3_2");
  int b7 = n.conv(x, 192, 1, "branch7x7x3_1");
  b7 = n.conv_nx1(n.conv_1xn(b7, 192, 7, "branch7x7x3_2"), 192, 7, "branch7x7x3_3");
  b7 = n.conv(b7, 192, 3, 2, 0, "branch7x7x3_4");
  return n.b.concat({b3, b7, n.b.max_pool(x, 3, 2)});
}

// 8x8 with expanded filter banks: 3x3 split into parallel 1x3 and 3x1 (Fig. 7).
int v3_e(Net& n, int x, const std::string& name) {
  auto s = n.b.scope(name);
  int b1 = n.conv(x, 320, 1, "branch1x1");
  int b3 = n.conv(x, 384, 1, "branch3x3_1");
  b3 = n.b.concat({n.conv_1xn(b3, 384, 3, "branch3x3_2a"), n.conv_nx1(b3, 384, 3, "branch3x3_2b")});
  int bd = n.conv(n.conv(x, 448, 1, "branch3x3dbl_1"), 384, 3, "branch3x3dbl_2");
  bd = n.b.concat({n.conv_1xn(bd, 384, 3, "branch3x3dbl_3a"), n.conv_nx1(bd, 384, 3, "branch3x3dbl_3b")});
  int bp = n.conv(n.b.avg_pool(x, 3, 1, 1), 192, 1, "branch_pool");
  return n.b.concat({b1, b3, bd, bp});
}

// The auxiliary classifier on the 17x17 grid: pool 5/3, 1x1 128, 5x5 768, fc; with
// bn_fc, the paper's BN-auxiliary (Sec. 7: "the fully connected layer of the
// auxiliary classifier is also batch-normalized"), a BN on the fc's outputs.
int v3_aux(Net& n, int x, int64_t classes, bool bn_fc) {
  auto s = n.b.scope("AuxLogits");
  const int64_t grid = n.b.shape(x)[1];
  INCRES_CHECK(grid >= 5, "inception_v3's auxiliary head needs a grid of at least 5x5 at Mixed_6e, got ",
               grid, "x", grid, "; use a larger image (the paper's is 299) or turn the head off (--no-aux)");
  int y = n.conv(n.b.avg_pool(x, 5, 3), 128, 1, "conv0");
  const int64_t after_pool = n.b.shape(y)[1];
  INCRES_CHECK(after_pool >= 5, "inception_v3's auxiliary head needs a 5x5 grid after its pooling, got ",
               after_pool, "x", after_pool, "; use a larger image or --no-aux");
  y = n.conv(y, 768, 5, 1, 0, "conv1");
  n.b.init_param("conv1.conv.weight", graph::Init::truncated_normal, 0.01f);  // torchvision's stddev
  // With BN after it the fc has no bias: training-mode BN subtracts it again.
  y = n.b.linear(n.b.global_avg_pool(y), classes, "fc", !bn_fc);
  n.b.init_param("fc.weight", graph::Init::truncated_normal, 0.001f);
  if (bn_fc) y = n.b.batchnorm(y, "fc_bn", graph::BatchNorm{1e-3f});
  return y;
}

// ---- Inception-v4 (timm's Mixed3a..InceptionC) ----

int v4_a(Net& n, int x) {
  int b0 = n.conv(x, 96, 1, "branch0");
  int b1 = n.conv(n.conv(x, 64, 1, "branch1.0"), 96, 3, "branch1.1");
  int b2 = n.conv(n.conv(x, 64, 1, "branch2.0"), 96, 3, "branch2.1");
  b2 = n.conv(b2, 96, 3, "branch2.2");
  int b3 = n.conv(n.b.avg_pool(x, 3, 1, 1, false, false), 96, 1, "branch3.1");
  return n.b.concat({b0, b1, b2, b3});
}

// Reduction-A (Fig. 7) with filter counts k, l, m, n.
int reduction_a(Net& n, int x, int64_t k, int64_t l, int64_t m, int64_t nn) {
  int b0 = n.conv(x, nn, 3, 2, 0, "branch0");
  int b1 = n.conv(n.conv(x, k, 1, "branch1.0"), l, 3, "branch1.1");
  b1 = n.conv(b1, m, 3, 2, 0, "branch1.2");
  return n.b.concat({b0, b1, n.b.max_pool(x, 3, 2)});
}

int v4_b(Net& n, int x) {
  int b0 = n.conv(x, 384, 1, "branch0");
  int b1 = n.conv(x, 192, 1, "branch1.0");
  b1 = n.conv_nx1(n.conv_1xn(b1, 224, 7, "branch1.1"), 256, 7, "branch1.2");
  int b2 = n.conv(x, 192, 1, "branch2.0");
  b2 = n.conv_1xn(n.conv_nx1(b2, 192, 7, "branch2.1"), 224, 7, "branch2.2");
  b2 = n.conv_1xn(n.conv_nx1(b2, 224, 7, "branch2.3"), 256, 7, "branch2.4");
  int b3 = n.conv(n.b.avg_pool(x, 3, 1, 1, false, false), 128, 1, "branch3.1");
  return n.b.concat({b0, b1, b2, b3});
}

int v4_reduction_b(Net& n, int x) {
  int b0 = n.conv(n.conv(x, 192, 1, "branch0.0"), 192, 3, 2, 0, "branch0.1");
  int b1 = n.conv(x, 256, 1, "branch1.0");
  b1 = n.conv_nx1(n.conv_1xn(b1, 256, 7, "branch1.1"), 320, 7, "branch1.2");
  b1 = n.conv(b1, 320, 3, 2, 0, "branch1.3");
  return n.b.concat({b0, b1, n.b.max_pool(x, 3, 2)});
}

int v4_c(Net& n, int x) {
  int b0 = n.conv(x, 256, 1, "branch0");
  int b1 = n.conv(x, 384, 1, "branch1_0");
  b1 = n.b.concat({n.conv_1xn(b1, 256, 3, "branch1_1a"), n.conv_nx1(b1, 256, 3, "branch1_1b")});
  int b2 = n.conv(x, 384, 1, "branch2_0");
  b2 = n.conv_1xn(n.conv_nx1(b2, 448, 3, "branch2_1"), 512, 3, "branch2_2");
  b2 = n.b.concat({n.conv_1xn(b2, 256, 3, "branch2_3a"), n.conv_nx1(b2, 256, 3, "branch2_3b")});
  int b3 = n.conv(n.b.avg_pool(x, 3, 1, 1, false, false), 256, 1, "branch3.1");
  return n.b.concat({b0, b1, b2, b3});
}

// ---- Inception-ResNet blocks ----

// y = x + scale * up(concat(branches)); ReLU unless `relu` is false. `up` is a 1x1
// conv with bias and no BN that restores x's channel count.
int residual(Net& n, int x, const std::vector<int>& branches, float scale, bool relu = true) {
  const int64_t C = n.b.shape(x)[0];
  int up = n.b.conv(n.b.concat(branches), graph::Conv2d{C, 1, 1, 1, 0, 0, true}, "conv2d");
  int y = n.b.add(x, up, scale);
  return relu ? n.b.relu(y) : y;
}

// 35x35 (IR-v1 Fig. 10, IR-v2 Fig. 16): 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3.
int block35(Net& n, int x, bool v2, float scale) {
  int b0 = n.conv(x, 32, 1, "branch0");
  int b1 = n.conv(n.conv(x, 32, 1, "branch1.0"), 32, 3, "branch1.1");
  int b2 = n.conv(n.conv(x, 32, 1, "branch2.0"), v2 ? 48 : 32, 3, "branch2.1");
  b2 = n.conv(b2, v2 ? 64 : 32, 3, "branch2.2");
  return residual(n, x, {b0, b1, b2}, scale);
}

// 17x17 (IR-v1 Fig. 11, IR-v2 Fig. 17): 1x1; 1x1 -> 1x7 -> 7x1.
int block17(Net& n, int x, bool v2, float scale) {
  int b0 = n.conv(x, v2 ? 192 : 128, 1, "branch0");
  int b1 = n.conv(x, 128, 1, "branch1.0");
  b1 = n.conv_nx1(n.conv_1xn(b1, v2 ? 160 : 128, 7, "branch1.1"), v2 ? 192 : 128, 7, "branch1.2");
  return residual(n, x, {b0, b1}, scale);
}

// 8x8 (IR-v1 Fig. 13, IR-v2 Fig. 19): 1x1; 1x1 -> 1x3 -> 3x1.
int block8(Net& n, int x, bool v2, float scale, bool relu = true) {
  int b0 = n.conv(x, 192, 1, "branch0");
  int b1 = n.conv(x, 192, 1, "branch1.0");
  b1 = n.conv_nx1(n.conv_1xn(b1, v2 ? 224 : 192, 3, "branch1.1"), v2 ? 256 : 192, 3, "branch1.2");
  return residual(n, x, {b0, b1}, scale, relu);
}

// The Inception-ResNet stem up to conv2d_4a (Fig. 14 / the release): 3x3/2 32, 3x3 32,
// 3x3 64, max pool, 1x1 80, 3x3 192; v1 and v2 differ only in what follows.
int ir_stem(Net& n, int x) {
  x = n.conv(x, 32, 3, 2, 0, "conv2d_1a");
  x = n.conv(x, 32, 3, 1, 0, "conv2d_2a");
  x = n.conv(x, 64, 3, 1, 1, "conv2d_2b");
  x = n.b.max_pool(x, 3, 2);
  x = n.conv(x, 80, 1, "conv2d_3b");
  return n.conv(x, 192, 3, 1, 0, "conv2d_4a");
}

// Inception-ResNet's Reduction-B: 1x1 256 -> 3x3/2 384 || 1x1 256 -> 3x3/2 b1 ||
// 1x1 256 -> 3x3 b2a -> 3x3/2 b2b || max pool.
int ir_reduction_b(Net& n, int x, int64_t b1k, int64_t b2a, int64_t b2b) {
  int b0 = n.conv(n.conv(x, 256, 1, "branch0.0"), 384, 3, 2, 0, "branch0.1");
  int b1 = n.conv(n.conv(x, 256, 1, "branch1.0"), b1k, 3, 2, 0, "branch1.1");
  int b2 = n.conv(n.conv(x, 256, 1, "branch2.0"), b2a, 3, "branch2.1");
  b2 = n.conv(b2, b2b, 3, 2, 0, "branch2.2");
  return n.b.concat({b0, b1, b2, n.b.max_pool(x, 3, 2)});
}

// `count` blocks under <name>.0, <name>.1, ... (timm's nn.Sequential).
template <class F>
int repeat(Net& n, int x, const std::string& name, int count, F block) {
  auto s = n.b.scope(name);
  for (int i = 0; i < count; ++i) {
    auto blk = n.b.scope(std::to_string(i));
    x = block(x);
  }
  return x;
}

float scale_or(const ModelConfig& cfg, float dflt) { return cfg.residual_scale < 0 ? dflt : cfg.residual_scale; }

// Pool, dropout (the model's default unless the config sets one), classify.
int classifier(Net& n, int x, float dropout, const ModelConfig& cfg, const std::string& name) {
  const int64_t classes = cfg.classes;
  if (cfg.dropout >= 0) dropout = cfg.dropout;
  x = n.b.global_avg_pool(x);
  if (dropout > 0) x = n.b.dropout(x, dropout);
  return n.b.linear(x, classes, name);
}

void check_image(const ModelConfig& cfg, int64_t min, const char* model) {
  INCRES_CHECK(cfg.image >= min, model, " needs an input of at least ", min, "x", min, ", got ",
               cfg.image, "x", cfg.image);
  INCRES_CHECK(cfg.width > 0 && cfg.width <= 4, model, ": --width must be in (0, 4], got ", cfg.width);
}

// ---- inception_mini: the factorisation study (Rethinking §3) at CIFAR size ----
//
// Each block is Inception-v3's four-branch shape on its grid; its spatial conv c -> c
// is factorised or not (ModelConfig::factorize). A factorised pair keeps c channels
// inside and out, so it costs 18/25 (5x5 as two 3x3: the paper's 28% fewer), 6/9
// (3x3 as 3x1 then 1x3: 33% fewer) or 14/49 (7x7 as 1x7 then 7x1) of the conv.

// 1x1 | 1x1 -> the block's spatial conv (n x n, or its factorised pair) | avg pool -> 1x1.
int mini_block(Net& n, int x, int64_t c1, int64_t c, int64_t cp, int k, bool factorised, const std::string& name) {
  auto s = n.b.scope(name);
  int b1 = n.conv(x, c1, 1, "branch1x1");
  int bk = n.conv(x, c, 1, "branch_1");
  if (!factorised) bk = n.conv(bk, c, k, cat("branch", k, "x", k));
  else if (k == 5) bk = n.conv(n.conv(bk, c, 3, "branch3x3a"), c, 3, "branch3x3b");
  else if (k == 3) bk = n.conv_1xn(n.conv_nx1(bk, c, 3, "branch3x1"), c, 3, "branch1x3");
  else bk = n.conv_nx1(n.conv_1xn(bk, c, k, cat("branch1x", k)), c, k, cat("branch", k, "x1"));
  int bp = n.conv(n.b.avg_pool(x, 3, 1, 1), cp, 1, "branch_pool");
  return n.b.concat({b1, bk, bp});
}

}  // namespace

//   32x32  | stem 3x3 32, 3x3/2 64
//   16x16  | 2 x block A (5x5), 3x3/2 128
//   8x8    | 2 x block B (7x7), 3x3/2 192
//   4x4    | 2 x block C (3x3)
//          | average pool, fc
graph::Graph inception_mini(const ModelConfig& cfg) {
  check_image(cfg, 16, "inception_mini");
  Builder b(Shape{cfg.in_channels, cfg.image, cfg.image});
  b.set_weight_init(graph::Init::truncated_normal, 0.1f);
  Net n{b, cfg.width};
  const auto has = [&](int which) { return (cfg.factorize & which) != 0; };
  int x = n.conv(b.input(), 32, 3, "stem_1");
  x = n.conv(x, 64, 3, 2, 1, "stem_2");
  x = mini_block(n, x, 32, 32, 32, 5, has(kFactorize5x5), "block_a1");
  x = mini_block(n, x, 32, 32, 32, 5, has(kFactorize5x5), "block_a2");
  x = n.conv(x, 128, 3, 2, 1, "reduce_a");
  x = mini_block(n, x, 48, 64, 48, 7, has(kFactorize7x7), "block_b1");
  x = mini_block(n, x, 48, 64, 48, 7, has(kFactorize7x7), "block_b2");
  x = n.conv(x, 192, 3, 2, 1, "reduce_b");
  x = mini_block(n, x, 64, 96, 64, 3, has(kFactorize3x3), "block_c1");
  x = mini_block(n, x, 64, 96, 64, 3, has(kFactorize3x3), "block_c2");
  return b.finish(classifier(n, x, 0.f, cfg, "fc"));
}

graph::Graph inception_v3(const ModelConfig& cfg, bool stem_stride1, bool stem_pool) {
  check_image(cfg, stem_pool ? (stem_stride1 ? 43 : 75) : 27, "inception_v3");
  Builder b(Shape{cfg.in_channels, cfg.image, cfg.image});
  // torchvision: truncated normal (std 0.1) for every conv and fc weight.
  b.set_weight_init(graph::Init::truncated_normal, 0.1f);
  Net n{b, cfg.width};
  int x = n.conv(b.input(), 32, 3, stem_stride1 ? 1 : 2, 0, "Conv2d_1a_3x3");
  x = n.conv(x, 32, 3, 1, 0, "Conv2d_2a_3x3");
  x = n.conv(x, 64, 3, 1, 1, "Conv2d_2b_3x3");
  if (stem_pool) x = b.max_pool(x, 3, 2);
  x = n.conv(x, 80, 1, "Conv2d_3b_1x1");
  x = n.conv(x, 192, 3, 1, 0, "Conv2d_4a_3x3");
  x = b.max_pool(x, 3, 2);
  x = v3_a(n, x, 32, "Mixed_5b");
  x = v3_a(n, x, 64, "Mixed_5c");
  x = v3_a(n, x, 64, "Mixed_5d");
  x = v3_b(n, x, "Mixed_6a");
  x = v3_c(n, x, 128, "Mixed_6b");
  x = v3_c(n, x, 160, "Mixed_6c");
  x = v3_c(n, x, 160, "Mixed_6d");
  x = v3_c(n, x, 192, "Mixed_6e");
  std::vector<int> aux;
  if (cfg.aux) aux.push_back(v3_aux(n, x, cfg.classes, cfg.aux_bn));
  x = v3_d(n, x, "Mixed_7a");
  x = v3_e(n, x, "Mixed_7b");
  x = v3_e(n, x, "Mixed_7c");
  b.expect(x, Shape{n.ch(320) + 4 * n.ch(384) + n.ch(192), b.shape(x)[1], b.shape(x)[2]}, "Mixed_7c");
  return b.finish(classifier(n, x, 0.5f, cfg, "fc"), aux);
}

graph::Graph inception_v4(const ModelConfig& cfg) {
  check_image(cfg, 75, "inception_v4");
  Builder b(Shape{cfg.in_channels, cfg.image, cfg.image});
  Net n{b, cfg.width};
  int x;
  {
    auto f = b.scope("features");
    // Stem (Fig. 3): 3x3/2 32, 3x3 32, 3x3 64, then three parallel-branch reductions.
    x = n.conv(b.input(), 32, 3, 2, 0, "0");
    x = n.conv(x, 32, 3, 1, 0, "1");
    x = n.conv(x, 64, 3, 1, 1, "2");
    {
      auto s = b.scope("3");  // Mixed3a: max pool || 3x3/2 96
      x = b.concat({b.max_pool(x, 3, 2), n.conv(x, 96, 3, 2, 0, "conv")});
    }
    {
      auto s = b.scope("4");  // Mixed4a: 1x1 -> 3x3 || 1x1 -> 7x1 -> 1x7 -> 3x3
      int b0 = n.conv(n.conv(x, 64, 1, "branch0.0"), 96, 3, 1, 0, "branch0.1");
      int b1 = n.conv(x, 64, 1, "branch1.0");
      b1 = n.conv_nx1(n.conv_1xn(b1, 64, 7, "branch1.1"), 64, 7, "branch1.2");
      b1 = n.conv(b1, 96, 3, 1, 0, "branch1.3");
      x = b.concat({b0, b1});
    }
    {
      auto s = b.scope("5");  // Mixed5a: 3x3/2 192 || max pool
      x = b.concat({n.conv(x, 192, 3, 2, 0, "conv"), b.max_pool(x, 3, 2)});
    }
    int i = 6;
    for (int k = 0; k < 4; ++k, ++i) { auto s = b.scope(std::to_string(i)); x = v4_a(n, x); }
    { auto s = b.scope(std::to_string(i++)); x = reduction_a(n, x, 192, 224, 256, 384); }
    for (int k = 0; k < 7; ++k, ++i) { auto s = b.scope(std::to_string(i)); x = v4_b(n, x); }
    { auto s = b.scope(std::to_string(i++)); x = v4_reduction_b(n, x); }
    for (int k = 0; k < 3; ++k, ++i) { auto s = b.scope(std::to_string(i)); x = v4_c(n, x); }
  }
  return b.finish(classifier(n, x, 0.2f, cfg, "last_linear"));
}

graph::Graph inception_resnet_v1(const ModelConfig& cfg) {
  check_image(cfg, 75, "inception_resnet_v1");
  Builder b(Shape{cfg.in_channels, cfg.image, cfg.image});
  Net n{b, cfg.width};
  // Stem (Fig. 14): 3x3/2 32, 3x3 32, 3x3 64, max pool, 1x1 80, 3x3 192, 3x3/2 256.
  int x = n.conv(ir_stem(n, b.input()), 256, 3, 2, 0, "conv2d_4b");
  const float s35 = scale_or(cfg, 0.17f), s17 = scale_or(cfg, 0.10f), s8 = scale_or(cfg, 0.20f);
  x = repeat(n, x, "repeat", 5, [&](int y) { return block35(n, y, false, s35); });
  {
    auto s = b.scope("mixed_6a");
    x = reduction_a(n, x, 192, 192, 256, 384);
  }
  x = repeat(n, x, "repeat_1", 10, [&](int y) { return block17(n, y, false, s17); });
  {
    auto s = b.scope("mixed_7a");  // Reduction-B (Fig. 12)
    x = ir_reduction_b(n, x, 256, 256, 256);
  }
  x = repeat(n, x, "repeat_2", 5, [&](int y) { return block8(n, y, false, s8); });
  return b.finish(classifier(n, x, 0.2f, cfg, "classif"));
}

graph::Graph inception_resnet_v2(const ModelConfig& cfg) {
  check_image(cfg, 75, "inception_resnet_v2");
  Builder b(Shape{cfg.in_channels, cfg.image, cfg.image});
  Net n{b, cfg.width};
  int x = b.max_pool(ir_stem(n, b.input()), 3, 2);
  {
    auto s = b.scope("mixed_5b");  // 35x35x320
    int b0 = n.conv(x, 96, 1, "branch0");
    int b1 = n.conv(n.conv(x, 48, 1, "branch1.0"), 64, 5, "branch1.1");
    int b2 = n.conv(n.conv(x, 64, 1, "branch2.0"), 96, 3, "branch2.1");
    b2 = n.conv(b2, 96, 3, "branch2.2");
    int b3 = n.conv(b.avg_pool(x, 3, 1, 1, false, false), 64, 1, "branch3.1");
    x = b.concat({b0, b1, b2, b3});
  }
  // Released: 10 / 20 / 9 + 1 blocks; the paper's Fig. 15: 5 / 10 / 5.
  const int n35 = cfg.paper_layout ? 5 : 10, n17 = cfg.paper_layout ? 10 : 20, n8 = cfg.paper_layout ? 4 : 9;
  const float s35 = scale_or(cfg, 0.17f), s17 = scale_or(cfg, 0.10f), s8 = scale_or(cfg, 0.20f);
  x = repeat(n, x, "repeat", n35, [&](int y) { return block35(n, y, true, s35); });
  {
    auto s = b.scope("mixed_6a");  // Reduction-A, k, l, m, n = 256, 256, 384, 384 -> 1088
    x = reduction_a(n, x, 256, 256, 384, 384);
  }
  x = repeat(n, x, "repeat_1", n17, [&](int y) { return block17(n, y, true, s17); });
  {
    auto s = b.scope("mixed_7a");  // Reduction-B (Fig. 18) -> 2080
    x = ir_reduction_b(n, x, 288, 288, 320);
  }
  x = repeat(n, x, "repeat_2", n8, [&](int y) { return block8(n, y, true, s8); });
  {
    auto s = b.scope("block8");  // the last block: unscaled in the release, no ReLU
    x = block8(n, x, true, scale_or(cfg, 1.f), false);
  }
  x = n.conv(x, 1536, 1, "conv2d_7b");
  return b.finish(classifier(n, x, 0.2f, cfg, "classif"));
}

}  // namespace incres::models
