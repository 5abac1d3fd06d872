#include "backend/cpu/winograd.h"

#include <immintrin.h>

#include <cmath>
#include <iterator>

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

using vec = __m256;
constexpr int64_t kLanes = 8;

// t = B^T d along one dimension: d and t are 6 vectors `stride` apart.
inline void input_1d(const vec* d, vec* t, int stride) {
  const vec d0 = d[0], d1 = d[stride], d2 = d[2 * stride], d3 = d[3 * stride], d4 = d[4 * stride],
            d5 = d[5 * stride];
  const vec two = _mm256_set1_ps(2.f), four = _mm256_set1_ps(4.f), five = _mm256_set1_ps(5.f);
  t[0] = _mm256_fmadd_ps(four, d0, _mm256_fnmadd_ps(five, d2, d4));
  t[stride] = _mm256_fnmadd_ps(four, _mm256_add_ps(d1, d2), _mm256_add_ps(d3, d4));
  t[2 * stride] = _mm256_fmadd_ps(four, _mm256_sub_ps(d1, d2), _mm256_sub_ps(d4, d3));
  t[3 * stride] = _mm256_fmadd_ps(two, _mm256_sub_ps(d3, d1), _mm256_sub_ps(d4, d2));
  t[4 * stride] = _mm256_fmadd_ps(two, _mm256_sub_ps(d1, d3), _mm256_sub_ps(d4, d2));
  t[5 * stride] = _mm256_fmadd_ps(four, d1, _mm256_fnmadd_ps(five, d3, d5));
}

// o = A^T m along one dimension: m is 6 vectors, o 4, each `stride` apart.
inline void output_1d(const vec* m, vec* o, int stride) {
  const vec m0 = m[0], m1 = m[stride], m2 = m[2 * stride], m3 = m[3 * stride], m4 = m[4 * stride],
            m5 = m[5 * stride];
  const vec a = _mm256_add_ps(m1, m2), s = _mm256_sub_ps(m1, m2);
  const vec b = _mm256_add_ps(m3, m4), d = _mm256_sub_ps(m3, m4);
  o[0] = _mm256_add_ps(_mm256_add_ps(m0, a), b);
  o[stride] = _mm256_fmadd_ps(_mm256_set1_ps(2.f), d, s);
  o[2 * stride] = _mm256_fmadd_ps(_mm256_set1_ps(4.f), b, a);
  o[3 * stride] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.f), d, s), m5);
}

// out = the epilogue of y (see Epilogue); out holds the residual before.
inline void finish(vec y, vec bias, const Epilogue& e, float* out) {
  const vec zero = _mm256_setzero_ps();
  vec o = _mm256_add_ps(y, bias);
  if (e.relu) o = _mm256_max_ps(o, zero);
  if (e.sum != 0.f) o = _mm256_fmadd_ps(_mm256_set1_ps(e.sum), _mm256_loadu_ps(out), _mm256_mul_ps(_mm256_set1_ps(e.scale), o));
  else if (e.scale != 1.f) o = _mm256_mul_ps(_mm256_set1_ps(e.scale), o);
  if (e.post_relu) o = _mm256_max_ps(o, zero);
  _mm256_storeu_ps(out, o);
}

// Where channel c of image n starts in a blocked value of C channels and H x W.
inline int64_t plane(int64_t n, int64_t c, int64_t C, int64_t H, int64_t W, int64_t block) {
  return ((n * (C / block) + c / block) * H * W) * block + c % block;
}

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

