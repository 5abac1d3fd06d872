// The layout of every value (phase 1 of compiling, program.cpp): one channel block
// per graph, nChw16c (AVX-512) or nChw8c, chosen so that every conv has a jit kernel
// on this CPU (channel_block); nchw where the channel count allows no block; nc for
// flat values. bf16 feature maps: see bf16_tag.
#include "backend/cpu/cpu_program.h"
#include "core/error.h"

namespace incres::backend {

std::string cpu_isa() {
  using isa = dnnl::cpu_isa;
  // The widest first: each includes those after it.
  const std::pair<isa, const char*> names[] = {
      {isa::avx512_core_amx, "avx512_core_amx"}, {isa::avx512_core_bf16, "avx512_core_bf16"},
      {isa::avx512_core_vnni, "avx512_core_vnni"}, {isa::avx512_core, "avx512_core"},
      {isa::avx2_vnni, "avx2_vnni"}, {isa::avx2, "avx2"}, {isa::avx, "avx"}, {isa::sse41, "sse41"}};
  for (const auto& [i, name] : names)
    if (cpu::cpu_isa_has(i)) return name;
  return "none";
}

bool bf16_supported() { return cpu::cpu_isa_has(dnnl::cpu_isa::avx512_core_bf16); }

namespace cpu {

// oneDNN's ISA values are sets of feature bits, not an order (avx2_vnni, 0x407, is
// above avx512_core, 0x27): an ISA includes another when it has all its bits.
bool cpu_isa_has(dnnl::cpu_isa want) {
  const auto have = static_cast<unsigned>(dnnl::get_effective_cpu_isa()), w = static_cast<unsigned>(want);
  return (have & w) == w;
}

// The channel block of the activation layouts of a graph: the widest whose jit
// kernels this CPU has (nChw16c with AVX-512, nChw8c with AVX2), narrowed to 8 when
// some value's channel count is not a multiple of 16 (narrow nets: Inception at width
// 0.25 has 72 or 40 channels). oneDNN 2.6 has no jit kernel for a conv that mixes a
// plain nchw side with a blocked one, nor one that mixes nChw8c with nChw16c, so a
// graph keeps one block throughout; its AVX2 kernels run nChw8c on AVX-512 CPUs too.
// The graph's input (1 or 3 channels) stays nchw: every ISA has first-conv kernels
// for that. A value whose channel count fits no block of 8 is nchw.
static int64_t cpu_block() {
  static const int64_t block = cpu_isa_has(dnnl::cpu_isa::avx512_core) ? 16 : 8;
  return block;
}

int64_t channel_block(const Graph& g) {
  int64_t block = cpu_block();
  for (size_t v = 0; v < g.values.size(); ++v) {
    const Shape& s = g.values[v].shape;
    if (static_cast<int>(v) != g.input && s.rank() == 3 && s[0] % block != 0 && s[0] % 8 == 0) block = 8;
  }
  return block;
}

tag blocked_tag(int64_t block) { return block == 16 ? tag::nChw16c : tag::nChw8c; }

// The format tag of one of our 4D values (nchw, nChw8c or nChw16c), for a desc of
// other dims in the same layout.
tag layout_of(const memory::desc& md) {
  for (tag t : {tag::nChw16c, tag::nChw8c})
    if (md == memory::desc(md.dims(), md.data_type(), t)) return t;
  return tag::nchw;
}

bool is_nhwc(const memory::desc& md) { return md == memory::desc(md.dims(), md.data_type(), tag::nhwc); }

// (An nhwc bf16 value's f32 copy, for our loops, is nchw, which layout_of and
// blocked() describe; a blocked one's is blocked alike.)
memory::desc with_type(const memory::desc& md, dt type) {
  return md.dims().size() == 2 ? memory::desc(md.dims(), type, tag::nc) : memory::desc(md.dims(), type, layout_of(md));
}

memory::dims dims_of(const Shape& s, int64_t batch) {
  memory::dims d{batch};
  for (int64_t x : s.dims()) d.push_back(x);
  return d;
}

kernels::Blocked blocked(const memory::desc& md) {
  const auto& d = md.dims();
  if (d.size() == 2) return kernels::Blocked{d[0], d[1], 1, 1, 1};  // nc
  const tag t = layout_of(md);  // nchw or nChw{8,16}c (see channel_block)
  const int64_t block = t == tag::nChw16c ? 16 : t == tag::nChw8c ? 8 : 1;
  return kernels::Blocked{d[0], d[1], d[2], d[3], block};
}

// The layout of a bf16 feature map whose f32 layout would be `f32_tag`. With AMX,
// nhwc: oneDNN 2.6 runs its AMX convs (brgconv) only there, 4.6x faster than its
// nChw16c bf16 kernels. Without AMX (AVX512-BF16: Zen 4/5, Cooper Lake) the graph's
// 16-channel blocks, where its jit_bf16 convs beat brgconv on nhwc: resnet50 b16 on a
// Zen 5, 21.8 against 18.5 images/s training and 91.8 against 83.0 inference
// (docs/performance.md). Those kernels are 16-channel only, so a graph narrowed to
// 8-channel blocks stays nhwc, where brgconv takes any channel count.
static tag bf16_tag(tag f32_tag, int64_t block) {
  static const bool amx = cpu_isa_has(dnnl::cpu_isa::avx512_core_amx);
  return amx || block != 16 ? tag::nhwc : f32_tag;
}

void CpuProgram::assign_layouts() {
  block_ = channel_block(g_);
  val_.resize(g_.values.size());
  for (size_t v = 0; v < g_.values.size(); ++v) {
    const Shape& s = g_.values[v].shape;
    INCRES_CHECK(s.rank() == 1 || s.rank() == 3, "cpu backend: value ", v, " has unsupported shape ", s.str());
    const tag t = s.rank() == 1 ? tag::nc : (s[0] % block_ == 0 ? blocked_tag(block_) : tag::nchw);
    // bf16 programs keep feature maps in bf16; flat values (pooled features, logits) in f32.
    const bool bf16 = opt_.precision == Precision::bf16 && s.rank() == 3;
    val_[v].md = memory::desc(dims_of(s, opt_.batch), bf16 ? dt::bf16 : dt::f32, bf16 ? bf16_tag(t, block_) : t);
  }
}

}  // namespace cpu
}  // namespace incres::backend
