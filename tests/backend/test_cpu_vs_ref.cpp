// The oneDNN backend against the naive reference, on the real layer shapes of the
// CIFAR ResNets (oneDNN's benchdnn idea): forward output, d(input), every parameter
// gradient and the BN running statistics.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "backend/program.h"
#include "core/rng.h"
#include "graph/builder.h"
#include "models/models.h"

using namespace incres;
using graph::Builder;

namespace {

// max |a - b| / max(max |b|, 1e-6): one number per tensor, scale-free.
double rel_err(const float* a, const float* b, int64_t n) {
  double diff = 0, ref = 1e-6;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
    ref = std::max(ref, static_cast<double>(std::fabs(b[i])));
  }
  return diff / ref;
}

void compare(const graph::Graph& g, int64_t batch, double tol = 1e-4) {
  graph::ParamStore cpu_store(g), ref_store(g);
  cpu_store.init(g, 7);
  ref_store.init(g, 7);
  // Non-trivial BN statistics, so inference mode is tested with real values.
  for (size_t i = 0; i < g.params.size(); ++i) {
    if (g.params[i].role == graph::Role::running_mean || g.params[i].role == graph::Role::running_var ||
        g.params[i].role == graph::Role::bn_beta) {
      Rng r(i);
      float* a = cpu_store.values[i].data<float>();
      float* b = ref_store.values[i].data<float>();
      for (int64_t j = 0; j < cpu_store.values[i].numel(); ++j)
        a[j] = b[j] = static_cast<float>(g.params[i].role == graph::Role::running_var ? 0.5 + r.uniform()
                                                                                      : r.normal() * 0.1);
    }
  }
  std::vector<float> x(static_cast<size_t>(batch * g.input_shape().numel()));
  std::vector<float> dy(static_cast<size_t>(batch * g.output_shape().numel()));
  Rng rng(3);
  for (float& v : x) v = static_cast<float>(rng.normal());
  for (float& v : dy) v = static_cast<float>(rng.normal());

  // Inference.
  {
    auto cpu = backend::compile_cpu(g, cpu_store, {batch, backend::Mode::infer, false});
    auto ref = backend::compile_ref(g, ref_store, {batch, backend::Mode::infer, false});
    cpu->forward(x.data());
    ref->forward(x.data());
    EXPECT_LT(rel_err(cpu->output(), ref->output(), static_cast<int64_t>(dy.size())), tol) << "inference output";
  }
  // Training: forward, backward, running statistics.
  auto cpu = backend::compile_cpu(g, cpu_store, {batch, backend::Mode::train, true});
  auto ref = backend::compile_ref(g, ref_store, {batch, backend::Mode::train, true});
  cpu->forward(x.data());
  ref->forward(x.data());
  EXPECT_LT(rel_err(cpu->output(), ref->output(), static_cast<int64_t>(dy.size())), tol) << "training output";
  cpu->backward(dy.data());
  ref->backward(dy.data());
  EXPECT_LT(rel_err(cpu->input_grad(), ref->input_grad(), static_cast<int64_t>(x.size())), tol) << "d(input)";
  for (size_t i = 0; i < g.params.size(); ++i) {
    const Tensor& a = g.params[i].trainable() ? cpu_store.grads[i] : cpu_store.values[i];
    const Tensor& b = g.params[i].trainable() ? ref_store.grads[i] : ref_store.values[i];
    EXPECT_LT(rel_err(a.data<float>(), b.data<float>(), a.numel()), tol)
        << (g.params[i].trainable() ? "gradient of " : "") << g.params[i].name;
  }
}

graph::Graph one_conv(Shape in, int64_t K, int R, int S, int stride, int ph, int pw, bool bias) {
  Builder b(in);
  return b.finish(b.conv(b.input(), graph::Conv2d{K, R, S, stride, ph, pw, bias}, "conv"));
}

}  // namespace

TEST(CpuVsRef, ConvResNetShapes) {
  compare(one_conv({3, 32, 32}, 16, 3, 3, 1, 1, 1, false), 4);   // conv1, RGB
  compare(one_conv({1, 32, 32}, 16, 3, 3, 1, 1, 1, false), 4);   // conv1, Fashion-MNIST
  compare(one_conv({16, 32, 32}, 16, 3, 3, 1, 1, 1, false), 4);  // layer1
  compare(one_conv({16, 32, 32}, 32, 3, 3, 2, 1, 1, false), 4);  // layer2.0.conv1
  compare(one_conv({32, 16, 16}, 64, 3, 3, 2, 1, 1, false), 4);  // layer3.0.conv1
  compare(one_conv({64, 8, 8}, 64, 3, 3, 1, 1, 1, false), 4);    // layer3
  compare(one_conv({16, 32, 32}, 32, 1, 1, 2, 0, 0, false), 4);  // option B projection
}

TEST(CpuVsRef, ConvBiasAndAsymmetricKernels) {
  compare(one_conv({16, 17, 17}, 16, 1, 7, 1, 0, 3, true), 2);
  compare(one_conv({16, 17, 17}, 24, 7, 1, 1, 3, 0, true), 2);
  compare(one_conv({8, 9, 9}, 16, 3, 3, 2, 0, 0, true), 2);  // odd size, no padding
}

TEST(CpuVsRef, BatchNormAndFusedReLU) {
  for (Shape s : {Shape{16, 32, 32}, Shape{64, 8, 8}, Shape{3, 5, 5}}) {
    Builder b(s);
    compare(b.finish(b.batchnorm(b.input(), "bn")), 4);
    Builder f(s);  // BN followed by its only consumer, a ReLU: fused in the cpu backend
    compare(f.finish(f.relu(f.batchnorm(f.input(), "bn"))), 4);
  }
  Builder e(Shape{16, 8, 8});
  compare(e.finish(e.batchnorm(e.input(), "bn", graph::BatchNorm{1e-3f, 0.1f})), 4);
}

TEST(CpuVsRef, FanOutAddShortcutPoolLinear) {
  {  // d(x) collects the branch and the identity: y = relu(conv(x) + x)
    Builder b(Shape{16, 16, 16});
    int x = b.input();
    compare(b.finish(b.relu(b.add(b.conv(x, 16, 3, 1, 1, "conv"), x))), 3);
  }
  {  // option A where dimensions grow, and a fan-out into it
    Builder b(Shape{16, 16, 16});
    int x = b.relu(b.conv(b.input(), 16, 3, 1, 1, "conv0"));
    int y = b.batchnorm(b.conv(x, 32, 3, 2, 1, "conv1"), "bn");
    compare(b.finish(b.add(y, b.shortcut_a(x, 32, 2))), 3);
  }
  {
    Builder b(Shape{64, 8, 8});
    compare(b.finish(b.linear(b.global_avg_pool(b.input()), 10, "fc")), 5);
  }
}

TEST(CpuVsRef, WholeModels) {
  for (const char* name : {"resnet20", "plain20"}) {
    for (auto sc : {models::Shortcut::A, models::Shortcut::B}) {
      SCOPED_TRACE(std::string(name) + (sc == models::Shortcut::A ? " A" : " B"));
      compare(models::build_model(name, models::ModelConfig{1, 10, 32, sc}), 4, 2e-4);
    }
  }
}
