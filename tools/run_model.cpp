// run_model: one forward (and, in train mode, one backward) of a zoo model with weights
// and an input batch from safetensors files, written to a safetensors file. The
// torchvision parity test (tests/parity/zoo_parity.py) drives it: PyTorch writes the
// weights (torchvision names) and the batch, incres computes, PyTorch compares.
//
// Reads   --weights FILE: every param and buffer of the model (strict load)
//         --input FILE:   "input" (N x C x H x W, F32) and, for --mode train, "dy"
//                         (N x classes: d(loss)/d(logits)) and "aux_dy" (the same for
//                         the auxiliary logits, when the model has them)
// Writes  --out FILE:     "logits", "aux_logits" (train mode, when present) and in train
//                         mode "grad.<name>" for every trainable param and "state.<name>"
//                         for every BN running statistic after the step
//
// With --random-weights SEED instead of --weights, the weights are incres's own
// initialisation for SEED with random BN statistics and affine parameters (so that
// inference-mode BN is not the identity), and --save-weights FILE writes them: the
// ONNX export test (tests/onnx/onnx_parity.py) exports the same weights. With
// --calibrate-bn as well, the running statistics are then replaced by those of the
// input batch (one training-mode forward with BN momentum 1), the variances widened:
// random statistics blow up the activations of the deepest nets (ResNet-1202: inf),
// these keep them in scale.
// Any architecture option of `incres train` (--unit, --width, --factorize ...) is
// accepted as --NAME VALUE (--NAME alone for the flags).
//
// usage: run_model --model NAME (--weights W | --random-weights SEED [--save-weights W])
//                  --input X --out O [--mode infer|train] [--backend cpu|ref]
//                  [--classes N] [--no-aux] [--shortcut A|B|C] [--ARCH-OPTION V]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/program.h"
#include "core/error.h"
#include "core/rng.h"
#include "io/model_params.h"
#include "io/safetensors.h"
#include "models/models.h"

namespace incres {
namespace {

const char* kUsage =
    "usage: run_model --model NAME (--weights W.safetensors | --random-weights SEED [--save-weights W]) "
    "--input X.safetensors --out O.safetensors [--mode infer|train] [--backend cpu|ref] [--classes N] [--no-aux] "
    "[--shortcut A|B|C] [--ARCH-OPTION VALUE]";

// Random BN statistics and affine parameters, as the parity tests give PyTorch's.
void randomize_bn(const graph::Graph& g, graph::ParamStore& store, uint64_t seed) {
  Rng rng(seed ^ 0x5bd1e995u);
  for (size_t i = 0; i < g.params.size(); ++i) {
    float* v = store.values[i].data<float>();
    const int64_t n = store.values[i].numel();
    switch (g.params[i].role) {
      case graph::Role::bn_gamma: for (int64_t j = 0; j < n; ++j) v[j] = 0.5f + rng.uniform(); break;
      case graph::Role::bn_beta: for (int64_t j = 0; j < n; ++j) v[j] = 0.4f * rng.uniform() - 0.2f; break;
      case graph::Role::running_mean: for (int64_t j = 0; j < n; ++j) v[j] = 0.4f * rng.uniform() - 0.2f; break;
      case graph::Role::running_var: for (int64_t j = 0; j < n; ++j) v[j] = 0.5f + rng.uniform(); break;
      default: break;
    }
  }
  store.changed();
}

int run(int argc, char** argv) {
  std::string model, weights, save_weights, input, out, mode = "infer", backend = "cpu";
  int64_t random_seed = -1;
  bool calibrate_bn = false;
  std::vector<std::pair<std::string, std::string>> overrides, options;
  auto arch_option = [](const std::string& flag) -> const models::ArchOption* {
    for (const models::ArchOption& o : models::arch_options())
      if (flag == "--" + o.name) return &o;
    return nullptr;
  };
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::puts(kUsage);
      return 0;
    }
    if (flag == "--calibrate-bn") {
      calibrate_bn = true;
      continue;
    }
    if (flag == "--no-aux") {
      overrides.push_back({flag, ""});
      continue;
    }
    if (const models::ArchOption* o = arch_option(flag); o && o->flag) {
      options.push_back({o->name, "true"});
      continue;
    }
    INCRES_CHECK(i + 1 < argc, flag, ": missing value; ", kUsage);
    std::string v = argv[++i];
    if (flag == "--model") model = v;
    else if (flag == "--weights") weights = v;
    else if (flag == "--input") input = v;
    else if (flag == "--out") out = v;
    else if (flag == "--mode") mode = v;
    else if (flag == "--backend") backend = v;
    else if (flag == "--save-weights") save_weights = v;
    else if (flag == "--random-weights") random_seed = std::stoll(v);
    else if (flag == "--classes" || flag == "--shortcut")
      overrides.push_back({flag, v});
    else if (const models::ArchOption* o = arch_option(flag)) options.push_back({o->name, v});
    else fail("unknown flag '", flag, "'; ", kUsage);
  }
  INCRES_CHECK(!model.empty() && weights.empty() != (random_seed < 0) && !input.empty() && !out.empty(), kUsage);
  INCRES_CHECK(mode == "infer" || mode == "train", "--mode must be infer or train, got ", mode);

