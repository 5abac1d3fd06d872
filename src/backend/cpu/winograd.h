// Winograd convolutions for inference (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016). F(4x4, 3x3): a 3x3, stride-1 conv computes
// each 4x4 tile of its output from a 6x6 tile of its input with 36 multiplications
// per (input, output) channel pair instead of 144. The work splits into three parts:
//   U = G g G^T     per (c, k): the weights, once per prepared version (double);
//   V = B^T d B     per input tile and channel (transform_input);
//   M[xi] = V[xi] U[xi]  for each of the 36 tile positions xi: 36 matrix products
//                   of (tiles x C) by (C x K), which oneDNN's matmul runs;
//   Y = A^T M A     per output tile and channel, then bias, ReLU and the residual
//                   sum (transform_output).
// oneDNN 2.6 has Winograd only for AVX-512 (and not for 1 x r kernels); these are
// ours, on the blocked activation layouts the backend uses: AVX-512 (16 floats a
// vector) on nChw16c where the CPU has it, AVX2 (8 floats) otherwise
// (winograd_kernels.inc, compiled once per ISA).
//
// F(m, r) along one axis does the same for Inception's 1 x r and r x 1 convs: m
// outputs from m + r - 1 inputs with m + r - 1 multiplications instead of m * r.
//
// Accuracy: the transforms scale values by up to 5x5 (B) and 8x8 (A), so results
// differ from a direct conv by ~1e-6 to 1e-5 relative (measured in
// tests/backend/test_winograd.cpp and bench/winograd), the usual price of F(4x4,
// 3x3); F(4, 7), whose points reach +-3, by up to ~3e-5.
#pragma once
#include <cstdint>
#include <vector>

namespace incres::backend::winograd {

inline constexpr int64_t kTile = 4;        // output tile side
inline constexpr int64_t kInTile = 6;      // input tile side: kTile + 3 - 1
inline constexpr int64_t kPoints = 36;     // kInTile * kInTile

// A stride-1 conv: input N x C x H x W, output N x K x P x Q, padding pad_h / pad_w
// on the top / left (the bottom / right padding is whatever P and Q imply). Both
// values are blocked (block 8 or 16), C and K padded to the block. The tiles are
// those of F(4x4, 3x3); Line below tiles one axis.
struct Geometry {
  int64_t N, C, K, H, W, P, Q, pad_h, pad_w, block;
  int64_t tiles_h() const { return (P + kTile - 1) / kTile; }
  int64_t tiles_w() const { return (Q + kTile - 1) / kTile; }
  int64_t tiles() const { return N * tiles_h() * tiles_w(); }
};

// The instruction set the transforms of g run on: "avx512" (16 lanes, nChw16c on a
// CPU with AVX-512) or "avx2".
const char* transform_isa(const Geometry& g);

// u (kPoints x C x K, row-major per point) from the plain K x C x 3 x 3 weights of
// k_real output and c_real input channels; the padding channels get zeros.
void transform_weights(const Geometry& g, const float* kcrs, int64_t k_real, int64_t c_real, float* u);

// v (kPoints x chunk x C) for tiles [first, first + count) of the input, count <=
// chunk; tile t is (n, th, tw) in row-major order.
void transform_input(const Geometry& g, const float* src, int64_t first, int64_t count, int64_t chunk, float* v);

// What the conv's output goes through after A^T M A: y = relu?(y + bias); y = scale * y
// + sum * (what dst holds); y = post_relu?(y). bias is K long (padded), or null.
struct Epilogue {
  const float* bias = nullptr;
  bool relu = false;
  float scale = 1.f, sum = 0.f;
  bool post_relu = false;
};

// dst's tiles [first, first + count) from m (kPoints x chunk x K).
void transform_output(const Geometry& g, const float* m, int64_t first, int64_t count, int64_t chunk,
                      const Epilogue& e, float* dst);

// F(m, r) in one dimension, built by Toom-Cook from the points 0, 1, -1, 2, -2, 1/2,
// -1/2, 3, -3, ... (as many as alpha - 1 needs) and infinity: y = A^T [(G g) . (B^T d)]
// is the correlation y[i] = sum_k g[k] d[i + k], i < m.
struct Filter1d {
  int m = 0, r = 0, alpha = 0;
  std::vector<float> at, bt;  // A^T (m x alpha), B^T (alpha x alpha), row-major
  std::vector<double> g;      // G (alpha x r)
};
Filter1d filter_1d(int m, int r);

// A 1 x r (along W) or r x 1 (along H) conv, stride 1, in tiles of f.m outputs: the
// same Geometry, with the kernel's extent along the tiled axis in f.r.
struct Line {
  Geometry g;
  Filter1d f;
  bool along_w;  // 1 x r: tiles run along W
  int64_t tiles() const {
    return along_w ? g.N * g.P * ((g.Q + f.m - 1) / f.m) : g.N * ((g.P + f.m - 1) / f.m) * g.Q;
  }
};
// u (alpha x C x K) from the plain K x C x R x S weights.
void transform_weights(const Line& l, const float* kcrs, int64_t k_real, int64_t c_real, float* u);
// v (alpha x chunk x C); m (alpha x chunk x K) into dst, as for the 3x3 case.
void transform_input(const Line& l, const float* src, int64_t first, int64_t count, int64_t chunk, float* v);
void transform_output(const Line& l, const float* m, int64_t first, int64_t count, int64_t chunk, const Epilogue& e,
                      float* dst);

}  // namespace incres::backend::winograd
