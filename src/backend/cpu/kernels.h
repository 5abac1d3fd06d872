// Small loops of the CPU backend for what oneDNN has no primitive for. They work on
// the activation layouts the backend uses: nchw (block 1) and nChw8c / nChw16c.
#pragma once
#include <cstdint>

namespace incres::backend::kernels {

struct Blocked {
  int64_t N, C, H, W, block;
  // Offset of element (n, c, h, w); C is a multiple of block.
  int64_t at(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return (((n * (C / block) + c / block) * H + h) * W + w) * block + c % block;
  }
};

void copy(float* dst, const float* src, int64_t count);
// running = (1 - m) * running + m * batch, with the batch variance made unbiased.
void update_running_stats(float* running_mean, float* running_var, const float* mean,
                          const float* var, int64_t C, float momentum, float unbias);
// y[:, :C] = x[:, :, ::s, ::s]; y[:, C:] = 0.
void shortcut_a_forward(float* y, const Blocked& Y, const float* x, const Blocked& X, int stride);
// dx (= or +=) the scatter of dy[:, :C] back to the strided positions.
void shortcut_a_backward(float* dx, const Blocked& X, const float* dy, const Blocked& Y, int stride,
                         bool accumulate);
// y[n, c] = mean over (h, w) of x; y is N x C row-major.
void avgpool_forward(float* y, const float* x, const Blocked& X);
void avgpool_backward(float* dx, const Blocked& X, const float* dy, bool accumulate);

}  // namespace incres::backend::kernels
