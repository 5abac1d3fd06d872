// Layer 1 of the test plan (STYLE.md §5): every reference kernel's backward against
// central finite differences of its forward, in double precision on tiny shapes,
// with the tolerances of RELIABILITY.md (eps 1e-6, atol 1e-5, rtol 1e-3). The loss is
// sum(y * r) for a random r, so dy = r and no gradient is trivially zero.
// Then the float ref Program on a whole tiny CIFAR ResNet, which checks what the
// kernels alone cannot: the program's wiring, in particular that a value read by
// several nodes (a block's input feeding the residual branch and the shortcut)
// receives the sum of their gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "backend/program.h"
#include "backend/ref/ops.h"
#include "core/rng.h"
#include "graph/builder.h"
#include "graph/params.h"
#include "models/models.h"

namespace incres {
namespace {

namespace ref = backend::ref;
using Vec = std::vector<double>;

Vec randn(int64_t n, Rng& rng, double scale = 1.0, double offset = 0.0) {
  Vec v(static_cast<size_t>(n));
  for (double& x : v) x = offset + scale * rng.normal();
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// Compares `analytic` = d loss / d v with central differences of `loss`, entry by
// entry, perturbing v in place (and restoring it). Also requires the gradient to be
// non-zero somewhere, so that a forward that ignores v cannot pass.
void expect_grad(const std::string& what, Vec& v, const Vec& analytic,
                 const std::function<double()>& loss) {
  constexpr double eps = 1e-6, atol = 1e-5, rtol = 1e-3;  // RELIABILITY.md, "Numerics"
  ASSERT_EQ(v.size(), analytic.size()) << what;
  EXPECT_GT(max_abs(analytic), 1e-3) << what << ": the gradient is (almost) zero everywhere";
  int bad = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const double saved = v[i];
    v[i] = saved + eps;
    const double plus = loss();
    v[i] = saved - eps;
    const double minus = loss();
    v[i] = saved;
    const double numeric = (plus - minus) / (2 * eps);
    if (!(std::abs(numeric - analytic[i]) <= atol + rtol * std::abs(numeric)) && ++bad <= 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << ", numeric " << numeric;
  }
  EXPECT_EQ(bad, 0) << what << ": entries whose gradient disagrees with finite differences";
}

// ---- conv2d -------------------------------------------------------------------------

struct ConvCase {
  const char* name;
  int64_t N, C, H, W;
  graph::Conv2d a;  // K, R, S, stride, pad_h, pad_w, bias
};

const ConvCase kConvCases[] = {
    {"3x3 stride 1 pad 1", 2, 3, 5, 5, {4, 3, 3, 1, 1, 1, false}},
    {"3x3 stride 1 pad 1, bias", 2, 3, 5, 5, {4, 3, 3, 1, 1, 1, true}},
    {"3x3 stride 2 pad 1, even input", 2, 2, 6, 6, {3, 3, 3, 2, 1, 1, false}},
    {"3x3 stride 2 pad 1, odd input, bias", 1, 2, 5, 5, {3, 3, 3, 2, 1, 1, true}},
    {"1x1 stride 2", 2, 3, 5, 5, {4, 1, 1, 2, 0, 0, false}},
    {"1x1 stride 2, bias", 2, 3, 4, 4, {2, 1, 1, 2, 0, 0, true}},
    {"1x7 pad (0,3)", 1, 2, 3, 8, {3, 1, 7, 1, 0, 3, false}},
    {"1x7 pad (0,3), bias", 1, 2, 3, 8, {3, 1, 7, 1, 0, 3, true}},
    {"7x1 pad (3,0)", 1, 2, 8, 3, {3, 7, 1, 1, 3, 0, false}},
    {"7x1 pad (3,0), bias", 1, 2, 8, 3, {3, 7, 1, 1, 3, 0, true}},
};

TEST(RefGrad, Conv2d) {
  for (const ConvCase& t : kConvCases) {
    SCOPED_TRACE(t.name);
    const ref::ConvDims d = ref::ConvDims::make(t.N, t.C, t.H, t.W, t.a);
    Rng rng(11);
    Vec x = randn(d.x().numel(), rng), w = randn(d.K * d.C * d.R * d.S, rng);
    Vec b = t.a.bias ? randn(d.K, rng) : Vec{};
    const Vec r = randn(d.y().numel(), rng);
    Vec y(r.size());
    auto loss = [&] {
      ref::conv2d_forward(y.data(), x.data(), w.data(), t.a.bias ? b.data() : nullptr, d);
      return dot(y, r);
    };
    Vec dx(x.size()), dw(w.size()), db(b.size());
    ref::conv2d_backward(dx.data(), dw.data(), t.a.bias ? db.data() : nullptr, r.data(), x.data(),
                         w.data(), d);
    expect_grad("dx", x, dx, loss);
    expect_grad("dw", w, dw, loss);
    if (t.a.bias) expect_grad("db", b, db, loss);
  }
}

// Forward values worked out by hand: all-ones input and weights, so every output is
// the number of kernel taps that land inside the input.
TEST(RefOps, Conv2dForwardCountsTaps) {
  {  // 3x3 pad 1 on 3x3: corners see 4 taps, edges 6, the centre 9.
    Vec x(9, 1.0), w(9, 1.0), y(9);
    ref::conv2d_forward(y.data(), x.data(), w.data(), (const double*)nullptr,
                        ref::ConvDims::make(1, 1, 3, 3, {1, 3, 3, 1, 1, 1}));
    EXPECT_EQ(y, (Vec{4, 6, 4, 6, 9, 6, 4, 6, 4}));
  }
  {  // The same with stride 2: output 2x2 at input positions (0,0), (0,2), (2,0), (2,2).
    Vec x(9, 1.0), w(9, 1.0), y(4);
    ref::conv2d_forward(y.data(), x.data(), w.data(), (const double*)nullptr,
                        ref::ConvDims::make(1, 1, 3, 3, {1, 3, 3, 2, 1, 1}));
    EXPECT_EQ(y, (Vec{4, 4, 4, 4}));
  }
  {  // 1x7 pad (0,3) over a 1x7 row, plus bias 0.5 and two input channels.
    Vec x(14, 1.0), w(14, 1.0), b{0.5}, y(7);
    ref::conv2d_forward(y.data(), x.data(), w.data(), b.data(),
                        ref::ConvDims::make(1, 2, 1, 7, {1, 1, 7, 1, 0, 3}));
    EXPECT_EQ(y, (Vec{8.5, 10.5, 12.5, 14.5, 12.5, 10.5, 8.5}));
  }
}

TEST(RefOps, GradientsAccumulate) {
  const ref::ConvDims d = ref::ConvDims::make(1, 2, 4, 4, {2, 3, 3, 1, 1, 1, true});
  Rng rng(5);
  Vec x = randn(d.x().numel(), rng), w = randn(2 * 2 * 9, rng), dy = randn(d.y().numel(), rng);
  Vec dx(x.size()), dw(w.size()), db(2);
  ref::conv2d_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), d);
  Vec dx2 = dx, dw2 = dw, db2 = db;
  ref::conv2d_backward(dx2.data(), dw2.data(), db2.data(), dy.data(), x.data(), w.data(), d);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_DOUBLE_EQ(dx2[i], 2 * dx[i]);
  for (size_t i = 0; i < dw.size(); ++i) EXPECT_DOUBLE_EQ(dw2[i], 2 * dw[i]);
  for (size_t i = 0; i < db.size(); ++i) EXPECT_DOUBLE_EQ(db2[i], 2 * db[i]);
}

// ---- batchnorm ----------------------------------------------------------------------

TEST(RefGrad, BatchNormTraining) {
  // (C, H, W) values, and flat ones (H = W = 1: one value per feature and image, the
  // BN-auxiliary head's fc).
  for (const ref::Dims d : {ref::Dims{2, 3, 3, 2}, ref::Dims{5, 4, 1, 1}}) {
  SCOPED_TRACE(d.H);
  Rng rng(21);
  Vec x = randn(d.numel(), rng, 2.0, 0.7), gamma = randn(d.C, rng, 0.5, 1.0),
      beta = randn(d.C, rng);
  const Vec r = randn(d.numel(), rng);
  Vec y(r.size()), mean(d.C), inv_std(d.C);
  const double eps = 1e-5, momentum = 0.1;
  auto loss = [&] {
    ref::batchnorm_train_forward(y.data(), mean.data(), inv_std.data(), x.data(), gamma.data(),
                                 beta.data(), (double*)nullptr, (double*)nullptr, d, eps, momentum);
    return dot(y, r);
  };
  loss();  // mean and inv_std of the unperturbed x, as backward needs them
  Vec dx(x.size()), dgamma(d.C), dbeta(d.C);
  ref::batchnorm_backward(dx.data(), dgamma.data(), dbeta.data(), r.data(), x.data(), gamma.data(),
                          mean.data(), inv_std.data(), d);
  expect_grad("dx", x, dx, loss);
  expect_grad("dgamma", gamma, dgamma, loss);
  expect_grad("dbeta", beta, dbeta, loss);
  }
}

// The statistics against PyTorch's definitions, computed here independently.
TEST(RefOps, BatchNormStatistics) {
  const ref::Dims d{3, 2, 2, 2};
  const int64_t M = d.N * d.H * d.W;
  Rng rng(8);
  Vec x = randn(d.numel(), rng, 3.0, -1.5), gamma{1.5, -0.5}, beta{0.25, 2.0};
  Vec y(x.size()), mean(2), inv_std(2), rm{0.5, -1.0}, rv{2.0, 0.5};
  const Vec rm0 = rm, rv0 = rv;
  const double eps = 1e-3, m = 0.1;
  ref::batchnorm_train_forward(y.data(), mean.data(), inv_std.data(), x.data(), gamma.data(),
                               beta.data(), rm.data(), rv.data(), d, eps, m);
  for (int64_t c = 0; c < d.C; ++c) {
    double mu = 0, var = 0;
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) mu += x[d.at(n, c, 0, 0) + i] / M;
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) var += std::pow(x[d.at(n, c, 0, 0) + i] - mu, 2) / M;
    EXPECT_NEAR(mean[c], mu, 1e-12);
    EXPECT_NEAR(inv_std[c], 1 / std::sqrt(var + eps), 1e-12);
    EXPECT_NEAR(rm[c], (1 - m) * rm0[c] + m * mu, 1e-12);
    EXPECT_NEAR(rv[c], (1 - m) * rv0[c] + m * var * M / (M - 1), 1e-12);  // unbiased
    // The output has mean beta and variance gamma^2 * var / (var + eps).
    double ymean = 0, yvar = 0;
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) ymean += y[d.at(n, c, 0, 0) + i] / M;
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t i = 0; i < d.H * d.W; ++i) yvar += std::pow(y[d.at(n, c, 0, 0) + i] - ymean, 2) / M;
    EXPECT_NEAR(ymean, beta[c], 1e-12);
    EXPECT_NEAR(yvar, gamma[c] * gamma[c] * var / (var + eps), 1e-10);
  }
  // Inference uses the running statistics instead.
  ref::batchnorm_infer_forward(y.data(), x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), d, eps);
  const int64_t j = d.at(2, 1, 1, 0);
  EXPECT_NEAR(y[j], gamma[1] * (x[j] - rm[1]) / std::sqrt(rv[1] + eps) + beta[1], 1e-12);
  // One value per channel: no unbiased variance, refused as PyTorch does.
  EXPECT_THROW(ref::batchnorm_train_forward(y.data(), mean.data(), inv_std.data(), x.data(),
                                            gamma.data(), beta.data(), rm.data(), rv.data(),
                                            ref::Dims{1, 2, 1, 1}, eps, m),
               Error);
}

