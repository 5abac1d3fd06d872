// Every op but the convolution on the oneDNN backend: a primitive where oneDNN has
// one that matches PyTorch's semantics, else our own loop (backend/cpu/kernels.h).
#include <cmath>
#include <cstring>
#include <memory>

#include "backend/cpu/cpu_program.h"
#include "backend/dropout_mask.h"
#include "core/error.h"

namespace incres::backend::cpu {

void CpuProgram::compile_batchnorm(Site& at, const graph::BatchNorm& bn) {
  const int x = at.n.inputs[0], y = at.n.output;
  auto& fs = at.fwd;
  auto& bs = at.bwd;
  const bool fuse = plan_.nodes[at.id].fused_relu >= 0;
  using nf = dnnl::normalization_flags;
  nf flags = nf::use_scale | nf::use_shift;
  if (fuse) flags = flags | nf::fuse_norm_relu;
  memory gamma = param(at.n.params[0], false), beta = param(at.n.params[1], false);
  memory rmean = param(at.n.params[2], false), rvar = param(at.n.params[3], false);

  if (!training()) {
    dnnl::batch_normalization_forward::desc d(dnnl::prop_kind::forward_inference, val_[x].md, bn.eps,
                                              flags | nf::use_global_stats);
    dnnl::batch_normalization_forward::primitive_desc pd(d, attr(), eng_);
    fs.push_back(step(pd, {{DNNL_ARG_SRC, val_[x].act}, {DNNL_ARG_DST, val_[y].act}, {DNNL_ARG_SCALE, gamma},
                           {DNNL_ARG_SHIFT, beta}, {DNNL_ARG_MEAN, rmean}, {DNNL_ARG_VARIANCE, rvar}}));
    return;
  }
  if (opt_.sum_across) return compile_batchnorm_synced(at, bn, flags);
  dnnl::batch_normalization_forward::desc d(dnnl::prop_kind::forward_training, val_[x].md, bn.eps, flags);
  dnnl::batch_normalization_forward::primitive_desc pd(d, attr(), eng_);
  memory mean = alloc(pd.mean_desc()), var = alloc(pd.variance_desc());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, val_[x].act}, {DNNL_ARG_DST, val_[y].act},
                                       {DNNL_ARG_SCALE, gamma},      {DNNL_ARG_SHIFT, beta},
                                       {DNNL_ARG_MEAN, mean},        {DNNL_ARG_VARIANCE, var}};
  memory ws;
  if (fuse) args[DNNL_ARG_WORKSPACE] = ws = alloc(pd.workspace_desc());
  fs.push_back(step(pd, std::move(args)));
  // Running statistics as PyTorch keeps them: the variance is the unbiased one.
  const auto& xd = val_[x].md.dims();
  const int64_t C = xd[1], count = xd[0] * (xd.size() == 4 ? xd[2] * xd[3] : 1);
  const float m = bn.momentum, unbias = count > 1 ? float(count) / float(count - 1) : 1.f;
  fs.push_back(loop({mean, var}, [=]() mutable {
    kernels::update_running_stats(data(rmean), data(rvar), data(mean), data(var), C, m, unbias);
  }));

  dnnl::batch_normalization_backward::desc bd(dnnl::prop_kind::backward, val_[x].md, val_[x].md, bn.eps, flags);
  dnnl::batch_normalization_backward::primitive_desc bpd(bd, attr(), eng_, pd);
  memory dx = contribution(at.id, 0);
  std::unordered_map<int, memory> bargs{
      {DNNL_ARG_SRC, val_[x].act}, {DNNL_ARG_MEAN, mean}, {DNNL_ARG_VARIANCE, var},
      {DNNL_ARG_DIFF_DST, val_[y].grad}, {DNNL_ARG_SCALE, gamma}, {DNNL_ARG_SHIFT, beta},
      {DNNL_ARG_DIFF_SRC, dx},
      {DNNL_ARG_DIFF_SCALE, param(at.n.params[0], true)}, {DNNL_ARG_DIFF_SHIFT, param(at.n.params[1], true)}};
  if (fuse) bargs[DNNL_ARG_WORKSPACE] = ws;
  bs.push_back(step(bpd, std::move(bargs)));
  finish_contribution(bs, at.id, 0, dx);
}

