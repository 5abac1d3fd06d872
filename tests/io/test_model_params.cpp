// Saving a model's ParamStore to safetensors and loading it back, strictly: every
// mismatch in one error, and the target store untouched when anything is wrong.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "graph/params.h"
#include "io/model_params.h"
#include "io/safetensors.h"
#include "models/models.h"

namespace fs = std::filesystem;
using incres::DType;
using incres::Error;
using incres::Shape;
using incres::Tensor;
using incres::graph::Graph;
using incres::graph::ParamStore;
using incres::models::build_model;
using incres::models::ModelConfig;
namespace io = incres::io;

#include "support.h"

using incres::testing_support::contains;
using incres::testing_support::error_of;
using incres::testing_support::slurp;

namespace {

// Every byte of every value, to prove a store was (or was not) changed.
std::vector<std::vector<char>> snapshot(const ParamStore& s) {
  std::vector<std::vector<char>> out;
  for (const Tensor& t : s.values) {
    const char* p = static_cast<const char*>(t.raw());
    out.emplace_back(p, p + t.nbytes());
  }
  return out;
}

class ModelParams : public testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("incres-io-params-" + std::string(testing::UnitTest::GetInstance()->current_test_info()->name()) +
           "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }

  // Saves a freshly initialised model and returns the file's path.
  std::string save_model(const std::string& name, const ModelConfig& cfg, uint64_t seed,
                         std::vector<std::pair<std::string, const Tensor*>> extra = {}) {
    Graph g = build_model(name, cfg);
    ParamStore s(g);
    s.init(g, seed);
    auto entries = io::param_entries(g, s);
    entries.insert(entries.end(), extra.begin(), extra.end());
    const std::string path = (dir / (name + ".safetensors")).string();
    io::save_safetensors(path, entries, {{"model", name}});
    return path;
  }
  fs::path dir;
};

TEST_F(ModelParams, Resnet20SavedAndLoadedBackIsEqual) {
  Graph g = build_model("resnet20", {});
  ParamStore src(g);
  src.init(g, 7);
  // Make the BN buffers non-trivial so they are seen to travel too.
  for (size_t i = 0; i < g.params.size(); ++i)
    if (!g.params[i].trainable()) src.values[i].fill(0.5f + static_cast<float>(i));
  const std::string path = (dir / "r20.safetensors").string();
  io::save_safetensors(path, io::param_entries(g, src), {{"model", "resnet20"}});

  io::SafeTensors st = io::load_safetensors(path);
  EXPECT_EQ(st.tensors.size(), g.params.size());
  EXPECT_EQ(st.metadata.at("model"), "resnet20");
  EXPECT_TRUE(st.tensors.count("layer3.2.bn2.running_var"));

  ParamStore dst(g);
  io::LoadReport r = io::load_params(st, g, dst);
  EXPECT_TRUE(r.missing.empty() && r.unexpected.empty() && r.mismatched.empty());
  EXPECT_EQ(snapshot(dst), snapshot(src));
}

TEST_F(ModelParams, PytorchBatchNormCountersAreIgnored) {
  Tensor counter(Shape{}, DType::i64);
  const std::string path =
      save_model("resnet20", {}, 3, {{"bn1.num_batches_tracked", &counter},
                                     {"layer1.0.bn1.num_batches_tracked", &counter}});
  Graph g = build_model("resnet20", {});
  ParamStore dst(g);
  io::LoadReport r = io::load_params(io::load_safetensors(path), g, dst, /*strict=*/true);
  EXPECT_TRUE(r.unexpected.empty());
}

// Option A shortcuts have no parameters (ResNet paper, Sec. 3.3), so ResNet-20 and
// Plain-20 hold the same tensors and a file of one loads into the other.
TEST_F(ModelParams, OptionAResnetLoadsIntoThePlainNet) {
  const std::string path = save_model("resnet20", {}, 3);
  Graph plain = build_model("plain20", {});
  ParamStore dst(plain);
  EXPECT_NO_THROW(io::load_params(io::load_safetensors(path), plain, dst));
}

TEST_F(ModelParams, ExtraTensorsFailStrictLeaveStoreUntouchedAndLoadNonStrict) {
  // Option B adds a 1x1 projection + BN at layer2.0 and layer3.0: 2 x 5 extra tensors.
  const std::string path = save_model("resnet20", {.shortcut = incres::models::Shortcut::B}, 3);
  io::SafeTensors st = io::load_safetensors(path);
  Graph plain = build_model("plain20", {});
  ParamStore dst(plain);
  dst.init(plain, 11);
  const auto before = snapshot(dst);

  std::string msg = error_of([&] { io::load_params(st, plain, dst); });
  EXPECT_TRUE(contains(msg, "checkpoint '" + path + "' does not match the model: 10 unexpected ("));
  for (const char* name : {"layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
                           "layer2.0.downsample.1.bias", "layer2.0.downsample.1.running_mean",
                           "layer3.0.downsample.1.running_var"})
    EXPECT_TRUE(contains(msg, name));
  EXPECT_FALSE(contains(msg, "missing"));
  EXPECT_TRUE(contains(msg, "or load non-strict"));
  EXPECT_EQ(snapshot(dst), before);
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line";

  io::LoadReport r = io::load_params(st, plain, dst, /*strict=*/false);
  EXPECT_EQ(r.unexpected.size(), 10u);
  EXPECT_NE(snapshot(dst), before);
  const int conv1 = plain.find_param("conv1.weight");
  EXPECT_EQ(std::memcmp(dst.values[conv1].raw(), st.tensors.at("conv1.weight").raw(),
                        dst.values[conv1].nbytes()), 0);
}

TEST_F(ModelParams, MissingTensorsFailEvenNonStrict) {
  const std::string path = save_model("resnet20", {}, 3);
  io::SafeTensors st = io::load_safetensors(path);
  Graph b = build_model("resnet20", {.shortcut = incres::models::Shortcut::B});
  ParamStore dst(b);
  dst.init(b, 5);
  const auto before = snapshot(dst);
  for (bool strict : {true, false}) {
    std::string msg = error_of([&] { io::load_params(st, b, dst, strict); });
    EXPECT_TRUE(contains(msg, "10 missing (layer2.0.downsample.0.weight, layer2.0.downsample.1.weight, "
                              "layer2.0.downsample.1.bias, layer2.0.downsample.1.running_mean, "
                              "layer2.0.downsample.1.running_var, layer3.0.downsample.0.weight"));
    EXPECT_FALSE(contains(msg, "unexpected"));
    EXPECT_EQ(snapshot(dst), before);
  }
}

TEST_F(ModelParams, WrongShapesAndDtypesAreListed) {
  const std::string path = save_model("resnet20", {}, 3);
  io::SafeTensors st = io::load_safetensors(path);
  Graph g100 = build_model("resnet20", {.classes = 100});
  ParamStore dst(g100);
  const auto before = snapshot(dst);
  std::string msg = error_of([&] { io::load_params(st, g100, dst); });
  EXPECT_TRUE(contains(msg, "2 mismatched (fc.weight: expected [100, 64] F32, file has [10, 64] F32, "
                            "fc.bias: expected [100] F32, file has [10] F32)"));
  EXPECT_EQ(snapshot(dst), before);

  // A checkpoint stored in F64: same shape, wrong dtype.
  st.tensors.at("conv1.weight") = Tensor(Shape{16, 3, 3, 3}, DType::f64);
  Graph g = build_model("resnet20", {});
  ParamStore dst2(g);
  msg = error_of([&] { io::load_params(st, g, dst2); });
  EXPECT_TRUE(contains(msg, "1 mismatched (conv1.weight: expected [16, 3, 3, 3] F32, file has [16, 3, 3, 3] F64)"));
}

TEST_F(ModelParams, AllKindsOfMismatchInOneError) {
  const std::string path = save_model("resnet20", {}, 3);
  io::SafeTensors st = io::load_safetensors(path);
  st.tensors.erase("bn1.running_mean");
  st.tensors.emplace("head.weight", Tensor(Shape{3}));
  st.tensors.at("fc.bias") = Tensor(Shape{11});
  Graph g = build_model("resnet20", {});
  ParamStore dst(g);
  const auto before = snapshot(dst);

  io::LoadReport r = io::check_params(st, g);
  EXPECT_EQ(r.missing, std::vector<std::string>{"bn1.running_mean"});
  EXPECT_EQ(r.unexpected, std::vector<std::string>{"head.weight"});
  EXPECT_EQ(r.mismatched, std::vector<std::string>{"fc.bias: expected [10] F32, file has [11] F32"});

  std::string msg = error_of([&] { io::load_params(st, g, dst); });
  EXPECT_TRUE(contains(msg, "does not match the model: 1 missing (bn1.running_mean); 1 unexpected "
                            "(head.weight); 1 mismatched (fc.bias: expected [10] F32, file has [11] F32); "
                            "load a checkpoint of the same model and configuration"));
  EXPECT_FALSE(contains(msg, "non-strict"));
  EXPECT_EQ(snapshot(dst), before);
}

TEST_F(ModelParams, StoreMustBelongToTheGraph) {
  Graph g20 = build_model("resnet20", {});
  Graph g32 = build_model("resnet32", {});
  ParamStore s32(g32);
  EXPECT_TRUE(contains(error_of([&] { io::param_entries(g20, s32); }),
                       "param_entries: the ParamStore has"));
  io::SafeTensors st;
  EXPECT_TRUE(contains(error_of([&] { io::load_params(st, g20, s32); }), "load_params: the ParamStore"));
}

}  // namespace