// ---- relu, add, shortcut A, avgpool, linear ----------------------------------------------

TEST(RefGrad, Relu) {
  Rng rng(31);
  Vec x = randn(40, rng);
  for (double& v : x) v += v >= 0 ? 0.05 : -0.05;  // keep every entry away from the kink
  const Vec r = randn(40, rng);
  Vec y(40);
  auto loss = [&] { ref::relu_forward(y.data(), x.data(), 40); return dot(y, r); };
  Vec dx(40);
  ref::relu_backward(dx.data(), r.data(), x.data(), 40);
  expect_grad("dx", x, dx, loss);
}

TEST(RefGrad, Add) {
  Rng rng(41);
  Vec a = randn(12, rng), b = randn(12, rng);
  const Vec r = randn(12, rng);
  Vec y(12);
  auto loss = [&] { ref::add_forward(y.data(), a.data(), b.data(), 12); return dot(y, r); };
  Vec da(12), db(12);
  ref::add_backward(da.data(), db.data(), r.data(), 12);
  expect_grad("da", a, da, loss);
  expect_grad("db", b, db, loss);
  // y = a + a: both contributions land in the same buffer.
  auto loss_aa = [&] { ref::add_forward(y.data(), a.data(), a.data(), 12); return dot(y, r); };
  Vec daa(12);
  ref::add_backward(daa.data(), daa.data(), r.data(), 12);
  expect_grad("d(a + a)/da", a, daa, loss_aa);
}

