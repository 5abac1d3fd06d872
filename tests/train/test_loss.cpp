// Loss, accuracy counts and the metrics log.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "train/loss.h"
#include "train/metrics.h"

namespace incres::train {
namespace {

// -log softmax(x)_y written the naive way (no max subtraction): fine for small x.
double naive_nll(const std::vector<double>& x, int64_t row, int64_t K, int y) {
  double sum = 0;
  for (int64_t j = 0; j < K; ++j) sum += std::exp(x[row * K + j]);
  return -std::log(std::exp(x[row * K + y]) / sum);
}

std::vector<double> random_logits(int64_t n, uint64_t seed, double scale = 2.0) {
  Rng rng(seed);
  std::vector<double> x(n);
  for (double& v : x) v = scale * rng.normal();
  return x;
}

TEST(Loss, HandComputedCase) {
  // softmax([log 1, log 3]) = [1/4, 3/4].
  const std::vector<double> x = {0.0, std::log(3.0)};
  const std::vector<int32_t> y = {1};
  LossResult r = softmax_cross_entropy(x.data(), y.data(), 1, 2, 0.0, nullptr);
  EXPECT_NEAR(r.loss, -std::log(0.75), 1e-12);
  EXPECT_EQ(r.correct, 1);
  // Smoothing eps = 0.2 over K = 2: targets [0.1, 0.9].
  r = softmax_cross_entropy(x.data(), y.data(), 1, 2, 0.2, nullptr);
  EXPECT_NEAR(r.loss, -0.1 * std::log(0.25) - 0.9 * std::log(0.75), 1e-12);
  // Equal logits: loss log K whatever the smoothing.
  const std::vector<float> u(5, 0.3f);
  const std::vector<int32_t> y3 = {3};
  EXPECT_NEAR(softmax_cross_entropy(u.data(), y3.data(), 1, 5, 0.1f, nullptr).loss,
              std::log(5.0), 1e-6);
}

TEST(Loss, NoSmoothingIsMeanNegativeLogSoftmaxOfLabel) {
  const int64_t N = 4, K = 7;
  std::vector<double> x = random_logits(N * K, 1);
  std::vector<int32_t> y = {0, 6, 3, 3};
  double expect = 0;
  for (int64_t i = 0; i < N; ++i) expect += naive_nll(x, i, K, y[i]) / N;
  EXPECT_NEAR(softmax_cross_entropy(x.data(), y.data(), N, K, 0.0, nullptr).loss, expect, 1e-12);
}

TEST(Loss, SmoothingMixesLabelAndUniformTerms) {
  // PyTorch's definition: (1 - eps) * nll + eps * mean_j(-log p_j).
  const int64_t N = 3, K = 5;
  const double eps = 0.1;
  std::vector<double> x = random_logits(N * K, 2);
  std::vector<int32_t> y = {4, 0, 2};
  double expect = 0;
  for (int64_t i = 0; i < N; ++i) {
    double uniform = 0;
    for (int j = 0; j < K; ++j) uniform += naive_nll(x, i, K, j) / K;
    expect += ((1 - eps) * naive_nll(x, i, K, y[i]) + eps * uniform) / N;
  }
  EXPECT_NEAR(softmax_cross_entropy(x.data(), y.data(), N, K, eps, nullptr).loss, expect, 1e-12);
}

// Central differences in double: d loss / d x_ij against dlogits.
void check_gradient(double smoothing, double scale) {
  const int64_t N = 3, K = 6;
  std::vector<double> x = random_logits(N * K, 3);
  std::vector<int32_t> y = {5, 1, 1};
  std::vector<double> d(N * K, -99.0);  // garbage: the gradient is written, not accumulated
  softmax_cross_entropy(x.data(), y.data(), N, K, smoothing, d.data(), scale);
  const double h = 1e-6;
  for (int64_t i = 0; i < N * K; ++i) {
    std::vector<double> xp = x, xm = x;
    xp[i] += h;
    xm[i] -= h;
    double fp = softmax_cross_entropy(xp.data(), y.data(), N, K, smoothing, nullptr).loss;
    double fm = softmax_cross_entropy(xm.data(), y.data(), N, K, smoothing, nullptr).loss;
    double numeric = scale * (fp - fm) / (2 * h);
    EXPECT_NEAR(d[i], numeric, 1e-8 + 1e-6 * std::abs(numeric)) << "element " << i;
  }
}
TEST(Loss, GradientMatchesFiniteDifferences) { check_gradient(0.0, 1.0); }
TEST(Loss, GradientMatchesFiniteDifferencesSmoothed) { check_gradient(0.1, 1.0); }
TEST(Loss, GradientIsScaled) { check_gradient(0.1, 2.5); }

TEST(Loss, GradientRowsSumToZero) {
  const int64_t N = 5, K = 10;
  std::vector<double> xd = random_logits(N * K, 4);
  std::vector<float> x(xd.begin(), xd.end());
  std::vector<int32_t> y = {0, 1, 2, 9, 9};
  std::vector<float> d(N * K);
  for (float eps : {0.0f, 0.1f}) {
    softmax_cross_entropy(x.data(), y.data(), N, K, eps, d.data(), 8.0);
    for (int64_t i = 0; i < N; ++i) {
      double s = 0;
      for (int64_t j = 0; j < K; ++j) s += d[i * K + j];
      EXPECT_NEAR(s, 0.0, 1e-6) << "row " << i << " smoothing " << eps;
    }
  }
}

TEST(Loss, FloatAgreesWithDouble) {
  const int64_t N = 6, K = 9;
  std::vector<double> xd = random_logits(N * K, 5, 4.0);
  std::vector<float> xf(xd.begin(), xd.end());
  for (double& v : xd) v = static_cast<float>(v);  // the same inputs exactly
  std::vector<int32_t> y = {0, 8, 4, 4, 1, 7};
  std::vector<double> dd(N * K);
  std::vector<float> df(N * K);
  LossResult rd = softmax_cross_entropy(xd.data(), y.data(), N, K, 0.1, dd.data());
  LossResult rf = softmax_cross_entropy(xf.data(), y.data(), N, K, 0.1f, df.data());
  EXPECT_NEAR(rf.loss, rd.loss, 1e-6 * rd.loss);
  EXPECT_EQ(rf.correct, rd.correct);
  for (int64_t i = 0; i < N * K; ++i) EXPECT_NEAR(df[i], dd[i], 1e-7) << "element " << i;
}

TEST(Loss, LargeLogitsAreStable) {
  // exp(1000) overflows float and double; the max-shifted form must not care, and
  // the loss is invariant to adding a constant to a row.
  const std::vector<float> big = {1000.f, 990.f, 1001.f}, small = {0.f, -10.f, 1.f};
  const std::vector<int32_t> y = {1};
  std::vector<float> d(3);
  LossResult rb = softmax_cross_entropy(big.data(), y.data(), 1, 3, 0.1f, d.data());
  LossResult rs = softmax_cross_entropy(small.data(), y.data(), 1, 3, 0.1f, nullptr);
  ASSERT_TRUE(std::isfinite(rb.loss));
  EXPECT_NEAR(rb.loss, rs.loss, 1e-9);
  for (float v : d) EXPECT_TRUE(std::isfinite(v));
}

TEST(Loss, CountsTopOneHits) {
  const std::vector<float> x = {
      0.1f, 0.9f, 0.0f,   // argmax 1
      2.0f, 2.0f, 1.0f,   // tie: the first maximum (0) wins
      -1.f, -2.f, -0.5f,  // argmax 2
  };
  const std::vector<int32_t> y = {1, 1, 2};
  EXPECT_EQ(softmax_cross_entropy(x.data(), y.data(), 3, 3, 0.f, nullptr).correct, 2);
  EXPECT_EQ(topk_correct(x.data(), y.data(), 3, 3, 1), 2);
  EXPECT_EQ(topk_correct(x.data(), y.data(), 3, 3, 2), 3);
}

TEST(Loss, TopKRanksLabel) {
  const int64_t K = 6;
  // Label 2 holds the 4th largest logit (0.5 < 0.6 < 0.7 < 0.9).
  const std::vector<float> x = {0.9f, 0.1f, 0.5f, 0.7f, 0.6f, 0.0f};
  const std::vector<int32_t> y = {2};
  EXPECT_EQ(topk_correct(x.data(), y.data(), 1, K, 3), 0);
  EXPECT_EQ(topk_correct(x.data(), y.data(), 1, K, 4), 1);
  EXPECT_EQ(topk_correct(x.data(), y.data(), 1, K, 6), 1);
}

TEST(Loss, RejectsBadArguments) {
  const std::vector<float> x(6, 0.f);
  const std::vector<int32_t> bad = {0, 3};
  try {
    softmax_cross_entropy(x.data(), bad.data(), 2, 3, 0.f, nullptr);
    FAIL() << "label 3 of 3 classes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 1 is 3"), std::string::npos) << e.what();
  }
  const std::vector<int32_t> neg = {-1, 0};
  EXPECT_THROW(topk_correct(x.data(), neg.data(), 2, 3, 1), Error);
  const std::vector<int32_t> ok = {0, 2};
  EXPECT_THROW(softmax_cross_entropy(x.data(), ok.data(), 2, 3, 1.5f, nullptr), Error);
  EXPECT_THROW(softmax_cross_entropy(x.data(), ok.data(), 0, 3, 0.f, nullptr), Error);
  EXPECT_THROW(topk_correct(x.data(), ok.data(), 2, 3, 0), Error);
  EXPECT_THROW(topk_correct(x.data(), ok.data(), 2, 3, 4), Error);
}

