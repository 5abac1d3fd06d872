// Winograd F(4x4, 3x3) and F(m, r) along one axis (backend/cpu/winograd.h): the three
// transforms with a plain matrix product between them against a direct conv in
// double, on shapes that leave partial tiles, padded channels and a short last chunk,
// with every epilogue; then the inference programs that use them against the
// reference backend.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cpu/winograd.h"
#include "backend/cpu/winograd_kernels.h"
#include "backend/program.h"
#include "core/rng.h"
#include "graph/builder.h"
#include "inference_support.h"

using namespace incres;
namespace wg = backend::winograd;
using testing_support::rel_err;

namespace {

struct Case {
  int64_t N, C, K, H, W, pad, block;  // C, K: the real channel counts
  wg::Epilogue e;
  bool with_bias;
  int64_t chunk;
  int R = 3, S = 3, m = 4;  // 1 x r / r x 1: F(m, r) along the long side; pad on that side only
};

int64_t padded(int64_t c, int64_t block) { return (c + block - 1) / block * block; }

// Element (n, c, h, w) of a blocked value with Cb (padded) channels.
int64_t at(int64_t n, int64_t c, int64_t h, int64_t w, int64_t Cb, int64_t H, int64_t W, int64_t block) {
  return (((n * (Cb / block) + c / block) * H + h) * W + w) * block + c % block;
}

// Which transforms run: those winograd.cpp picks for this CPU, or one ISA's.
enum class Path { chosen, avx2, avx512 };

// The conv through the transforms; returns the error relative to the largest output.
double winograd_error(const Case& t, Path path = Path::chosen) {
  const int64_t C = padded(t.C, t.block), K = padded(t.K, t.block);
  const bool square = t.R == t.S;
  const int64_t pad_h = t.R > 1 ? t.pad : 0, pad_w = t.S > 1 ? t.pad : 0;
  const int64_t P = t.H + 2 * pad_h - t.R + 1, Q = t.W + 2 * pad_w - t.S + 1;
  const wg::Geometry g{t.N, C, K, t.H, t.W, P, Q, pad_h, pad_w, t.block};
  const wg::Line line{g, square ? wg::Filter1d{} : wg::filter_1d(t.m, std::max(t.R, t.S)), t.S > 1};
  const int64_t points = square ? wg::kPoints : line.f.alpha, tiles = square ? g.tiles() : line.tiles();
  Rng rng(7);
  std::vector<float> x(t.N * C * t.H * t.W, 0.f), w(t.K * t.C * t.R * t.S), bias(K, 0.f);
  for (int64_t n = 0; n < t.N; ++n)  // the padding channels stay zero, as oneDNN leaves them
    for (int64_t c = 0; c < t.C; ++c)
      for (int64_t h = 0; h < t.H; ++h)
        for (int64_t v = 0; v < t.W; ++v) x[at(n, c, h, v, C, t.H, t.W, t.block)] = static_cast<float>(rng.normal());
  for (float& v : w) v = static_cast<float>(rng.normal());
  for (int64_t k = 0; k < t.K; ++k) bias[k] = t.with_bias ? static_cast<float>(rng.normal()) : 0.f;
  std::vector<float> before(t.N * K * P * Q, 0.f);  // what dst holds before: the residual
  for (int64_t n = 0; n < t.N; ++n)
    for (int64_t k = 0; k < t.K; ++k)
      for (int64_t i = 0; i < P * Q; ++i) before[at(n, k, i / Q, i % Q, K, P, Q, t.block)] = static_cast<float>(rng.normal());

  // Direct, in double.
  std::vector<float> want(before.size(), 0.f);
  for (int64_t n = 0; n < t.N; ++n)
    for (int64_t k = 0; k < t.K; ++k)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < Q; ++q) {
          double s = t.with_bias ? bias[k] : 0.0;
          for (int64_t c = 0; c < t.C; ++c)
            for (int64_t r = 0; r < t.R; ++r)
              for (int64_t u = 0; u < t.S; ++u) {
                const int64_t h = p + r - pad_h, v = q + u - pad_w;
                if (h >= 0 && h < t.H && v >= 0 && v < t.W)
                  s += double(w[((k * t.C + c) * t.R + r) * t.S + u]) * x[at(n, c, h, v, C, t.H, t.W, t.block)];
              }
          if (t.e.relu) s = std::max(s, 0.0);
          const int64_t o = at(n, k, p, q, K, P, Q, t.block);
          s = t.e.scale * s + t.e.sum * before[o];
          if (t.e.post_relu) s = std::max(s, 0.0);
          want[o] = static_cast<float>(s);
        }