void transform_input(const Geometry& g, const float* src, int64_t first, int64_t count, int64_t chunk, float* v) {
  const int64_t groups = g.C / kLanes, tw = g.tiles_w(), per_image = g.tiles_h() * tw;
  const int64_t point_stride = chunk * g.C;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < count; ++i)
    for (int64_t grp = 0; grp < groups; ++grp) {
      const int64_t t = first + i, n = t / per_image, r = t % per_image, c = grp * kLanes;
      const int64_t h0 = r / tw * kTile - g.pad_h, w0 = r % tw * kTile - g.pad_w;
      const float* base = src + plane(n, c, g.C, g.H, g.W, g.block);
      vec d[6][6], x[6][6];
      for (int a = 0; a < 6; ++a) {
        const int64_t h = h0 + a;
        const bool row = h >= 0 && h < g.H;
        for (int b = 0; b < 6; ++b) {
          const int64_t w = w0 + b;
          d[a][b] = row && w >= 0 && w < g.W ? _mm256_loadu_ps(base + (h * g.W + w) * g.block) : _mm256_setzero_ps();
        }
      }
      for (int b = 0; b < 6; ++b) input_1d(&d[0][b], &x[0][b], 6);  // columns: B^T d
      for (int a = 0; a < 6; ++a) input_1d(&x[a][0], &d[a][0], 1);  // rows: (B^T d) B
      float* out = v + i * g.C + c;
      for (int a = 0; a < 6; ++a)
        for (int b = 0; b < 6; ++b) _mm256_storeu_ps(out + (a * 6 + b) * point_stride, d[a][b]);
    }
}

void transform_output(const Geometry& g, const float* m, int64_t first, int64_t count, int64_t chunk,
                      const Epilogue& e, float* dst) {
  const int64_t groups = g.K / kLanes, tw = g.tiles_w(), per_image = g.tiles_h() * tw;
  const int64_t point_stride = chunk * g.K;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < count; ++i)
    for (int64_t grp = 0; grp < groups; ++grp) {
      const int64_t t = first + i, n = t / per_image, r = t % per_image, k = grp * kLanes;
      const int64_t p0 = r / tw * kTile, q0 = r % tw * kTile;
      const float* in = m + i * g.K + k;
      vec x[6][6], s[4][6], y[4][4];
      for (int a = 0; a < 6; ++a)
        for (int b = 0; b < 6; ++b) x[a][b] = _mm256_loadu_ps(in + (a * 6 + b) * point_stride);
      for (int b = 0; b < 6; ++b) output_1d(&x[0][b], &s[0][b], 6);  // columns: A^T m
      for (int a = 0; a < 4; ++a) output_1d(&s[a][0], &y[a][0], 1);  // rows: (A^T m) A
      const vec bias = e.bias ? _mm256_loadu_ps(e.bias + k) : _mm256_setzero_ps();
      float* base = dst + plane(n, k, g.K, g.P, g.Q, g.block);
      for (int a = 0; a < 4 && p0 + a < g.P; ++a)
        for (int b = 0; b < 4 && q0 + b < g.Q; ++b) {
          finish(y[a][b], bias, e, base + ((p0 + a) * g.Q + q0 + b) * g.block);
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

namespace {

// Tile t of a line conv: its image, and the first output (p, q) of its m along the axis.
struct LineTile {
  int64_t n, p, q;
};
LineTile line_tile(const Line& l, int64_t t) {
  const Geometry& g = l.g;
  if (l.along_w) {
    const int64_t tq = (g.Q + l.f.m - 1) / l.f.m, per_image = g.P * tq, r = t % per_image;
    return {t / per_image, r / tq, r % tq * l.f.m};
  }
  const int64_t tp = (g.P + l.f.m - 1) / l.f.m, per_image = tp * g.Q, r = t % per_image;
  return {t / per_image, r / g.Q * l.f.m, r % g.Q};
}

// A transform matrix (row-major, ROWS x COLS) with each coefficient in all lanes.
template <int ROWS, int COLS>
void broadcast(const std::vector<float>& matrix, vec (&out)[ROWS][COLS]) {
  for (int a = 0; a < ROWS; ++a)
    for (int j = 0; j < COLS; ++j) out[a][j] = _mm256_set1_ps(matrix[a * COLS + j]);
}

// sum_j row[j] * x[j]
template <int COLS>
vec dot(const vec (&row)[COLS], const vec* x) {
  vec y = _mm256_mul_ps(row[0], x[0]);
  for (int j = 1; j < COLS; ++j) y = _mm256_fmadd_ps(row[j], x[j], y);
  return y;
}

// The line transforms with their sizes fixed at compile time (fully unrolled; the
// coefficients broadcast once per call): ALPHA inputs, M outputs a tile.
template <int ALPHA>
void line_input(const Line& l, const float* src, int64_t first, int64_t count, int64_t chunk, float* v) {
  const Geometry& g = l.g;
  vec bt[ALPHA][ALPHA];
  broadcast(l.f.bt, bt);
  const int64_t groups = g.C / kLanes, point_stride = chunk * g.C;
  const int64_t step = l.along_w ? g.block : g.W * g.block, extent = l.along_w ? g.W : g.H;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < count; ++i)
    for (int64_t grp = 0; grp < groups; ++grp) {
      const LineTile t = line_tile(l, first + i);
      const int64_t c = grp * kLanes, h = t.p - g.pad_h, w = t.q - g.pad_w;
      const int64_t start = l.along_w ? w : h;  // the first input along the axis
      const bool across = l.along_w ? h >= 0 && h < g.H : w >= 0 && w < g.W;
      const float* base = src + plane(t.n, c, g.C, g.H, g.W, g.block) + (h * g.W + w) * g.block;
      vec d[ALPHA];
      for (int j = 0; j < ALPHA; ++j)
        d[j] = across && start + j >= 0 && start + j < extent ? _mm256_loadu_ps(base + j * step) : _mm256_setzero_ps();
      float* out = v + i * g.C + c;
      for (int a = 0; a < ALPHA; ++a) _mm256_storeu_ps(out + a * point_stride, dot(bt[a], d));
    }
}

template <int ALPHA, int M>
void line_output(const Line& l, const float* m, int64_t first, int64_t count, int64_t chunk, const Epilogue& e,
                 float* dst) {
  const Geometry& g = l.g;
  vec at[M][ALPHA];
  broadcast(l.f.at, at);
  const int64_t groups = g.K / kLanes, point_stride = chunk * g.K;
  const int64_t step = l.along_w ? g.block : g.Q * g.block, extent = l.along_w ? g.Q : g.P;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < count; ++i)
    for (int64_t grp = 0; grp < groups; ++grp) {
      const LineTile t = line_tile(l, first + i);
      const int64_t k = grp * kLanes, start = l.along_w ? t.q : t.p;
      vec x[ALPHA];
      for (int j = 0; j < ALPHA; ++j) x[j] = _mm256_loadu_ps(m + j * point_stride + i * g.K + k);
      const vec bias = e.bias ? _mm256_loadu_ps(e.bias + k) : _mm256_setzero_ps();
      float* base = dst + plane(t.n, k, g.K, g.P, g.Q, g.block) + (t.p * g.Q + t.q) * g.block;
      for (int a = 0; a < M && start + a < extent; ++a) finish(dot(at[a], x), bias, e, base + a * step);
    }
}

}  // namespace

