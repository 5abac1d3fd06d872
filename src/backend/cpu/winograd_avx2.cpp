// The Winograd transforms on AVX2: 8 floats a vector (the baseline, x86-64-v3).
#include <immintrin.h>

#include "backend/cpu/winograd_kernels.h"

namespace incres::backend::winograd::avx2 {
namespace {
using vec = __m256;
constexpr int64_t kLanes = 8;
inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
inline vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
inline vec fnmadd(vec a, vec b, vec c) { return _mm256_fnmadd_ps(a, b, c); }
inline vec vmax(vec a, vec b) { return _mm256_max_ps(a, b); }
inline vec set1(float x) { return _mm256_set1_ps(x); }
inline vec zero() { return _mm256_setzero_ps(); }
inline vec load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
}  // namespace
#include "backend/cpu/winograd_kernels.inc"
}  // namespace incres::backend::winograd::avx2
