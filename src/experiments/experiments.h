// The papers' findings as experiments: each one a set of training runs that differ
// in one factor only, a table of their final errors beside the paper's, a plot, and
// a verdict computed from the results. `incres experiment NAME` runs one: every run
// it needs (each resumable; finished runs are skipped), then the report.
#pragma once
#include <cstdint>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "train/trainer.h"

namespace incres::experiments {

// How big an experiment runs. The defaults are each experiment's own budget (about
// 90 minutes on a 2-core machine); --full is the paper's schedule and depth.
struct Options {
  std::string out = "runs";           // runs go to OUT/NAME/RUN-sSEED, the report to OUT/NAME
  std::string data = "fashion-mnist";  // as `incres train --data`
  bool full = false;
  int seeds = 0;                       // 0 = the experiment's default
  int64_t iters = 0;                   // 0 = the experiment's default (64000 with full)
  int64_t train_limit = -1, test_limit = -1;  // -1 = the experiment's default; 0 = all
  int64_t eval_every = 0;              // 0 = the experiment's default
  int64_t stop_after = 0;              // stop every run after this step, as if interrupted
  int workers = 2;
  bool progress = true;
  bool report_only = false;  // write the report from the runs there are; train nothing
};

// The scale the runs are built for: the iterations of the run (the warm-up of deep
// nets follows them) and whether it is the paper's full scale (the depth may differ).
struct Scale {
  bool full = false;
  int64_t iters = 0;
};

// One training run of an experiment: its configuration, less what the runner sets
// (seed, output folder, resume, length and data, which all runs share).
struct Run {
  std::string name;   // folder name and key: "plain56"
  std::string label;  // in the table and the plot: "plain-56"
  std::string group;  // the plot panel it is drawn in ("" = every panel)
  std::string paper;  // the paper's figure for it, as text ("6.97", "fails", "")
  train::TrainConfig config;
  // A run whose loss may go non-finite, as a result (Inception-ResNet without residual
  // scaling): it then ends there, recorded as diverged, and the experiment goes on.
  bool may_diverge = false;
};

// The final numbers of a run, or of the mean over its seeds.
struct Result {
  const Run* run = nullptr;
  int seeds = 0;                 // finished seeds averaged
  int64_t params = 0, macs = 0;
  double train_error = 0, test_error = 0, train_loss = 0;  // means over seeds
  double test_ece = 0;       // expected calibration error %, mean over seeds
  double train_seconds = 0;  // time spent in training steps, mean over seeds
  double test_error_sd = 0;      // sample standard deviation over seeds (0 for one)
  double test_error_min = 0, test_error_max = 0;
  // The fraction of exact zeros entering the last global pool at the end (mean over
  // seeds; NaN where not recorded): Inception-v4's dead units.
  double pool_zeros = std::nan("");
  // Seeds whose loss went non-finite (may_diverge runs), and seed 0's message.
  int diverged = 0;
  std::string diverged_at;
  // Seed 0's test error at each evaluation, with the training time spent by then.
  struct Point {
    int64_t step = 0;
    double train_seconds = 0, test_error = 0;
  };
  std::vector<Point> curve;
};

// A panel of the plot: `metrics` of the runs in `group` ("" = all) against steps, or
// against training time.
struct Panel {
  std::string title, group;
  // "train_error" (dashed), "test_error", "train_loss", "test_loss", "test_ece",
  // "pool_input_zeros" (the fraction of zeros entering the last global pool)
  std::vector<std::string> metrics;
  std::string ylabel;
  bool log_y = false;
  std::string x = "step";  // or "train_seconds"
};

struct Experiment {
  std::string name, title;
  std::string paper;        // where in which paper: "ResNet, Fig. 6 and Table 6"
  std::string paper_metric;  // what the paper column holds
  int seeds = 1;            // default number of seeds per run
  int64_t iters = 0;        // default budget (iterations of batch 128)
  int64_t train_limit = 0, test_limit = 0, eval_every = 0;  // defaults (0 = all / epoch ends)
  // The runs, for the scale chosen (the full scale may use deeper nets).
  std::function<std::vector<Run>(const Scale&)> runs;
  std::vector<Panel> panels;
  bool report_ece = false;  // the table shows each run's expected calibration error
  bool report_zeros = false;  // ... and the fraction of zeros entering the last pool
  // The finding checked on the results by run name: one sentence.
  std::function<std::string(const std::map<std::string, Result>&)> verdict;
};

// Every experiment, in the order of the papers.
const std::vector<Experiment>& catalog();
// Throws, listing the names, when there is none of that name.
const Experiment& find(const std::string& name);

// The scale of `e` under `o`.
Scale scale_of(const Experiment& e, const Options& o);
// The configuration of one run of `e` at seed `seed` under `o`, its folder set.
train::TrainConfig run_config(const Experiment& e, const Run& r, const Options& o, int seed);
// The `incres train` command that trains the same run.
std::string train_command(const train::TrainConfig& c);

// Trains every run of `e` that is not finished (resuming those interrupted), then
// writes OUT/NAME/report.md, results.tsv and plot.png. Returns the report's text.
// A run folder holding another configuration is refused, naming the difference.
std::string run(const Experiment& e, const Options& o);

}  // namespace incres::experiments
