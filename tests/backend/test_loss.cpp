// The loss on both backends: oneDNN's logsoftmax path against the reference kernel
// (itself checked against finite differences and closed forms in tests/train), on a
// CIFAR-sized and an ImageNet-sized head, with and without label smoothing.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/loss.h"
#include "core/rng.h"
#include "support.h"

namespace incres {
namespace {

using testing_support::contains;
using testing_support::error_of;

TEST(Loss, CpuMatchesRef) {
  for (int64_t K : {10, 1000})
    for (float eps : {0.f, 0.1f}) {
      const int64_t batch = 64, n = 50;  // a partial last batch: rows past n ignored
      std::vector<float> x(static_cast<size_t>(batch * K));
      std::vector<int32_t> y(static_cast<size_t>(batch));
      Rng r(static_cast<uint64_t>(K));
      for (float& v : x) v = static_cast<float>(3 * r.normal());
      for (int32_t& v : y) v = static_cast<int32_t>(r.below(static_cast<uint64_t>(K)));
      std::vector<float> d_cpu(x.size(), -7.f), d_ref(x.size(), -7.f);
      auto cpu = backend::compile_loss("cpu", batch, K, eps);
      auto ref = backend::compile_loss("ref", batch, K, eps);
      const backend::LossResult a = cpu->run(x.data(), y.data(), n, d_cpu.data(), 0.4);
      const backend::LossResult b = ref->run(x.data(), y.data(), n, d_ref.data(), 0.4);
      EXPECT_NEAR(a.loss, b.loss, 1e-5 * std::fabs(b.loss)) << "K " << K << " eps " << eps;
      EXPECT_EQ(a.correct, b.correct);
      double worst = 0, scale = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        worst = std::max(worst, static_cast<double>(std::fabs(d_cpu[i] - d_ref[i])));
        scale = std::max(scale, static_cast<double>(std::fabs(d_ref[i])));
      }
      EXPECT_LT(worst / scale, 1e-5) << "K " << K << " eps " << eps;
      EXPECT_EQ(d_cpu[static_cast<size_t>(n * K)], -7.f) << "rows past n are left alone";
    }
}

TEST(Loss, BadLabelNamesTheRow) {
  for (const char* b : {"cpu", "ref"}) {
    auto loss = backend::compile_loss(b, 4, 10, 0.f);
    std::vector<float> x(40, 0.f);
    std::vector<int32_t> y{1, 2, 10, 3};
    const std::string e = error_of([&] { loss->run(x.data(), y.data(), 4, nullptr); });
    EXPECT_TRUE(contains(e, "row 2") && contains(e, "is 10")) << b << ": " << e;
  }
  EXPECT_TRUE(contains(error_of([] { backend::compile_loss("gpu", 4, 10, 0.f); }), "unknown backend"));
}

}  // namespace
}  // namespace incres