TEST(RefGrad, ShortcutA) {
  for (int64_t H : {4, 5}) {  // even and odd: the output is ceil(H / 2)
    SCOPED_TRACE("H = W = " + std::to_string(H));
    const ref::ShortcutDims d = ref::ShortcutDims::make(2, 2, H, H, graph::ShortcutA{4, 2});
    ASSERT_EQ(d.P, (H + 1) / 2);
    Rng rng(51);
    Vec x = randn(d.x().numel(), rng);
    const Vec r = randn(d.y().numel(), rng);
    Vec y(r.size());
    auto loss = [&] { ref::shortcut_a_forward(y.data(), x.data(), d); return dot(y, r); };
    loss();
    const ref::Dims X = d.x(), Y = d.y();
    for (int64_t n = 0; n < d.N; ++n)
      for (int64_t k = 0; k < d.K; ++k)
        for (int64_t p = 0; p < d.P; ++p)
          for (int64_t q = 0; q < d.Q; ++q)
            EXPECT_EQ(y[Y.at(n, k, p, q)], k < d.C ? x[X.at(n, k, 2 * p, 2 * q)] : 0.0);
    Vec dx(x.size());
    ref::shortcut_a_backward(dx.data(), r.data(), d);
    expect_grad("dx", x, dx, loss);
  }
}

TEST(RefGrad, GlobalAvgPool) {
  const ref::Dims d{2, 3, 3, 4};
  Rng rng(61);
  Vec x = randn(d.numel(), rng);
  const Vec r = randn(d.N * d.C, rng);
  Vec y(r.size());
  auto loss = [&] { ref::avgpool_forward(y.data(), x.data(), d); return dot(y, r); };
  Vec dx(x.size());
  ref::avgpool_backward(dx.data(), r.data(), d);
  expect_grad("dx", x, dx, loss);
}

TEST(RefGrad, Linear) {
  const int64_t N = 3, C = 5, K = 4;
  Rng rng(71);
  Vec x = randn(N * C, rng), w = randn(K * C, rng), b = randn(K, rng);
  const Vec r = randn(N * K, rng);
  Vec y(r.size());
  auto loss = [&] { ref::linear_forward(y.data(), x.data(), w.data(), b.data(), N, C, K); return dot(y, r); };
  loss();
  EXPECT_NEAR(y[1 * K + 2], b[2] + x[5] * w[10] + x[6] * w[11] + x[7] * w[12] + x[8] * w[13] + x[9] * w[14],
              1e-12);  // y = x W^T + b with W out x in
  Vec dx(x.size()), dw(w.size()), db(b.size());
  ref::linear_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), N, C, K);
  expect_grad("dx", x, dx, loss);
  expect_grad("dw", w, dw, loss);
  expect_grad("db", b, db, loss);
}

// ---- pooling, concat, scaled add, mul, sigmoid, scale-shift, dropout ---------------------

struct PoolCase {
  const char* name;
  int64_t N, C, H, W;
  graph::Pool2d a;  // kind, kernel, stride, pad, ceil_mode, count_include_pad
  int64_t P;        // the output size PyTorch gives (H = W)
};

