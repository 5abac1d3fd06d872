// Convolutions on the oneDNN backend: training (forward, backward-data and
// backward-weights, each with the layout its jit kernel wants), inference (BN folded
// into the weights, ReLU and the residual sum as post-ops) and inference as our own
// Winograd.
#include <cstring>

#include "backend/cpu/cpu_program.h"

namespace incres::backend::cpu {

// A conv's strides and paddings as oneDNN takes them, from its input and output dims.
struct ConvGeometry {
  memory::dims strides, pad_l, pad_r;
  ConvGeometry(const graph::Conv2d& c, const memory::dims& xd, const memory::dims& yd)
      : strides{c.stride, c.stride},
        pad_l{c.pad_h, c.pad_w},
        // oneDNN wants both paddings; PyTorch's output size floor((H + 2p - R) / s) + 1
        // can leave the right/bottom padding smaller than the left/top one.
        pad_r{(yd[2] - 1) * c.stride + c.R - xd[2] - c.pad_h, (yd[3] - 1) * c.stride + c.S - xd[3] - c.pad_w} {}
};

void CpuProgram::compile_conv(Site& at, const graph::Conv2d& c) {
  if (!training()) return compile_conv_infer(at, c);
  const int x = at.n.inputs[0], y = at.n.output;
  const int64_t K = c.K, C = val_[x].md.dims()[1];
  const auto [strides, pad_l, pad_r] = ConvGeometry(c, val_[x].md.dims(), val_[y].md.dims());
  // bf16: the conv reads bf16 weights (the f32 master weights reordered at every
  // forward) and writes its weight gradient in f32.
  const dt type = val_[x].md.data_type();
  memory::desc w_any({K, C, c.R, c.S}, type, tag::any), dw_any({K, C, c.R, c.S}, dt::f32, tag::any);
  memory::desc b_md({K}, dt::f32, tag::a);
  const auto algo = dnnl::algorithm::convolution_direct;
  const auto pk = dnnl::prop_kind::forward_training;
  const memory::desc &x_md = val_[x].md, &y_md = val_[y].md;
  auto fd = c.bias ? dnnl::convolution_forward::desc(pk, algo, x_md, w_any, b_md, y_md, strides, pad_l, pad_r)
                   : dnnl::convolution_forward::desc(pk, algo, x_md, w_any, y_md, strides, pad_l, pad_r);
  dnnl::convolution_forward::primitive_desc fpd(fd, attr(), eng_);
  auto& fs = at.fwd;
  auto& bs = at.bwd;
  const int w_id = at.n.params[0];
  memory w_user = param(w_id, false);
  memory w = converted(fs, w_user, fpd.weights_desc());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, val_[x].act}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, val_[y].act}};
  if (c.bias) args[DNNL_ARG_BIAS] = param(at.n.params[1], false);
  fs.push_back(step(fpd, std::move(args)));

  if (val_[x].grad) {  // d(input): not needed for the graph's input
    // A strided conv whose last window ends before the map does (Inception's stride-2
    // 3x3 on an even grid: 16 -> 7 reads rows 0-14) has a negative right padding, for
    // which oneDNN 2.6 has only its reference backward-data loop. Its unread rows and
    // columns get no gradient: backward-data runs on the map without them, into a
    // buffer of its own, copied into d(input) with zeros around.
    memory::dims xd = val_[x].md.dims(), crop_r = pad_r;
    for (int i : {0, 1}) xd[2 + i] += std::min<int64_t>(pad_r[i], 0), crop_r[i] = std::max<int64_t>(pad_r[i], 0);
    const bool crop = xd != val_[x].md.dims();
    const tag dx_tag = is_nhwc(val_[x].md) ? tag::nhwc : layout_of(val_[x].md);
    const memory::desc dx_md = crop ? memory::desc(xd, type, dx_tag) : val_[x].md;
    dnnl::convolution_backward_data::desc bd(algo, dx_md, w_any, val_[y].md, strides, pad_l, crop_r);
    dnnl::convolution_backward_data::primitive_desc bpd(bd, attr(), eng_, fpd);
    // The weights were reordered for the forward pass; backward-data reuses them
    // when it wants the same layout, else reorders the user weights once more.
    memory wb = bpd.weights_desc() == w.get_desc() ? w : converted(bs, w_user, bpd.weights_desc());
    memory dx = crop ? alloc(dx_md) : contribution(at.id, 0);
    bs.push_back(step(bpd, {{DNNL_ARG_DIFF_DST, val_[y].grad}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DIFF_SRC, dx}}));
    if (!crop) {
      finish_contribution(bs, at.id, 0, dx);
    } else {
      const bool first = first_contribution(at.id, 0);
      memory full = val_[x].grad;
      if (first) {
        const size_t bytes = val_[x].md.get_size();
        bs.push_back(loop({full}, [=]() { std::memset(full.get_data_handle(), 0, bytes); }));
      }
      dnnl::primitive_attr a = attr();
      if (!first) {
        dnnl::post_ops po;
        po.append_sum(1.f);
        a.set_post_ops(po);
      }
      memory part = view(full, val_[x].md.submemory_desc(xd, {0, 0, 0, 0}));
      dnnl::reorder::primitive_desc rpd(eng_, dx_md, eng_, part.get_desc(), a);
      bs.push_back(step(rpd, {{DNNL_ARG_FROM, dx}, {DNNL_ARG_TO, part}}));
    }
  }
  // Backward-weights chooses its own source layout: with a few input channels (the
  // first conv) the jit kernels want a layout other than the plain nchw the forward
  // pass reads, and the plain one would fall back to oneDNN's slow reference code.
  auto weights_pd = [&](const memory::desc& src_md, const memory::desc& dy_md) {
    auto wd = c.bias ? dnnl::convolution_backward_weights::desc(algo, src_md, dw_any, b_md, dy_md, strides, pad_l, pad_r)
                     : dnnl::convolution_backward_weights::desc(algo, src_md, dw_any, dy_md, strides, pad_l, pad_r);
    return dnnl::convolution_backward_weights::primitive_desc(wd, attr(), eng_, fpd);
  };
  auto wpd = weights_pd(memory::desc(val_[x].md.dims(), type, tag::any), val_[y].md);
  // Where the padding is as large as the map (Inception's 7x1 and 3x3 convs on the
  // 3x3 and 1x1 grids of small inputs) oneDNN 2.6 has no jit backward-weights kernel
  // on blocked layouts and falls back to its reference loop; its gemm kernel on nhwc
  // does the same work much faster (inception_v3 training at 75x75, batch 16: 8.5 ->
  // 141-171 images/s).
  // The source and d(output) are small there: reorder them for it.
  if (std::string(wpd.impl_info_str()).find("ref") != std::string::npos) {
    const memory::desc x_nhwc(x_md.dims(), type, tag::nhwc), y_nhwc(y_md.dims(), type, tag::nhwc);
    auto gemm = weights_pd(x_nhwc, y_nhwc);
    if (std::string(gemm.impl_info_str()).find("ref") == std::string::npos) wpd = gemm;
  }
  memory src = converted(bs, val_[x].act, wpd.src_desc());
  memory dy = converted(bs, val_[y].grad, wpd.diff_dst_desc());
  memory dw_user = param(w_id, true);
  memory dw = wpd.diff_weights_desc() == dw_user.get_desc() ? dw_user : alloc(wpd.diff_weights_desc());
  std::unordered_map<int, memory> wargs{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
  if (c.bias) wargs[DNNL_ARG_DIFF_BIAS] = param(at.n.params[1], true);
  bs.push_back(step(wpd, std::move(wargs)));
  if (dw != dw_user) {
    dnnl::reorder::primitive_desc rpd(eng_, dw.get_desc(), eng_, dw_user.get_desc(), attr());
    bs.push_back(step(rpd, {{DNNL_ARG_FROM, dw}, {DNNL_ARG_TO, dw_user}}));
  }
}