// Training with global statistics (--sync-bn). Forward: the per-channel sums of x and
// x^2 and the sample count are summed across the processes, and oneDNN normalises by
// the mean and variance they give (use_global_stats). Its backward then takes those as
// constants: d(x) = gamma / sigma * dy, with the local sums of dy (d(beta)) and dy *
// xhat (d(gamma)). Summed across the processes, those sums give the terms the mean and
// variance contribute, which a loop subtracts:
//   d(x) = gamma / sigma * (dy - mean(dy) - xhat * mean(dy * xhat)),
// the means over every process's batch. d(gamma) and d(beta) stay this process's own:
// the gradient exchange averages them with the rest.
void CpuProgram::compile_batchnorm_synced(Site& at, const graph::BatchNorm& bn, dnnl::normalization_flags flags) {
  using nf = dnnl::normalization_flags;
  const int x = at.n.inputs[0], y = at.n.output;
  INCRES_CHECK(val_[x].md.data_type() == dt::f32, "--sync-bn runs in fp32: drop --precision bf16 or --sync-bn");
  const bool fuse = plan_.nodes[at.id].fused_relu >= 0;
  memory gamma = param(at.n.params[0], false), beta = param(at.n.params[1], false);
  memory rmean = param(at.n.params[2], false), rvar = param(at.n.params[3], false);
  memory dgamma = param(at.n.params[0], true), dbeta = param(at.n.params[1], true);
  const memory xm = val_[x].act;
  const kernels::Blocked X = blocked(val_[x].md);
  const int64_t C = X.C;
  dnnl::batch_normalization_forward::desc d(dnnl::prop_kind::forward_training, val_[x].md, bn.eps,
                                            flags | nf::use_global_stats);
  dnnl::batch_normalization_forward::primitive_desc pd(d, attr(), eng_);
  memory mean = alloc(pd.mean_desc()), var = alloc(pd.variance_desc());
  // The sums (x, x^2, count; then d(gamma), d(beta)) and the correction's a and b.
  struct Sums {
    std::vector<double> fwd, bwd;
    std::vector<float> a, b;
  };
  auto st = std::make_shared<Sums>(Sums{std::vector<double>(2 * C + 1), std::vector<double>(2 * C),
                                        std::vector<float>(C), std::vector<float>(C)});
  const float momentum = bn.momentum, eps = bn.eps;
  at.fwd.push_back(loop({xm, mean, var}, [=, this] {
    std::fill(st->fwd.begin(), st->fwd.end(), 0.0);
    kernels::channel_sums(st->fwd.data(), data(xm), X);
    st->fwd[2 * C] = static_cast<double>(X.N * X.H * X.W);
    opt_.sum_across(st->fwd.data(), 2 * C + 1);
    const double n = st->fwd[2 * C];
    float *m = data(mean), *v = data(var);
    for (int64_t c = 0; c < C; ++c) {
      const double mu = st->fwd[c] / n;
      m[c] = static_cast<float>(mu);
      v[c] = static_cast<float>(std::max(st->fwd[C + c] / n - mu * mu, 0.0));
    }
    // Running statistics as PyTorch keeps them: the unbiased variance of the whole batch.
    kernels::update_running_stats(data(rmean), data(rvar), m, v, C, momentum,
                                  n > 1 ? static_cast<float>(n / (n - 1)) : 1.f);
  }));
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, xm},      {DNNL_ARG_DST, val_[y].act},
                                       {DNNL_ARG_SCALE, gamma}, {DNNL_ARG_SHIFT, beta},
                                       {DNNL_ARG_MEAN, mean},   {DNNL_ARG_VARIANCE, var}};
  memory ws;
  if (fuse) args[DNNL_ARG_WORKSPACE] = ws = alloc(pd.workspace_desc());
  at.fwd.push_back(step(pd, std::move(args)));

  dnnl::batch_normalization_backward::desc bd(dnnl::prop_kind::backward, val_[x].md, val_[x].md, bn.eps,
                                              flags | nf::use_global_stats);
  dnnl::batch_normalization_backward::primitive_desc bpd(bd, attr(), eng_, pd);
  memory dx = contribution(at.id, 0);
  std::unordered_map<int, memory> bargs{
      {DNNL_ARG_SRC, xm},        {DNNL_ARG_MEAN, mean},       {DNNL_ARG_VARIANCE, var},
      {DNNL_ARG_DIFF_DST, val_[y].grad}, {DNNL_ARG_SCALE, gamma}, {DNNL_ARG_SHIFT, beta},
      {DNNL_ARG_DIFF_SRC, dx},   {DNNL_ARG_DIFF_SCALE, dgamma}, {DNNL_ARG_DIFF_SHIFT, dbeta}};
  if (fuse) bargs[DNNL_ARG_WORKSPACE] = ws;
  at.bwd.push_back(step(bpd, std::move(bargs)));
  at.bwd.push_back(loop({dx, xm, mean, var, dgamma, dbeta}, [=, this] {
    const float *dg = data(dgamma), *db = data(dbeta), *m = data(mean), *v = data(var), *g = data(gamma);
    for (int64_t c = 0; c < C; ++c) {
      st->bwd[c] = dg[c];
      st->bwd[C + c] = db[c];
    }
    opt_.sum_across(st->bwd.data(), 2 * C);
    const double n = st->fwd[2 * C];
    for (int64_t c = 0; c < C; ++c) {
      const double inv = 1.0 / std::sqrt(static_cast<double>(v[c]) + eps), scale = g[c] * inv;
      const double mean_dy = st->bwd[C + c] / n, mean_dy_xhat = st->bwd[c] / n;
      // dx -= scale * (mean_dy + (x - mu) * inv * mean_dy_xhat), as a + b * x.
      st->a[c] = static_cast<float>(scale * (mean_dy - m[c] * inv * mean_dy_xhat));
      st->b[c] = static_cast<float>(scale * inv * mean_dy_xhat);
    }
    kernels::channel_affine_sub(data(dx), data(xm), X, st->a.data(), st->b.data());
  }));
  finish_contribution(at.bwd, at.id, 0, dx);
}