// ---- MetricsLog (lives with the loss: it records what the loss reports) ----

std::vector<std::string> read_lines(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::vector<std::string> lines;
  for (std::string l; std::getline(f, l);) lines.push_back(l);
  return lines;
}

TEST(MetricsLog, WritesOneObjectPerLineAndAppends) {
  namespace fs = std::filesystem;
  // The process id keeps concurrent test runs apart.
  fs::path path = fs::temp_directory_path() / ("incres_metrics_" + std::to_string(getpid()) + ".jsonl");
  {
    MetricsLog log(path.string(), false);
    log.write({{"step", 1}, {"loss", 2.5}});
    // Flushed at once: readable while the log is still open.
    EXPECT_EQ(read_lines(path).size(), 1u);
    log.write({{"step", 2}, {"loss", std::numeric_limits<double>::quiet_NaN()}});
    EXPECT_THROW(log.write(nlohmann::json::array({1, 2})), Error);
  }
  {
    MetricsLog log(path.string(), true);
    log.write({{"step", 3}, {"phase", "eval"}});
  }
  std::vector<std::string> lines = read_lines(path);
  ASSERT_EQ(lines.size(), 3u);
  auto r0 = nlohmann::json::parse(lines[0]), r1 = nlohmann::json::parse(lines[1]),
       r2 = nlohmann::json::parse(lines[2]);
  EXPECT_EQ(r0["step"], 1);
  EXPECT_DOUBLE_EQ(r0["loss"].get<double>(), 2.5);
  EXPECT_TRUE(r1["loss"].is_null());  // NaN has no JSON spelling
  EXPECT_EQ(r2["phase"], "eval");
  {
    MetricsLog log(path.string(), false);  // truncates
  }
  EXPECT_TRUE(read_lines(path).empty());
  fs::remove(path);
}

