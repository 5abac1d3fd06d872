// What data-parallel training asks of a backend. Global BatchNorm statistics
// (Options::sum_across, --sync-bn): two programs, each on half of a batch and run on
// threads of their own that sum across each other, compute what one program computes
// on the whole batch: the outputs, d(input), the running statistics, and parameter
// gradients whose sum is the one program's. Dropout keyed by the global sample
// (Options::sample_offset): the halves drop what the whole batch drops. Gradients
// reported ready (Options::grad_ready) are final.
#include <gtest/gtest.h>

#include <barrier>
#include <mutex>
#include <cstring>
#include <thread>

#include "backend/program.h"
#include "core/rng.h"
#include "graph/builder.h"
#include "support.h"

using namespace incres;
using testing_support::rel_err;

namespace {

// A sum of two threads' vectors: each adds its own, both read the total.
class PairSum {
 public:
  void operator()(int who, double* x, int64_t n) {
    if (who == 0) total_.assign(static_cast<size_t>(n), 0.0);
    sync_.arrive_and_wait();  // cleared
    {
      std::lock_guard lock(mu_);
      for (int64_t i = 0; i < n; ++i) total_[i] += x[i];
    }
    sync_.arrive_and_wait();  // both added
    std::memcpy(x, total_.data(), static_cast<size_t>(n) * sizeof(double));
    sync_.arrive_and_wait();  // both read
  }

 private:
  std::barrier<> sync_{2};
  std::mutex mu_;
  std::vector<double> total_;
};

graph::Graph net(int64_t C, bool with_relu) {
  graph::Builder b({3, 8, 8});
  int x = b.conv(b.input(), C, 3, 1, 1, "conv1");
  x = b.batchnorm(x, "bn1");
  if (with_relu) x = b.relu(x);  // fused into the BN (fuse_norm_relu)
  int y = b.conv(x, C, 3, 1, 1, "conv2");
  y = b.batchnorm(y, "bn2");
  return b.finish(b.linear(b.global_avg_pool(b.add(x, y)), 5, "fc"));
}

void check(int64_t C, bool with_relu) {
  const graph::Graph g = net(C, with_relu);
  const int64_t half = 3, batch = 2 * half, in = g.input_shape().numel(), out = g.output_shape().numel();
  std::vector<float> x(static_cast<size_t>(batch * in)), dy(static_cast<size_t>(batch * out));
  Rng rng(5);
  for (float& v : x) v = static_cast<float>(rng.normal());
  for (float& v : dy) v = static_cast<float>(rng.normal());

  graph::ParamStore whole(g), a(g), b(g);
  whole.init(g, 1);
  a.init(g, 1);
  b.init(g, 1);
  auto one = backend::compile_cpu(g, whole, {.batch = batch, .mode = backend::Mode::train, .input_grad = true});
  one->forward(x.data());
  one->backward(dy.data());

  PairSum sum;
  auto hooks = [&](graph::ParamStore& s, int who) {
    return backend::compile_cpu(g, s, {.batch = half, .mode = backend::Mode::train, .input_grad = true,
                                       .sum_across = [&sum, who](double* v, int64_t n) { sum(who, v, n); }});
  };
  auto pa = hooks(a, 0), pb = hooks(b, 1);
  auto run = [&](backend::Program& p, int64_t first) {
    p.forward(x.data() + first * in);
    p.backward(dy.data() + first * out);
  };
  std::thread t([&] { run(*pb, half); });
  run(*pa, 0);
  t.join();

  for (int64_t r = 0; r < 2; ++r) {
    backend::Program& p = r == 0 ? *pa : *pb;
    EXPECT_LT(rel_err(p.output(), one->output() + r * half * out, half * out), 1e-5) << "output of half " << r;
    EXPECT_LT(rel_err(p.input_grad(), one->input_grad() + r * half * in, half * in), 1e-4) << "d(input) of half " << r;
  }
  for (size_t i = 0; i < g.params.size(); ++i) {
    const int64_t n = whole.values[i].numel();
    if (!g.params[i].trainable()) {  // both halves hold the statistics of the whole batch
      EXPECT_LT(rel_err(a.values[i].data<float>(), whole.values[i].data<float>(), n), 1e-5) << g.params[i].name;
      EXPECT_LT(rel_err(b.values[i].data<float>(), whole.values[i].data<float>(), n), 1e-5) << g.params[i].name;
      continue;
    }
    std::vector<float> total(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) total[j] = a.grads[i].data<float>()[j] + b.grads[i].data<float>()[j];
    EXPECT_LT(rel_err(total.data(), whole.grads[i].data<float>(), n), 1e-4) << "gradient of " << g.params[i].name;
  }
}

}  // namespace

TEST(SyncBatchNorm, TwoHalvesEqualTheWholeBatch) {
  check(16, true);   // blocked layout, BN with its ReLU fused
  check(16, false);
  check(6, false);   // a channel count off the block: plain nchw
}

TEST(DataParallel, DropoutHalvesDropWhatTheWholeBatchDrops) {
  graph::Builder b({16, 4, 4});
  const graph::Graph g = b.finish(b.dropout(b.input(), 0.5f));
  const int64_t half = 2, in = g.input_shape().numel();
  std::vector<float> x(static_cast<size_t>(2 * half * in), 1.f);
  for (const char* backend : {"cpu", "ref"}) {
    graph::ParamStore s(g);
    auto whole = backend::compile(backend, g, s, {.batch = 2 * half, .mode = backend::Mode::train, .seed = 9});
    whole->forward(x.data());
    for (int64_t r = 0; r < 2; ++r) {
      auto p = backend::compile(backend, g, s,
                                {.batch = half, .mode = backend::Mode::train, .seed = 9, .sample_offset = r * half});
      p->forward(x.data() + r * half * in);
      int64_t differ = 0;
      for (int64_t i = 0; i < half * in; ++i) differ += p->output()[i] != whole->output()[r * half * in + i];
      EXPECT_EQ(differ, 0) << backend << " half " << r;
    }
  }
}

TEST(DataParallel, GradientsReportedReadyAreFinal) {
  const graph::Graph g = net(16, true);
  const int64_t batch = 4;
  std::vector<float> x(static_cast<size_t>(batch * g.input_shape().numel()));
  std::vector<float> dy(static_cast<size_t>(batch * g.output_shape().numel()));
  Rng rng(2);
  for (float& v : x) v = static_cast<float>(rng.normal());
  for (float& v : dy) v = static_cast<float>(rng.normal());
  for (const char* backend : {"cpu", "ref"}) {
    graph::ParamStore s(g);
    s.init(g, 3);
    // What each gradient held when reported, against what it holds once backward ends.
    std::vector<std::vector<float>> seen(g.params.size());
    std::vector<int> order;
    auto p = backend::compile(backend, g, s,
                              {.batch = batch, .mode = backend::Mode::train, .grad_ready = [&](int i) {
                                 const float* d = s.grads[i].data<float>();
                                 seen[i].assign(d, d + s.grads[i].numel());
                                 order.push_back(i);
                               }});
    p->forward(x.data());
    p->backward(dy.data());
    EXPECT_EQ(order, p->grad_order()) << backend;
    for (size_t i = 0; i < g.params.size(); ++i) {
      if (!g.params[i].trainable()) continue;
      ASSERT_EQ(seen[i].size(), static_cast<size_t>(s.grads[i].numel())) << backend << ": never reported " << g.params[i].name;
      EXPECT_EQ(std::memcmp(seen[i].data(), s.grads[i].raw(), s.grads[i].nbytes()), 0)
          << backend << ": " << g.params[i].name << " changed after it was reported ready";
    }
  }
}
