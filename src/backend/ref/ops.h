// The reference kernels: plain loops over NCHW (and N x C for flat values), one
// forward/backward pair per op of graph/graph.h, templated on the element type so
// the gradient checks run them in double and the ref backend in float. They are the
// oracle every faster backend is compared with, so they favour being obviously
// right over being fast: every reduction accumulates in double, whatever T is, and
// the conv gradients are gathered (each dx / dw element summed in one accumulator)
// rather than scattered in T.
//
// Conventions, the same for every op:
//   - forward:  op_forward(y, <saved>, x, <params>, dims, <attrs>)
//     backward: op_backward(dx, d<params>, dy, x, <params>, <saved>, dims, <attrs>)
//     (outputs first, then inputs, in the forward's order).
//   - Every gradient output ACCUMULATES (+=): dx, dw, db, dgamma, dbeta. The caller
//     zeroes a gradient buffer once and lets each contributor add to it; that makes
//     fan-out (a value read by several ops, e.g. a residual block's input) and
//     add(x, x) correct without special cases. A null gradient pointer skips that
//     gradient (e.g. dx of the network input, db of a conv without bias).
//   - Dimensions: N batch, C input channels, H x W input; K output channels (or
//     output features), R x S kernel, P x Q output.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

#include "backend/dropout_mask.h"
#include "core/error.h"
#include "graph/graph.h"

namespace incres::backend::ref {

using Acc = double;  // accumulator of every reduction

struct Dims {
  int64_t N, C, H, W;
  int64_t numel() const { return N * C * H * W; }
  int64_t at(int64_t n, int64_t c, int64_t h, int64_t w) const { return ((n * C + c) * H + h) * W + w; }
};

// ---------------------------------------------------------------------------------
// conv2d: y[n, k, p, q] = b[k] + sum_{c, r, s} x[n, c, p*stride - pad_h + r,
//                                              q*stride - pad_w + s] * w[k, c, r, s]
// with x read as zero outside H x W. w is OIHW (K x C x R x S); b is K or null.
struct ConvDims {
  int64_t N, C, H, W, K;
  int R, S, stride, pad_h, pad_w;
  int64_t P, Q;

  static ConvDims make(int64_t N, int64_t C, int64_t H, int64_t W, const graph::Conv2d& a) {
    ConvDims d{N, C, H, W, a.K, a.R, a.S, a.stride, a.pad_h, a.pad_w, 0, 0};
    d.P = (H + 2 * a.pad_h - a.R) / a.stride + 1;
    d.Q = (W + 2 * a.pad_w - a.S) / a.stride + 1;
    INCRES_CHECK(a.stride >= 1 && d.P > 0 && d.Q > 0, "conv ", a.R, "x", a.S, "/", a.stride,
                 " on a ", H, "x", W, " input gives an empty output");
    return d;
  }
  Dims x() const { return {N, C, H, W}; }
  Dims y() const { return {N, K, P, Q}; }
  int64_t w_at(int64_t k, int64_t c, int64_t r, int64_t s) const { return ((k * C + c) * R + r) * S + s; }
};

template <class T>
void conv2d_forward(T* y, const T* x, const T* w, const T* b, const ConvDims& d) {
  const Dims X = d.x(), Y = d.y();
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t k = 0; k < d.K; ++k)
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          Acc acc = b ? Acc(b[k]) : Acc(0);
          for (int64_t c = 0; c < d.C; ++c)
            for (int64_t r = 0; r < d.R; ++r) {
              int64_t h = p * d.stride - d.pad_h + r;
              if (h < 0 || h >= d.H) continue;
              for (int64_t s = 0; s < d.S; ++s) {
                int64_t ww = q * d.stride - d.pad_w + s;
                if (ww < 0 || ww >= d.W) continue;
                acc += Acc(x[X.at(n, c, h, ww)]) * Acc(w[d.w_at(k, c, r, s)]);
              }
            }
          y[Y.at(n, k, p, q)] = T(acc);
        }
}

