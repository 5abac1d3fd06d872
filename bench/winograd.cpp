// incres's Winograd convolutions (backend/cpu/winograd.h) against oneDNN's direct
// convolution on the stride-1 shapes of ResNet-50 and Inception-v3 they apply to
// (3x3: F(4x4, 3x3); 1x3, 3x1, 1x7, 7x1: F(m, r) along one axis, m from --m), on the
// blocked layout both run on: time (best of 5; the transforms' and products' shares
// of the best run), GFLOP/s counted as a direct conv's, and the largest difference
// between the two outputs relative to the largest output. Also times the tile chunk
// sizes the backend chooses between (--chunks).
//   build/bench/winograd [--batch N] [--only TEXT] [--chunks 512,256,...] [--m3 4] [--m7 4] [--block 8|16]
//                        [--avx2-transforms]   (the AVX2 transforms even on nChw16c, to compare with AVX-512's)
#include <dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/winograd.h"
#include "backend/cpu/winograd_kernels.h"
#include "backend/program.h"
#include "best_of.h"

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;
namespace wg = incres::backend::winograd;

namespace {

struct Shape {
  const char* where;
  int64_t C, K, H, W, R, S, pad_h, pad_w;
};

int m_for_3 = 4, m_for_7 = 4;  // outputs per tile of the line transforms
// The channel block of the layout both run on: 16 (nChw16c, AVX-512 transforms) where
// oneDNN runs AVX-512 kernels, else 8 (nChw8c, AVX2); --block overrides.
int64_t block = incres::backend::cpu_isa().rfind("avx512", 0) == 0 ? 16 : 8;
bool avx2_transforms = false;

void compare(const engine& eng, stream& s, const Shape& sh, int64_t N, const std::vector<int64_t>& chunks) {
  const int64_t P = sh.H + 2 * sh.pad_h - sh.R + 1, Q = sh.W + 2 * sh.pad_w - sh.S + 1;
  const double flops = 2.0 * N * sh.K * P * Q * sh.C * sh.R * sh.S;
  const tag blocked = block == 16 ? tag::nChw16c : tag::nChw8c;
  memory::desc src_md({N, sh.C, sh.H, sh.W}, dt::f32, blocked), dst_md({N, sh.K, P, Q}, dt::f32, blocked);
  memory::desc w_plain({sh.K, sh.C, sh.R, sh.S}, dt::f32, tag::oihw);
  convolution_forward::desc d(prop_kind::forward_inference, algorithm::convolution_direct, src_md,
                              memory::desc({sh.K, sh.C, sh.R, sh.S}, dt::f32, tag::any), dst_md, {1, 1},
                              {sh.pad_h, sh.pad_w}, {sh.pad_h, sh.pad_w});
  convolution_forward::primitive_desc pd(d, eng);
  memory x(src_md, eng), w(w_plain, eng), wb(pd.weights_desc(), eng), y(dst_md, eng), y2(dst_md, eng);
  memory sp(pd.scratchpad_desc(), eng);
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto fill = [&](memory& m) {
    float* p = static_cast<float*>(m.get_data_handle());
    for (size_t i = 0; i < m.get_desc().get_size() / 4; ++i) p[i] = normal(rng);
  };
  fill(x), fill(w);
  reorder(w, wb).execute(s, w, wb);
  convolution_forward conv(pd);
  const double direct = best_of(5, [&] {
    conv.execute(s, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DST, y}, {DNNL_ARG_SCRATCHPAD, sp}});
    s.wait();
  });
  std::printf("%-38s %4ld->%-4ld %3ldx%-3ld %ldx%ld  direct %s %8.2f ms %6.1f GF/s\n", sh.where, sh.C, sh.K, sh.H,
              sh.W, sh.R, sh.S, pd.impl_info_str(), direct * 1e3, flops / direct / 1e9);

  // The kernel: F(4x4, 3x3), or F(m, r) along the kernel's long side.
  const wg::Geometry g{N, sh.C, sh.K, sh.H, sh.W, P, Q, sh.pad_h, sh.pad_w, block};
  const bool square = sh.R == sh.S;
  const int r = static_cast<int>(std::max(sh.R, sh.S));
  const wg::Line line{g, square ? wg::Filter1d{} : wg::filter_1d(r == 3 ? m_for_3 : m_for_7, r), sh.S > 1};
  const int64_t points = square ? wg::kPoints : line.f.alpha, tiles = square ? g.tiles() : line.tiles();
  std::vector<float> u(points * sh.C * sh.K);
  const auto* wp = static_cast<const float*>(w.get_data_handle());
  if (square) wg::transform_weights(g, wp, sh.K, sh.C, u.data());
  else wg::transform_weights(line, wp, sh.K, sh.C, u.data());
  for (int64_t want : chunks) {
    const int64_t pieces = (tiles + want - 1) / want, chunk = (tiles + pieces - 1) / pieces;
    memory::desc v_md({points, chunk, sh.C}, dt::f32, tag::abc), u_md({points, sh.C, sh.K}, dt::f32, tag::abc);
    memory::desc m_md({points, chunk, sh.K}, dt::f32, tag::abc);
    matmul::primitive_desc mpd(matmul::desc(v_md, u_md, m_md), eng);
    matmul mm(mpd);
    memory v(v_md, eng), um(u_md, eng, u.data()), m(m_md, eng), msp(mpd.scratchpad_desc(), eng);
    const auto* xp = static_cast<const float*>(x.get_data_handle());
    auto* yp = static_cast<float*>(y2.get_data_handle());
    auto* vp = static_cast<float*>(v.get_data_handle());
    const auto* mp = static_cast<const float*>(m.get_data_handle());
    double parts[3] = {0, 0, 0};
    bool first_run = true;  // input transform, products, output transform: of the best run
    using clock = std::chrono::steady_clock;
    const double t = best_of(5, [&] {
      double p[3] = {0, 0, 0};
      for (int64_t first = 0; first < tiles; first += chunk) {
        const int64_t count = std::min(chunk, tiles - first);
        auto t0 = clock::now();
        if (avx2_transforms && square) wg::avx2::transform_input(g, xp, first, count, chunk, vp);
        else if (avx2_transforms) wg::avx2::transform_input(line, xp, first, count, chunk, vp);
        else if (square) wg::transform_input(g, xp, first, count, chunk, vp);
        else wg::transform_input(line, xp, first, count, chunk, vp);
        auto t1 = clock::now();
        mm.execute(s, {{DNNL_ARG_SRC, v}, {DNNL_ARG_WEIGHTS, um}, {DNNL_ARG_DST, m}, {DNNL_ARG_SCRATCHPAD, msp}});
        s.wait();
        auto t2 = clock::now();
        if (avx2_transforms && square) wg::avx2::transform_output(g, mp, first, count, chunk, {}, yp);
        else if (avx2_transforms) wg::avx2::transform_output(line, mp, first, count, chunk, {}, yp);
        else if (square) wg::transform_output(g, mp, first, count, chunk, {}, yp);
        else wg::transform_output(line, mp, first, count, chunk, {}, yp);
        p[0] += std::chrono::duration<double>(t1 - t0).count();
        p[1] += std::chrono::duration<double>(t2 - t1).count();
        p[2] += std::chrono::duration<double>(clock::now() - t2).count();
      }
      if (p[0] + p[1] + p[2] < parts[0] + parts[1] + parts[2] || first_run) std::copy(p, p + 3, parts), first_run = false;
    });
    const auto* a = static_cast<const float*>(y.get_data_handle());
    double err = 0, top = 0;
    for (size_t i = 0; i < dst_md.get_size() / 4; ++i) {
      err = std::max(err, double(std::fabs(a[i] - yp[i])));
      top = std::max(top, double(std::fabs(a[i])));
    }
    const std::string name = square ? "F(4x4, 3x3)" : "F(" + std::to_string(line.f.m) + ", " + std::to_string(r) + ")";
    std::printf("%54s %-11s chunk %5ld  %8.2f ms %6.1f GF/s  %.2fx  err %.1e  (in %.2f, matmul %.2f, out %.2f ms)\n",
                "", name.c_str(), chunk, t * 1e3, flops / t / 1e9, direct / t, err / top, parts[0] * 1e3, parts[1] * 1e3, parts[2] * 1e3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int64_t N = 1;
  std::vector<int64_t> chunks{1 << 30, 512, 256, 128, 64, 32};
  std::string only;
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--avx2-transforms")) avx2_transforms = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--avx2-transforms")) --i;  // a flag: the next argument is an option
    else if (!std::strcmp(argv[i], "--batch")) N = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    else if (!std::strcmp(argv[i], "--m3")) m_for_3 = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--m7")) m_for_7 = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--block")) block = std::atol(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--chunks")) {
      chunks.clear();
      for (const char* p = argv[i + 1]; *p;) {
        char* end;
        chunks.push_back(std::strtol(p, &end, 10));
        p = *end ? end + 1 : end;
      }
    }
  }
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const Shape shapes[] = {
      {"ResNet-50 layer1 3x3", 64, 64, 56, 56, 3, 3, 1, 1},
      {"ResNet-50 layer2 3x3", 128, 128, 28, 28, 3, 3, 1, 1},
      {"ResNet-50 layer3 3x3", 256, 256, 14, 14, 3, 3, 1, 1},
      {"ResNet-50 layer4 3x3", 512, 512, 7, 7, 3, 3, 1, 1},
      {"Inception-v3 Conv2d_2a_3x3", 32, 32, 149, 149, 3, 3, 0, 0},
      {"Inception-v3 Conv2d_2b_3x3", 32, 64, 147, 147, 3, 3, 1, 1},
      {"Inception-v3 Conv2d_4a_3x3", 80, 192, 73, 73, 3, 3, 0, 0},
      {"Inception-v3 Mixed_5b.branch3x3dbl_2", 64, 96, 35, 35, 3, 3, 1, 1},
      {"Inception-v3 Mixed_5b.branch3x3dbl_3", 96, 96, 35, 35, 3, 3, 1, 1},
      {"Inception-v3 Mixed_7b.branch3x3dbl_2", 448, 384, 8, 8, 3, 3, 1, 1},
      {"Inception-v3 Mixed_6b.branch7x7_2 1x7", 128, 128, 17, 17, 1, 7, 0, 3},
      {"Inception-v3 Mixed_6b.branch7x7_3 7x1", 128, 192, 17, 17, 7, 1, 3, 0},
      {"Inception-v3 Mixed_6e.branch7x7_2 1x7", 192, 192, 17, 17, 1, 7, 0, 3},
      {"Inception-v3 Mixed_6e.branch7x7dbl_2 7x1", 192, 192, 17, 17, 7, 1, 3, 0},
      {"Inception-v3 Mixed_7b.branch3x3_2a 1x3", 384, 384, 8, 8, 1, 3, 0, 1},
      {"Inception-v3 Mixed_7b.branch3x3_2b 3x1", 384, 384, 8, 8, 3, 1, 1, 0},
  };
  std::printf("batch %ld, block %ld (%s transforms)\n", N, block,
              block == 16 && __builtin_cpu_supports("avx512f") && !avx2_transforms ? "AVX-512" : "AVX2");
  for (const Shape& sh : shapes)
    if (std::string(sh.where).find(only) != std::string::npos) compare(eng, s, sh, N, chunks);
  return 0;
}