TEST(MetricsLog, UnopenablePathIsAClearError) {
  const std::string path = "/nonexistent-incres-dir/metrics.jsonl";
  try {
    MetricsLog log(path, false);
    FAIL() << "opened " << path;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(Progress, DueExactlyWhenAPlainUpdateWouldPrint) {
  // The trainer builds its progress text only when due() says so; an update that is
  // not due must not print, and one that is must. Plain mode: a line at every 10%.
  Progress p("epoch 1/1", 100, /*terminal=*/false);
  EXPECT_FALSE(p.due(5));
  EXPECT_TRUE(p.due(10));
  p.update(10, "loss 1");
  EXPECT_FALSE(p.due(10));  // that boundary is passed
  EXPECT_FALSE(p.due(19));
  EXPECT_TRUE(p.due(35));   // crossing 20% and 30% at once prints once
  p.update(35, "loss 0.9");
  EXPECT_FALSE(p.due(39));
  EXPECT_TRUE(p.due(40));
  EXPECT_FALSE(p.due(100));  // the 100% line is finish()'s
  p.finish(100, "loss 0.5");
  EXPECT_FALSE(p.due(100));
}

// Expected calibration error by hand: two confident rows (p = 0.9 in bin 13), one
// right and one wrong, give |1 - 1.8| / 2 = 40%; a uniform row over 4 classes
// (p = 0.25, bin 3) that is right adds |1 - 0.25| to the sum.
TEST(Loss, CalibrationErrorByHand) {
  const float l9 = std::log(9.f * 3.f);  // softmax of (l9, 0, 0, 0) over 4 classes: 27 / 30 = 0.9
  const std::vector<float> x = {l9, 0, 0, 0, l9, 0, 0, 0};
  const std::vector<int32_t> y = {0, 1};
  Calibration c;
  EXPECT_DOUBLE_EQ(c.ece(), 0.0);
  c.add(x.data(), y.data(), 2, 4);
  EXPECT_NEAR(c.ece(), 40.0, 1e-4);
  const std::vector<float> u = {0, 0, 0, 0};
  const std::vector<int32_t> first = {0};  // the first maximum is the prediction: right
  c.add(u.data(), first.data(), 1, 4);
  EXPECT_NEAR(c.ece(), 100.0 * (0.8 + 0.75) / 3, 1e-4);
  // A calibrated set: two rows of equal logits over 2 classes (p = 0.5, the first
  // class predicted), one of them right.
  Calibration half;
  const std::vector<float> h = {0, 0, 0, 0};
  const std::vector<int32_t> yh = {0, 1};
  half.add(h.data(), yh.data(), 2, 2);
  EXPECT_NEAR(half.ece(), 0.0, 1e-9);
  const std::vector<int32_t> bad = {5};
  EXPECT_THROW(c.add(u.data(), bad.data(), 1, 4), Error);
}

}  // namespace
}  // namespace incres::train
