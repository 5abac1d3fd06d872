// Every implementation oneDNN offers for the convolution shapes of Inception-v3 and
// ResNet that run below the machine's peak, on each activation layout, timed at
// batch 16 (forward inference, best of 4); whether a conv or pooling can write into
// a channel slice of a larger blocked tensor (a concat without copies); and whether
// bf16 convolutions exist on this CPU. The reference (ref:*) implementations are
// listed, not timed. The evidence behind docs/performance.md's "why" paragraphs.
//
// bench/conv_impls --resnet50 --batch 1 [--cold]: ResNet-50's late convs at batch 1,
// the case of batch-1 latency; --cold with their weights coming from memory, as in a
// whole network (each call reads the next of 8 weight buffers, 8x the largest conv's
// 9.4 MB, past the caches), else from the cache.
#include <dnnl.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "best_of.h"

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

struct Shape {
  const char* where;
  int C, K, H, W, R, S, stride, pad_h, pad_w;
};

const char* tag_name(tag t) {
  return t == tag::nChw16c ? "nChw16c" : t == tag::nChw8c ? "nChw8c" : t == tag::nhwc ? "nhwc" : "nchw";
}

void time_all(const engine& eng, stream& s, const Shape& sh, int N, bool cold) {
  const int OH = (sh.H + 2 * sh.pad_h - sh.R) / sh.stride + 1, OW = (sh.W + 2 * sh.pad_w - sh.S) / sh.stride + 1;
  const double flops = 2.0 * N * sh.K * OH * OW * sh.C * sh.R * sh.S;
  for (tag t : {tag::nChw16c, tag::nChw8c, tag::nhwc, tag::nchw}) {
    memory::desc src({N, sh.C, sh.H, sh.W}, dt::f32, t), dst({N, sh.K, OH, OW}, dt::f32, t);
    memory::desc w({sh.K, sh.C, sh.R, sh.S}, dt::f32, tag::any);
    convolution_forward::desc d(prop_kind::forward_inference, algorithm::convolution_direct, src, w, dst,
                                {sh.stride, sh.stride}, {sh.pad_h, sh.pad_w}, {sh.pad_h, sh.pad_w});
    convolution_forward::primitive_desc pd(d, eng);
    do {
      const std::string impl = pd.impl_info_str();
      if (impl.find("ref") != std::string::npos) {
        std::printf("  %-7s %-14s (reference: not timed)\n", tag_name(t), impl.c_str());
        continue;
      }
      convolution_forward conv(pd);
      memory a(pd.src_desc(), eng), o(pd.dst_desc(), eng), sp(pd.scratchpad_desc(), eng);
      std::vector<memory> weights(cold ? 8 : 1);
      for (memory& w : weights) {
        w = memory(pd.weights_desc(), eng);
        std::memset(w.get_data_handle(), 0, pd.weights_desc().get_size());
      }
      // Cold: 8 calls per timed run, each on the next weight buffer.
      const int calls = cold ? 8 : 1;
      const double best = best_of(cold ? 6 : 4, [&] {
        for (int i = 0; i < calls; ++i)
          conv.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, weights[i]}, {DNNL_ARG_DST, o}, {DNNL_ARG_SCRATCHPAD, sp}});
        s.wait();
      }) / calls;
      std::printf("  %-7s %-14s %8.2f ms %7.1f GFLOP/s\n", tag_name(t), impl.c_str(), best * 1e3, flops / best / 1e9);
    } while (pd.next_impl());
  }
}