// The (m, r) the transforms are built for: F(4, 3), F(2, 7), F(3, 7) and F(4, 7) (the
// backend uses m = 4; bench/winograd --m7 tries the others).
void transform_input(const Line& l, const float* src, int64_t first, int64_t count, int64_t chunk, float* v) {
  switch (l.f.alpha) {
    case 6: return line_input<6>(l, src, first, count, chunk, v);
    case 8: return line_input<8>(l, src, first, count, chunk, v);
    case 9: return line_input<9>(l, src, first, count, chunk, v);
    case 10: return line_input<10>(l, src, first, count, chunk, v);
  }
  INCRES_CHECK(false, "winograd: no line transform for tiles of ", l.f.alpha, " inputs");
}

void transform_output(const Line& l, const float* m, int64_t first, int64_t count, int64_t chunk, const Epilogue& e,
                      float* dst) {
  const int key = l.f.alpha * 100 + l.f.m;
  switch (key) {
    case 604: return line_output<6, 4>(l, m, first, count, chunk, e, dst);
    case 802: return line_output<8, 2>(l, m, first, count, chunk, e, dst);
    case 903: return line_output<9, 3>(l, m, first, count, chunk, e, dst);
    case 1004: return line_output<10, 4>(l, m, first, count, chunk, e, dst);
  }
  INCRES_CHECK(false, "winograd: no line transform F(", l.f.m, ", ", l.f.r, ")");
}

}  // namespace incres::backend::winograd
