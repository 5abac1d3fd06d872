// parity_dump: one small training run of a whole model, written to a safetensors file
// that tests/parity/torch_parity.py replays in PyTorch (STYLE.md §5, layer 3; after
// llm.c's test_gpt2.c, but with PyTorch run live instead of golden files).
//
// The run, all on one fixed batch (input ~ N(0, 1), labels uniform in [0, classes)):
// step k = 1..steps is a train-mode forward, smoothed cross-entropy, backward and
// Sgd::step(lr). The file holds
//   init.<name>          every param and buffer after ParamStore::init(seed)
//   input, labels        the batch (labels as I64)
//   logits, loss         the forward of step 1 (loss: 1 element)
//   grad.<name>          every trainable param's gradient from the backward of step 1
//   losses               the loss of every step (losses[0] == loss)
//   step<k>.<name>       every param and buffer (running stats too) after step k
//   momentum<k>.<name>   every trainable param's SGD momentum buffer after step k
// The per-step states let the PyTorch side replay each step from incres's own state
// (see torch_parity.py for why a free-running multi-step comparison is not enough).
// The metadata holds what the PyTorch side needs to build and train the same net.
//
// Usage: parity_dump --model resnet20 --shortcut A --backend cpu --out FILE
//                    [--image 16] [--batch 8] [--seed 1] [--steps 3] [--lr 0.1]
//                    [--smoothing 0.1] [--momentum 0.9] [--weight-decay 1e-4]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "backend/program.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "graph/graph.h"
#include "graph/params.h"
#include "io/safetensors.h"
#include "models/models.h"
#include "train/loss.h"
#include "train/optimizer.h"

namespace incres {
namespace {

struct Args {
  std::string model = "resnet20", shortcut = "A", backend = "cpu", out;
  int64_t image = 16;  // 16x16 keeps the ref backend fast; all three stages still run
  int64_t batch = 8;
  uint64_t seed = 1;
  int steps = 3;
  double lr = 0.1, smoothing = 0.1, momentum = 0.9, weight_decay = 1e-4;
};

const char* kUsage =
    "usage: parity_dump --model NAME --shortcut A|B --backend cpu|ref --out FILE "
    "[--image N] [--batch N] [--seed N] [--steps N] [--lr X] [--smoothing X] "
    "[--momentum X] [--weight-decay X]";

double parse_number(const std::string& flag, const std::string& v) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  INCRES_CHECK(used == v.size() && !v.empty(), flag, ": expected a number, got '", v, "'");
  return x;
}

int64_t parse_int(const std::string& flag, const std::string& v, int64_t lo, int64_t hi) {
  double x = parse_number(flag, v);
  INCRES_CHECK(x == static_cast<double>(static_cast<int64_t>(x)) && x >= lo && x <= hi, flag,
               ": expected an integer in [", lo, ", ", hi, "], got '", v, "'");
  return static_cast<int64_t>(x);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::puts(kUsage);
      std::exit(0);
    }
    INCRES_CHECK(i + 1 < argc, flag, ": missing value; ", kUsage);
    std::string v = argv[++i];
    if (flag == "--model") a.model = v;
    else if (flag == "--shortcut") a.shortcut = v;
    else if (flag == "--backend") a.backend = v;
    else if (flag == "--out") a.out = v;
    else if (flag == "--image") a.image = parse_int(flag, v, 8, 1024);
    else if (flag == "--batch") a.batch = parse_int(flag, v, 2, 4096);  // BN needs N > 1
    else if (flag == "--seed") a.seed = static_cast<uint64_t>(parse_int(flag, v, 0, 1ll << 53));
    else if (flag == "--steps") a.steps = static_cast<int>(parse_int(flag, v, 1, 1000));
    else if (flag == "--lr") a.lr = parse_number(flag, v);
    else if (flag == "--smoothing") a.smoothing = parse_number(flag, v);
    else if (flag == "--momentum") a.momentum = parse_number(flag, v);
    else if (flag == "--weight-decay") a.weight_decay = parse_number(flag, v);
    else fail("unknown flag '", flag, "'; ", kUsage);
  }
  INCRES_CHECK(!a.out.empty(), "--out is required; ", kUsage);
  return a;
}

// The shortest decimal that reads back as the same double (or, for_float, float).
std::string fmt(double x, bool for_float = false) {
  char buf[32];
  for (int digits = for_float ? 6 : 15;; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, x);
    double y = std::strtod(buf, nullptr);
    if (for_float ? static_cast<float>(y) == static_cast<float>(x) : y == x) return buf;
    if (digits >= 17) return buf;
  }
}

// The BatchNorm attributes of the graph, which the PyTorch side must copy; all BN
// nodes of the CIFAR nets share them, and we refuse a graph where they differ.
graph::BatchNorm bn_attrs(const graph::Graph& g) {
  const graph::BatchNorm* first = nullptr;
  for (const graph::Node& n : g.nodes) {
    const auto* bn = std::get_if<graph::BatchNorm>(&n.op);
    if (!bn) continue;
    if (!first) first = bn;
    INCRES_CHECK(bn->eps == first->eps && bn->momentum == first->momentum, n.name,
                 ": BatchNorm eps/momentum differ from the first BN node; torch_parity.py "
                 "assumes one setting per model");
  }
  INCRES_CHECK(first, "model has no BatchNorm node");
  return *first;
}

