// Shared by the inference tests of the cpu backend: random parameters with BN
// statistics worth folding, and a program's output against the reference backend.
#pragma once
#include <vector>

#include "backend/program.h"
#include "core/rng.h"
#include "graph/graph.h"
#include "graph/params.h"
#include "support.h"

namespace incres::testing_support {

// Random weights and non-trivial BN statistics, biases and betas in both stores
// (same values).
inline void randomise(const graph::Graph& g, graph::ParamStore& a, graph::ParamStore& b, uint64_t seed) {
  a.init(g, seed);
  for (size_t i = 0; i < g.params.size(); ++i) {
    const graph::Role role = g.params[i].role;
    Rng r(seed + i);
    float* v = a.values[i].data<float>();
    for (int64_t j = 0; j < a.values[i].numel(); ++j) {
      if (role == graph::Role::running_var || role == graph::Role::bn_gamma) v[j] = static_cast<float>(0.5 + r.uniform());
      else if (role == graph::Role::running_mean || role == graph::Role::bn_beta || role == graph::Role::bias)
        v[j] = static_cast<float>(0.1 * r.normal());
    }
    b.values[i] = a.values[i].clone();
  }
  a.changed();
  b.changed();
}

// The cpu backend's inference output (compiled with opt) against the reference's on
// a random batch; the cpu program's steps into *steps when asked.
inline double infer_error(const graph::Graph& g, backend::Options opt,
                          std::vector<backend::StepProfile>* steps = nullptr) {
  opt.mode = backend::Mode::infer;
  graph::ParamStore cpu_store(g), ref_store(g);
  randomise(g, cpu_store, ref_store, 11);
  std::vector<float> x(static_cast<size_t>(opt.batch * g.input_shape().numel()));
  Rng rng(5);
  for (float& v : x) v = static_cast<float>(rng.normal());
  auto cpu = backend::compile_cpu(g, cpu_store, opt);
  auto ref = backend::compile_ref(g, ref_store, {opt.batch, backend::Mode::infer});
  cpu->forward(x.data());
  ref->forward(x.data());
  if (steps) *steps = cpu->steps();
  return rel_err(cpu->output(), ref->output(), opt.batch * g.output_shape().numel());
}

}  // namespace incres::testing_support