std::pair<memory, memory> CpuProgram::plain_weights(const Site& at, const graph::Conv2d& c, bool keep) {
  const graph::ConvChain& ch = plan_.nodes[at.id].chain;
  memory w_user = param(at.n.params[0], false), b_user = c.bias ? param(at.n.params[1], false) : memory();
  if (ch.bn < 0 && ch.conv_scale == 1.f) return {w_user, b_user};
  memory folded = keep ? alloc(w_user.get_desc()) : fold_.make(w_user.get_desc(), eng_);
  memory b = ch.bn >= 0 || c.bias ? alloc(memory::desc({c.K}, dt::f32, tag::a)) : memory();
  std::vector<memory> bn;  // gamma, beta, mean, var
  float eps = 0.f;
  if (ch.bn >= 0) {
    const Node& bn_node = g_.nodes[ch.bn];
    eps = std::get<graph::BatchNorm>(bn_node.op).eps;
    for (int i = 0; i < 4; ++i) bn.push_back(param(bn_node.params[i], false));
  }
  const int64_t K = c.K, per_k = w_user.get_desc().dims()[1] * c.R * c.S;
  const float scale = ch.conv_scale;
  prep_.push_back(loop({folded, b}, [=]() {
    const float* stats[4] = {};
    for (size_t i = 0; i < bn.size(); ++i) stats[i] = data(bn[i]);
    kernels::fold_conv(data(folded), data(b), data(w_user), data(b_user), bn.empty() ? nullptr : stats, eps, scale,
                       K, per_k);
  }));
  return {folded, b};
}