// Output sizes from torch.nn.MaxPool2d / AvgPool2d on these shapes.
const PoolCase kPoolCases[] = {
    {"max 3/2 pad 1 (ResNet stem)", 2, 2, 7, 7, {graph::Pool2d::max, 3, 2, 1}, 4},
    {"max 3/2 (Inception)", 1, 2, 7, 7, {graph::Pool2d::max, 3, 2, 0}, 3},
    {"max 2/2 pad 1 ceil, last window dropped", 1, 2, 5, 5, {graph::Pool2d::max, 2, 2, 1, true}, 3},
    {"max 3/2 ceil", 1, 2, 6, 6, {graph::Pool2d::max, 3, 2, 0, true}, 3},
    {"avg 3/1 pad 1, count_include_pad", 2, 2, 5, 5, {graph::Pool2d::avg, 3, 1, 1, false, true}, 5},
    {"avg 3/1 pad 1, exclude pad", 2, 2, 5, 5, {graph::Pool2d::avg, 3, 1, 1, false, false}, 5},
    {"avg 5/3 (Inception aux)", 1, 2, 8, 8, {graph::Pool2d::avg, 5, 3, 0}, 2},
    {"avg 3/2 pad 1 ceil, include pad", 1, 2, 4, 4, {graph::Pool2d::avg, 3, 2, 1, true, true}, 3},
    {"avg 3/2 pad 1 ceil, exclude pad", 1, 2, 4, 4, {graph::Pool2d::avg, 3, 2, 1, true, false}, 3},
    {"avg 2/2 ceil, include pad", 1, 2, 5, 5, {graph::Pool2d::avg, 2, 2, 0, true, true}, 3},
};

TEST(RefGrad, Pool2d) {
  for (const PoolCase& t : kPoolCases) {
    SCOPED_TRACE(t.name);
    const ref::PoolDims d = ref::PoolDims::make(t.N, t.C, t.H, t.W, t.a);
    ASSERT_EQ(d.P, t.P);
    ASSERT_EQ(d.Q, t.P);
    Rng rng(81);
    // Distinct values 0.1 apart in random order: no ties, so a max pool's gradient is
    // well defined and a finite-difference step of 1e-6 cannot change the argmax.
    const int64_t count = d.x().numel();
    Vec x(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) x[i] = 0.1 * double(i) - 0.05 * double(count);
    for (int64_t i = count - 1; i > 0; --i) std::swap(x[i], x[rng.below(uint64_t(i + 1))]);
    const Vec r = randn(d.y().numel(), rng);
    Vec y(r.size());
    auto loss = [&] { ref::pool2d_forward(y.data(), x.data(), d); return dot(y, r); };
    Vec dx(x.size());
    ref::pool2d_backward(dx.data(), r.data(), x.data(), d);
    expect_grad("dx", x, dx, loss);
  }
}

// The divisors worked out by hand on an all-ones 4x4 input, avg 3/2 pad 1, ceil mode:
// windows cover rows [-1, 2), [1, 4) and [3, 6), the last clipped to the padded input
// [-1, 5) (PyTorch), so its padded size is 2 and its real size 1.
TEST(RefOps, AvgPoolDivisors) {
  Vec x(16, 1.0), y(9);
  ref::pool2d_forward(y.data(), x.data(), ref::PoolDims::make(1, 1, 4, 4, {graph::Pool2d::avg, 3, 2, 1, true, true}));
  EXPECT_DOUBLE_EQ(y[0], 4.0 / 9);  // 2x2 real of 3x3
  EXPECT_DOUBLE_EQ(y[4], 1.0);      // 3x3 real
  EXPECT_DOUBLE_EQ(y[6], 2.0 / 6);  // rows [3, 5): 1 real of 2; columns [-1, 2): 2 of 3
  EXPECT_DOUBLE_EQ(y[8], 1.0 / 4);  // 1x1 real of 2x2 (not of the full 3x3 kernel)
  ref::pool2d_forward(y.data(), x.data(), ref::PoolDims::make(1, 1, 4, 4, {graph::Pool2d::avg, 3, 2, 1, true, false}));
  EXPECT_EQ(y, Vec(9, 1.0));  // real elements only: the mean of ones
  Vec z{1, 5, 2, 0, 3, 4, 8, 6, 7}, m(4);  // max 2/1 on 3x3
  ref::pool2d_forward(m.data(), z.data(), ref::PoolDims::make(1, 1, 3, 3, {graph::Pool2d::max, 2, 1}));
  EXPECT_EQ(m, (Vec{5, 5, 8, 7}));
}

TEST(RefGrad, Concat) {
  const int64_t N = 2, H = 2, W = 3, HW = H * W;
  const std::vector<int64_t> channels{2, 1, 3};
  Rng rng(91);
  std::vector<Vec> xs;
  for (int64_t c : channels) xs.push_back(randn(N * c * HW, rng));
  const Vec r = randn(N * 6 * HW, rng);
  Vec y(r.size());
  auto loss = [&] {
    const double* p[] = {xs[0].data(), xs[1].data(), xs[2].data()};
    ref::concat_forward<double>(y.data(), p, channels, N, HW);
    return dot(y, r);
  };
  loss();
  const ref::Dims Y{N, 6, H, W}, X0{N, 2, H, W}, X1{N, 1, H, W}, X2{N, 3, H, W};
  EXPECT_EQ(y[Y.at(1, 0, 1, 2)], xs[0][X0.at(1, 0, 1, 2)]);
  EXPECT_EQ(y[Y.at(1, 2, 0, 1)], xs[1][X1.at(1, 0, 0, 1)]);
  EXPECT_EQ(y[Y.at(0, 5, 1, 0)], xs[2][X2.at(0, 2, 1, 0)]);
  std::vector<Vec> dxs;
  for (const Vec& x : xs) dxs.emplace_back(x.size());
  double* dp[] = {dxs[0].data(), nullptr, dxs[2].data()};  // a null gradient is skipped
  ref::concat_backward<double>(dp, r.data(), channels, N, HW);
  expect_grad("dx0", xs[0], dxs[0], loss);
  expect_grad("dx2", xs[2], dxs[2], loss);
}