  io::SafeTensors x = io::load_safetensors(input);
  INCRES_CHECK(x.tensors.count("input"), input, " holds no tensor named input");
  const Tensor& in = x.tensors.at("input");
  INCRES_CHECK(in.shape().rank() == 4 && in.dtype() == DType::f32, input, ": input must be F32 N x C x H x W");

  models::ModelConfig cfg = models::find_model(model).defaults;
  cfg.in_channels = in.shape()[1];
  cfg.image = in.shape()[2];
  for (const auto& [flag, v] : overrides) {
    if (flag == "--no-aux") cfg.aux = false;
    else if (flag == "--classes") cfg.classes = std::stoll(v);
    else if (flag == "--shortcut") cfg.shortcut = models::parse_shortcut(v);
  }
  for (const auto& [key, v] : options) models::set_option(cfg, key, v);
  const graph::Graph g = models::build_model(model, cfg);
  graph::ParamStore store(g);
  if (random_seed >= 0) {
    store.init(g, static_cast<uint64_t>(random_seed));
    randomize_bn(g, store, static_cast<uint64_t>(random_seed));
    if (calibrate_bn) {
      graph::Graph once = g;
      for (graph::Node& n : once.nodes)
        if (auto* bn = std::get_if<graph::BatchNorm>(&n.op)) bn->momentum = 1.f;
      backend::Options t;
      t.batch = in.shape()[0];
      t.mode = backend::Mode::train;
      backend::compile(backend, once, store, t)->forward(in.data<float>());
      // Variances of a batch of 2 can be near zero (a channel ReLU zeroed); dividing by
      // them makes deep plain nets chaotic. Widened by a random factor in [1, 2], they
      // shrink activations instead, which a relative comparison does not mind.
      Rng rng(static_cast<uint64_t>(random_seed) + 7);
      for (size_t i = 0; i < g.params.size(); ++i) {
        if (g.params[i].role != graph::Role::running_var) continue;
        float* v = store.values[i].data<float>();
        for (int64_t j = 0; j < store.values[i].numel(); ++j) v[j] = v[j] * static_cast<float>(1 + rng.uniform()) + 1e-3f;
      }
      store.changed();
    }
    if (!save_weights.empty()) io::save_safetensors(save_weights, io::param_entries(g, store), {{"model", model}});
  } else {
    io::load_params(io::load_safetensors(weights), g, store, true);
  }

  backend::Options opt;
  opt.batch = in.shape()[0];
  opt.mode = mode == "train" ? backend::Mode::train : backend::Mode::infer;
  auto prog = backend::compile(backend, g, store, opt);
  prog->forward(in.data<float>());

  const int64_t K = g.output_shape().numel();
  std::vector<Tensor> results;
  std::vector<std::string> names;
  results.reserve(2 + 2 * g.params.size());
  auto keep = [&](const std::string& name, const float* data, Shape shape) {
    Tensor t(std::move(shape));
    std::memcpy(t.raw(), data, t.nbytes());
    results.push_back(std::move(t));
    names.push_back(name);
  };
  keep("logits", prog->output(), Shape{opt.batch, K});
  if (opt.mode == backend::Mode::train) {
    INCRES_CHECK(x.tensors.count("dy"), input, " holds no tensor named dy (needed in train mode)");
    const bool aux = !g.aux_outputs.empty();
    if (aux) keep("aux_logits", prog->output(1), Shape{opt.batch, K});
    std::vector<const float*> aux_dy;
    if (aux) {
      INCRES_CHECK(x.tensors.count("aux_dy"), input, " holds no aux_dy for the auxiliary head");
      aux_dy.push_back(x.tensors.at("aux_dy").data<float>());
    }
    prog->backward(x.tensors.at("dy").data<float>(), aux_dy);
    for (size_t i = 0; i < g.params.size(); ++i) {
      const graph::Param& p = g.params[i];
      if (p.trainable()) keep("grad." + p.name, store.grads[i].data<float>(), p.shape);
      else keep("state." + p.name, store.values[i].data<float>(), p.shape);
    }
  }
  std::vector<std::pair<std::string, const Tensor*>> entries;
  for (size_t i = 0; i < results.size(); ++i) entries.push_back({names[i], &results[i]});
  io::save_safetensors(out, entries, {{"model", model}, {"backend", prog->backend_name()}});
  return 0;
}

}  // namespace
}  // namespace incres

int main(int argc, char** argv) {
  try {
    return incres::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "run_model: %s\n", e.what());
    return 2;
  }
}