namespace {

// A ResNet checkpoint offered to Inception-v3: one error that names what is missing
// (Inception's tensors), what is unexpected (the ResNet's) and what has the wrong
// shape (fc.weight, fc.bias: both models have them), and the Inception store untouched.
TEST_F(ModelParams, ResnetCheckpointIntoInceptionListsEverythingAndTouchesNothing) {
  ModelConfig r18 = incres::models::find_model("resnet18").defaults;
  Graph rg = build_model("resnet18", r18);
  ParamStore rs(rg);
  rs.init(rg, 1);
  const std::string path = (dir / "r18.safetensors").string();
  io::save_safetensors(path, io::param_entries(rg, rs), {{"model", "resnet18"}});

  ModelConfig v3 = incres::models::find_model("inception_v3").defaults;
  v3.image = 299;
  Graph ig = build_model("inception_v3", v3);
  ParamStore is(ig);
  is.init(ig, 2);
  const auto before = snapshot(is);
  io::SafeTensors st = io::load_safetensors(path);
  const io::LoadReport report = io::check_params(st, ig);
  EXPECT_EQ(report.missing.size() + 2, ig.params.size());  // all but fc.weight, fc.bias
  EXPECT_EQ(report.unexpected.size() + 2, rg.params.size());
  EXPECT_EQ(report.mismatched.size(), 1u);  // fc.weight: [1000, 2048] vs [1000, 512]
  const std::string e = error_of([&] { io::load_params(st, ig, is); });
  EXPECT_TRUE(contains(e, "Conv2d_1a_3x3.conv.weight"));  // missing
  EXPECT_TRUE(contains(e, "conv1.weight"));              // unexpected
  // Ten names of each list, then the count of the rest, not hundreds.
  EXPECT_TRUE(contains(e, ", and " + std::to_string(report.unexpected.size() - 10) + " more)"));
  EXPECT_FALSE(contains(e, "layer4.1.bn2.running_var"));
  EXPECT_TRUE(contains(e, "fc.weight: expected [1000, 2048]"));
  EXPECT_TRUE(contains(e, std::to_string(report.missing.size()) + " missing"));
  EXPECT_TRUE(contains(e, std::to_string(report.unexpected.size()) + " unexpected"));
  EXPECT_EQ(snapshot(is), before);
}

}  // namespace
