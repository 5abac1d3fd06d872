// The zoo-wide guard: every registered model, at the options a user can ask for,
// compiles for training and for inference (batch 2), in fp32 and (where the CPU has
// it) bf16, without a single step on one of
// oneDNN's reference implementations ("ref:any" and the like run 10-1000x slower
// than its jit kernels). Compile-only: primitives are created, nothing runs.
// ctest runs this file natively and, on AVX-512 CPUs, again under
// ONEDNN_MAX_CPU_ISA=AVX2 (label backend_avx2), since the layouts and kernels
// oneDNN picks differ between the two.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backend/program.h"
#include "graph/params.h"
#include "models/models.h"

namespace incres {
namespace {

struct GuardCase {
  std::string name;  // the test's name: model and options
  std::string model;
  models::ModelConfig cfg;
};

void PrintTo(const GuardCase& c, std::ostream* os) { *os << c.name; }

std::string width_name(double w) { return w == 1.0 ? "" : w == 0.5 ? "_w050" : "_w025"; }

std::vector<GuardCase> cases() {
  std::vector<GuardCase> out;
  for (const models::ModelInfo& m : models::registry()) {
    const std::string& n = m.name;
    if (n.rfind("inception", 0) == 0) {
      // Inception: the widths users train narrow nets at, at 75x75 and 139x139
      // (without the auxiliary head, which needs the 17x17 grid), and at the model's
      // own input with its heads.
      for (double w : {1.0, 0.5, 0.25}) {
        for (int64_t image : {int64_t{75}, int64_t{139}}) {
          models::ModelConfig c = m.defaults;
          c.width = w, c.image = image, c.aux = false;
          out.push_back({n + width_name(w) + "_" + std::to_string(image), n, c});
        }
        models::ModelConfig c = m.defaults;
        c.width = w;
        out.push_back({n + width_name(w), n, c});
        if (n == "inception_v3") {
          c.aux_bn = true;
          out.push_back({n + width_name(w) + "_auxbn", n, c});
        }
        if (n == "inception_mini") {
          c.factorize = 0;
          out.push_back({n + width_name(w) + "_unfactorised", n, c});
        }
      }
      // Grey inputs (Fashion-MNIST, upscaled).
      models::ModelConfig c = m.defaults;
      c.in_channels = 1, c.image = 75, c.aux = false, c.width = 0.25;
      out.push_back({n + "_w025_75_grey", n, c});
      continue;
    }
    for (int64_t channels : {int64_t{1}, int64_t{3}}) {
      models::ModelConfig c = m.defaults;
      c.in_channels = channels;
      out.push_back({n + (channels == 1 ? "_grey" : ""), n, c});
    }
    if (m.defaults.image == 224 && n.find("resnet50") != std::string::npos) {
      models::ModelConfig c = m.defaults;
      c.stride_on_3x3 = false;  // v1: the stride on the first 1x1
      out.push_back({n + "_v1", n, c});
    }
  }
  // The ResNet paper's shortcut options and the Identity Mappings paper's units and
  // shortcut maps, on a basic and a bottleneck CIFAR net.
  using models::ShortcutMap;
  using models::Unit;
  const std::pair<Unit, const char*> units[] = {{Unit::original, "original"},
                                                {Unit::bn_after_add, "bn_after_add"},
                                                {Unit::relu_before_add, "relu_before_add"},
                                                {Unit::relu_preact, "relu_preact"},
                                                {Unit::full_preact, "full_preact"}};
  const std::tuple<ShortcutMap, float, const char*> maps[] = {{ShortcutMap::identity, 0.f, "identity"},
                                                              {ShortcutMap::scaling, 0.5f, "scaling"},
                                                              {ShortcutMap::exclusive_gate, -6.f, "exclusive_gate"},
                                                              {ShortcutMap::shortcut_gate, 0.f, "shortcut_gate"},
                                                              {ShortcutMap::conv1x1, 0.f, "conv1x1"},
                                                              {ShortcutMap::dropout, 0.5f, "dropout"}};
  for (const char* model : {"resnet20", "preact_resnet164"}) {
    for (const auto& [unit, unit_name] : units)
      for (const auto& [map, param, map_name] : maps) {
        models::ModelConfig c = models::find_model(model).defaults;
        c.in_channels = 1;
        c.unit = unit, c.shortcut_map = map, c.shortcut_param = param;
        out.push_back({std::string(model) + "_" + unit_name + "_" + map_name, model, c});
      }
  }
  for (auto [shortcut, name] : {std::pair{models::Shortcut::A, "A"}, {models::Shortcut::B, "B"},
                                {models::Shortcut::C, "C"}}) {
    models::ModelConfig c = models::find_model("resnet20").defaults;
    c.shortcut = shortcut;
    out.push_back({std::string("resnet20_shortcut_") + name, "resnet20", c});
  }
  return out;
}

class ZooGuard : public testing::TestWithParam<GuardCase> {};

TEST_P(ZooGuard, NoReferenceKernels) {
  const GuardCase& gc = GetParam();
  const graph::Graph g = models::build_model(gc.model, gc.cfg);
  graph::ParamStore store(g);
  // fp32, and bf16 where the CPU has it (its layouts and kernels are other ones).
  std::vector<backend::Precision> precisions{backend::Precision::f32};
  if (backend::bf16_supported()) precisions.push_back(backend::Precision::bf16);
  for (backend::Precision precision : precisions)
    for (backend::Mode mode : {backend::Mode::train, backend::Mode::infer}) {
      auto p = backend::compile("cpu", g, store, {.batch = 2, .mode = mode, .precision = precision});
      const std::string what = std::string(mode == backend::Mode::train ? "train" : "infer") + " " +
                               backend::precision_name(precision);
      int slow = 0;
      for (const auto& s : p->steps())
        if (s.impl.find("ref") != std::string::npos && ++slow <= 5)
          ADD_FAILURE() << what << ": " << s.phase << " " << s.node << " (" << s.op << ", " << s.kind << ") runs "
                        << s.impl;
      EXPECT_EQ(slow, 0) << "steps on a reference implementation, " << what;
    }
}

INSTANTIATE_TEST_SUITE_P(Zoo, ZooGuard, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<GuardCase>& info) { return info.param.name; });

}  // namespace
}  // namespace incres