TEST(RefGrad, ScaledAdd) {
  Rng rng(42);
  Vec a = randn(12, rng), b = randn(12, rng);
  const Vec r = randn(12, rng);
  Vec y(12);
  auto loss = [&] { ref::add_forward(y.data(), a.data(), b.data(), 12, 0.2); return dot(y, r); };
  loss();
  EXPECT_NEAR(y[3], a[3] + 0.2 * b[3], 1e-15);
  Vec da(12), db(12);
  ref::add_backward(da.data(), db.data(), r.data(), 12, 0.2);
  expect_grad("da", a, da, loss);
  expect_grad("db", b, db, loss);
}

TEST(RefGrad, Mul) {
  Rng rng(43);
  Vec a = randn(12, rng), b = randn(12, rng);
  const Vec r = randn(12, rng);
  Vec y(12);
  auto loss = [&] { ref::mul_forward(y.data(), a.data(), b.data(), 12); return dot(y, r); };
  Vec da(12), db(12);
  ref::mul_backward(da.data(), db.data(), r.data(), a.data(), b.data(), 12);
  expect_grad("da", a, da, loss);
  expect_grad("db", b, db, loss);
  // y = a * a: both contributions land in the same buffer, 2 a dy.
  auto loss_aa = [&] { ref::mul_forward(y.data(), a.data(), a.data(), 12); return dot(y, r); };
  Vec daa(12);
  ref::mul_backward(daa.data(), daa.data(), r.data(), a.data(), a.data(), 12);
  expect_grad("d(a * a)/da", a, daa, loss_aa);
}

TEST(RefGrad, SigmoidAndScaleShift) {
  Rng rng(44);
  Vec x = randn(20, rng, 2.0);
  const Vec r = randn(20, rng);
  Vec y(20);
  auto sigmoid = [&] { ref::sigmoid_forward(y.data(), x.data(), 20); return dot(y, r); };
  sigmoid();
  EXPECT_NEAR(y[0], 1 / (1 + std::exp(-x[0])), 1e-15);
  Vec dx(20);
  ref::sigmoid_backward(dx.data(), r.data(), y.data(), 20);  // from the output saved by forward
  expect_grad("sigmoid dx", x, dx, sigmoid);

  auto scale_shift = [&] { ref::scale_shift_forward(y.data(), x.data(), 20, -1.5, 0.3); return dot(y, r); };
  scale_shift();
  EXPECT_NEAR(y[5], -1.5 * x[5] + 0.3, 1e-15);
  Vec dx2(20);
  ref::scale_shift_backward(dx2.data(), r.data(), 20, -1.5);
  expect_grad("scale_shift dx", x, dx2, scale_shift);
}

TEST(RefGrad, Dropout) {
  const int64_t count = 4000;
  Rng rng(45);
  Vec x = randn(count, rng);
  const Vec r = randn(count, rng);
  Vec y(count);
  const backend::DropoutMask mask(7, 3, 12, 0.3f);
  auto loss = [&] { ref::dropout_forward(y.data(), x.data(), count, mask); return dot(y, r); };
  loss();
  int64_t dropped = 0;
  for (int64_t i = 0; i < count; ++i) {
    EXPECT_DOUBLE_EQ(y[i], mask.keep(i) ? x[i] / (1 - double(0.3f)) : 0.0) << i;
    dropped += !mask.keep(i);
  }
  EXPECT_NEAR(double(dropped) / count, 0.3, 0.03);  // 4 sigma of a binomial(4000, 0.3)
  Vec dx(count);
  ref::dropout_backward(dx.data(), r.data(), count, mask);
  expect_grad("dx", x, dx, loss);

  // The mask depends on every part of its key.
  auto differs = [&](const backend::DropoutMask& other) {
    for (int64_t i = 0; i < count; ++i)
      if (other.keep(i) != mask.keep(i)) return true;
    return false;
  };
  EXPECT_TRUE(differs(backend::DropoutMask(8, 3, 12, 0.3f)));  // seed
  EXPECT_TRUE(differs(backend::DropoutMask(7, 4, 12, 0.3f)));  // step
  EXPECT_TRUE(differs(backend::DropoutMask(7, 3, 13, 0.3f)));  // node
  EXPECT_FALSE(differs(backend::DropoutMask(7, 3, 12, 0.3f)));

  // p = 0: the identity, forward and backward.
  const backend::DropoutMask none(7, 3, 12, 0.f);
  ref::dropout_forward(y.data(), x.data(), count, none);
  EXPECT_EQ(y, x);
  Vec dx0(count);
  ref::dropout_backward(dx0.data(), r.data(), count, none);
  EXPECT_EQ(dx0, r);
}

// ---- the float ref Program ----------------------------------------------------------------

using backend::Mode;
using backend::Options;

// A 8-layer CIFAR ResNet (n = 1) on 1 x 8 x 8 inputs, 3 classes.
graph::Graph tiny_resnet(models::Shortcut shortcut) {
  models::ModelConfig cfg;
  cfg.in_channels = 1;
  cfg.image = 8;
  cfg.classes = 3;
  cfg.shortcut = shortcut;
  return models::cifar_resnet(1, true, cfg);
}

std::vector<float> randn_f(int64_t n, Rng& rng) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = static_cast<float>(rng.normal());
  return v;
}