// Winograd where it beats oneDNN's direct conv (bench/winograd, batch 1 and 16): 3x3
// convs as F(4x4, 3x3), 1x3 / 3x1 as F(4, 3) along their axis, 1x7 / 7x1 as F(4, 7);
// stride 1, blocked layouts in and out, at least 16 output tiles, and enough input
// channels: 64 on AVX2, 32 on AVX-512.
//  - AVX2 (nChw8c): 1.5-3.5x (3x3), 1.5-2.6x (1x3), 1.4-2x (1x7); with 32 channels
//    the transforms, bound by memory, cost as much as the products (Inception-v3's
//    Conv2d_2a / 2b: 0.9-1.3x, varying from run to run).
//  - AVX-512 (nChw16c, 16-lane transforms): 1.4-4.2x (3x3), 1.4-1.6x (1x3),
//    1.1-1.7x (1x7) at batch 16; the 32-channel Conv2d_2a / 2b 1.2-1.6x at batch 16
//    and 1.5-2x at batch 1 (two runs on a Xeon with AVX512-BF16, 2 threads).
// With fewer than 16 tiles (ResNet-50's 7x7 grid or Inception's 8x8 at batch 1) the
// products are too thin to pay for reading 4x the weights (0.3-0.6x there).
std::optional<CpuProgram::WinogradPlan> CpuProgram::winograd_plan(const Site& at, const graph::Conv2d& c) const {
  const bool square = c.R == 3 && c.S == 3;
  const bool line = (c.R == 1 && (c.S == 3 || c.S == 7)) || (c.S == 1 && (c.R == 3 || c.R == 7));
  // Our transforms are f32; a bf16 program runs oneDNN's bf16 direct convs.
  if (!opt_.winograd || opt_.precision != Precision::f32 || !(square || line) || c.stride != 1) return std::nullopt;
  const int x = at.n.inputs[0], y = plan_.nodes[at.id].chain.out;
  const int64_t block = block_;
  const tag t = blocked_tag(block);
  const memory::desc &x_md = val_[x].md, &y_md = val_[y].md;
  if (x_md != memory::desc(x_md.dims(), dt::f32, t) || y_md != memory::desc(y_md.dims(), dt::f32, t))
    return std::nullopt;
  const memory::dims xd = val_[x].md.dims(), yd = val_[y].md.dims();
  WinogradPlan plan;
  plan.g = winograd::Geometry{opt_.batch, xd[1], yd[1], xd[2], xd[3], yd[2], yd[3], c.pad_h, c.pad_w, block};
  if (line) {
    const int r = std::max(c.R, c.S);
    plan.line = winograd::Line{plan.g, winograd::filter_1d(4, r), c.S > 1};
  }
  const int64_t min_channels = block == 16 ? 32 : 64;
  if (xd[1] < min_channels || plan.tiles() < 16) return std::nullopt;
  return plan;
}

