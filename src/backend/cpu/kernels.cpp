#include "backend/cpu/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace incres::backend::kernels {

void copy(float* dst, const float* src, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; i += 4096) {
    int64_t n = count - i < 4096 ? count - i : 4096;
    std::memcpy(dst + i, src + i, n * sizeof(float));
  }
}

int64_t count_zeros(const float* x, int64_t count) {
  int64_t zeros = 0;
#pragma omp parallel for reduction(+ : zeros) schedule(static)
  for (int64_t i = 0; i < count; ++i) zeros += x[i] == 0.f;
  return zeros;
}

void fold_conv(float* w_out, float* b_out, const float* w, const float* b, const float* const* bn, float eps,
               float scale, int64_t K, int64_t per_k) {
  for (int64_t k = 0; k < K; ++k) {
    // In double, as the reference computes BN: the folded weights round once.
    double sk = scale, bk = b ? scale * static_cast<double>(b[k]) : 0.0;
    if (bn) {
      const float *gamma = bn[0], *beta = bn[1], *mean = bn[2], *var = bn[3];
      sk *= static_cast<double>(gamma[k]) / std::sqrt(static_cast<double>(var[k]) + eps);
      bk = scale * static_cast<double>(beta[k]) + sk * ((b ? b[k] : 0.0) - mean[k]);
    }
    for (int64_t j = 0; j < per_k; ++j) w_out[k * per_k + j] = static_cast<float>(sk * w[k * per_k + j]);
    if (bn || b) b_out[k] = static_cast<float>(bk);
  }
}

void update_running_stats(float* rm, float* rv, const float* mean, const float* var, int64_t C,
                          float m, float unbias) {
  for (int64_t c = 0; c < C; ++c) {
    rm[c] = (1 - m) * rm[c] + m * mean[c];
    rv[c] = (1 - m) * rv[c] + m * var[c] * unbias;
  }
}

namespace {
// Calls f(channel, first element, count) for every run of elements of one channel:
// a pixel row of a plain (or N x F) layout, a block's lane of a blocked one (stride
// block, H * W elements).
template <class F>
void for_channel_runs(const Blocked& X, F f) {
  const int64_t hw = X.H * X.W;
  for (int64_t n = 0; n < X.N; ++n)
    for (int64_t cb = 0; cb < X.C / X.block; ++cb)
      for (int64_t lane = 0; lane < X.block; ++lane)
        f(cb * X.block + lane, (n * (X.C / X.block) + cb) * hw * X.block + lane, hw);
}
}  // namespace

void channel_sums(double* sums, const float* x, const Blocked& X) {
  for_channel_runs(X, [&](int64_t c, int64_t first, int64_t count) {
    double s = 0, q = 0;
    for (int64_t i = 0; i < count; ++i) {
      const double v = x[first + i * X.block];
      s += v;
      q += v * v;
    }
    sums[c] += s;
    sums[X.C + c] += q;
  });
}

void channel_affine_sub(float* y, const float* x, const Blocked& X, const float* a, const float* b) {
  for_channel_runs(X, [&](int64_t c, int64_t first, int64_t count) {
    for (int64_t i = 0; i < count; ++i) y[first + i * X.block] -= a[c] + b[c] * x[first + i * X.block];
  });
}

namespace {
// Both values in one blocked layout (nChw8c / nChw16c): the shortcut moves whole
// channel blocks, a row of pixels at a time.
bool same_blocks(const Blocked& X, const Blocked& Y) {
  return X.block > 1 && X.block == Y.block && X.C % X.block == 0 && Y.C % Y.block == 0;
}
}  // namespace

void shortcut_a_forward(float* y, const Blocked& Y, const float* x, const Blocked& X, int s) {
  if (same_blocks(X, Y)) {
    const int64_t b = Y.block, xb = X.C / b, yb = Y.C / b;
#pragma omp parallel for collapse(3) schedule(static)
    for (int64_t n = 0; n < Y.N; ++n)
      for (int64_t kb = 0; kb < yb; ++kb)
        for (int64_t p = 0; p < Y.H; ++p) {
          float* row = y + ((n * yb + kb) * Y.H + p) * Y.W * b;
          if (kb >= xb) {  // the new channels
            std::memset(row, 0, static_cast<size_t>(Y.W * b) * sizeof(float));
            continue;
          }
          const float* in = x + ((n * xb + kb) * X.H + p * s) * X.W * b;
          for (int64_t q = 0; q < Y.W; ++q) std::memcpy(row + q * b, in + q * s * b, static_cast<size_t>(b) * sizeof(float));
        }
    return;
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < Y.N; ++n)
    for (int64_t k = 0; k < Y.C; ++k)
      for (int64_t p = 0; p < Y.H; ++p)
        for (int64_t q = 0; q < Y.W; ++q)
          y[Y.at(n, k, p, q)] = k < X.C ? x[X.at(n, k, p * s, q * s)] : 0.f;
}

