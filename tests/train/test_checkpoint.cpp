// Checkpoints with optimizer state and a moving average: the tensor names, a resume
// that continues bit for bit, and loads that refuse a mismatch without touching
// anything.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "../support.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "train/checkpoint.h"
#include "train/ema.h"
#include "train/optimizer.h"
#include "train/tiny_model.h"

namespace incres::train {
namespace {

namespace fs = std::filesystem;
using testing_support::contains;
using testing_support::error_of;
using tiny::fill_grads;
using tiny::nudge_values;
using tiny::tiny_graph;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "incres-ckpt-XXXXXX").string();
    INCRES_CHECK(::mkdtemp(t.data()), "mkdtemp failed");
    path = t;
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const char* name) const { return (path / name).string(); }
};

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.empty() || b.empty()) return a.empty() && b.empty();  // an empty Tensor has no data
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// One training step as the trainer takes it, without a network: the values move
// (a forward pass updates BN statistics), gradients arrive, the optimizer steps and
// the average follows.
void fake_step(graph::ParamStore& s, Optimizer& opt, Ema& ema, int64_t step) {
  nudge_values(s, 1000 + step);
  fill_grads(s, 2000 + step);
  opt.step(0.045);
  ema.update(step);
}

TEST(Checkpoint, RmsPropAndEmaResumeBitForBit) {
  TempDir dir;
  graph::Graph g = tiny_graph();
  graph::ParamStore a(g);
  a.init(g, 3);
  RmsProp oa(g, a, {});
  Ema ea(g, a, 0.9999);
  for (int64_t k = 0; k < 3; ++k) fake_step(a, oa, ea, k);
  CheckpointState cs;
  cs.step = 3;
  cs.seed = 7;
  cs.model = "tiny";
  save_checkpoint(dir.file("c.safetensors"), g, a, &oa, &ea, cs);

  // The names: "optimizer.<slot>.<param>" and "ema.<param>" (buffers included).
  io::SafeTensors st = io::load_safetensors(dir.file("c.safetensors"));
  EXPECT_EQ(st.metadata.at("optimizer"), "rmsprop");
  for (const char* key : {"conv1.weight", "optimizer.rms.conv1.weight", "optimizer.momentum.fc.bias",
                          "ema.conv1.weight", "ema.bn1.running_mean", "ema.bn1.running_var"})
    EXPECT_TRUE(st.tensors.count(key)) << key;
  EXPECT_FALSE(st.tensors.count("optimizer.rms.bn1.running_mean"));  // buffers have no optimizer state

  // A fresh process: new store, optimizer and average, loaded from the file.
  graph::ParamStore b(g);
  b.init(g, 99);
  RmsProp ob(g, b, {});
  Ema eb(g, b, 0.9999);
  CheckpointState loaded = load_checkpoint(dir.file("c.safetensors"), g, b, &ob, &eb);
  EXPECT_EQ(loaded.step, 3);
  EXPECT_EQ(loaded.optimizer, "rmsprop");
  EXPECT_TRUE(loaded.has_ema);
  for (int64_t k = 3; k < 6; ++k) {
    fake_step(a, oa, ea, k);
    fake_step(b, ob, eb, k);
  }
  for (size_t i = 0; i < g.params.size(); ++i) {
    const std::string& n = g.params[i].name;
    EXPECT_TRUE(same_bytes(a.values[i], b.values[i])) << n;
    EXPECT_TRUE(same_bytes(ea.averages().values[i], eb.averages().values[i])) << "ema." << n;
    for (size_t k = 0; k < oa.num_slots(); ++k)
      EXPECT_TRUE(same_bytes(oa.slot(k)[i], ob.slot(k)[i])) << oa.slot_name(k) << "." << n;
  }
}