void CpuProgram::compile_conv_winograd(Site& at, const graph::Conv2d& c, const WinogradPlan& plan) {
  namespace wg = winograd;
  const graph::ConvChain& ch = plan_.nodes[at.id].chain;
  const int x = at.n.inputs[0], y = ch.out;
  const wg::Geometry& g = plan.g;
  const std::optional<wg::Line>& line = plan.line;
  const int64_t C = g.C, K = g.K, points = plan.points(), tiles = plan.tiles();
  // Tiles go through in chunks whose transformed input and output (points x chunk x
  // (C + K) floats) take ~6 MB: the sizes bench/winograd found fastest, at least 64
  // tiles (fewer make the products thin), split evenly (a short last chunk costs a
  // full one).
  const int64_t want = std::max<int64_t>(64, (6 << 20) / (points * (C + K) * 4));
  const int64_t pieces = (tiles + want - 1) / want, chunk = (tiles + pieces - 1) / pieces;

  // Blocked values have whole blocks of channels (the layout rule above), so C and K
  // need no padding here and the bias is read as it is.
  auto [w, b] = plain_weights(at, c, false);
  memory u = alloc(memory::desc({points, C, K}, dt::f32, tag::abc));
  prep_.push_back(loop({u}, [=]() {
    if (line) wg::transform_weights(*line, data(w), K, C, data(u));
    else wg::transform_weights(g, data(w), K, C, data(u));
  }));

  memory v = alloc(memory::desc({points, chunk, C}, dt::f32, tag::abc));
  memory m = alloc(memory::desc({points, chunk, K}, dt::f32, tag::abc));
  dnnl::matmul::primitive_desc mpd(dnnl::matmul::desc(v.get_desc(), u.get_desc(), m.get_desc()), attr(), eng_);
  Step mm = step(mpd, {{DNNL_ARG_SRC, v}, {DNNL_ARG_WEIGHTS, u}, {DNNL_ARG_DST, m}});
  wg::Epilogue e;
  e.relu = ch.relu >= 0;
  e.scale = 1.f;  // in the weights (plain_weights)
  e.sum = ch.sum_scale;
  e.post_relu = ch.post_relu >= 0;
  const memory src = val_[x].act, dst = val_[y].act;
  Step s = loop({src, dst, v, m, u}, [=, this]() mutable {
    e.bias = data(b);  // bound by plan(); null without a bias
    for (int64_t first = 0; first < tiles; first += chunk) {
      const int64_t count = std::min(chunk, tiles - first);
      if (line) wg::transform_input(*line, data(src), first, count, chunk, data(v));
      else wg::transform_input(g, data(src), first, count, chunk, data(v));
      run(mm);
      if (line) wg::transform_output(*line, data(m), first, count, chunk, e, data(dst));
      else wg::transform_output(g, data(m), first, count, chunk, e, data(dst));
    }
  });
  s.kind = "winograd";
  s.impl = std::string(line ? "F(4," + std::to_string(line->f.r) + ")" : "F(4x4,3x3)") + ":" + wg::transform_isa(g) + "+" + mm.impl;
  for (const memory& h : mm.held) s.held.push_back(h);
  at.fwd.push_back(std::move(s));
}