void run(const Args& a) {
  models::ModelConfig cfg{3, 10, a.image, models::parse_shortcut(a.shortcut)};
  graph::Graph g = models::build_model(a.model, cfg);
  const graph::BatchNorm bn = bn_attrs(g);
  const int64_t N = a.batch, K = g.output_shape().numel();
  INCRES_CHECK(g.output_shape().rank() == 1, a.model, ": expected logits of shape [K], got ",
               g.output_shape().str());

  graph::ParamStore store(g);
  store.init(g, a.seed);

  // The batch: its own stream of the seed, so it does not depend on how init draws.
  Rng rng(mix_key(a.seed, 0xba7c4));
  Tensor input(g.input_shape().with_batch(N));
  float* x = input.data<float>();
  for (int64_t i = 0; i < input.numel(); ++i) x[i] = static_cast<float>(rng.normal());
  Tensor labels(Shape{N}, DType::i64);
  std::vector<int32_t> labels32(N);
  for (int64_t i = 0; i < N; ++i) {
    labels32[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(K)));
    labels.data<int64_t>()[i] = labels32[i];
  }

  // Everything the file holds, in the order it is written.
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < g.params.size(); ++i)
    out.emplace_back("init." + g.params[i].name, store.values[i].clone());
  out.emplace_back("input", input.clone());
  out.emplace_back("labels", std::move(labels));

  auto prog = backend::compile(a.backend, g, store, {N, backend::Mode::train, false});
  train::Sgd sgd(g, store, {a.momentum, a.weight_decay, false, false});

  Tensor logits(Shape{N, K}), loss(Shape{1}), losses(Shape{a.steps});
  std::vector<float> dlogits(N * K);
  for (int step = 1; step <= a.steps; ++step) {
    prog->forward(input.data<float>());
    const float* y = prog->output();
    train::LossResult r = train::softmax_cross_entropy(y, labels32.data(), N, K,
                                                       static_cast<float>(a.smoothing),
                                                       dlogits.data());
    INCRES_CHECK(std::isfinite(r.loss), "step ", step, ": loss is ", r.loss);
    losses.data<float>()[step - 1] = static_cast<float>(r.loss);
    prog->backward(dlogits.data());
    if (step == 1) {
      std::copy(y, y + N * K, logits.data<float>());
      loss.data<float>()[0] = static_cast<float>(r.loss);
      out.emplace_back("logits", std::move(logits));
      out.emplace_back("loss", std::move(loss));
      for (size_t i = 0; i < g.params.size(); ++i)
        if (g.params[i].trainable())
          out.emplace_back("grad." + g.params[i].name, store.grads[i].clone());
    }
    sgd.step(a.lr);
    const std::string k = std::to_string(step);
    for (size_t i = 0; i < g.params.size(); ++i) {
      out.emplace_back("step" + k + "." + g.params[i].name, store.values[i].clone());
      if (g.params[i].trainable())
        out.emplace_back("momentum" + k + "." + g.params[i].name, sgd.state()[i].clone());
    }
    std::printf("parity_dump: %s/%s on %s, step %d: loss %.6f\n", a.model.c_str(),
                a.shortcut.c_str(), a.backend.c_str(), step, r.loss);
  }
  out.emplace_back("losses", std::move(losses));

  std::map<std::string, std::string> meta{
      {"format", "incres-parity-1"},
      {"model", a.model},
      {"shortcut", a.shortcut == "a" || a.shortcut == "A" ? "A" : "B"},
      {"backend", prog->backend_name()},
      {"in_channels", std::to_string(cfg.in_channels)},
      {"classes", std::to_string(cfg.classes)},
      {"image", std::to_string(cfg.image)},
      {"batch", std::to_string(N)},
      {"seed", std::to_string(a.seed)},
      {"steps", std::to_string(a.steps)},
      {"lr", fmt(a.lr)},
      {"momentum", fmt(a.momentum)},
      {"weight_decay", fmt(a.weight_decay)},
      {"nesterov", "false"},
      {"smoothing", fmt(a.smoothing)},
      {"bn_eps", fmt(bn.eps, true)},
      {"bn_momentum", fmt(bn.momentum, true)},
  };
  std::vector<std::pair<std::string, const Tensor*>> entries;
  for (const auto& [name, t] : out) entries.emplace_back(name, &t);
  io::save_safetensors(a.out, entries, meta);
  std::printf("parity_dump: wrote %zu tensors to %s\n", entries.size(), a.out.c_str());
}

}  // namespace
}  // namespace incres

int main(int argc, char** argv) {
  try {
    incres::run(incres::parse_args(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity_dump: %s\n", e.what());
    return 1;
  }
  return 0;
}