TEST(Checkpoint, RefusesAnotherOptimizersStateAndLeavesEverythingUntouched) {
  TempDir dir;
  graph::Graph g = tiny_graph();
  graph::ParamStore a(g);
  a.init(g, 3);
  RmsProp oa(g, a, {});
  fill_grads(a, 1);
  oa.step(0.1);
  save_checkpoint(dir.file("r.safetensors"), g, a, &oa, nullptr, {});

  graph::ParamStore b(g);
  b.init(g, 4);
  const Tensor before = b.values[0].clone();
  Sgd sgd(g, b, {});
  std::string e = error_of([&] { load_checkpoint(dir.file("r.safetensors"), g, b, &sgd); });
  EXPECT_TRUE(contains(e, "rmsprop"));
  EXPECT_TRUE(contains(e, "--optimizer rmsprop"));
  EXPECT_TRUE(same_bytes(before, b.values[0])) << "a refused load changed the weights";
  // Asked for no optimizer (evaluation), the same file loads.
  load_checkpoint(dir.file("r.safetensors"), g, b, nullptr);
  EXPECT_TRUE(same_bytes(a.values[0], b.values[0]));
}

TEST(Checkpoint, IncompleteMovingAverageIsRefused) {
  TempDir dir;
  graph::Graph g = tiny_graph();
  graph::ParamStore a(g);
  a.init(g, 3);
  Ema ea(g, a, 0.99);
  Sgd sa(g, a, {});
  save_checkpoint(dir.file("e.safetensors"), g, a, &sa, &ea, {});
  // Rewrite the file without one average.
  io::SafeTensors st = io::load_safetensors(dir.file("e.safetensors"));
  std::vector<std::pair<std::string, const Tensor*>> entries;
  for (const auto& [name, t] : st.tensors)
    if (name != "ema.bn1.running_var") entries.emplace_back(name, &t);
  io::save_safetensors(dir.file("cut.safetensors"), entries, st.metadata);

  graph::ParamStore b(g);
  Ema eb(g, b, 0.99);
  Sgd sb(g, b, {});
  std::string e = error_of([&] { load_checkpoint(dir.file("cut.safetensors"), g, b, &sb, &eb); });
  EXPECT_TRUE(contains(e, "ema.bn1.running_var"));
  EXPECT_TRUE(contains(e, "missing"));
  EXPECT_EQ(b.values[g.find_param("fc.weight")].data<float>()[0], 0.f) << "a refused load changed the weights";
}

TEST(Checkpoint, SgdMomentumKeepsItsName) {
  // SGD's slot is "momentum": files written before the optimizer interface load.
  TempDir dir;
  graph::Graph g = tiny_graph();
  graph::ParamStore a(g);
  a.init(g, 3);
  Sgd sa(g, a, {});
  fill_grads(a, 1);
  sa.step(0.1);
  save_checkpoint(dir.file("s.safetensors"), g, a, &sa, nullptr, {});
  io::SafeTensors st = io::load_safetensors(dir.file("s.safetensors"));
  EXPECT_TRUE(st.tensors.count("optimizer.momentum.conv1.weight"));
  EXPECT_EQ(st.metadata.at("optimizer"), "sgd");
  graph::ParamStore b(g);
  Sgd sb(g, b, {});
  CheckpointState s = load_checkpoint(dir.file("s.safetensors"), g, b, &sb);
  EXPECT_EQ(s.optimizer, "sgd");
  EXPECT_FALSE(s.has_ema);
  int w = g.find_param("conv1.weight");
  EXPECT_TRUE(same_bytes(sa.state()[w], sb.state()[w]));
}

TEST(Checkpoint, RefusesNonFiniteAverages) {
  TempDir dir;
  graph::Graph g = tiny_graph();
  graph::ParamStore a(g);
  a.init(g, 3);
  Ema ea(g, a, 0.99);
  ea.averages().values[g.find_param("fc.bias")].data<float>()[0] = std::nanf("");
  std::string e = error_of([&] { save_checkpoint(dir.file("n.safetensors"), g, a, nullptr, &ea, {}); });
  EXPECT_TRUE(contains(e, "fc.bias"));
  EXPECT_FALSE(fs::exists(dir.file("n.safetensors")));
}

}  // namespace
}  // namespace incres::train