// Finite differences in float through a whole network need care: ReLUs make the
// loss piecewise smooth, and a perturbation of a weight moves hundreds of
// activations, so a step of h = 1e-2 crosses kinks and misses by several percent
// even where the gradient is exact (checked against a double-precision copy of this
// program, which agrees to 1e-8 with h = 1e-6). Hence:
//   - a small step, h = 3e-4, whose float rounding (~1e-7 on the loss) still costs
//     well under 1% on the gradients compared;
//   - an entry is compared only when its forward and backward one-sided differences
//     agree to 1%: otherwise a kink lies within +-h and the central difference is
//     off by up to half their gap (this test uses numeric values only, so it cannot
//     hide a wrong analytic gradient);
//   - the entries with the largest gradients (at least 0.03) are tried, until two
//     were compared; at least one per tensor must be, else the test fails;
//   - the central difference must match within rtol 2e-2 (+ 2e-4 for rounding).
// conv1.weight is left out: every one of its entries moves all 16 x 8 x 8 x 2
// activations of its channel, and kinks within 1e-4 are common. The fan-out at the
// first block's input is covered by bn1's parameters and by the input gradient.
// Swept over 40 seeds with both shortcuts: no mismatch, and every tensor had a
// usable entry (each test takes ~0.3 s).
void check_entries(const std::string& what, float* v, const float* grad, int64_t count,
                   const std::function<double()>& loss) {
  std::vector<int64_t> order(static_cast<size_t>(count));
  for (int64_t j = 0; j < count; ++j) order[j] = j;
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return std::abs(grad[a]) > std::abs(grad[b]); });
  const float h = 3e-4f;
  int compared = 0;
  for (size_t t = 0; t < std::min<size_t>(16, order.size()) && compared < 2; ++t) {
    const int64_t j = order[t];
    const double analytic = grad[j];  // store.grads does not change in forward()
    if (std::abs(analytic) < 0.03) break;
    const float saved = v[j];
    const double center = loss();
    v[j] = saved + h;
    const double plus = loss();
    const double up = double(v[j]) - saved;  // the step actually taken in float
    v[j] = saved - h;
    const double minus = loss();
    const double down = saved - double(v[j]);
    v[j] = saved;
    const double forward_diff = (plus - center) / up, backward_diff = (center - minus) / down;
    const double numeric = (plus - minus) / (up + down);
    if (std::abs(forward_diff - backward_diff) > 1e-2 * std::abs(numeric)) continue;  // a kink
    ++compared;
    EXPECT_NEAR(numeric, analytic, 2e-2 * std::abs(analytic) + 2e-4) << what << "[" << j << "]";
  }
  EXPECT_GE(compared, 1) << what << ": no entry with a gradient >= 0.03 and no ReLU kink within +-h";
}

void check_program_gradients(models::Shortcut shortcut, const std::vector<std::string>& names,
                             uint64_t seed = 1234) {
  graph::Graph g = tiny_resnet(shortcut);
  graph::ParamStore store(g);
  store.init(g, seed);
  const int64_t N = 2;
  auto prog = backend::compile_ref(g, store, Options{N, Mode::train, true});
  Rng rng(seed + 1);
  std::vector<float> x = randn_f(N * g.input_shape().numel(), rng);
  const std::vector<float> r = randn_f(N * g.output_shape().numel(), rng);
  auto loss = [&] {
    prog->forward(x.data());
    const float* y = prog->output();
    double s = 0;
    for (size_t i = 0; i < r.size(); ++i) s += double(y[i]) * r[i];
    return s;
  };
  loss();
  prog->backward(r.data());

  // Every parameter receives a gradient.
  for (size_t i = 0; i < g.params.size(); ++i) {
    if (!g.params[i].trainable()) continue;
    const Tensor& t = store.grads[i];
    float m = 0;
    for (int64_t j = 0; j < t.numel(); ++j) m = std::max(m, std::abs(t.data<float>()[j]));
    EXPECT_GT(m, 0.f) << g.params[i].name << " gets no gradient";
  }

  for (const std::string& name : names) {
    const int id = g.find_param(name);
    ASSERT_GE(id, 0) << name;
    check_entries(name, store.values[id].data<float>(), store.grads[id].data<float>(),
                  store.values[id].numel(), loss);
  }
  const std::vector<float> dx(prog->input_grad(), prog->input_grad() + x.size());
  check_entries("input", x.data(), dx.data(), static_cast<int64_t>(x.size()), loss);
}

// Tensors upstream of a fan-out (bn1, layer1.*, layer2.*) and downstream of one.
const std::vector<std::string> kCheckedA = {
    "bn1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer1.0.bn2.weight",
    "layer2.0.conv1.weight", "layer2.0.conv2.weight", "layer3.0.conv1.weight",
    "layer3.0.bn2.bias", "fc.weight", "fc.bias"};
const std::vector<std::string> kCheckedB = {
    "bn1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer2.0.conv1.weight",
    "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer3.0.downsample.0.weight",
    "layer3.0.downsample.1.bias", "layer3.0.conv2.weight", "fc.weight"};

TEST(RefProgram, TinyResNetGradientsShortcutA) { check_program_gradients(models::Shortcut::A, kCheckedA); }
TEST(RefProgram, TinyResNetGradientsShortcutB) { check_program_gradients(models::Shortcut::B, kCheckedB); }