void shortcut_a_backward(float* dx, const Blocked& X, const float* dy, const Blocked& Y, int s,
                         bool accumulate) {
  if (same_blocks(X, Y)) {
    const int64_t b = X.block, xb = X.C / b, yb = Y.C / b;
#pragma omp parallel for collapse(3) schedule(static)
    for (int64_t n = 0; n < X.N; ++n)
      for (int64_t cb = 0; cb < xb; ++cb)
        for (int64_t h = 0; h < X.H; ++h) {
          float* row = dx + ((n * xb + cb) * X.H + h) * X.W * b;
          if (h % s != 0) {  // a row the forward skipped: no gradient
            if (!accumulate) std::memset(row, 0, static_cast<size_t>(X.W * b) * sizeof(float));
            continue;
          }
          const float* g = dy + ((n * yb + cb) * Y.H + h / s) * Y.W * b;
          for (int64_t w = 0; w < X.W; ++w) {
            float* d = row + w * b;
            const float* gw = g + (w / s) * b;
            const bool hit = w % s == 0;
            for (int64_t j = 0; j < b; ++j) d[j] = (accumulate ? d[j] : 0.f) + (hit ? gw[j] : 0.f);
          }
        }
    return;
  }
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

void copy_channels(float* dst, const Blocked& D, int64_t d_offset, const float* src, const Blocked& S,
                   int64_t s_offset, int64_t channels, bool accumulate) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < D.N; ++n)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t h = 0; h < D.H; ++h)
        for (int64_t w = 0; w < D.W; ++w) {
          const float v = src[S.at(n, s_offset + c, h, w)];
          float& d = dst[D.at(n, d_offset + c, h, w)];
          d = accumulate ? d + v : v;
        }
}

namespace {
// Output (p, q)'s window clipped to the input, and PyTorch's divisor (see ref::PoolDims).
struct Window {
  int64_t h0, h1, w0, w1;
  float divisor;
};
Window pool_window(const graph::Pool2d& a, const Blocked& X, int64_t p, int64_t q) {
  int64_t h0 = p * a.stride - a.pad, w0 = q * a.stride - a.pad;
  int64_t h1 = std::min<int64_t>(h0 + a.kernel, X.H + a.pad), w1 = std::min<int64_t>(w0 + a.kernel, X.W + a.pad);
  const int64_t padded = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0);
  w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, X.H);
  w1 = std::min(w1, X.W);
  return {h0, h1, w0, w1, static_cast<float>(a.count_include_pad ? padded : (h1 - h0) * (w1 - w0))};
}
}  // namespace

void avg_pool2d_forward(float* y, const Blocked& Y, const float* x, const Blocked& X, const graph::Pool2d& a) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < Y.N; ++n)
    for (int64_t c = 0; c < Y.C; ++c)
      for (int64_t p = 0; p < Y.H; ++p)
        for (int64_t q = 0; q < Y.W; ++q) {
          const Window win = pool_window(a, X, p, q);
          float sum = 0;
          for (int64_t h = win.h0; h < win.h1; ++h)
            for (int64_t w = win.w0; w < win.w1; ++w) sum += x[X.at(n, c, h, w)];
          y[Y.at(n, c, p, q)] = sum / win.divisor;
        }
}

void avg_pool2d_backward(float* dx, const Blocked& X, const float* dy, const Blocked& Y,
                         const graph::Pool2d& a, bool accumulate) {
  // One thread per (n, c) plane: the windows of a plane overlap, planes do not.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < X.N; ++n)
    for (int64_t c = 0; c < X.C; ++c) {
      if (!accumulate)
        for (int64_t h = 0; h < X.H; ++h)
          for (int64_t w = 0; w < X.W; ++w) dx[X.at(n, c, h, w)] = 0.f;
      for (int64_t p = 0; p < Y.H; ++p)
        for (int64_t q = 0; q < Y.W; ++q) {
          const Window win = pool_window(a, X, p, q);
          const float share = dy[Y.at(n, c, p, q)] / win.divisor;
          for (int64_t h = win.h0; h < win.h1; ++h)
            for (int64_t w = win.w0; w < win.w1; ++w) dx[X.at(n, c, h, w)] += share;
        }
    }
}

void dropout_forward(float* y, const float* x, const Blocked& X, const DropoutMask& mask) {
  const float scale = mask.scale();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < X.N; ++n)
    for (int64_t c = 0; c < X.C; ++c)
      for (int64_t h = 0; h < X.H; ++h)
        for (int64_t w = 0; w < X.W; ++w) {
          const int64_t i = X.at(n, c, h, w);
          y[i] = mask.keep(X.logical(n, c, h, w)) ? x[i] * scale : 0.f;
        }
}

void dropout_backward(float* dx, const float* dy, const Blocked& X, const DropoutMask& mask, bool accumulate) {
  const float scale = mask.scale();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < X.N; ++n)
    for (int64_t c = 0; c < X.C; ++c)
      for (int64_t h = 0; h < X.H; ++h)
        for (int64_t w = 0; w < X.W; ++w) {
          const int64_t i = X.at(n, c, h, w);
          const float g = mask.keep(X.logical(n, c, h, w)) ? dy[i] * scale : 0.f;
          dx[i] = accumulate ? dx[i] + g : g;
        }
}

}  // namespace incres::backend::kernels