void CpuProgram::compile_eltwise(Site& at, dnnl::algorithm algo) {
  const int x = at.n.inputs[0], y = at.n.output;
  // The "use_dst" forms: backward reads the output (ReLU: d(x) = d(y) [y > 0];
  // sigmoid: d(x) = d(y) y (1 - y)), so the op may overwrite its input (ReLUs do).
  const auto pk = training() ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  dnnl::eltwise_forward::desc d(pk, algo, val_[x].md, 0.f, 0.f);
  dnnl::eltwise_forward::primitive_desc pd(d, attr(), eng_);
  at.fwd.push_back(step(pd, {{DNNL_ARG_SRC, val_[x].act}, {DNNL_ARG_DST, val_[y].act}}));
  if (!training() || !val_[x].grad) return;
  dnnl::eltwise_backward::desc bd(algo, val_[y].md, val_[y].md, 0.f, 0.f);
  dnnl::eltwise_backward::primitive_desc bpd(bd, attr(), eng_, pd);
  auto& bs = at.bwd;
  memory dx = contribution(at.id, 0);
  bs.push_back(step(bpd, {{DNNL_ARG_DST, val_[y].act}, {DNNL_ARG_DIFF_DST, val_[y].grad}, {DNNL_ARG_DIFF_SRC, dx}}));
  finish_contribution(bs, at.id, 0, dx);
}