// y = x + x: the input has two consumer slots in one node; its gradient is 2 dy.
// Calling backward twice must give the same gradient (overwrite, not accumulate).
TEST(RefProgram, FanOutSumsAndBackwardOverwrites) {
  graph::Builder b(Shape{2, 3, 3});
  int h = b.conv(b.input(), 2, 3, 1, 1, "conv");
  graph::Graph g = b.finish(b.add(h, h));
  graph::ParamStore store(g);
  store.init(g, 1);
  auto prog = backend::compile_ref(g, store, Options{2, Mode::train, true});
  Rng rng(3);
  std::vector<float> x = randn_f(36, rng), dy = randn_f(36, rng);
  prog->forward(x.data());
  prog->backward(dy.data());
  const std::vector<float> dw(store.grads[0].data<float>(), store.grads[0].data<float>() + 36);
  std::vector<float> dx(prog->input_grad(), prog->input_grad() + 36);
  // Against the kernel called directly with dy doubled.
  std::vector<float> dy2(36), dx_ref(36), dw_ref(36);
  for (size_t i = 0; i < 36; ++i) dy2[i] = 2 * dy[i];
  ref::conv2d_backward(dx_ref.data(), dw_ref.data(), (float*)nullptr, dy2.data(), x.data(),
                       store.values[0].data<float>(), ref::ConvDims::make(2, 2, 3, 3, {2, 3, 3, 1, 1, 1}));
  for (size_t i = 0; i < 36; ++i) {
    EXPECT_FLOAT_EQ(dx[i], dx_ref[i]);
    EXPECT_FLOAT_EQ(dw[i], dw_ref[i]);
  }
  prog->forward(x.data());
  prog->backward(dy.data());
  for (size_t i = 0; i < 36; ++i) {
    EXPECT_FLOAT_EQ(store.grads[0].data<float>()[i], dw[i]);
    EXPECT_FLOAT_EQ(prog->input_grad()[i], dx[i]);
  }
}

// Train mode normalises with batch statistics and updates the running ones in the
// store; infer mode uses the running ones and leaves them alone.
TEST(RefProgram, BatchNormModes) {
  graph::Builder b(Shape{2, 3, 3});
  graph::Graph g = b.finish(b.batchnorm(b.input(), "bn"));
  graph::ParamStore store(g);
  store.init(g, 1);  // gamma 1, beta 0, running mean 0, running var 1
  const float* rm = store.values[2].data<float>();
  const float* rv = store.values[3].data<float>();
  const int64_t N = 4, M = N * 9;
  Rng rng(4);
  std::vector<float> x = randn_f(N * 18, rng);
  for (float& v : x) v = 3 * v + 1;

  auto train = backend::compile_ref(g, store, Options{N, Mode::train, false});
  train->forward(x.data());
  for (int c = 0; c < 2; ++c) {
    double mu = 0, var = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int i = 0; i < 9; ++i) mu += x[(n * 2 + c) * 9 + i] / double(M);
    for (int64_t n = 0; n < N; ++n)
      for (int i = 0; i < 9; ++i) var += std::pow(x[(n * 2 + c) * 9 + i] - mu, 2) / double(M - 1);
    EXPECT_NEAR(rm[c], 0.1 * mu, 1e-5);
    EXPECT_NEAR(rv[c], 0.9 + 0.1 * var, 1e-5);
  }
  const std::vector<float> rm_after(rm, rm + 2), rv_after(rv, rv + 2);

  auto infer = backend::compile_ref(g, store, Options{N, Mode::infer, false});
  infer->forward(x.data());
  for (int64_t i = 0; i < N * 18; ++i) {
    const int c = static_cast<int>((i / 9) % 2);
    EXPECT_NEAR(infer->output()[i], (x[i] - rm[c]) / std::sqrt(rv[c] + 1e-5f), 1e-5);
  }
  EXPECT_EQ(std::vector<float>(rm, rm + 2), rm_after);
  EXPECT_EQ(std::vector<float>(rv, rv + 2), rv_after);
  EXPECT_THROW(infer->backward(x.data()), Error);
  EXPECT_THROW(train->input_grad(), Error);  // compiled without input_grad
  EXPECT_GT(train->planned_bytes(), infer->planned_bytes());
  EXPECT_EQ(infer->planned_bytes(), int64_t(2 * N * 18 * sizeof(float)));  // input and output
}

// Dropout in a Program: a fresh mask at every train-mode forward (the step advances),
// backward with the mask of the forward before it, set_step replays a step, and
// inference is the identity.
TEST(RefProgram, DropoutSteps) {
  graph::Builder b(Shape{3, 4, 4});
  graph::Graph g = b.finish(b.dropout(b.input(), 0.5f));
  graph::ParamStore store(g);
  const int64_t N = 2, count = N * 48;
  Rng rng(6);
  std::vector<float> x = randn_f(count, rng), dy = randn_f(count, rng);
  Options opt{N, Mode::train, true};
  opt.seed = 99;
  auto train = backend::compile_ref(g, store, opt);
  auto kept = [&](const float* y) {
    std::vector<bool> k(count);
    for (int64_t i = 0; i < count; ++i) k[i] = y[i] != 0.f;
    return k;
  };
  train->forward(x.data());
  const std::vector<bool> step0 = kept(train->output());
  for (int64_t i = 0; i < count; ++i) {
    EXPECT_EQ(step0[i], backend::DropoutMask(99, 0, 0, 0.5f).keep(i));
    EXPECT_FLOAT_EQ(train->output()[i], step0[i] ? 2 * x[i] : 0.f);
  }
  train->forward(x.data());
  const std::vector<bool> step1 = kept(train->output());
  EXPECT_NE(step0, step1);
  train->backward(dy.data());
  for (int64_t i = 0; i < count; ++i) EXPECT_FLOAT_EQ(train->input_grad()[i], step1[i] ? 2 * dy[i] : 0.f);
  train->set_step(0);
  train->forward(x.data());
  EXPECT_EQ(kept(train->output()), step0);

  auto infer = backend::compile_ref(g, store, Options{N, Mode::infer, false});
  infer->forward(x.data());
  EXPECT_EQ(std::vector<float>(infer->output(), infer->output() + count), x);
}