// dx += d/dx, dw += d/dw, db += d/db (each may be null).
template <class T>
void conv2d_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const ConvDims& d) {
  const Dims X = d.x(), Y = d.y();
  if (dx) {
    // x[n, c, h, w] feeds y[n, k, p, q] through tap (r, s) when h = p*stride - pad_h + r,
    // i.e. p = (h + pad_h - r) / stride, which must divide exactly and lie in [0, P).
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t c = 0; c < d.C; ++c)
        for (int64_t h = 0; h < d.H; ++h)
          for (int64_t ww = 0; ww < d.W; ++ww) {
            Acc acc = 0;
            for (int64_t r = 0; r < d.R; ++r) {
              int64_t ph = h + d.pad_h - r;
              if (ph < 0 || ph % d.stride) continue;
              int64_t p = ph / d.stride;
              if (p >= d.P) continue;
              for (int64_t s = 0; s < d.S; ++s) {
                int64_t qw = ww + d.pad_w - s;
                if (qw < 0 || qw % d.stride) continue;
                int64_t q = qw / d.stride;
                if (q >= d.Q) continue;
                for (int64_t k = 0; k < d.K; ++k)
                  acc += Acc(dy[Y.at(n, k, p, q)]) * Acc(w[d.w_at(k, c, r, s)]);
              }
            }
            dx[X.at(n, c, h, ww)] += T(acc);
          }
  }
  if (dw) {
    for (int64_t k = 0; k < d.K; ++k)
      for (int64_t c = 0; c < d.C; ++c)
        for (int64_t r = 0; r < d.R; ++r)
          for (int64_t s = 0; s < d.S; ++s) {
            Acc acc = 0;
            for (int64_t n = 0; n < d.N; ++n)
              for (int64_t p = 0; p < d.P; ++p) {
                int64_t h = p * d.stride - d.pad_h + r;
                if (h < 0 || h >= d.H) continue;
                for (int64_t q = 0; q < d.Q; ++q) {
                  int64_t ww = q * d.stride - d.pad_w + s;
                  if (ww < 0 || ww >= d.W) continue;
                  acc += Acc(dy[Y.at(n, k, p, q)]) * Acc(x[X.at(n, c, h, ww)]);
                }
              }
            dw[d.w_at(k, c, r, s)] += T(acc);
          }
  }
  if (db) {
    for (int64_t k = 0; k < d.K; ++k) {
      Acc acc = 0;
      for (int64_t n = 0; n < d.N; ++n)
        for (int64_t p = 0; p < d.P; ++p)
          for (int64_t q = 0; q < d.Q; ++q) acc += Acc(dy[Y.at(n, k, p, q)]);
      db[k] += T(acc);
    }
  }
}

// ---------------------------------------------------------------------------------
// batchnorm over (N, H, W) per channel c, with M = N*H*W values per channel:
//   y = gamma[c] * (x - mean[c]) * inv_std[c] + beta[c],  inv_std = 1 / sqrt(var + eps)
// Training normalises with the batch mean and the biased batch variance (divide by
// M) and saves mean and inv_std for backward. If running_mean/running_var are not
// null it updates them as PyTorch's BatchNorm2d does (torch.nn.BatchNorm2d docs):
//   running_mean = (1 - m) * running_mean + m * mean
//   running_var  = (1 - m) * running_var  + m * var * M / (M - 1)   (unbiased)
// PyTorch refuses training with M = 1 ("Expected more than 1 value per channel");
// so do we, since the unbiased variance is then undefined.
template <class T>
void batchnorm_train_forward(T* y, T* mean, T* inv_std, const T* x, const T* gamma, const T* beta,
                             T* running_mean, T* running_var, const Dims& d, double eps,
                             double momentum) {
  const int64_t M = d.N * d.H * d.W;
  INCRES_CHECK(M > 1, "batchnorm in training needs more than one value per channel, got N*H*W = ", M);
  for (int64_t c = 0; c < d.C; ++c) {
    // Two passes (mean, then squared deviations): no cancellation for large means.
    Acc sum = 0;
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) sum += Acc(x[d.at(n, c, 0, 0) + i]);
    const Acc mu = sum / Acc(M);
    Acc sq = 0;
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) {
        Acc dev = Acc(x[d.at(n, c, 0, 0) + i]) - mu;
        sq += dev * dev;
      }
    const Acc var = sq / Acc(M);
    const Acc is = 1 / std::sqrt(var + eps);
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) {
        int64_t j = d.at(n, c, 0, 0) + i;
        y[j] = T(Acc(gamma[c]) * (Acc(x[j]) - mu) * is + Acc(beta[c]));
      }
    mean[c] = T(mu);
    inv_std[c] = T(is);
    if (running_mean) running_mean[c] = T((1 - momentum) * Acc(running_mean[c]) + momentum * mu);
    if (running_var)
      running_var[c] = T((1 - momentum) * Acc(running_var[c]) + momentum * var * Acc(M) / Acc(M - 1));
  }
}