void CpuProgram::compile_add(Site& at, const graph::Add& add) {
  const int a = at.n.inputs[0], b = at.n.inputs[1], y = at.n.output;
  INCRES_CHECK(val_[a].md == val_[b].md, "cpu backend: add of two layouts at ", at.n.name);
  // In place on the second input (unscaled): b + a, since oneDNN sums in place onto
  // its first source.
  const int slot = plan_.nodes[at.id].in_place_slot;
  const int s0 = slot == 1 ? b : a, s1 = slot == 1 ? a : b;
  dnnl::binary::desc d(dnnl::algorithm::binary_add, val_[s0].md, val_[s1].md, val_[y].md);
  dnnl::primitive_attr scaled = attr();
  if (add.scale != 1.f) scaled.set_scales(DNNL_ARG_SRC_1, 0, {add.scale});  // y = a + scale * b
  dnnl::binary::primitive_desc pd(d, scaled, eng_);
  at.fwd.push_back(
      step(pd, {{DNNL_ARG_SRC_0, val_[s0].act}, {DNNL_ARG_SRC_1, val_[s1].act}, {DNNL_ARG_DST, val_[y].act}}));
  if (!training()) return;
  // d(a) = d(y), d(b) = scale * d(y): written by a first contributor, added by a later
  // one. The input summed over in place has d(y) as its gradient already.
  if (val_[a].grad && slot != 0) add_scaled(at.bwd, at.id, 0, val_[y].grad, 1.f);
  if (val_[b].grad && slot != 1) add_scaled(at.bwd, at.id, 1, val_[y].grad, add.scale);
}

void CpuProgram::compile_shortcut_a(Site& at, const graph::ShortcutA& s) {
  const int x = at.n.inputs[0], y = at.n.output;
  if (val_[x].md.data_type() == dt::bf16) {
    // bf16 (nhwc, or whole 16-channel blocks): y's channels past x's are zeros (zero
    // bytes are bf16 zeros); x[:, :, ::s, ::s] goes into the first ones through one
    // reorder that reads x with its own layout at s times its row and column strides
    // and writes a channel view of y.
    const memory::dims xd = val_[x].md.dims(), yd = val_[y].md.dims();
    const int64_t C = xd[1], st = s.stride;
    memory::desc sub = val_[x].md;
    for (int i : {2, 3}) {
      sub.data.dims[i] = sub.data.padded_dims[i] = yd[i];
      sub.data.format_desc.blocking.strides[i] *= st;
    }
    memory ym = val_[y].act, part = view(ym, val_[y].md.submemory_desc({yd[0], C, yd[2], yd[3]}, {0, 0, 0, 0}));
    memory xs = view(val_[x].act, sub);
    const size_t bytes = val_[y].md.get_size();
    if (yd[1] > C) at.fwd.push_back(loop({ym}, [=]() { std::memset(ym.get_data_handle(), 0, bytes); }));
    dnnl::reorder::primitive_desc pd(eng_, sub, eng_, part.get_desc(), attr());
    at.fwd.push_back(step(pd, {{DNNL_ARG_FROM, xs}, {DNNL_ARG_TO, part}}));
    if (!training() || !val_[x].grad) return;
    // d(x): d(y)'s first C channels at the sampled positions, zero elsewhere (a first
    // contribution clears d(x) first; a later one adds through the sum post-op).
    memory dx = val_[x].grad, dy_part = view(val_[y].grad, part.get_desc()), dxs = view(dx, sub);
    const bool first = first_contribution(at.id, 0);
    const size_t dx_bytes = val_[x].md.get_size();
    if (first) at.bwd.push_back(loop({dx}, [=]() { std::memset(dx.get_data_handle(), 0, dx_bytes); }));
    dnnl::primitive_attr a = attr();
    if (!first) {
      dnnl::post_ops po;
      po.append_sum(1.f);
      a.set_post_ops(po);
    }
    dnnl::reorder::primitive_desc bpd(eng_, part.get_desc(), eng_, sub, a);
    at.bwd.push_back(step(bpd, {{DNNL_ARG_FROM, dy_part}, {DNNL_ARG_TO, dxs}}));
    return;
  }
  auto X = blocked(val_[x].md), Y = blocked(val_[y].md);
  memory xm = f32_in(at.fwd, val_[x].act), ym = f32_out(val_[y].act);
  int stride = s.stride;
  at.fwd.push_back(loop({xm, ym}, [=]() {
    kernels::shortcut_a_forward(data(ym), Y, data(xm), X, stride);
  }));
  f32_flush(at.fwd, ym, val_[y].act);
  if (!training() || !val_[x].grad) return;
  memory dx = val_[x].grad, dy = val_[y].grad;
  bool accumulate = !first_contribution(at.id, 0);
  at.bwd.push_back(loop({dx, dy}, [=]() {
    kernels::shortcut_a_backward(data(dx), X, data(dy), Y, stride, accumulate);
  }));
}

