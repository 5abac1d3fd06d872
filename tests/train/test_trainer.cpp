// The trainer's configuration: recipes and the model configuration a run builds.
#include <gtest/gtest.h>

#include <vector>

#include "../support.h"
#include "backend/program.h"
#include "core/error.h"
#include "core/rng.h"
#include "graph/builder.h"
#include "train/loss.h"
#include "train/trainer.h"

namespace incres::train {
namespace {

using testing_support::contains;
using testing_support::error_of;

TEST(Recipe, InceptionSetsThePapersRecipe) {
  TrainConfig c = recipe_defaults("inception");
  EXPECT_EQ(c.recipe, "inception");
  EXPECT_EQ(c.optimizer, "rmsprop");
  EXPECT_DOUBLE_EQ(c.rmsprop_decay, 0.9);
  EXPECT_DOUBLE_EQ(c.rmsprop_epsilon, 1.0);
  EXPECT_DOUBLE_EQ(c.momentum, 0.9);
  EXPECT_DOUBLE_EQ(c.lr, 0.045);
  EXPECT_EQ(c.schedule, "exp");
  EXPECT_DOUBLE_EQ(c.decay_rate, 0.94);
  EXPECT_DOUBLE_EQ(c.decay_epochs, 2);
  EXPECT_DOUBLE_EQ(c.clip_norm, 2.0);
  EXPECT_DOUBLE_EQ(c.label_smoothing, 0.1);
  EXPECT_DOUBLE_EQ(c.aux_weight, 0.4);
  EXPECT_DOUBLE_EQ(c.ema_decay, 0.9999);
  EXPECT_DOUBLE_EQ(c.weight_decay, 4e-5);
  EXPECT_TRUE(c.no_decay_bn_bias);
}

TEST(Recipe, ResNetIsTheDefaultConfiguration) {
  TrainConfig c = recipe_defaults("resnet"), d;
  EXPECT_EQ(to_json(c), to_json(d));
  EXPECT_EQ(c.optimizer, "sgd");
  EXPECT_DOUBLE_EQ(c.clip_norm, 0);
  EXPECT_DOUBLE_EQ(c.ema_decay, 0);
  EXPECT_TRUE(contains(error_of([] { recipe_defaults("vgg"); }), "unknown recipe 'vgg'"));
}

TEST(Recipe, DefaultFollowsTheModelFamily) {
  EXPECT_EQ(default_recipe("resnet20"), "resnet");
  EXPECT_EQ(default_recipe("preact_resnet164"), "resnet");
  EXPECT_EQ(default_recipe("inception_v3"), "inception");
  EXPECT_EQ(default_recipe("inception_resnet_v2"), "inception");
}

TEST(ModelConfig, StartsFromTheRegistryDefaults) {
  // preact_resnet110 is registered with pre-activation units and shortcut B: a run
  // must build that, not a plain ModelConfig's original units.
  models::ModelConfig p = model_config("preact_resnet110", "", 0, true, 1, 10);
  EXPECT_EQ(p.unit, models::Unit::full_preact);
  EXPECT_EQ(p.shortcut, models::Shortcut::B);
  EXPECT_EQ(p.image, 32);
  EXPECT_EQ(p.in_channels, 1);
  EXPECT_EQ(p.classes, 10);
  EXPECT_EQ(model_config("preact_resnet110", "A", 0, true, 1, 10).shortcut, models::Shortcut::A);
  EXPECT_EQ(model_config("resnet20", "", 0, true, 3, 100).shortcut, models::Shortcut::A);
  models::ModelConfig v3 = model_config("inception_v3", "", 0, true, 1, 10);
  EXPECT_EQ(v3.image, 299);
  EXPECT_TRUE(v3.aux);
  EXPECT_EQ(v3.classes, 10);  // the dataset's, not ImageNet's 1000
  EXPECT_EQ(model_config("inception_v3", "", 139, false, 1, 10).image, 139);
  EXPECT_FALSE(model_config("inception_v3", "", 139, false, 1, 10).aux);
  EXPECT_TRUE(contains(error_of([] { model_config("resnet21", "", 0, true, 1, 10); }), "unknown model"));
}

// conv -> ReLU -> pool, then two classifiers on the pooled features: "fc" (output 0)
// and "aux.fc" (an auxiliary output, as Inception-v3's head).
graph::Graph two_head_graph(int64_t aux_classes = 3) {
  graph::Builder b(Shape{2, 4, 4});
  int x = b.conv(b.input(), 3, 3, 1, 1, "conv1");
  x = b.relu(x);
  x = b.global_avg_pool(x);
  int main = b.linear(x, 3, "fc");
  int aux = b.linear(x, aux_classes, "aux.fc");
  return b.finish(main, {aux});
}

// The gradients after one OutputLosses step with aux weight w, and its result.
struct Step {
  OutputLosses::Result r;
  std::vector<std::vector<float>> grads;
  double main_check = 0, aux_check = 0;  // the losses recomputed from the outputs
};

Step step_with(double w) {
  graph::Graph g = two_head_graph();
  graph::ParamStore s(g);
  s.init(g, 5);
  auto p = backend::compile_ref(g, s, {.batch = 4, .mode = backend::Mode::train});
  std::vector<float> x(4 * 2 * 4 * 4);
  Rng rng(8);
  for (float& v : x) v = static_cast<float>(rng.normal());
  const std::vector<int32_t> labels = {0, 2, 1, 2};
  p->forward(x.data());
  OutputLosses losses(g, 4, 3, 0.1, w, "ref");  // the reference loss: compared exactly below
  Step out;
  out.r = losses.backward(*p, labels.data(), 4);
  out.main_check = softmax_cross_entropy(p->output(0), labels.data(), 4, 3, 0.1f, nullptr).loss;
  out.aux_check = softmax_cross_entropy(p->output(1), labels.data(), 4, 3, 0.1f, nullptr).loss;
  for (const Tensor& t : s.grads)
    out.grads.emplace_back(t.data<float>(), t.data<float>() + t.numel());
  return out;
}

TEST(ImageFolderData, TransformsFollowTheRecipeAndTheInputSize) {
  // He et al. 2015, Sec. 3.4: the shorter side in [256, 480] for 224 crops...
  auto s224 = std::get<data::ScaleAugment>(image_transform("resnet", 224, true, true));
  EXPECT_EQ(s224.size, 224);
  EXPECT_EQ(s224.min_side, 256);
  EXPECT_EQ(s224.max_side, 480);
  // ... scaled to other inputs (32 * 256 / 224 = 36.6, 32 * 480 / 224 = 68.6).
  auto s32 = std::get<data::ScaleAugment>(image_transform("resnet", 32, true, true));
  EXPECT_EQ(s32.min_side, 37);
  EXPECT_EQ(s32.max_side, 69);
  EXPECT_EQ(std::get<data::RandomResizedCrop>(image_transform("inception", 299, true, true)).size, 299);
  for (const char* recipe : {"resnet", "inception"}) {
    EXPECT_EQ(std::get<data::CenterCrop>(image_transform(recipe, 299, false, true)).size, 299);
    EXPECT_EQ(std::get<data::CenterCrop>(image_transform(recipe, 64, true, false)).size, 64);  // --no-augment
  }
  data::ImageLoaderOptions o = image_loader_options("resnet", 32, 16, false, false, 1, 0, true);
  EXPECT_EQ(o.mean, data::kImageNetMean);
  EXPECT_EQ(o.std, data::kImageNetStd);
  EXPECT_FALSE(o.shuffle);
  EXPECT_FALSE(o.drop_last);
  EXPECT_TRUE(o.skip_bad);
}

TEST(ImageFolderData, LimitKeepsEveryClassAndSpecsAreChecked) {
  data::ImageFolder f;
  f.classes = f.class_names = {"a", "b", "c"};
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 10; ++i) {
      f.files.push_back(f.classes[c] + "/" + std::to_string(i) + ".png");
      f.labels.push_back(c);
    }
  data::ImageFolder l = limit_files(f, 6);
  ASSERT_EQ(l.count(), 6);
  EXPECT_EQ(l.labels, (std::vector<int32_t>{0, 0, 1, 1, 2, 2}));
  EXPECT_EQ(limit_files(f, 0).count(), 30);
  EXPECT_TRUE(is_image_folder("imagefolder:/data/imagenet"));
  EXPECT_FALSE(is_image_folder("cifar10:/data"));
  EXPECT_EQ(image_folder_dir("imagefolder:/data/imagenet"), "/data/imagenet");
  EXPECT_TRUE(contains(error_of([] { image_folder_dir("imagefolder"); }), "imagefolder:DIR"));
  EXPECT_TRUE(contains(error_of([] { load_data("imagefolder:/x"); }), "decoded on the fly"));
}

TEST(OutputLosses, AuxiliaryLossIsWeightedInTheLossAndTheGradients) {
  const graph::Graph g = two_head_graph();
  const int conv = g.find_param("conv1.weight"), fc = g.find_param("fc.weight"),
            aux = g.find_param("aux.fc.weight");
  Step s0 = step_with(0), s1 = step_with(1), s4 = step_with(0.4);
  // Losses: main + 0.4 * aux, both label-smoothed; no aux loss at weight 0.
  EXPECT_DOUBLE_EQ(s4.r.main.loss, s4.main_check);
  EXPECT_DOUBLE_EQ(s4.r.aux, s4.aux_check);
  EXPECT_DOUBLE_EQ(s4.r.total, s4.main_check + 0.4 * s4.aux_check);
  EXPECT_EQ(s0.r.aux, 0);
  EXPECT_DOUBLE_EQ(s0.r.total, s0.main_check);
  for (size_t j = 0; j < s0.grads[aux].size(); ++j) {
    // The aux head learns from its own loss only, scaled by the weight.
    EXPECT_EQ(s0.grads[aux][j], 0.f) << j;
    EXPECT_NEAR(s4.grads[aux][j], 0.4 * s1.grads[aux][j], 1e-6 + 1e-5 * std::abs(s1.grads[aux][j])) << j;
  }
  bool aux_moves_head = false;
  for (float v : s1.grads[aux]) aux_moves_head |= v != 0;
  EXPECT_TRUE(aux_moves_head);
  // The main head does not see the aux loss.
  EXPECT_EQ(s0.grads[fc], s4.grads[fc]);
  // The shared trunk gets main + w * aux: linear in w.
  for (size_t j = 0; j < s0.grads[conv].size(); ++j) {
    double want = s0.grads[conv][j] + 0.4 * (s1.grads[conv][j] - s0.grads[conv][j]);
    EXPECT_NEAR(s4.grads[conv][j], want, 1e-6 + 1e-5 * std::abs(want)) << j;
  }
}

TEST(OutputLosses, RefusesOutputsThatAreNotClassLogits) {
  EXPECT_TRUE(contains(error_of([] { OutputLosses(two_head_graph(5), 4, 3, 0.1, 0.4); }),
                       "auxiliary output"));
  EXPECT_TRUE(contains(error_of([] { OutputLosses(two_head_graph(), 4, 10, 0.1, 0.4); }), "10 class logits"));
}

}  // namespace
}  // namespace incres::train