// What oneDNN picks for a conv / pooling whose destination is a channel slice of a
// larger nChw8c tensor, or "none".
void slice_destination(const engine& eng) {
  memory::desc big({16, 256, 35, 35}, dt::f32, tag::nChw8c);
  memory::desc src({16, 192, 35, 35}, dt::f32, tag::nChw8c);
  try {
    convolution_forward::desc d(prop_kind::forward_inference, algorithm::convolution_direct, src,
                                memory::desc({64, 192, 1, 1}, dt::f32, tag::any),
                                big.submemory_desc({16, 64, 35, 35}, {0, 64, 0, 0}), {1, 1}, {0, 0}, {0, 0});
    std::printf("conv 1x1 into channels 64..127 of a 256-channel nChw8c tensor: %s\n",
                convolution_forward::primitive_desc(d, eng).impl_info_str());
  } catch (const dnnl::error&) {
    std::printf("conv into a channel slice: no implementation\n");
  }
  try {
    pooling_forward::desc d(prop_kind::forward_inference, algorithm::pooling_avg_include_padding, src,
                            big.submemory_desc({16, 192, 35, 35}, {0, 64, 0, 0}), {1, 1}, {3, 3}, {1, 1}, {1, 1});
    std::printf("avg pool 3x3 into channels 64..255 of it:                     %s\n",
                pooling_forward::primitive_desc(d, eng).impl_info_str());
  } catch (const dnnl::error&) {
    std::printf("pooling into a channel slice: no implementation\n");
  }
}

void bf16_conv(const engine& eng) {
  memory::desc x({16, 64, 56, 56}, dt::bf16, tag::any), w({64, 64, 3, 3}, dt::bf16, tag::any);
  try {
    convolution_forward::desc d(prop_kind::forward_training, algorithm::convolution_direct, x, w, x, {1, 1}, {1, 1},
                                {1, 1});
    std::printf("bf16 conv 3x3 64->64 on 56x56: %s\n", convolution_forward::primitive_desc(d, eng).impl_info_str());
  } catch (const dnnl::error&) {
    std::printf("bf16 conv 3x3 64->64 on 56x56: no implementation on this CPU\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  int batch = 16;
  bool cold = false, resnet50 = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--batch" && i + 1 < argc) batch = std::max(1, std::atoi(argv[++i]));
    else if (arg == "--cold") cold = true;
    else if (arg == "--resnet50") resnet50 = true;
    else {
      std::fprintf(stderr, "usage: conv_impls [--resnet50] [--batch N] [--cold]\n");
      return 2;
    }
  }
  engine eng(engine::kind::cpu, 0);
  stream s(eng);
  const std::vector<Shape> resnet50_thin = {
      {"ResNet-50 layer4 3x3", 512, 512, 7, 7, 3, 3, 1, 1, 1},
      {"ResNet-50 layer4.0 3x3 (stride 2)", 512, 512, 14, 14, 3, 3, 2, 1, 1},
      {"ResNet-50 layer3.0 3x3 (stride 2)", 256, 256, 28, 28, 3, 3, 2, 1, 1},
      {"ResNet-50 layer3 3x3", 256, 256, 14, 14, 3, 3, 1, 1, 1},
      {"ResNet-50 layer4 1x1 2048->512", 2048, 512, 7, 7, 1, 1, 1, 0, 0},
      {"ResNet-50 layer4 1x1 512->2048", 512, 2048, 7, 7, 1, 1, 1, 0, 0},
  };
  const std::vector<Shape> below_peak = {
      {"Inception-v3 Conv2d_2a_3x3", 32, 32, 149, 149, 3, 3, 1, 0, 0},
      {"Inception-v3 Mixed_6a.branch3x3 (stride 2)", 288, 384, 35, 35, 3, 3, 2, 0, 0},
      {"Inception-v3 Mixed_6c 1x7", 160, 160, 17, 17, 1, 7, 1, 0, 3},
      {"Inception-v3 Mixed_6c 7x1", 160, 160, 17, 17, 7, 1, 1, 3, 0},
      {"Inception-v3 Mixed_7b 3x3", 448, 384, 8, 8, 3, 3, 1, 1, 1},
      {"Inception-v3 Mixed_7b 1x3", 384, 384, 8, 8, 1, 3, 1, 0, 1},
      {"ResNet-50 layer1 3x3", 64, 64, 56, 56, 3, 3, 1, 1, 1},
  };
  for (const Shape& sh : resnet50 ? resnet50_thin : below_peak) {
    std::printf("%s: %d->%d, %dx%d, kernel %dx%d, stride %d, batch %d%s\n", sh.where, sh.C, sh.K, sh.H, sh.W, sh.R,
                sh.S, sh.stride, batch, cold ? ", weights from memory" : "");
    time_all(eng, s, sh, batch, cold);
  }
  if (resnet50) return 0;
  slice_destination(eng);
  bf16_conv(eng);
  return 0;
}