void CpuProgram::compile_avgpool(Site& at) {
  const int x = at.n.inputs[0], y = at.n.output;
  auto X = blocked(val_[x].md);
  memory xm = f32_in(at.fwd, val_[x].act), ym = val_[y].act;  // y: flat, f32
  at.fwd.push_back(loop({xm, ym}, [=]() {
    kernels::avgpool_forward(data(ym), data(xm), X);
  }));
  if (!training() || !val_[x].grad) return;
  memory dx = val_[x].grad, dy = val_[y].grad;
  if (dx.get_desc().data_type() != dt::f32) {  // into an f32 buffer, then converted into d(x)
    memory t = alloc(with_type(dx.get_desc(), dt::f32));
    at.bwd.push_back(loop({t, dy}, [=]() { kernels::avgpool_backward(data(t), X, data(dy), false); }));
    add_scaled(at.bwd, at.id, 0, t, 1.f);
    return;
  }
  bool accumulate = !first_contribution(at.id, 0);
  at.bwd.push_back(loop({dx, dy}, [=]() {
    kernels::avgpool_backward(data(dx), X, data(dy), accumulate);
  }));
}

void CpuProgram::compile_linear(Site& at, const graph::Linear& l) {
  const int x = at.n.inputs[0], y = at.n.output;
  memory w = param(at.n.params[0], false), b = l.bias ? param(at.n.params[1], false) : memory();
  const auto pk = training() ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  auto d = l.bias ? dnnl::inner_product_forward::desc(pk, val_[x].md, w.get_desc(), b.get_desc(), val_[y].md)
                  : dnnl::inner_product_forward::desc(pk, val_[x].md, w.get_desc(), val_[y].md);
  dnnl::inner_product_forward::primitive_desc pd(d, attr(), eng_);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, val_[x].act}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, val_[y].act}};
  if (l.bias) args[DNNL_ARG_BIAS] = b;
  at.fwd.push_back(step(pd, std::move(args)));
  if (!training()) return;
  auto& bs = at.bwd;
  if (val_[x].grad) {
    dnnl::inner_product_backward_data::desc bd(val_[x].md, w.get_desc(), val_[y].md);
    dnnl::inner_product_backward_data::primitive_desc bpd(bd, attr(), eng_, pd);
    memory dx = contribution(at.id, 0);
    bs.push_back(step(bpd, {{DNNL_ARG_DIFF_DST, val_[y].grad}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, dx}}));
    finish_contribution(bs, at.id, 0, dx);
  }
  memory dw = param(at.n.params[0], true), db = l.bias ? param(at.n.params[1], true) : memory();
  auto wd = l.bias ? dnnl::inner_product_backward_weights::desc(val_[x].md, dw.get_desc(), db.get_desc(), val_[y].md)
                   : dnnl::inner_product_backward_weights::desc(val_[x].md, dw.get_desc(), val_[y].md);
  dnnl::inner_product_backward_weights::primitive_desc wpd(wd, attr(), eng_, pd);
  std::unordered_map<int, memory> wargs{
      {DNNL_ARG_SRC, val_[x].act}, {DNNL_ARG_DIFF_DST, val_[y].grad}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
  if (l.bias) wargs[DNNL_ARG_DIFF_BIAS] = db;
  bs.push_back(step(wpd, std::move(wargs)));
}

