// Learning-rate schedules and milestone parsing.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <string>

#include "core/error.h"
#include "train/schedule.h"

namespace incres::train {
namespace {

// The message of the Error that f throws ("" when it throws none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Schedule, Constant) {
  ScheduleOptions o;
  o.kind = "constant";
  o.lr = 0.05;
  Schedule s(o);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.05);
  EXPECT_DOUBLE_EQ(s.lr(1000000), 0.05);
}

TEST(Schedule, MultistepWithThePapersResNet110Warmup) {
  // ResNet paper, Sec. 4.2: 0.01 for 400 iterations, then 0.1, /10 at 32k and 48k.
  ScheduleOptions o;
  o.lr = 0.1;
  o.milestones = {32000, 48000};
  o.warmup_iters = 400;
  o.warmup_lr = 0.01;
  Schedule s(o);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.01);
  EXPECT_DOUBLE_EQ(s.lr(399), 0.01);
  EXPECT_DOUBLE_EQ(s.lr(400), 0.1);
  EXPECT_DOUBLE_EQ(s.lr(31999), 0.1);
  EXPECT_NEAR(s.lr(32000), 0.01, 1e-15);  // a milestone applies at its own iteration
  EXPECT_NEAR(s.lr(47999), 0.01, 1e-15);
  EXPECT_NEAR(s.lr(48000), 0.001, 1e-15);
  EXPECT_NEAR(s.lr(64000), 0.001, 1e-15);
}

TEST(Schedule, LinearWarmup) {
  ScheduleOptions o;
  o.kind = "constant";
  o.lr = 0.4;
  o.warmup_iters = 10;
  o.warmup_lr = 0.1;
  o.warmup_kind = "linear";
  Schedule s(o);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.1);
  EXPECT_NEAR(s.lr(5), 0.25, 1e-15);
  EXPECT_NEAR(s.lr(9), 0.37, 1e-15);
  EXPECT_DOUBLE_EQ(s.lr(10), 0.4);
  // Under cosine the ramp still aims at lr; the cosine takes over at its own value.
  o.kind = "cosine";
  o.total_iters = 100;
  Schedule c(o);
  EXPECT_NEAR(c.lr(5), 0.25, 1e-15);
  EXPECT_NEAR(c.lr(10), 0.2 * (1 + std::cos(std::numbers::pi * 0.1)), 1e-15);
}

TEST(Schedule, ExponentialStaircaseOfTheInceptionRecipe) {
  // lr 0.045 x 0.94 every 2 epochs, 100 iterations per epoch: 200 iterations a period.
  ScheduleOptions o;
  o.kind = "exp";
  o.lr = 0.045;
  o.decay_rate = 0.94;
  o.decay_iters = 200;
  Schedule s(o);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.045);
  EXPECT_DOUBLE_EQ(s.lr(199), 0.045);  // staircase: flat within a period
  EXPECT_NEAR(s.lr(200), 0.045 * 0.94, 1e-15);
  EXPECT_NEAR(s.lr(399), 0.045 * 0.94, 1e-15);
  EXPECT_NEAR(s.lr(400), 0.045 * 0.94 * 0.94, 1e-15);
  EXPECT_NEAR(s.lr(200 * 50 + 7), 0.045 * std::pow(0.94, 50), 1e-15);
  // With a warm-up: the ramp replaces the first iterations, then the staircase
  // continues at the absolute iteration (the warm-up does not shift the periods).
  o.warmup_iters = 250;
  o.warmup_lr = 0.001;
  o.warmup_kind = "linear";
  Schedule w(o);
  EXPECT_DOUBLE_EQ(w.lr(0), 0.001);
  EXPECT_NEAR(w.lr(125), 0.001 + (0.045 - 0.001) * 0.5, 1e-15);
  EXPECT_NEAR(w.lr(249), 0.001 + (0.045 - 0.001) * 249 / 250, 1e-15);
  EXPECT_NEAR(w.lr(250), 0.045 * 0.94, 1e-15);  // in the second period already
  EXPECT_NEAR(w.lr(400), 0.045 * 0.94 * 0.94, 1e-15);
}

TEST(Schedule, Cosine) {
  ScheduleOptions o;
  o.kind = "cosine";
  o.lr = 0.1;
  o.final_lr = 0.001;
  o.total_iters = 1000;
  Schedule s(o);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.1);
  EXPECT_NEAR(s.lr(500), (0.1 + 0.001) / 2, 1e-15);
  EXPECT_NEAR(s.lr(250), 0.001 + 0.099 * 0.5 * (1 + std::cos(std::numbers::pi / 4)), 1e-15);
  EXPECT_DOUBLE_EQ(s.lr(1000), 0.001);
  EXPECT_DOUBLE_EQ(s.lr(5000), 0.001);
  for (int64_t i = 1; i <= 1000; ++i) ASSERT_LE(s.lr(i), s.lr(i - 1)) << "iteration " << i;
}