  std::vector<float> u(points * C * K), v(points * t.chunk * C), m(points * t.chunk * K);
  if (square) wg::transform_weights(g, w.data(), t.K, t.C, u.data());
  else wg::transform_weights(line, w.data(), t.K, t.C, u.data());
  std::vector<float> got = before;
  wg::Epilogue e = t.e;
  e.bias = t.with_bias ? bias.data() : nullptr;
  for (int64_t first = 0; first < tiles; first += t.chunk) {
    const int64_t count = std::min(t.chunk, tiles - first);
    if (path == Path::avx2) {
      if (square) wg::avx2::transform_input(g, x.data(), first, count, t.chunk, v.data());
      else wg::avx2::transform_input(line, x.data(), first, count, t.chunk, v.data());
    } else if (path == Path::avx512) {
      if (square) wg::avx512::transform_input(g, x.data(), first, count, t.chunk, v.data());
      else wg::avx512::transform_input(line, x.data(), first, count, t.chunk, v.data());
    } else if (square) {
      wg::transform_input(g, x.data(), first, count, t.chunk, v.data());
    } else {
      wg::transform_input(line, x.data(), first, count, t.chunk, v.data());
    }
    for (int64_t xi = 0; xi < points; ++xi)  // the products, as oneDNN's matmul does them
      for (int64_t i = 0; i < t.chunk; ++i)
        for (int64_t k = 0; k < K; ++k) {
          float s = 0.f;
          for (int64_t c = 0; c < C; ++c) s += v[(xi * t.chunk + i) * C + c] * u[(xi * C + c) * K + k];
          m[(xi * t.chunk + i) * K + k] = s;
        }
    if (path == Path::avx2) {
      if (square) wg::avx2::transform_output(g, m.data(), first, count, t.chunk, e, got.data());
      else wg::avx2::transform_output(line, m.data(), first, count, t.chunk, e, got.data());
    } else if (path == Path::avx512) {
      if (square) wg::avx512::transform_output(g, m.data(), first, count, t.chunk, e, got.data());
      else wg::avx512::transform_output(line, m.data(), first, count, t.chunk, e, got.data());
    } else if (square) {
      wg::transform_output(g, m.data(), first, count, t.chunk, e, got.data());
    } else {
      wg::transform_output(line, m.data(), first, count, t.chunk, e, got.data());
    }
  }
  return rel_err(got.data(), want.data(), static_cast<int64_t>(want.size()));
}

}  // namespace

TEST(Winograd, TransformsMatchADirectConv) {
  wg::Epilogue plain, relu, residual, scaled;
  relu.relu = true;
  residual.sum = 1.f, residual.post_relu = true;  // relu(conv + bias + x): ResNet
  scaled.scale = 0.17f, scaled.sum = 1.f;         // x + 0.17 conv: Inception-ResNet
  const Case cases[] = {
      {1, 8, 8, 8, 8, 1, 8, plain, false, 4},          // whole tiles
      {2, 5, 11, 9, 13, 1, 8, relu, true, 7},          // padded channels, partial tiles, short last chunk
      {1, 16, 24, 10, 7, 0, 8, residual, true, 100},   // no padding (Inception's valid convs)
      {3, 20, 8, 6, 6, 1, 16, scaled, true, 5},        // block 16 (AVX-512 layouts)
      {1, 3, 3, 3, 3, 1, 8, residual, false, 1},       // a map smaller than a tile
  };
  for (const Case& c : cases)
    EXPECT_LT(winograd_error(c), 2e-5) << c.N << "x" << c.C << "->" << c.K << " " << c.H << "x" << c.W
                                       << " pad " << c.pad << " block " << c.block;
  // Along one axis: Inception's 1x3 / 3x1 (F(4, 3)) and 1x7 / 7x1 (F(4, 7), and the
  // F(2, 7) / F(3, 7) the transforms also support).
  const Case lines[] = {
      {2, 8, 16, 8, 8, 1, 8, relu, true, 9, 1, 3, 4},
      {1, 13, 8, 9, 6, 1, 8, residual, true, 5, 3, 1, 4},
      {2, 16, 8, 17, 17, 3, 8, plain, true, 23, 1, 7, 4},
      {1, 8, 24, 17, 11, 3, 16, scaled, false, 40, 7, 1, 4},
      {1, 8, 8, 10, 9, 3, 8, relu, true, 7, 1, 7, 2},
      {1, 8, 8, 10, 9, 3, 8, residual, true, 7, 7, 1, 3},
      {1, 8, 8, 5, 4, 0, 8, plain, false, 3, 1, 3, 4},  // no padding: a 2-wide output
  };
  for (const Case& c : lines)
    EXPECT_LT(winograd_error(c), 5e-5) << c.R << "x" << c.S << " F(" << c.m << ") " << c.H << "x" << c.W;
}

