// The embedding API (include/incres/incres.h), linked as a program links it: against
// the shared library alone, through the public header (this target sees no internal
// header). Create, train, save, load, classify; every failure an incres::Error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <incres/incres.h>

namespace fs = std::filesystem;

namespace {

class Api : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() / ("incres_api_" + std::to_string(::getpid()));
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string path(const std::string& name) const { return (dir / name).string(); }
  fs::path dir;
};

std::vector<float> random_images(int64_t n, int64_t size, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> x(static_cast<size_t>(n * size));
  for (float& v : x) v = dist(gen);
  return x;
}

// The message of the incres::Error f throws ("" if it throws none; another exception
// type fails the test).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const incres::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not an incres::Error: " << e.what();
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST_F(Api, CreateTrainSaveAndLoadAgain) {
  incres::Model m = incres::Model::create("resnet20", {{"in-channels", "1"}}, 7, {.threads = 2});
  const incres::Info& info = m.info();
  EXPECT_EQ(info.model, "resnet20");
  EXPECT_EQ(info.params, 269434);  // ResNet-20 with a 1-channel first conv
  EXPECT_EQ(info.channels, 1);
  EXPECT_EQ(info.height, 32);
  EXPECT_EQ(info.width, 32);
  EXPECT_EQ(info.classes, 10);
  EXPECT_GT(info.macs, 40'000'000);

  // A fixed batch of 16 images and labels: a few SGD steps fit it.
  const int64_t n = 16, size = 32 * 32;
  const std::vector<float> x = random_images(n, size, 1);
  std::vector<int32_t> labels(n);
  for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<int32_t>(i % 10);
  const double first = m.train_step(x.data(), labels.data(), n, {.lr = 0.05});
  double last = first;
  for (int s = 0; s < 15; ++s) last = m.train_step(x.data(), labels.data(), n, {.lr = 0.05});
  EXPECT_TRUE(std::isfinite(first));
  EXPECT_LT(last, 0.5 * first) << "first " << first << ", last " << last;

  const std::vector<float> before = m.logits(x.data(), n);
  ASSERT_EQ(before.size(), static_cast<size_t>(n * 10));
  m.save(path("r20.safetensors"));
  incres::Model again = incres::Model::load(path("r20.safetensors"));
  EXPECT_EQ(again.info().params, info.params);
  EXPECT_EQ(again.logits(x.data(), n), before);  // the same weights and statistics, the same program

  // The same file as parameters only, with the architecture given.
  incres::Model weights = incres::Model::load(path("r20.safetensors"), "resnet20", {{"in-channels", "1"}});
  EXPECT_EQ(weights.logits(x.data(), n), before);
}

TEST_F(Api, ClassifyIsTheSoftmaxOfTheLogitsInOrder) {
  incres::Model m = incres::Model::create("resnet20", {{"in-channels", "1"}, {"shortcut", "B"}}, 3);
  const int64_t n = 3;
  const std::vector<float> x = random_images(n, 32 * 32, 2);
  const std::vector<float> l = m.logits(x.data(), n);
  const auto top = m.classify(x.data(), n, 10);
  ASSERT_EQ(top.size(), static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(top[i].size(), 10u);
    const float* row = l.data() + i * 10;
    EXPECT_EQ(top[i][0].index, std::max_element(row, row + 10) - row);
    double sum = 0;
    for (size_t r = 0; r < top[i].size(); ++r) {
      sum += top[i][r].probability;
      if (r > 0) EXPECT_GE(top[i][r - 1].probability, top[i][r].probability);
      EXPECT_EQ(top[i][r].name, "");  // a new model records no class names
    }
    EXPECT_NEAR(sum, 1.0, 1e-9);
    // p(a) / p(b) = exp(l(a) - l(b))
    const auto& a = top[i][0];
    const auto& b = top[i][9];
    EXPECT_NEAR(std::log(a.probability / b.probability), row[a.index] - row[b.index], 1e-4);
  }
  EXPECT_EQ(m.classify(x.data(), n, 2)[1].size(), 2u);

  // One thread or two: the same logits, within float reordering.
  m.set_threads(1);
  const std::vector<float> one = m.logits(x.data(), n);
  for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(one[i], l[i], 1e-4f * (1 + std::fabs(l[i])));
}