TEST(Schedule, OneCycleFollowsPyTorchShape) {
  // OneCycleLR(max_lr=1, total_steps=100, pct_start=0.3, div_factor=25,
  // final_div_factor=1e4): phase ends at steps 29 and 99.
  ScheduleOptions o;
  o.kind = "onecycle";
  o.lr = 1.0;
  o.total_iters = 100;
  Schedule s(o);
  const double initial = 1.0 / 25, min_lr = initial / 1e4;
  auto cos_anneal = [](double a, double b, double pct) {
    return b + (a - b) / 2 * (std::cos(std::numbers::pi * pct) + 1);
  };
  EXPECT_NEAR(s.lr(0), initial, 1e-15);
  EXPECT_NEAR(s.lr(10), cos_anneal(initial, 1.0, 10.0 / 29), 1e-15);
  EXPECT_NEAR(s.lr(29), 1.0, 1e-15);  // the peak
  EXPECT_NEAR(s.lr(64), cos_anneal(1.0, min_lr, 35.0 / 70), 1e-15);
  EXPECT_NEAR(s.lr(99), min_lr, 1e-15);
  EXPECT_NEAR(s.lr(150), min_lr, 1e-15);
  for (int64_t i = 1; i <= 29; ++i) ASSERT_GT(s.lr(i), s.lr(i - 1)) << "iteration " << i;
  for (int64_t i = 30; i <= 99; ++i) ASSERT_LT(s.lr(i), s.lr(i - 1)) << "iteration " << i;
}

TEST(Schedule, RejectsBadOptionsNamingThem) {
  auto make = [](auto edit) {
    return error_of([&] {
      ScheduleOptions o;
      edit(o);
      Schedule s(o);
    });
  };
  EXPECT_NE(make([](ScheduleOptions& o) { o.kind = "step"; }).find("kind 'step'"), std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) { o.lr = 0; }).find("lr"), std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) { o.milestones = {100, 50}; }).find("increasing"),
            std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) { o.kind = "cosine"; }).find("total_iters"),
            std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) { o.kind = "onecycle"; }).find("total_iters"),
            std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) {
              o.kind = "onecycle";
              o.total_iters = 100;
              o.onecycle_pct = 1.0;
            }).find("onecycle_pct"),
            std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) {
              o.warmup_iters = 10;
              o.warmup_kind = "exp";
            }).find("warmup_kind"),
            std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) {
              o.kind = "cosine";
              o.total_iters = 100;
              o.milestones = {50};
            }).find("milestones"),
            std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) { o.kind = "exp"; }).find("decay_iters"),
            std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) {
              o.kind = "exp";
              o.decay_iters = 10;
              o.decay_rate = 0;
            }).find("decay_rate"),
            std::string::npos);
  EXPECT_NE(make([](ScheduleOptions& o) {
              o.kind = "exp";
              o.decay_iters = 10;
              o.milestones = {5};
            }).find("milestones"),
            std::string::npos);
  EXPECT_EQ(make([](ScheduleOptions&) {}), "");  // the defaults are valid
  Schedule ok{ScheduleOptions{}};
  EXPECT_THROW(ok.lr(-1), Error);
}

TEST(ParseMilestones, IterationsAndEpochs) {
  EXPECT_EQ(parse_milestones("32000,48000", 0), (std::vector<int64_t>{32000, 48000}));
  EXPECT_EQ(parse_milestones("91e, 136e", 391), (std::vector<int64_t>{91 * 391, 136 * 391}));
  EXPECT_EQ(parse_milestones("100, 2e", 50), (std::vector<int64_t>{100, 100}));
  EXPECT_TRUE(parse_milestones("", 0).empty());
  EXPECT_TRUE(parse_milestones("  ", 0).empty());
}

TEST(ParseMilestones, RejectsMalformedItems) {
  EXPECT_NE(error_of([] { parse_milestones("32000,abc", 0); }).find("'abc'"), std::string::npos);
  EXPECT_THROW(parse_milestones("1.5e", 10), Error);
  EXPECT_THROW(parse_milestones("-5", 10), Error);
  EXPECT_THROW(parse_milestones("5,,6", 10), Error);
  EXPECT_THROW(parse_milestones("e", 10), Error);
  EXPECT_THROW(parse_milestones("1e4", 10), Error);  // not scientific notation
  EXPECT_NE(error_of([] { parse_milestones("91e", 0); }).find("per epoch"), std::string::npos);
  EXPECT_NE(error_of([] { parse_milestones("9000000000000000000e", 10); }).find("overflows"),
            std::string::npos);
}

}  // namespace
}  // namespace incres::train
