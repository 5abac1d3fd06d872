// The Winograd transforms of backend/cpu/winograd.h per instruction set: avx2 (8
// lanes, any block of 8 or 16) and avx512 (16 lanes, block 16; only on CPUs with
// AVX-512F). winograd.cpp picks one at run time; tests call both.
#pragma once
#include "backend/cpu/winograd.h"

namespace incres::backend::winograd {

#define INCRES_WINOGRAD_KERNELS                                                                                      \
  void transform_input(const Geometry& g, const float* src, int64_t first, int64_t count, int64_t chunk, float* v); \
  void transform_output(const Geometry& g, const float* m, int64_t first, int64_t count, int64_t chunk,            \
                        const Epilogue& e, float* dst);                                                             \
  void transform_input(const Line& l, const float* src, int64_t first, int64_t count, int64_t chunk, float* v);     \
  void transform_output(const Line& l, const float* m, int64_t first, int64_t count, int64_t chunk,                \
                        const Epilogue& e, float* dst);
namespace avx2 {
INCRES_WINOGRAD_KERNELS
}
namespace avx512 {
INCRES_WINOGRAD_KERNELS
}
#undef INCRES_WINOGRAD_KERNELS

}  // namespace incres::backend::winograd