void CpuProgram::compile_pool(Site& at, const graph::Pool2d& p) {
  const int x = at.n.inputs[0], y = at.n.output;
  const auto& xd = val_[x].md.dims();
  const auto& yd = val_[y].md.dims();
  // oneDNN takes both paddings; the right one is whatever gives PyTorch's output size:
  // smaller than the left one in floor mode, larger in ceil mode.
  memory::dims strides{p.stride, p.stride}, kernel{p.kernel, p.kernel}, pad_l{p.pad, p.pad};
  memory::dims pad_r{(yd[2] - 1) * p.stride + p.kernel - xd[2] - p.pad,
                     (yd[3] - 1) * p.stride + p.kernel - xd[3] - p.pad};
  auto& bs = at.bwd;
  // oneDNN's avg_include_padding divides by the whole kernel, PyTorch by the window
  // clipped to [-pad, H + pad): they differ where a ceil-mode window reaches past the
  // padding (right padding > pad), so that case runs our own loop.
  if (p.kind == graph::Pool2d::avg && p.count_include_pad && (pad_r[0] > p.pad || pad_r[1] > p.pad)) {
    auto X = blocked(val_[x].md), Y = blocked(val_[y].md);
    memory xm = f32_in(at.fwd, val_[x].act), ym = f32_out(val_[y].act);
    at.fwd.push_back(loop({xm, ym}, [=]() {
      kernels::avg_pool2d_forward(data(ym), Y, data(xm), X, p);
    }));
    f32_flush(at.fwd, ym, val_[y].act);
    if (!training() || !val_[x].grad) return;
    memory dx = val_[x].grad, dy = val_[y].grad;
    if (dx.get_desc().data_type() != dt::f32) {  // on f32 copies, then converted into d(x)
      memory dyf = f32_in(bs, dy), t = alloc(with_type(dx.get_desc(), dt::f32));
      bs.push_back(loop({t, dyf}, [=]() { kernels::avg_pool2d_backward(data(t), X, data(dyf), Y, p, false); }));
      add_scaled(bs, at.id, 0, t, 1.f);
      return;
    }
    bool accumulate = !first_contribution(at.id, 0);
    bs.push_back(loop({dx, dy}, [=]() {
      kernels::avg_pool2d_backward(data(dx), X, data(dy), Y, p, accumulate);
    }));
    return;
  }
  const auto algo = p.kind == graph::Pool2d::max ? dnnl::algorithm::pooling_max
                    : p.count_include_pad        ? dnnl::algorithm::pooling_avg_include_padding
                                                 : dnnl::algorithm::pooling_avg_exclude_padding;
  const auto pk = training() ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
  dnnl::pooling_forward::desc d(pk, algo, val_[x].md, val_[y].md, strides, kernel, pad_l, pad_r);
  dnnl::pooling_forward::primitive_desc pd(d, attr(), eng_);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, val_[x].act}, {DNNL_ARG_DST, val_[y].act}};
  memory ws;  // max pooling in training: where each maximum was, for backward
  if (pd.workspace_desc().get_size() > 0) args[DNNL_ARG_WORKSPACE] = ws = alloc(pd.workspace_desc());
  at.fwd.push_back(step(pd, std::move(args)));
  if (!training() || !val_[x].grad) return;
  dnnl::pooling_backward::desc bd(algo, val_[x].md, val_[y].md, strides, kernel, pad_l, pad_r);
  dnnl::pooling_backward::primitive_desc bpd(bd, attr(), eng_, pd);
  memory dx = contribution(at.id, 0);
  std::unordered_map<int, memory> bargs{{DNNL_ARG_DIFF_DST, val_[y].grad}, {DNNL_ARG_DIFF_SRC, dx}};
  if (ws) bargs[DNNL_ARG_WORKSPACE] = ws;
  bs.push_back(step(bpd, std::move(bargs)));
  finish_contribution(bs, at.id, 0, dx);
}

