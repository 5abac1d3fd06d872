// The machine's true arithmetic peak: a loop of independent fused multiply-adds held
// in registers (no memory traffic), on the bench's thread count. fp32 with the widest
// vectors the ISA oneDNN dispatches to allows (AVX2: 8 lanes, AVX-512: 16; so
// ONEDNN_MAX_CPU_ISA=AVX2 measures the AVX2 peak of an AVX-512 machine), and bf16 dot
// products (vdpbf16ps: 2 products a lane) where the ISA has AVX512-BF16, and AMX
// tile products (tdpbf16ps) where it has AMX: the bf16 peak there. Every
// "of peak" figure of bench/run.sh divides by these. Prints one JSON line.
//
// Usage: bench/peak [--threads N] [--seconds S]      (default: OMP_NUM_THREADS or all
// cores; 0.3 s per measurement, best of 5)
#include <dnnl.hpp>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <sys/syscall.h>
#include <unistd.h>

namespace {

// kAcc independent accumulators: enough to cover the FMA latency (4-5 cycles) times
// the FMA ports (2) of current x86 cores, so the loop is bound by throughput.
constexpr int kAcc = 12;
constexpr int64_t kInner = 1000;  // FMAs per accumulator per round

// Rounds of kInner x kAcc FMAs on 8 lanes; returns a value the caller keeps.
__attribute__((target("avx2,fma"))) float fma_avx2(int64_t rounds) {
  __m256 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t r = 0; r < rounds; ++r)
    for (int64_t j = 0; j < kInner; ++j)
#pragma GCC unroll 16  // every accumulator in its own register
      for (int i = 0; i < kAcc; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  __m256 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm256_add_ps(s, acc[i]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

__attribute__((target("avx512f"))) float fma_avx512(int64_t rounds) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t r = 0; r < rounds; ++r)
    for (int64_t j = 0; j < kInner; ++j)
#pragma GCC unroll 16  // every accumulator in its own register
      for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

// vdpbf16ps: acc += a[2i] b[2i] + a[2i+1] b[2i+1] per fp32 lane, 64 flops an instruction.
__attribute__((target("avx512f,avx512bf16"))) float dot_bf16(int64_t rounds) {
  __m512 acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  for (int64_t r = 0; r < rounds; ++r)
    for (int64_t j = 0; j < kInner; ++j)
#pragma GCC unroll 16  // every accumulator in its own register
      for (int i = 0; i < kAcc; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < kAcc; ++i) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

// AMX (Sapphire Rapids and later): tdpbf16ps multiplies a 16x32 bf16 tile by a 32x16
// one into a 16x16 fp32 tile, 16 x 16 x 32 x 2 = 16384 flops an instruction. Four
// accumulator tiles in flight, their operands loaded once (no memory traffic).
constexpr int kTiles = 4;
struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile,amx-bf16"))) float dot_amx(int64_t rounds) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;  // 16 rows of 64 bytes each
  _tile_loadconfig(&cfg);
  alignas(64) static thread_local uint16_t ab[16 * 32];
  for (uint16_t& v : ab) v = 0x3a83;  // bf16 1e-3
  alignas(64) static thread_local float c[16 * 16];
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ab, 64);
  _tile_loadd(5, ab, 64);
  // kAcc x kInner tile products a round, as measure() counts them, kTiles at a time.
  for (int64_t r = 0; r < rounds; ++r)
    for (int64_t j = 0; j < kAcc * kInner / kTiles; ++j) {
      _tile_dpbf16ps(0, 4, 5);
      _tile_dpbf16ps(1, 4, 5);
      _tile_dpbf16ps(2, 4, 5);
      _tile_dpbf16ps(3, 4, 5);
    }
  _tile_stored(0, c, 64);
  _tile_release();
  return c[0];
}

// Linux hands a process the AMX tile state only when it asks (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA).
bool amx_permitted() { return syscall(SYS_arch_prctl, 0x1023, 18) == 0; }

// GFLOP/s of `kernel` on `threads` threads: the best of 5 runs of about `seconds` each.
// flops: per accumulator update.
double measure(float (*kernel)(int64_t), double flops, int threads, double seconds) {
  // Calibrate: rounds per thread that take about `seconds`.
  int64_t rounds = 16;
  for (;;) {
    auto t0 = std::chrono::steady_clock::now();
    volatile float keep = kernel(rounds);
    (void)keep;
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (t > seconds / 4) {
      rounds = std::max<int64_t>(1, static_cast<int64_t>(rounds * seconds / t));
      break;
    }
    rounds *= 4;
  }
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    float sink = 0;
    auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += kernel(rounds);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    volatile float keep = sink;
    (void)keep;
    best = std::max(best, flops * kAcc * kInner * static_cast<double>(rounds) * threads / t / 1e9);
  }
  return best;
}

bool isa_has(dnnl::cpu_isa want) {  // oneDNN's ISA values are sets of feature bits
  const auto have = static_cast<unsigned>(dnnl::get_effective_cpu_isa()), w = static_cast<unsigned>(want);
  return (have & w) == w;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = omp_get_max_threads();
  double seconds = 0.3;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--threads N] [--seconds S]\n", argv[0]);
      return 2;
    }
  }
  if (threads < 1) {
    std::fprintf(stderr, "peak: --threads must be at least 1\n");
    return 2;
  }
  const bool avx512 = isa_has(dnnl::cpu_isa::avx512_core) && __builtin_cpu_supports("avx512f");
  const bool bf16 = isa_has(dnnl::cpu_isa::avx512_core_bf16) && __builtin_cpu_supports("avx512bf16");
  const int lanes = avx512 ? 16 : 8;
  const double fp32 = measure(avx512 ? fma_avx512 : fma_avx2, 2.0 * lanes, threads, seconds);
  char bf16_text[32] = "null", amx_text[32] = "null";
  if (bf16) std::snprintf(bf16_text, sizeof bf16_text, "%.1f", measure(dot_bf16, 4.0 * 16, threads, seconds));
  const bool amx = isa_has(dnnl::cpu_isa::avx512_core_amx) && amx_permitted();
  if (amx) std::snprintf(amx_text, sizeof amx_text, "%.1f", measure(dot_amx, 16384.0, threads, seconds));
  std::printf("{\"what\": \"fma loop\", \"threads\": %d, \"fp32_gflops\": %.1f, \"fp32_vector\": \"%s\", "
              "\"bf16_gflops\": %s, \"amx_bf16_gflops\": %s}\n",
              threads, fp32, avx512 ? "avx512 (16 lanes)" : "avx2 (8 lanes)", bf16_text, amx_text);
  return 0;
}
