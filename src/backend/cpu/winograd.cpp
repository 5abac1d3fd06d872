#include "backend/cpu/winograd.h"

#include <cmath>
#include <iterator>

#include "backend/cpu/winograd_kernels.h"
#include "core/error.h"

namespace incres::backend::winograd {

namespace {

// The transforms' matrices (Lavin & Gray, F(4x4, 3x3) with the points 0, +-1, +-2,
// +-1/2... written out as sums below):
//   B^T = | 4  0 -5  0  1  0 |   G = | 1/4    0     0   |   A^T = | 1  1  1  1  1  0 |
//         | 0 -4 -4  1  1  0 |       | -1/6 -1/6  -1/6  |         | 0  1 -1  2 -2  0 |
//         | 0  4 -4 -1  1  0 |       | -1/6  1/6  -1/6  |         | 0  1  1  4  4  0 |
//         | 0 -2 -1  2  1  0 |       | 1/24  1/12  1/6  |         | 0  1 -1  8 -8  1 |
//         | 0  2 -1 -2  1  0 |       | 1/24 -1/12  1/6  |
//         | 0  4  0 -5  0  1 |       | 0      0     1   |
constexpr double kG[6][3] = {{1.0 / 4, 0, 0},
                             {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                             {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                             {1.0 / 24, 1.0 / 12, 1.0 / 6},
                             {1.0 / 24, -1.0 / 12, 1.0 / 6},
                             {0, 0, 1}};

}  // namespace

void transform_weights(const Geometry& g, const float* kcrs, int64_t k_real, int64_t c_real, float* u) {
  const int64_t CK = g.C * g.K;
  for (int64_t i = 0; i < kPoints * CK; ++i) u[i] = 0.f;
  for (int64_t k = 0; k < k_real; ++k)
    for (int64_t c = 0; c < c_real; ++c) {
      const float* w = kcrs + (k * c_real + c) * 9;
      double gw[6][3] = {};  // G w
      for (int i = 0; i < 6; ++i)
        for (int s = 0; s < 3; ++s)
          for (int r = 0; r < 3; ++r) gw[i][s] += kG[i][r] * w[r * 3 + s];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) {
          double x = 0;  // (G w G^T)[i][j]
          for (int s = 0; s < 3; ++s) x += gw[i][s] * kG[j][s];
          u[(i * 6 + j) * CK + c * g.K + k] = static_cast<float>(x);
        }
    }
}

Filter1d filter_1d(int m, int r) {
  Filter1d f;
  f.m = m, f.r = r, f.alpha = m + r - 1;
  const int n = f.alpha - 1;  // finite points
  static constexpr double kPointsInOrder[] = {0, 1, -1, 2, -2, 0.5, -0.5, 3, -3, 1.0 / 3, -1.0 / 3, 4, -4};
  INCRES_CHECK(n <= static_cast<int>(std::size(kPointsInOrder)), "winograd: F(", m, ", ", r, ") needs too many points");
  const double* p = kPointsInOrder;
  f.at.assign(m * f.alpha, 0.f);
  f.bt.assign(f.alpha * f.alpha, 0.f);
  f.g.assign(f.alpha * r, 0.0);
  // A^T: the outputs from the products, y[i] = sum_j p_j^i M[j] (+ M[inf] for the last).
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) f.at[i * f.alpha + j] = static_cast<float>(std::pow(p[j], i));
    f.at[i * f.alpha + n] = i == m - 1 ? 1.f : 0.f;
  }
  // B^T row j: the coefficients of prod_{l != j} (x - p_l); the last row those of
  // prod_l (x - p_l). G row j: p_j^k / prod_{l != j} (p_j - p_l); the last row picks
  // the filter's last tap.
  auto coefficients = [&](int skip) {
    std::vector<double> c{1.0};  // of the product so far, lowest degree first
    for (int l = 0; l < n; ++l) {
      if (l == skip) continue;
      std::vector<double> next(c.size() + 1, 0.0);
      for (size_t d = 0; d < c.size(); ++d) next[d + 1] += c[d], next[d] -= p[l] * c[d];
      c = next;
    }
    return c;
  };
  for (int j = 0; j <= n; ++j) {
    const std::vector<double> c = coefficients(j < n ? j : -1);
    for (size_t d = 0; d < c.size(); ++d) f.bt[j * f.alpha + d] = static_cast<float>(c[d]);
  }
  for (int j = 0; j < n; ++j) {
    double denominator = 1.0;
    for (int l = 0; l < n; ++l)
      if (l != j) denominator *= p[j] - p[l];
    for (int k = 0; k < r; ++k) f.g[j * r + k] = std::pow(p[j], k) / denominator;
  }
  f.g[n * r + r - 1] = 1.0;
  return f;
}

void transform_weights(const Line& l, const float* kcrs, int64_t k_real, int64_t c_real, float* u) {
  const Geometry& g = l.g;
  const int64_t CK = g.C * g.K, alpha = l.f.alpha, r = l.f.r;
  for (int64_t i = 0; i < alpha * CK; ++i) u[i] = 0.f;
  for (int64_t k = 0; k < k_real; ++k)
    for (int64_t c = 0; c < c_real; ++c) {
      const float* w = kcrs + (k * c_real + c) * r;  // R x S with one of them 1: r taps in a row
      for (int64_t j = 0; j < alpha; ++j) {
        double x = 0;
        for (int64_t t = 0; t < r; ++t) x += l.f.g[j * r + t] * w[t];
        u[j * CK + c * g.K + k] = static_cast<float>(x);
      }
    }
}

// The transforms' AVX-512 versions (16 lanes) take the nChw16c values of AVX-512
// CPUs; their AVX2 versions (8 lanes) every other block, and nChw16c on CPUs without
// AVX-512 (the tests build such values anywhere).
static bool wide(const Geometry& g) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && g.block % 16 == 0;
}

const char* transform_isa(const Geometry& g) { return wide(g) ? "avx512" : "avx2"; }

void transform_input(const Geometry& g, const float* src, int64_t first, int64_t count, int64_t chunk, float* v) {
  if (wide(g)) return avx512::transform_input(g, src, first, count, chunk, v);
  avx2::transform_input(g, src, first, count, chunk, v);
}

void transform_output(const Geometry& g, const float* m, int64_t first, int64_t count, int64_t chunk,
                      const Epilogue& e, float* dst) {
  if (wide(g)) return avx512::transform_output(g, m, first, count, chunk, e, dst);
  avx2::transform_output(g, m, first, count, chunk, e, dst);
}

// The line transforms are unrolled for F(4, 3), F(2, 7), F(3, 7) and F(4, 7).
static void check_line(const Line& l) {
  const int m = l.f.m, r = l.f.r;
  INCRES_CHECK((r == 3 && m == 4) || (r == 7 && m >= 2 && m <= 4), "winograd: no line transform F(", m, ", ", r, ")");
}

void transform_input(const Line& l, const float* src, int64_t first, int64_t count, int64_t chunk, float* v) {
  check_line(l);
  if (wide(l.g)) return avx512::transform_input(l, src, first, count, chunk, v);
  avx2::transform_input(l, src, first, count, chunk, v);
}

void transform_output(const Line& l, const float* m, int64_t first, int64_t count, int64_t chunk, const Epilogue& e,
                      float* dst) {
  check_line(l);
  if (wide(l.g)) return avx512::transform_output(l, m, first, count, chunk, e, dst);
  avx2::transform_output(l, m, first, count, chunk, e, dst);
}

}  // namespace incres::backend::winograd
