#include "backend/cpu/kernels.h"

#include <cstring>

namespace incres::backend::kernels {

void copy(float* dst, const float* src, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; i += 4096) {
    int64_t n = count - i < 4096 ? count - i : 4096;
    std::memcpy(dst + i, src + i, n * sizeof(float));
  }
}

void update_running_stats(float* rm, float* rv, const float* mean, const float* var, int64_t C,
                          float m, float unbias) {
  for (int64_t c = 0; c < C; ++c) {
    rm[c] = (1 - m) * rm[c] + m * mean[c];
    rv[c] = (1 - m) * rv[c] + m * var[c] * unbias;
  }
}

void shortcut_a_forward(float* y, const Blocked& Y, const float* x, const Blocked& X, int s) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < Y.N; ++n)
    for (int64_t k = 0; k < Y.C; ++k)
      for (int64_t p = 0; p < Y.H; ++p)
        for (int64_t q = 0; q < Y.W; ++q)
          y[Y.at(n, k, p, q)] = k < X.C ? x[X.at(n, k, p * s, q * s)] : 0.f;
}

void shortcut_a_backward(float* dx, const Blocked& X, const float* dy, const Blocked& Y, int s,
                         bool accumulate) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < X.N; ++n)
    for (int64_t c = 0; c < X.C; ++c)
      for (int64_t h = 0; h < X.H; ++h)
        for (int64_t w = 0; w < X.W; ++w) {
          float g = (h % s == 0 && w % s == 0) ? dy[Y.at(n, c, h / s, w / s)] : 0.f;
          float& d = dx[X.at(n, c, h, w)];
          d = accumulate ? d + g : g;
        }
}

void avgpool_forward(float* y, const float* x, const Blocked& X) {
  const float inv = 1.f / static_cast<float>(X.H * X.W);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < X.N; ++n)
    for (int64_t c = 0; c < X.C; ++c) {
      float sum = 0;
      for (int64_t h = 0; h < X.H; ++h)
        for (int64_t w = 0; w < X.W; ++w) sum += x[X.at(n, c, h, w)];
      y[n * X.C + c] = sum * inv;
    }
}

void avgpool_backward(float* dx, const Blocked& X, const float* dy, bool accumulate) {
  const float inv = 1.f / static_cast<float>(X.H * X.W);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < X.N; ++n)
    for (int64_t c = 0; c < X.C; ++c) {
      float g = dy[n * X.C + c] * inv;
      for (int64_t h = 0; h < X.H; ++h)
        for (int64_t w = 0; w < X.W; ++w) {
          float& d = dx[X.at(n, c, h, w)];
          d = accumulate ? d + g : g;
        }
    }
}

}  // namespace incres::backend::kernels
