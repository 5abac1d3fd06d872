// The Winograd transforms on AVX-512: 16 floats a vector, for the nChw16c values of
// AVX-512 CPUs. Compiled with -mavx512f (CMakeLists.txt); called only where the CPU has it.
#include <immintrin.h>

// GCC 12 warns of the undefined source operand inside _mm512_max_ps itself.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "backend/cpu/winograd_kernels.h"

namespace incres::backend::winograd::avx512 {
namespace {
using vec = __m512;
constexpr int64_t kLanes = 16;
inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
inline vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
inline vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
inline vec fnmadd(vec a, vec b, vec c) { return _mm512_fnmadd_ps(a, b, c); }
inline vec vmax(vec a, vec b) { return _mm512_max_ps(a, b); }
inline vec set1(float x) { return _mm512_set1_ps(x); }
inline vec zero() { return _mm512_setzero_ps(); }
inline vec load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
}  // namespace
#include "backend/cpu/winograd_kernels.inc"
}  // namespace incres::backend::winograd::avx512