// A small network with an auxiliary head, as Inception-v3's AuxLogits: the trunk's
// features feed the main head and, through a pool and a 1x1 conv, the auxiliary one.
// Sigmoids instead of ReLUs keep the loss smooth for finite differences.
graph::Graph aux_head_net(bool with_aux) {
  graph::Builder b(Shape{3, 6, 6});
  int trunk = b.sigmoid(b.conv(b.input(), 8, 3, 1, 1, "conv1"));
  int logits = b.linear(b.global_avg_pool(b.sigmoid(b.conv(trunk, 8, 3, 2, 1, "conv2"))), 3, "fc");
  if (!with_aux) return b.finish(logits);
  auto scope = b.scope("AuxLogits");
  int aux = b.sigmoid(b.conv(b.avg_pool(trunk, 3, 2, 0, false, true), 4, 1, 1, 0, "conv0"));
  return b.finish(logits, {b.linear(b.global_avg_pool(aux), 2, "fc", false)});
}

// d(loss)/d(everything) for loss = sum(y * r) + sum(aux * r_aux): the trunk receives
// both heads' gradients.
TEST(RefProgram, AuxiliaryOutputGradients) {
  graph::Graph g = aux_head_net(true);
  graph::ParamStore store(g);
  store.init(g, 5);
  const int64_t N = 2;
  auto prog = backend::compile_ref(g, store, Options{N, Mode::train, true});
  ASSERT_EQ(prog->num_outputs(), 2);
  Rng rng(8);
  std::vector<float> x = randn_f(N * g.input_shape().numel(), rng);
  std::vector<float> r = randn_f(N * 3, rng), r_aux = randn_f(N * 2, rng);
  for (auto* v : {&r, &r_aux})  // gradients through the sigmoids and poolings are small
    for (float& e : *v) e *= 30;
  auto loss = [&] {
    prog->forward(x.data());
    double s = 0;
    for (size_t i = 0; i < r.size(); ++i) s += double(prog->output(0)[i]) * r[i];
    for (size_t i = 0; i < r_aux.size(); ++i) s += double(prog->output(1)[i]) * r_aux[i];
    return s;
  };
  loss();
  const float* aux_dy[] = {r_aux.data()};
  prog->backward(r.data(), aux_dy);
  for (const char* name : {"conv1.weight", "conv2.weight", "fc.weight", "AuxLogits.conv0.weight",
                           "AuxLogits.fc.weight"}) {
    const int id = g.find_param(name);
    ASSERT_GE(id, 0) << name;
    check_entries(name, store.values[id].data<float>(), store.grads[id].data<float>(),
                  store.values[id].numel(), loss);
  }
  const std::vector<float> dx(prog->input_grad(), prog->input_grad() + x.size());
  check_entries("input", x.data(), dx.data(), static_cast<int64_t>(x.size()), loss);

  // Without aux_dy the auxiliary head gets no gradient, and the trunk only the main one.
  prog->forward(x.data());
  prog->backward(r.data());
  const int aux_fc = g.find_param("AuxLogits.fc.weight");
  for (int64_t j = 0; j < store.grads[aux_fc].numel(); ++j) EXPECT_EQ(store.grads[aux_fc].data<float>()[j], 0.f);
  graph::Graph main_only = aux_head_net(false);
  graph::ParamStore main_store(main_only);
  for (size_t i = 0; i < main_only.params.size(); ++i)
    main_store.values[i] = store.values[g.find_param(main_only.params[i].name)].clone();
  auto main_prog = backend::compile_ref(main_only, main_store, Options{N, Mode::train, true});
  main_prog->forward(x.data());
  main_prog->backward(r.data());
  for (int64_t j = 0; j < int64_t(x.size()); ++j) EXPECT_FLOAT_EQ(main_prog->input_grad()[j], prog->input_grad()[j]);
  const float* wrong[] = {r_aux.data(), r_aux.data()};
  EXPECT_THROW(prog->backward(r.data(), wrong), Error);
}

// Inference runs only what output 0 needs: the auxiliary head costs no memory.
TEST(RefProgram, InferenceSkipsAuxiliaryHead) {
  graph::Graph g = aux_head_net(true), main_only = aux_head_net(false);
  graph::ParamStore store(g), main_store(main_only);
  store.init(g, 5);
  auto infer = backend::compile_ref(g, store, Options{2, Mode::infer, false});
  auto main_infer = backend::compile_ref(main_only, main_store, Options{2, Mode::infer, false});
  EXPECT_EQ(infer->num_outputs(), 2);
  EXPECT_EQ(infer->planned_bytes(), main_infer->planned_bytes());
  Rng rng(9);
  std::vector<float> x = randn_f(2 * 108, rng);
  infer->forward(x.data());
  EXPECT_NE(infer->output(0), nullptr);
  EXPECT_THROW(infer->output(1), Error);
  EXPECT_THROW(infer->output(2), Error);
}

TEST(RefProgram, CompileErrors) {
  graph::Graph g = tiny_resnet(models::Shortcut::A);
  graph::ParamStore store(g);
  auto p = backend::compile("ref", g, store, Options{2, Mode::train, false});
  EXPECT_EQ(p->backend_name(), "ref");
  try {
    backend::compile("cuda", g, store, Options{});
    ADD_FAILURE() << "no error for an unknown backend";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'cuda'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cpu"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ref"), std::string::npos) << e.what();
  }
  // A store of another graph, and BatchNorm training with one value per channel.
  graph::Graph other = tiny_resnet(models::Shortcut::B);
  EXPECT_THROW(backend::compile_ref(other, store, Options{2}), Error);
  graph::Builder b(Shape{2, 1, 1});
  graph::Graph bn = b.finish(b.batchnorm(b.input(), "bn"));
  graph::ParamStore bn_store(bn);
  EXPECT_THROW(backend::compile_ref(bn, bn_store, Options{1, Mode::train}), Error);
  EXPECT_NO_THROW(backend::compile_ref(bn, bn_store, Options{1, Mode::infer}));
}

}  // namespace
}  // namespace incres