// Inference: the same affine map with the running statistics.
template <class T>
void batchnorm_infer_forward(T* y, const T* x, const T* gamma, const T* beta,
                             const T* running_mean, const T* running_var, const Dims& d, double eps) {
  for (int64_t c = 0; c < d.C; ++c) {
    const Acc is = 1 / std::sqrt(Acc(running_var[c]) + eps);
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) {
        int64_t j = d.at(n, c, 0, 0) + i;
        y[j] = T(Acc(gamma[c]) * (Acc(x[j]) - Acc(running_mean[c])) * is + Acc(beta[c]));
      }
  }
}

// Training backward, with xhat = (x - mean) * inv_std (mean, inv_std saved by forward):
//   dbeta  += sum dy,  dgamma += sum dy * xhat   (sums over N, H, W)
//   dx     += gamma * inv_std * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
// The last line is the derivative through the batch mean and variance (Ioffe &
// Szegedy 2015, Sec. 3, chain rule simplified).
template <class T>
void batchnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* gamma,
                        const T* mean, const T* inv_std, const Dims& d) {
  const int64_t M = d.N * d.H * d.W;
  for (int64_t c = 0; c < d.C; ++c) {
    const Acc mu = Acc(mean[c]), is = Acc(inv_std[c]);
    Acc sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) {
        int64_t j = d.at(n, c, 0, 0) + i;
        sum_dy += Acc(dy[j]);
        sum_dy_xhat += Acc(dy[j]) * (Acc(x[j]) - mu) * is;
      }
    if (dbeta) dbeta[c] += T(sum_dy);
    if (dgamma) dgamma[c] += T(sum_dy_xhat);
    if (!dx) continue;
    const Acc scale = Acc(gamma[c]) * is;
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) {
        int64_t j = d.at(n, c, 0, 0) + i;
        Acc xhat = (Acc(x[j]) - mu) * is;
        dx[j] += T(scale * (Acc(dy[j]) - sum_dy / Acc(M) - xhat * sum_dy_xhat / Acc(M)));
      }
  }
}

// ---------------------------------------------------------------------------------
// relu: y = max(x, 0). Backward passes dy where x > 0 and nothing at x <= 0 (the
// subgradient PyTorch uses at the kink).
template <class T>
void relu_forward(T* y, const T* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}
template <class T>
void relu_backward(T* dx, const T* dy, const T* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i)
    if (x[i] > T(0)) dx[i] += dy[i];
}

// add (graph::Add): y = a + scale * b. Backward: da += dy, db += scale * dy (the same
// buffer for add(x, x) gets both).
template <class T>
void add_forward(T* y, const T* a, const T* b, int64_t count, double scale = 1) {
  for (int64_t i = 0; i < count; ++i) y[i] = T(Acc(a[i]) + scale * Acc(b[i]));
}
template <class T>
void add_backward(T* da, T* db, const T* dy, int64_t count, double scale = 1) {
  for (int64_t i = 0; i < count; ++i) {
    if (da) da[i] += dy[i];
    if (db) db[i] += T(scale * Acc(dy[i]));
  }
}

// mul: y = a * b elementwise. Backward: da += dy * b, db += dy * a.
template <class T>
void mul_forward(T* y, const T* a, const T* b, int64_t count) {
  for (int64_t i = 0; i < count; ++i) y[i] = a[i] * b[i];
}
template <class T>
void mul_backward(T* da, T* db, const T* dy, const T* a, const T* b, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (da) da[i] += dy[i] * b[i];
    if (db) db[i] += dy[i] * a[i];
  }
}

// sigmoid: y = 1 / (1 + exp(-x)). Backward from the output: dx += dy * y * (1 - y).
template <class T>
void sigmoid_forward(T* y, const T* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i) y[i] = T(1 / (1 + std::exp(-Acc(x[i]))));
}
template <class T>
void sigmoid_backward(T* dx, const T* dy, const T* y, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dx[i] += T(Acc(dy[i]) * Acc(y[i]) * (1 - Acc(y[i])));
}

// scale_shift (graph::ScaleShift): y = scale * x + shift. Backward: dx += scale * dy.
template <class T>
void scale_shift_forward(T* y, const T* x, int64_t count, double scale, double shift) {
  for (int64_t i = 0; i < count; ++i) y[i] = T(scale * Acc(x[i]) + shift);
}
template <class T>
void scale_shift_backward(T* dx, const T* dy, int64_t count, double scale) {
  for (int64_t i = 0; i < count; ++i) dx[i] += T(scale * Acc(dy[i]));
}