TEST_F(Api, EveryFailureIsOneIncresError) {
  EXPECT_TRUE(contains(error_of([&] { incres::Model::load(path("missing.safetensors")); }), "missing.safetensors"));
  EXPECT_TRUE(contains(error_of([] { incres::Model::create("nosuchnet"); }), "nosuchnet"));
  EXPECT_TRUE(contains(error_of([] { incres::Model::create("resnet20", {{"image", "big"}}); }), "image"));
  EXPECT_TRUE(contains(error_of([] { incres::Model::create("resnet20", {{"colour", "red"}}); }), "colour"));
  EXPECT_TRUE(contains(error_of([] { incres::Model::create("resnet20", {{"width", "0.5"}}); }), "--width"));
  incres::Model m = incres::Model::create("resnet20", {{"in-channels", "1"}});
  EXPECT_TRUE(contains(error_of([&] { m.logits(nullptr, 1); }), "null"));
  const std::vector<float> x = random_images(2, 32 * 32, 3);
  EXPECT_TRUE(contains(error_of([&] { m.classify(x.data(), 2, 0); }), "top"));
  EXPECT_TRUE(contains(error_of([&] { m.classify({path("a.png")}); }), "3-channel"));
  EXPECT_TRUE(contains(error_of([&] { m.set_threads(-1); }), "threads"));
  const std::vector<int32_t> bad = {0, 10};
  EXPECT_TRUE(contains(error_of([&] { m.train_step(x.data(), bad.data(), 2); }), "10"));
  // A checkpoint of another architecture: the loader's one line, naming the file.
  m.save(path("r20.safetensors"));
  EXPECT_TRUE(contains(error_of([&] { incres::Model::load(path("r20.safetensors"), "resnet32", {{"in-channels", "1"}}); }),
                       "does not match the model"));
  // An unwritable destination: an error, and nothing left behind.
  fs::create_directories(dir / "taken");
  EXPECT_FALSE(error_of([&] { m.save(path("taken")); }).empty());
  EXPECT_TRUE(fs::is_empty(dir / "taken"));

  incres::Model rgb = incres::Model::create("resnet20");
  EXPECT_TRUE(contains(error_of([&] { rgb.classify({path("no_such.png")}); }), "no_such.png"));
}

// bf16 where the CPU has it: logits within bf16's tolerance of fp32; elsewhere the
// refusal naming what is missing.
TEST_F(Api, Bf16InferenceOrItsRefusal) {
  const std::vector<float> x = random_images(2, 3 * 32 * 32, 4);
  incres::Model m = incres::Model::create("resnet20", {}, 5);
  const std::vector<float> f32 = m.logits(x.data(), 2);
  const std::string e = error_of([&] { m.set_precision(incres::Precision::bf16); });
  if (!e.empty()) {
    EXPECT_TRUE(contains(e, "AVX512-BF16 or AMX")) << e;
    EXPECT_TRUE(contains(error_of([] { incres::Model::create("resnet20", {}, 0, {.precision = incres::Precision::bf16}); }),
                         "AVX512-BF16"));
    GTEST_SKIP() << "no bf16 on this CPU: " << e;
  }
  const std::vector<float> bf16 = m.logits(x.data(), 2);
  double diff = 0, ref = 0;
  for (size_t i = 0; i < f32.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(bf16[i] - f32[i])));
    ref = std::max(ref, static_cast<double>(std::fabs(f32[i])));
  }
  EXPECT_LT(diff / ref, 1.6e-2);
  EXPECT_GT(diff, 0.0) << "bf16 gave fp32's logits bit for bit: did it run in fp32?";
  m.set_precision(incres::Precision::fp32);
  EXPECT_EQ(m.logits(x.data(), 2), f32);
}

TEST(ApiNames, EveryModelIsListed) {
  const std::vector<std::string> names = incres::model_names();
  for (const char* n : {"resnet20", "resnet50", "preact_resnet1001", "inception_v3", "inception_resnet_v2"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
}

}  // namespace