void CpuProgram::compile_concat(Site& at) {
  const int y = at.n.output;
  const kernels::Blocked Y = blocked(val_[y].md);
  // A channel slice of the output is a oneDNN view (submemory) only when it starts
  // and ends on a block boundary; other slices are copied by our own loop.
  auto aligned = [&](int64_t offset, int64_t C) { return offset % Y.block == 0 && C % Y.block == 0; };
  std::vector<int64_t> offsets;
  bool all_aligned = true;
  for (int64_t offset = 0; int v : at.n.inputs) {
    offsets.push_back(offset);
    all_aligned = all_aligned && aligned(offset, val_[v].md.dims()[1]);
    offset += val_[v].md.dims()[1];
  }
  auto& fs = at.fwd;
  auto& bs = at.bwd;
  if (all_aligned) {
    std::vector<memory::desc> srcs;
    std::unordered_map<int, memory> args{{DNNL_ARG_DST, val_[y].act}};
    for (size_t i = 0; i < at.n.inputs.size(); ++i) {
      srcs.push_back(val_[at.n.inputs[i]].md);
      args[DNNL_ARG_MULTIPLE_SRC + static_cast<int>(i)] = val_[at.n.inputs[i]].act;
    }
    dnnl::concat::primitive_desc pd(val_[y].md, 1, srcs, eng_, attr());
    fs.push_back(step(pd, std::move(args)));
  } else {
    memory ym = f32_out(val_[y].act);
    for (size_t i = 0; i < at.n.inputs.size(); ++i) {
      const int v = at.n.inputs[i];
      const kernels::Blocked X = blocked(val_[v].md);
      memory xm = f32_in(fs, val_[v].act);
      const int64_t offset = offsets[i];
      fs.push_back(loop({xm, ym}, [=]() {
        kernels::copy_channels(data(ym), Y, offset, data(xm), X, 0, X.C, false);
      }));
    }
    f32_flush(fs, ym, val_[y].act);
  }
  if (!training()) return;
  // Each input's gradient is its slice of d(y).
  for (size_t i = 0; i < at.n.inputs.size(); ++i) {
    const int v = at.n.inputs[i];
    if (!val_[v].grad) continue;
    const auto& xd = val_[v].md.dims();
    if (aligned(offsets[i], xd[1])) {
      memory::desc slice = val_[y].md.submemory_desc(xd, {0, offsets[i], 0, 0});
      add_scaled(bs, at.id, i, view(val_[y].grad, slice), 1.f);
      continue;
    }
    INCRES_CHECK(val_[v].md.data_type() == dt::f32, "cpu backend: a bf16 concat slice off the channel blocks at ",
                 at.n.name);  // bf16 values are nhwc or in whole 16-channel blocks: every slice is a view
    const kernels::Blocked X = blocked(val_[v].md);
    memory dx = val_[v].grad, dy = val_[y].grad;
    const int64_t offset = offsets[i];
    const bool accumulate = !first_contribution(at.id, i);
    bs.push_back(loop({dx, dy}, [=]() {
      kernels::copy_channels(data(dx), X, 0, data(dy), Y, offset, X.C, accumulate);
    }));
  }
}