// dropout, training (graph::Dropout): y = x / (1 - p) where mask.keep(i), else 0;
// i is the element's index in the row-major value. Backward: dx += the same map of dy.
// (Inference is the identity and needs no kernel.)
template <class T>
void dropout_forward(T* y, const T* x, int64_t count, const DropoutMask& mask) {
  const Acc scale = 1 / (1 - Acc(mask.p));
  for (int64_t i = 0; i < count; ++i) y[i] = mask.keep(i) ? T(scale * Acc(x[i])) : T(0);
}
template <class T>
void dropout_backward(T* dx, const T* dy, int64_t count, const DropoutMask& mask) {
  const Acc scale = 1 / (1 - Acc(mask.p));
  for (int64_t i = 0; i < count; ++i)
    if (mask.keep(i)) dx[i] += T(scale * Acc(dy[i]));
}

// ---------------------------------------------------------------------------------
// shortcut A (graph::ShortcutA): y[:, :C] = x[:, :, ::stride, ::stride], y[:, C:K] = 0.
// Output P x Q = ceil(H / stride) x ceil(W / stride). Backward scatters dy[:, :C]
// back to the sampled positions; dy[:, C:] has no input to reach.
struct ShortcutDims {
  int64_t N, C, H, W, K;
  int stride;
  int64_t P, Q;
  static ShortcutDims make(int64_t N, int64_t C, int64_t H, int64_t W, const graph::ShortcutA& a) {
    INCRES_CHECK(a.K >= C && a.stride >= 1, "shortcut A from ", C, " to ", a.K, " channels, stride ",
                 a.stride, ": needs K >= C and stride >= 1");
    return {N, C, H, W, a.K, a.stride, (H + a.stride - 1) / a.stride, (W + a.stride - 1) / a.stride};
  }
  Dims x() const { return {N, C, H, W}; }
  Dims y() const { return {N, K, P, Q}; }
};

template <class T>
void shortcut_a_forward(T* y, const T* x, const ShortcutDims& d) {
  const Dims X = d.x(), Y = d.y();
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t k = 0; k < d.K; ++k)
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q)
          y[Y.at(n, k, p, q)] = k < d.C ? x[X.at(n, k, p * d.stride, q * d.stride)] : T(0);
}
template <class T>
void shortcut_a_backward(T* dx, const T* dy, const ShortcutDims& d) {
  const Dims X = d.x(), Y = d.y();
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t c = 0; c < d.C; ++c)
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) dx[X.at(n, c, p * d.stride, q * d.stride)] += dy[Y.at(n, c, p, q)];
}

// ---------------------------------------------------------------------------------
// global average pool: y[n, c] = mean over (h, w) of x[n, c]; y is N x C.
// Backward: dx[n, c, h, w] += dy[n, c] / (H * W).
template <class T>
void avgpool_forward(T* y, const T* x, const Dims& d) {
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t c = 0; c < d.C; ++c) {
      Acc acc = 0;
      for (int64_t i = 0; i < d.H * d.W; ++i) acc += Acc(x[d.at(n, c, 0, 0) + i]);
      y[n * d.C + c] = T(acc / Acc(d.H * d.W));
    }
}
template <class T>
void avgpool_backward(T* dx, const T* dy, const Dims& d) {
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t c = 0; c < d.C; ++c) {
      const T g = T(Acc(dy[n * d.C + c]) / Acc(d.H * d.W));
      for (int64_t i = 0; i < d.H * d.W; ++i) dx[d.at(n, c, 0, 0) + i] += g;
    }
}

// ---------------------------------------------------------------------------------
// linear (PyTorch's nn.Linear): y = x W^T + b, with x N x C, W K x C (out x in),
// b K or null, y N x K.
// Backward: dx += dy W, dW += dy^T x, db += sum over n of dy.
template <class T>
void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t N, int64_t C, int64_t K) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      Acc acc = b ? Acc(b[k]) : Acc(0);
      for (int64_t c = 0; c < C; ++c) acc += Acc(x[n * C + c]) * Acc(w[k * C + c]);
      y[n * K + k] = T(acc);
    }
}
template <class T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N, int64_t C,
                     int64_t K) {
  if (dx)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        Acc acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += Acc(dy[n * K + k]) * Acc(w[k * C + c]);
        dx[n * C + c] += T(acc);
      }
  if (dw)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < C; ++c) {
        Acc acc = 0;
        for (int64_t n = 0; n < N; ++n) acc += Acc(dy[n * K + k]) * Acc(x[n * C + c]);
        dw[k * C + c] += T(acc);
      }
  if (db)
    for (int64_t k = 0; k < K; ++k) {
      Acc acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += Acc(dy[n * K + k]);
      db[k] += T(acc);
    }
}

