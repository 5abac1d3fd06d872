// The trainer's configuration: recipes and the model configuration a run builds.
#include <gtest/gtest.h>

#include "../support.h"
#include "core/error.h"
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

}  // namespace
}  // namespace incres::train
