// Small loops of the CPU backend for what oneDNN has no primitive for. They work on
// the activation layouts the backend uses: nchw (block 1) and nChw8c / nChw16c.
#pragma once
#include <cstdint>

#include "backend/dropout_mask.h"
#include "graph/graph.h"

namespace incres::backend::kernels {

// A value's layout: nchw (block 1), nChw8c / nChw16c, or N x F (H = W = 1, block 1).
struct Blocked {
  int64_t N, C, H, W, block;
  // Offset of element (n, c, h, w); C is a multiple of block.
  int64_t at(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return (((n * (C / block) + c / block) * H + h) * W + w) * block + c % block;
  }
  // The element's index in the row-major (NCHW) value, whatever the layout.
  int64_t logical(int64_t n, int64_t c, int64_t h, int64_t w) const { return ((n * C + c) * H + h) * W + w; }
};

void copy(float* dst, const float* src, int64_t count);
// How many of x[0..count) are exactly zero (either sign).
int64_t count_zeros(const float* x, int64_t count);
// running = (1 - m) * running + m * batch, with the batch variance made unbiased.
void update_running_stats(float* running_mean, float* running_var, const float* mean,
                          const float* var, int64_t C, float momentum, float unbias);
// Global BatchNorm statistics (sync BN). sums[c] += the sum over (n, h, w) of x,
// sums[C + c] += that of x^2, in double.
void channel_sums(double* sums, const float* x, const Blocked& X);
// y[e] -= a[c] + b[c] * x[e] for every element e of channel c.
void channel_affine_sub(float* y, const float* x, const Blocked& X, const float* a, const float* b);
// Inference: what a conv absorbs into its weights and bias, the BatchNorm after it
// and the scale of a residual sum it feeds (y = x + scale * conv: Inception-ResNet).
// Per output channel k, s = scale * gamma / sqrt(var + eps); w_out[k] = s * w[k]
// (per_k weights each), b_out[k] = scale * beta + s * (b[k] - mean) with b = 0 when
// the conv has no bias (b null). Without a BatchNorm (bn null: gamma, beta, mean, var
// at bn[0..3]), s = scale and b_out = scale * b (b_out untouched when b is null).
void fold_conv(float* w_out, float* b_out, const float* w, const float* b, const float* const* bn, float eps,
               float scale, int64_t K, int64_t per_k);
// y[:, :C] = x[:, :, ::s, ::s]; y[:, C:] = 0.
void shortcut_a_forward(float* y, const Blocked& Y, const float* x, const Blocked& X, int stride);
// dx (= or +=) the scatter of dy[:, :C] back to the strided positions.
void shortcut_a_backward(float* dx, const Blocked& X, const float* dy, const Blocked& Y, int stride,
                         bool accumulate);
// y[n, c] = mean over (h, w) of x; y is N x C row-major.
void avgpool_forward(float* y, const float* x, const Blocked& X);
void avgpool_backward(float* dx, const Blocked& X, const float* dy, bool accumulate);

// dst[:, d_offset : d_offset + channels] (= or +=) src[:, s_offset : s_offset + channels]:
// a concat's input into its output, or back, where the channel offset does not fall
// on a block boundary (oneDNN's submemory views need one).
void copy_channels(float* dst, const Blocked& D, int64_t d_offset, const float* src, const Blocked& S,
                   int64_t s_offset, int64_t channels, bool accumulate);

// Average pooling with PyTorch's divisor (ref::PoolDims): for the case oneDNN's
// differs, count_include_pad with a ceil-mode window past the right padding.
void avg_pool2d_forward(float* y, const Blocked& Y, const float* x, const Blocked& X, const graph::Pool2d& a);
void avg_pool2d_backward(float* dx, const Blocked& X, const float* dy, const Blocked& Y,
                         const graph::Pool2d& a, bool accumulate);

// Training dropout: y = x * mask.scale() where mask.keep(logical index), else 0; the
// backward applies the same map to dy (= or += into dx).
void dropout_forward(float* y, const float* x, const Blocked& X, const DropoutMask& mask);
void dropout_backward(float* dx, const float* dy, const Blocked& X, const DropoutMask& mask, bool accumulate);

}  // namespace incres::backend::kernels