// ---------------------------------------------------------------------------------
// pool2d (graph::Pool2d), as PyTorch's MaxPool2d / AvgPool2d: output (p, q) reads the
// window of rows [p*stride - pad, p*stride - pad + kernel) and the same columns; P x Q
// is graph::pool_out (floor, or ceil mode without a window starting in the right
// padding, so every window holds at least one real element).
//   max: y = the largest real element (padding never wins: -inf in PyTorch);
//        backward sends dy to the first largest element in row-major window order,
//        the one PyTorch picks.
//   avg: y = sum of the real elements / divisor, where the divisor is the window
//        clipped to the padded input [-pad, H + pad) with count_include_pad (a ceil-mode
//        window hanging past the padding counts only up to H + pad), else the number
//        of real elements (PyTorch's avg_pool2d kernel). Backward: each real element
//        of the window gets dy / divisor.
struct PoolDims {
  int64_t N, C, H, W;
  graph::Pool2d a;
  int64_t P, Q;

  static PoolDims make(int64_t N, int64_t C, int64_t H, int64_t W, const graph::Pool2d& a) {
    PoolDims d{N, C, H, W, a, graph::pool_out(H, a), graph::pool_out(W, a)};
    INCRES_CHECK(a.stride >= 1 && 2 * a.pad <= a.kernel && d.P > 0 && d.Q > 0, "pool ", a.kernel,
                 "/", a.stride, " pad ", a.pad, " on a ", H, "x", W, " input gives no valid output");
    return d;
  }
  Dims x() const { return {N, C, H, W}; }
  Dims y() const { return {N, C, P, Q}; }

  // Output (p, q)'s window clipped to the input, rows [h0, h1) x columns [w0, w1),
  // and the average's divisor.
  struct Window {
    int64_t h0, h1, w0, w1;
    Acc divisor;
  };
  Window window(int64_t p, int64_t q) const {
    int64_t h0 = p * a.stride - a.pad, w0 = q * a.stride - a.pad;
    int64_t h1 = std::min<int64_t>(h0 + a.kernel, H + a.pad), w1 = std::min<int64_t>(w0 + a.kernel, W + a.pad);
    const Acc padded = Acc((h1 - h0) * (w1 - w0));
    h0 = std::max<int64_t>(h0, 0);
    w0 = std::max<int64_t>(w0, 0);
    h1 = std::min(h1, H);
    w1 = std::min(w1, W);
    return {h0, h1, w0, w1, a.count_include_pad ? padded : Acc((h1 - h0) * (w1 - w0))};
  }
  // The input offset of output (n, c, p, q)'s first largest element.
  template <class T>
  int64_t argmax(const T* x, int64_t n, int64_t c, int64_t p, int64_t q) const {
    const Window win = window(p, q);
    const Dims X = this->x();
    int64_t best = X.at(n, c, win.h0, win.w0);
    for (int64_t h = win.h0; h < win.h1; ++h)
      for (int64_t w = win.w0; w < win.w1; ++w)
        if (x[X.at(n, c, h, w)] > x[best]) best = X.at(n, c, h, w);
    return best;
  }
};

template <class T>
void pool2d_forward(T* y, const T* x, const PoolDims& d) {
  const Dims X = d.x(), Y = d.y();
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t c = 0; c < d.C; ++c)
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          if (d.a.kind == graph::Pool2d::max) {
            y[Y.at(n, c, p, q)] = x[d.argmax(x, n, c, p, q)];
            continue;
          }
          const PoolDims::Window win = d.window(p, q);
          Acc sum = 0;
          for (int64_t h = win.h0; h < win.h1; ++h)
            for (int64_t w = win.w0; w < win.w1; ++w) sum += Acc(x[X.at(n, c, h, w)]);
          y[Y.at(n, c, p, q)] = T(sum / win.divisor);
        }
}