void CpuProgram::compile_conv_infer(Site& at, const graph::Conv2d& c) {
  if (auto plan = winograd_plan(at, c)) return compile_conv_winograd(at, c, *plan);
  const graph::ConvChain& ch = plan_.nodes[at.id].chain;
  const int x = at.n.inputs[0], y = ch.out;
  const int64_t K = c.K, C = val_[x].md.dims()[1];
  const auto [strides, pad_l, pad_r] = ConvGeometry(c, val_[x].md.dims(), val_[y].md.dims());
  const bool bias = c.bias || ch.bn >= 0;
  // bf16: the conv reads bf16 weights (reordered from the folded f32 ones when the
  // store changes) and a bf16 source; bias and accumulation stay f32.
  memory::desc w_any({K, C, c.R, c.S}, val_[x].md.data_type(), tag::any);
  memory::desc b_md({K}, dt::f32, tag::a);
  dnnl::post_ops po;
  const auto relu = dnnl::algorithm::eltwise_relu;
  if (ch.relu >= 0) po.append_eltwise(1.f, relu, 0.f, 0.f);
  // The other input of the add is already in the destination; the conv's own scale is
  // in its weights (plain_weights: oneDNN 2.6 has no jit kernel for a linear post-op
  // before a sum, only its reference loop).
  if (ch.add >= 0) po.append_sum(ch.sum_scale);
  if (ch.post_relu >= 0) po.append_eltwise(1.f, relu, 0.f, 0.f);
  dnnl::primitive_attr a = attr();
  a.set_post_ops(po);
  const auto algo = dnnl::algorithm::convolution_direct;
  const auto pk = dnnl::prop_kind::forward_inference;
  auto make_pd = [&](const memory::desc& x_md, const memory::desc& y_md) {
    auto fd = bias ? dnnl::convolution_forward::desc(pk, algo, x_md, w_any, b_md, y_md, strides, pad_l, pad_r)
                   : dnnl::convolution_forward::desc(pk, algo, x_md, w_any, y_md, strides, pad_l, pad_r);
    return dnnl::convolution_forward::primitive_desc(fd, a, eng_);
  };
  dnnl::convolution_forward::primitive_desc fpd = make_pd(val_[x].md, val_[y].md);
  // A thin 3x3 (batch x output map at most 14x14: ResNet-50's layer3 and layer4 at
  // batch 1) reads more weight than it computes on, and its weights come from memory.
  // There oneDNN's nhwc brgemm kernel streams them faster than its nChw16c direct
  // one: on a Zen 5, 0.69 against 0.89 ms for layer4's 3x3 (bench/conv_impls
  // --resnet50 --batch 1 --cold). Such a conv runs in nhwc between reorders of its
  // small maps.
  memory src = val_[x].act, dst = val_[y].act;
  const memory::dims yd = val_[y].md.dims();
  if (c.R == 3 && c.S == 3 && yd[0] * yd[2] * yd[3] <= 14 * 14 && val_[x].md.data_type() == dt::f32 &&
      layout_of(val_[x].md) == tag::nChw16c && layout_of(val_[y].md) == tag::nChw16c) {
    const memory::desc xn(val_[x].md.dims(), dt::f32, tag::nhwc), yn(yd, dt::f32, tag::nhwc);
    auto npd = make_pd(xn, yn);
    if (std::string(npd.impl_info_str()).starts_with("brg")) {
      fpd = npd;
      src = converted(at.fwd, src, xn);
      // The sum post-op adds what is in the destination: the other addend, in nhwc.
      dst = ch.add >= 0 ? converted(at.fwd, dst, yn) : alloc(yn);
    }
  }

  // The weights the conv reads, prepared when the store changes: folded with the BN
  // and/or reordered to the conv's layout.
  const memory::desc w_plain = param(at.n.params[0], false).get_desc();
  auto [w, b] = plain_weights(at, c, fpd.weights_desc() == w_plain);
  if (fpd.weights_desc() != w_plain) {
    memory from = w;
    w = alloc(fpd.weights_desc());
    dnnl::reorder::primitive_desc rpd(eng_, from.get_desc(), eng_, w.get_desc(), attr());
    prep_.push_back(step(rpd, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, w}}));
  }
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst}};
  if (bias) args[DNNL_ARG_BIAS] = b;
  at.fwd.push_back(step(fpd, std::move(args)));
  if (dst != val_[y].act) {
    dnnl::reorder::primitive_desc rpd(eng_, dst.get_desc(), eng_, val_[y].md, attr());
    at.fwd.push_back(step(rpd, {{DNNL_ARG_FROM, dst}, {DNNL_ARG_TO, val_[y].act}}));
  }
}

}  // namespace incres::backend::cpu