// The nChw16c values of AVX-512 CPUs through each ISA's transforms: the AVX-512 ones
// (16 lanes) where the CPU has them, and the AVX2 ones (8 lanes, two per block).
TEST(Winograd, EachIsaTransformsBlock16) {
  wg::Epilogue relu, residual, scaled;
  relu.relu = true;
  residual.sum = 1.f, residual.post_relu = true;
  scaled.scale = 0.2f, scaled.sum = 1.f;
  const Case cases[] = {
      {2, 20, 40, 9, 13, 1, 16, relu, true, 7},               // padded channels, partial tiles, short chunk
      {1, 32, 16, 10, 7, 0, 16, residual, true, 100},         // valid conv
      {2, 16, 32, 8, 8, 1, 16, scaled, true, 9, 1, 3, 4},     // 1x3, F(4, 3)
      {1, 24, 16, 17, 11, 3, 16, relu, false, 40, 7, 1, 4},   // 7x1, F(4, 7)
      {1, 16, 16, 10, 9, 3, 16, residual, true, 7, 1, 7, 2},  // F(2, 7)
      {1, 16, 16, 10, 9, 3, 16, scaled, true, 7, 7, 1, 3},    // F(3, 7)
  };
  for (const Case& c : cases) EXPECT_LT(winograd_error(c, Path::avx2), 5e-5) << "avx2, " << c.R << "x" << c.S;
  if (!__builtin_cpu_supports("avx512f")) GTEST_SKIP() << "this CPU has no AVX-512F: its transforms cannot run";
  for (const Case& c : cases) EXPECT_LT(winograd_error(c, Path::avx512), 5e-5) << "avx512, " << c.R << "x" << c.S;
}

namespace {

// The inference program against the reference; `winograd` counts the steps that ran
// as Winograd.
double program_error(const graph::Graph& g, int64_t batch, bool use_winograd, int& winograd) {
  backend::Options opt{batch, backend::Mode::infer};
  opt.winograd = use_winograd;
  std::vector<backend::StepProfile> steps;
  const double err = testing_support::infer_error(g, opt, &steps);
  winograd = 0;
  for (const auto& s : steps) winograd += s.kind == "winograd";
  return err;
}

}  // namespace

TEST(Winograd, ProgramsMatchTheReference) {
  graph::Builder b(Shape{64, 17, 15});
  int x = b.relu(b.batchnorm(b.conv(b.input(), 64, 3, 1, 1, "c0"), "bn0"));       // BN + ReLU
  int y = b.relu(b.batchnorm(b.conv(x, 64, 3, 1, 1, "c1"), "bn1"));
  y = b.relu(b.add(b.batchnorm(b.conv(y, 64, 3, 1, 1, "c2"), "bn2"), x));         // the residual sum
  int s = b.add(b.conv(y, 64, 1, 1, 0, "proj"), b.conv(y, 64, 3, 1, 1, "c3"), 0.2f);  // scaled, conv second
  int z = b.conv(y, graph::Conv2d{40, 3, 3, 1, 0, 0, true}, "valid");              // no padding, a bias: 15x13
  int t = b.max_pool(b.conv(s, 32, 1, 1, 0, "squeeze"), 3, 1, 0);
  int u = b.conv(t, 64, 3, 1, 1, "thin");                                          // 32 input channels
  int cat = b.concat({z, u});                                                      // 104 channels, 15x13
  int l1 = b.relu(b.batchnorm(b.conv(cat, graph::Conv2d{64, 1, 7, 1, 0, 3}, "1x7"), "bn3"));
  int l2 = b.relu(b.batchnorm(b.conv(l1, graph::Conv2d{64, 7, 1, 1, 3, 0}, "7x1"), "bn4"));
  int l3 = b.conv(l2, graph::Conv2d{64, 1, 3, 1, 0, 1}, "1x3");
  int l4 = b.conv(l2, graph::Conv2d{64, 3, 1, 1, 1, 0}, "3x1");
  graph::Graph g = b.finish(b.conv(b.concat({l3, l4}), 16, 3, 2, 1, "strided"));
  int used = 0;
  EXPECT_LT(program_error(g, 2, true, used), 3e-5);
  EXPECT_EQ(used, 9) << "c0-c3, valid, 1x7, 7x1, 1x3, 3x1; not the 1x1s, the 32-channel or the stride-2 conv";
  EXPECT_LT(program_error(g, 2, false, used), 1e-5);
  EXPECT_EQ(used, 0) << "Options::winograd = false";

  // Below 16 output tiles the direct conv runs: a 7x7 map has 4 tiles an image.
  graph::Builder small(Shape{64, 7, 7});
  graph::Graph h = small.finish(small.relu(small.conv(small.input(), 64, 3, 1, 1, "c")));
  EXPECT_LT(program_error(h, 3, true, used), 1e-5);
  EXPECT_EQ(used, 0) << "12 tiles";
  EXPECT_LT(program_error(h, 4, true, used), 1e-5);
  EXPECT_EQ(used, 1) << "16 tiles";

  // 32 input channels: enough on AVX-512 (nChw16c, 16-lane transforms), not on AVX2.
  graph::Builder thin(Shape{32, 16, 16});
  graph::Graph thin_graph = thin.finish(thin.relu(thin.conv(thin.input(), 32, 3, 1, 1, "c")));
  const bool avx512 = backend::cpu_isa().rfind("avx512", 0) == 0;
  EXPECT_LT(program_error(thin_graph, 1, true, used), 1e-5);
  EXPECT_EQ(used, avx512 ? 1 : 0) << "32 channels on " << backend::cpu_isa();
}
