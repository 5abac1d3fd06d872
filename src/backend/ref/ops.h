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
#include <cmath>
#include <cstdint>

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

// add: y = a + b. Backward: da += dy, db += dy (the same buffer for add(x, x) gets 2 dy).
template <class T>
void add_forward(T* y, const T* a, const T* b, int64_t count) {
  for (int64_t i = 0; i < count; ++i) y[i] = a[i] + b[i];
}
template <class T>
void add_backward(T* da, T* db, const T* dy, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    if (da) da[i] += dy[i];
    if (db) db[i] += dy[i];
  }
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

}  // namespace incres::backend::ref