void CpuProgram::compile_dropout(Site& at, const graph::Dropout& d) {
  const int node = at.id;  // the masks are drawn per node
  const int x = at.n.inputs[0], y = at.n.output;
  const kernels::Blocked X = blocked(val_[x].md);
  memory xm = val_[x].act, ym = val_[y].act;
  if (!training()) {  // the identity
    if (val_[x].md.data_type() != dt::f32) {
      f32_flush(at.fwd, xm, ym);  // a bf16 copy
      return;
    }
    const int64_t count = static_cast<int64_t>(val_[x].md.get_size() / sizeof(float));
    at.fwd.push_back(loop({xm, ym}, [=]() {
      kernels::copy(data(ym), data(xm), count);
    }));
    return;
  }
  // The mask of the current step, drawn by element index (backend/dropout_mask.h);
  // a bf16 value is masked in an f32 copy.
  const float p = d.p;
  memory xf = f32_in(at.fwd, xm), yf = f32_out(ym);
  at.fwd.push_back(loop({xf, yf}, [=, this]() {
    kernels::dropout_forward(data(yf), data(xf), X, DropoutMask(opt_.seed, drawn_step_, node, p, opt_.sample_offset * X.C * X.H * X.W));
  }));
  f32_flush(at.fwd, yf, ym);
  if (!val_[x].grad) return;
  memory dx = val_[x].grad, dy = val_[y].grad;
  if (dx.get_desc().data_type() != dt::f32) {
    memory dyf = f32_in(at.bwd, dy), t = alloc(with_type(dx.get_desc(), dt::f32));
    at.bwd.push_back(loop({t, dyf}, [=, this]() {
      kernels::dropout_backward(data(t), data(dyf), X, DropoutMask(opt_.seed, drawn_step_, node, p, opt_.sample_offset * X.C * X.H * X.W), false);
    }));
    add_scaled(at.bwd, at.id, 0, t, 1.f);
    return;
  }
  const bool accumulate = !first_contribution(at.id, 0);
  at.bwd.push_back(loop({dx, dy}, [=, this]() {
    kernels::dropout_backward(data(dx), data(dy), X, DropoutMask(opt_.seed, drawn_step_, node, p, opt_.sample_offset * X.C * X.H * X.W), accumulate);
  }));
}

void CpuProgram::compile_mul(Site& at) {
  const int a = at.n.inputs[0], b = at.n.inputs[1], y = at.n.output;
  INCRES_CHECK(val_[a].md == val_[b].md, "cpu backend: mul of two layouts at ", at.n.name);
  dnnl::binary::desc d(dnnl::algorithm::binary_mul, val_[a].md, val_[b].md, val_[y].md);
  dnnl::binary::primitive_desc pd(d, attr(), eng_);
  at.fwd.push_back(
      step(pd, {{DNNL_ARG_SRC_0, val_[a].act}, {DNNL_ARG_SRC_1, val_[b].act}, {DNNL_ARG_DST, val_[y].act}}));
  if (!training()) return;
  // d(a) = d(y) * b, d(b) = d(y) * a.
  auto& bs = at.bwd;
  for (size_t slot : {0, 1}) {
    const int v = at.n.inputs[slot], other = at.n.inputs[1 - slot];
    if (!val_[v].grad) continue;
    memory dx = contribution(at.id, slot);
    bs.push_back(step(pd, {{DNNL_ARG_SRC_0, val_[y].grad}, {DNNL_ARG_SRC_1, val_[other].act}, {DNNL_ARG_DST, dx}}));
    finish_contribution(bs, at.id, slot, dx);
  }
}

void CpuProgram::compile_scale_shift(Site& at, const graph::ScaleShift& s) {
  const int x = at.n.inputs[0], y = at.n.output;
  dnnl::eltwise_forward::desc d(dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_linear, val_[x].md,
                                s.scale, s.shift);
  dnnl::eltwise_forward::primitive_desc pd(d, attr(), eng_);
  at.fwd.push_back(step(pd, {{DNNL_ARG_SRC, val_[x].act}, {DNNL_ARG_DST, val_[y].act}}));
  if (training() && val_[x].grad) add_scaled(at.bwd, at.id, 0, val_[y].grad, s.scale);  // d(x) = scale * d(y)
}

}  // namespace incres::backend::cpu