// Max pooling re-finds the maxima in x; average pooling does not read x.
template <class T>
void pool2d_backward(T* dx, const T* dy, const T* x, const PoolDims& d) {
  const Dims X = d.x(), Y = d.y();
  for (int64_t n = 0; n < d.N; ++n)
    for (int64_t c = 0; c < d.C; ++c)
      for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
          const T g = dy[Y.at(n, c, p, q)];
          if (d.a.kind == graph::Pool2d::max) {
            dx[d.argmax(x, n, c, p, q)] += g;
            continue;
          }
          const PoolDims::Window win = d.window(p, q);
          const T share = T(Acc(g) / win.divisor);
          for (int64_t h = win.h0; h < win.h1; ++h)
            for (int64_t w = win.w0; w < win.w1; ++w) dx[X.at(n, c, h, w)] += share;
        }
}

// ---------------------------------------------------------------------------------
// concat along channels: y[n] = (x_0[n], x_1[n], ...), input i holding channels[i]
// channels of HW = H * W elements each. Backward: dx_i += its slice of dy (a null
// dx_i is skipped).
template <class T>
void concat_forward(T* y, std::span<const T* const> xs, std::span<const int64_t> channels, int64_t N,
                    int64_t HW) {
  int64_t K = 0;
  for (int64_t c : channels) K += c;
  for (int64_t n = 0; n < N; ++n) {
    int64_t offset = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
      const int64_t len = channels[i] * HW;
      std::copy(xs[i] + n * len, xs[i] + (n + 1) * len, y + (n * K + offset) * HW);
      offset += channels[i];
    }
  }
}
template <class T>
void concat_backward(std::span<T* const> dxs, const T* dy, std::span<const int64_t> channels, int64_t N,
                     int64_t HW) {
  int64_t K = 0;
  for (int64_t c : channels) K += c;
  for (int64_t n = 0; n < N; ++n) {
    int64_t offset = 0;
    for (size_t i = 0; i < dxs.size(); ++i) {
      const int64_t len = channels[i] * HW;
      if (T* dx = dxs[i])
        for (int64_t j = 0; j < len; ++j) dx[n * len + j] += dy[(n * K + offset) * HW + j];
      offset += channels[i];
    }
  }
}

// ---------------------------------------------------------------------------------
// Every label a class in [0, K); the message names the first row that is not. Both
// backends' losses check with it.
inline void check_labels(const int32_t* labels, int64_t n, int64_t K) {
  for (int64_t i = 0; i < n; ++i)
    INCRES_CHECK(labels[i] >= 0 && labels[i] < K, "softmax cross-entropy: label of row ", i, " is ", labels[i],
                 ", expected a class in [0, ", K, "); check the dataset's labels against the model's class count");
}

// softmax cross-entropy with label smoothing (backend/loss.h has the definition), on
// n rows of K logits. Returns the summed (not yet averaged) loss and the top-1 hits
// (first maximum); writes d = g * (softmax - q) with g = scale / n when d is not null.
// log softmax_j = x_j - lse with lse = m + log(sum exp(x_j - m)), m the row maximum:
// every exponent is <= 0, so large logits neither overflow nor lose small terms.
template <class T>
void softmax_cross_entropy(double* loss_sum, int64_t* correct, T* d, const T* logits, const int32_t* labels,
                           int64_t n, int64_t K, double eps, double scale) {
  INCRES_CHECK(n > 0 && K > 0, "softmax cross-entropy: needs rows and classes, got ", n, " x ", K);
  INCRES_CHECK(eps >= 0 && eps <= 1, "softmax cross-entropy: label smoothing must be in [0, 1], got ", eps);
  check_labels(labels, n, K);
  const Acc off = eps / Acc(K);      // smoothing mass on every class
  const Acc on = 1.0 - eps + off;    // target of the labelled class
  const Acc g = scale / Acc(n);
  *loss_sum = 0;
  *correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* x = logits + i * K;
    const int64_t y = labels[i];
    int64_t arg = 0;
    for (int64_t j = 1; j < K; ++j)
      if (x[j] > x[arg]) arg = j;
    *correct += arg == y;
    const Acc m = Acc(x[arg]);
    Acc sum = 0, sum_x = 0;
    for (int64_t j = 0; j < K; ++j) {
      sum += std::exp(Acc(x[j]) - m);
      sum_x += Acc(x[j]);
    }
    const Acc lse = m + std::log(sum);
    // -sum_j q_j log p_j = -(1 - eps) log p_y - (eps / K) sum_j log p_j.
    *loss_sum += -(1.0 - eps) * (Acc(x[y]) - lse) - off * (sum_x - Acc(K) * lse);
    if (d)
      for (int64_t j = 0; j < K; ++j) d[i * K + j] = T(g * (std::exp(Acc(x[j]) - lse) - (j == y ? on : off)));
  }
}

}  // namespace incres::backend::ref
