#include "backend/cpu/winograd.h"

#include <immintrin.h>

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
  const vec zero = _mm256_setzero_ps(), scale = _mm256_set1_ps(e.scale), sum = _mm256_set1_ps(e.sum);
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
      const vec bias = e.bias ? _mm256_loadu_ps(e.bias + k) : zero;
      float* base = dst + plane(n, k, g.K, g.P, g.Q, g.block);
      for (int a = 0; a < 4 && p0 + a < g.P; ++a)
        for (int b = 0; b < 4 && q0 + b < g.Q; ++b) {
          float* out = base + ((p0 + a) * g.Q + q0 + b) * g.block;
          vec o = _mm256_add_ps(y[a][b], bias);
          if (e.relu) o = _mm256_max_ps(o, zero);
          if (e.sum != 0.f) o = _mm256_fmadd_ps(sum, _mm256_loadu_ps(out), _mm256_mul_ps(scale, o));
          else if (e.scale != 1.f) o = _mm256_mul_ps(scale, o);
          if (e.post_relu) o = _mm256_max_ps(o, zero);
          _mm256_storeu_ps(out, o);
        }
    }
}

}  // namespace incres::backend::winograd
