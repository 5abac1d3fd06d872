// Learning-rate schedules as pure functions of the iteration, so resuming a run
// needs only the step count.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace incres::train {

struct ScheduleOptions {
  std::string kind = "multistep";  // multistep | exp | cosine | onecycle | constant
  double lr = 0.1;                 // base lr; the peak lr for onecycle
  std::vector<int64_t> milestones; // multistep: iterations where lr *= gamma, increasing
  double gamma = 0.1;
  // exp: lr * decay_rate^floor(iter / decay_iters), TF's exponential_decay with
  // staircase=True; the Inception recipe is 0.94 every 2 epochs.
  double decay_rate = 0.94;
  int64_t decay_iters = 0;
  // Warm-up replaces the schedule for iterations [0, warmup_iters). The ResNet paper
  // (Sec. 4.2) trains ResNet-110 at 0.01 for 400 iterations, then returns to 0.1.
  int64_t warmup_iters = 0;
  double warmup_lr = 0.01;
  std::string warmup_kind = "constant";  // constant | linear (from warmup_lr to lr)
  int64_t total_iters = 0;   // cosine and onecycle: the length of the run
  double final_lr = 0;       // cosine floor
  // onecycle, PyTorch OneCycleLR's names: pct_start, div_factor, final_div_factor.
  double onecycle_pct = 0.3;
  double onecycle_div = 25, onecycle_final_div = 1e4;
};

class Schedule {
 public:
  // Validates the options; throws incres::Error naming the offending option.
  explicit Schedule(ScheduleOptions opt);

  // The learning rate of iteration iter (0-based, >= 0). After warm-up every kind is
  // evaluated at the absolute iteration (the warm-up does not shift the schedule):
  //   constant   lr
  //   multistep  lr * gamma^(number of milestones <= iter)
  //   exp        lr * decay_rate^floor(iter / decay_iters)
  //   cosine     final_lr + (lr - final_lr) * 0.5 * (1 + cos(pi * iter / total_iters)),
  //              final_lr from total_iters on
  //   onecycle   PyTorch OneCycleLR (anneal_strategy="cos", three_phase=False): cosine
  //              from lr/div up to lr over the first pct of total_iters, then down to
  //              lr/div/final_div; the floor from total_iters on. Momentum is not cycled.
  double lr(int64_t iter) const;

  const ScheduleOptions& options() const { return opt_; }

 private:
  double main_lr(int64_t iter) const;
  ScheduleOptions opt_;
};

// Parses "32000,48000" (iterations) or "91e,136e" (a trailing 'e' means epochs,
// multiplied by iters_per_epoch, which must then be positive). Spaces around the
// numbers are allowed; an empty string gives no milestones.
std::vector<int64_t> parse_milestones(const std::string& csv, int64_t iters_per_epoch);

}  // namespace incres::train
