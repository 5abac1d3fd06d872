#include "experiments/experiments.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "core/text.h"
#include "train/plot.h"

namespace incres::experiments {

namespace fs = std::filesystem;

const Experiment& find(const std::string& name) {
  std::string names;
  for (const Experiment& e : catalog()) {
    if (e.name == name) return e;
    names += (names.empty() ? "" : ", ") + e.name;
  }
  fail("no experiment named '", name, "'; there are: ", names);
}

Scale scale_of(const Experiment& e, const Options& o) {
  return {.full = o.full, .iters = o.iters > 0 ? o.iters : o.full ? 64000 : e.iters};
}

train::TrainConfig run_config(const Experiment& e, const Run& r, const Options& o, int seed) {
  train::TrainConfig c = r.config;
  c.data = o.data;
  c.iters = scale_of(e, o).iters;
  c.epochs = 0;
  c.train_limit = o.train_limit >= 0 ? o.train_limit : o.full ? 0 : e.train_limit;
  c.test_limit = o.test_limit >= 0 ? o.test_limit : o.full ? 0 : e.test_limit;
  c.eval_every = o.eval_every > 0 ? o.eval_every : o.full ? 2000 : e.eval_every;
  c.seed = static_cast<uint64_t>(seed);
  c.workers = o.workers;
  c.progress = o.progress;
  c.stop_after = o.stop_after;
  c.out_dir = (fs::path(o.out) / e.name / cat(r.name, "-s", seed)).string();
  return c;
}

std::string train_command(const train::TrainConfig& c) {
  const train::TrainConfig d = [&] {
    train::TrainConfig t;
    train::apply_recipe(t, c.recipe);
    return t;
  }();
  std::ostringstream s;
  s << "incres train " << c.model;
  auto flag = [&](const char* name, const auto& v, const auto& dv) {
    if (v != dv) s << " " << name << " " << v;
  };
  if (!c.shortcut.empty()) s << " --shortcut " << c.shortcut;
  if (c.image > 0) s << " --image " << c.image;
  if (!c.aux) s << " --no-aux";
  for (const auto& [k, v] : c.model_options) s << " --" << k << (v == "true" ? "" : " " + v);
  if (c.data != d.data) s << " --data " << c.data;
  if (c.recipe != train::default_recipe(c.model)) s << " --recipe " << c.recipe;
  flag("--iters", c.iters, d.iters);
  flag("--batch", c.batch, d.batch);
  flag("--lr", c.lr, d.lr);
  flag("--schedule", c.schedule, d.schedule);
  flag("--milestones", c.milestones, d.milestones);
  flag("--warmup-iters", c.warmup_iters, d.warmup_iters);
  flag("--warmup-lr", c.warmup_lr, d.warmup_lr);
  flag("--weight-decay", c.weight_decay, d.weight_decay);
  flag("--label-smoothing", c.label_smoothing, d.label_smoothing);
  flag("--aux-weight", c.aux_weight, d.aux_weight);
  flag("--train-limit", c.train_limit, d.train_limit);
  flag("--test-limit", c.test_limit, d.test_limit);
  flag("--eval-every", c.eval_every, d.eval_every);
  flag("--seed", c.seed, d.seed);
  if (!c.out_dir.empty()) s << " --out " << c.out_dir;
  return s.str();
}

namespace {

// What a run folder records about its run: the configuration it was started with
// (to refuse another one there) and, once finished, the model's size.
const char* kRunFile = "experiment-run.json";
const char* kDoneFile = "experiment-result.json";

// The keys of two configurations that differ, as "key: recorded -> given".
std::string differences(const nlohmann::json& recorded, const nlohmann::json& given) {
  std::string out;
  for (auto it = given.begin(); it != given.end(); ++it) {
    const nlohmann::json was = recorded.contains(it.key()) ? recorded[it.key()] : nlohmann::json();
    if (was != it.value()) out += cat(out.empty() ? "" : "; ", it.key(), " ", was.dump(), " -> ", it.value().dump());
  }
  return out;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in, nullptr, false);
}

void write_json(const fs::path& p, const nlohmann::json& j) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    INCRES_CHECK(out.good(), "cannot write ", tmp.string());
  }
  fs::rename(tmp, p);
}

// Trains one run to its end (or to stop_after), resuming where it stopped. True when
// the run is finished.
bool train_run(const Run& r, train::TrainConfig c) {
  const fs::path dir(c.out_dir);
  nlohmann::json recorded_config = train::to_json(c);
  if (fs::exists(dir / kRunFile)) {
    const nlohmann::json was = read_json(dir / kRunFile);
    const std::string diff = differences(was, recorded_config);
    INCRES_CHECK(diff.empty(), dir.string(), " holds a run of another configuration (", diff,
                 "); choose another --out, or remove the folder to start again");
    if (fs::exists(dir / kDoneFile)) return true;
  } else {
    fs::create_directories(dir);
    write_json(dir / kRunFile, recorded_config);
  }
  if (fs::exists(dir / "last.safetensors")) c.resume = (dir / "last.safetensors").string();
  log_info(cat("run ", r.name, " seed ", c.seed, c.resume.empty() ? "" : " (resuming)", ": ", train_command(c)));
  train::TrainResult t;
  try {
    t = train::run_training(c);
  } catch (const Error& e) {
    const std::string what = e.what();
    // The trainer's own checks, or the checkpoint's refusal to save a NaN statistic.
    const bool nonfinite = what.find("loss is ") != std::string::npos ||
                           what.find("gradient norm is ") != std::string::npos ||
                           what.find("holds NaN or Inf") != std::string::npos;
    if (!r.may_diverge || !nonfinite) fail("run ", r.name, " seed ", c.seed, ": ", what);
    log_info(cat("run ", r.name, " seed ", c.seed, " diverged, as this experiment allows: ", what));
    train::plot_run(c.out_dir);
    write_json(dir / kDoneFile, {{"diverged", what.substr(0, what.find("; stopping"))}});
    return true;
  }
  train::plot_run(c.out_dir);
  const std::vector<nlohmann::json> rows = train::read_metrics((dir / "metrics.jsonl").string());
  if (t.steps < c.iters || rows.empty() || rows.back()["step"].get<int64_t>() != c.iters) return false;
  write_json(dir / kDoneFile, {{"params", t.params}, {"macs", t.macs}, {"steps", t.steps}});
  return true;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

double sample_sd(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

// The mean curve of a run over its seeds' rows, by step: step, then the metrics.
const std::vector<std::string> kCurveMetrics = {"train_error", "test_error",       "train_loss",   "test_loss",
                                                "test_ece",    "pool_input_zeros", "train_seconds"};

// The column of a curve file that holds `metric` (gnuplot counts from 1; 1 is the step).
size_t curve_column(const std::string& metric) {
  if (metric == "step") return 1;
  const auto it = std::find(kCurveMetrics.begin(), kCurveMetrics.end(), metric);
  INCRES_CHECK(it != kCurveMetrics.end(), "experiments: no curve of '", metric, "'");
  return static_cast<size_t>(it - kCurveMetrics.begin()) + 2;
}
void write_curve(const fs::path& path, const std::vector<std::vector<nlohmann::json>>& seeds) {
  std::map<int64_t, std::vector<std::vector<double>>> at;  // step -> metric -> values
  for (const auto& rows : seeds)
    for (const nlohmann::json& row : rows) {
      auto& m = at[row["step"].get<int64_t>()];
      m.resize(kCurveMetrics.size());
      for (size_t i = 0; i < kCurveMetrics.size(); ++i)
        if (row.contains(kCurveMetrics[i]) && row[kCurveMetrics[i]].is_number())
          m[i].push_back(row[kCurveMetrics[i]].get<double>());
    }
  std::ofstream out(path);
  out << "step";
  for (const std::string& m : kCurveMetrics) out << "\t" << m;
  out << "\n";
  for (const auto& [step, m] : at) {
    out << step;
    for (const auto& v : m) out << "\t" << (v.empty() ? std::string("NaN") : std::to_string(mean(v)));
    out << "\n";
  }
}

void plot(const Experiment& e, const std::vector<Run>& runs, const fs::path& dir) {
  // One row of panels; more than four wrap into two rows.
  const size_t n = e.panels.size(), cols = n > 4 ? (n + 1) / 2 : n, rows = (n + cols - 1) / cols;
  std::string s = cat("set terminal pngcairo size ", 520 * cols, ",", 460 * rows, " font ',10'\nset output ",
                      train::gnuplot_quote((dir / "plot.png").string()), "\nset multiplot layout ", rows, ",", cols,
                      " title ", train::gnuplot_quote(e.title + " (" + e.paper + ")"),
                      "\nset grid\nset key top right\n");
  for (const Panel& p : e.panels) {
    s += cat("set title ", train::gnuplot_quote(p.title), "\nset ylabel ", train::gnuplot_quote(p.ylabel),
             "\nset xlabel ", p.x == "step" ? "'iterations'" : "'training time (s)'", "\n",
             p.log_y ? "set logscale y\n" : "unset logscale y\n", "plot ");
    bool first = true;
    int colour = 0;  // by position in the panel: the same depth draws alike in every panel
    for (size_t r = 0; r < runs.size(); ++r) {
      if (!p.group.empty() && !runs[r].group.empty() && runs[r].group != p.group) continue;
      ++colour;
      const std::string file = train::gnuplot_quote((dir / "curves" / (runs[r].name + ".tsv")).string());
      for (const std::string& m : p.metrics) {
        const size_t col = curve_column(m), x = curve_column(p.x);
        const bool train = m.rfind("train", 0) == 0 || m == "pool_input_zeros";
        const std::string title = p.metrics.size() > 1 ? runs[r].label + (train ? " train" : " test") : runs[r].label;
        s += cat(first ? "" : ", ", file, " using ", x, ":", col, " with lines lw 2 dt ", train ? 2 : 1, " lc ", colour,
                 " title ", train::gnuplot_quote(title));
        first = false;
      }
    }
    s += "\n";
  }
  s += "unset multiplot\n";
  if (train::gnuplot(s)) log_info("plot: " + (dir / "plot.png").string());
}

}  // namespace

std::string run(const Experiment& e, const Options& o) {
  const Scale scale = scale_of(e, o);
  const std::vector<Run> runs = e.runs(scale);
  const int seeds = o.seeds > 0 ? o.seeds : e.seeds;
  const fs::path dir = fs::path(o.out) / e.name;
  if (!o.report_only) {
    fs::create_directories(dir);
    // Seed by seed, so that an interrupted experiment has every variant at seed 0 first.
    for (int seed = 0; seed < seeds; ++seed)
      for (const Run& r : runs) train_run(r, run_config(e, r, o, seed));
  }

  // The results, by run: the last row of each finished seed.
  fs::create_directories(dir / "curves");
  std::map<std::string, Result> results;
  std::map<std::string, int64_t> last_step;  // of runs started, the furthest seed's last row
  int finished_runs = 0;
  for (const Run& r : runs) {
    Result res;
    res.run = &r;
    std::vector<double> train_err, test_err, train_loss, ece, seconds, zeros;
    std::vector<std::vector<nlohmann::json>> curves;
    for (int seed = 0; seed < seeds; ++seed) {
      const fs::path rd = run_config(e, r, o, seed).out_dir;
      std::vector<nlohmann::json> rows = train::read_metrics((rd / "metrics.jsonl").string());
      if (!rows.empty()) curves.push_back(rows);
      if (seed == 0)
        for (const nlohmann::json& row : rows)
          if (row.contains("test_error"))
            res.curve.push_back({row["step"].get<int64_t>(), row.value("train_seconds", 0.0),
                                 row["test_error"].get<double>()});
      if (!fs::exists(rd / kDoneFile)) continue;
      const nlohmann::json done = read_json(rd / kDoneFile);
      if (done.contains("diverged")) {
        ++res.diverged;
        if (res.diverged_at.empty()) res.diverged_at = done["diverged"].get<std::string>();
        continue;
      }
      if (rows.empty()) continue;
      res.params = done.value("params", int64_t{0});
      res.macs = done.value("macs", int64_t{0});
      const nlohmann::json& last = rows.back();
      train_err.push_back(last["train_error"].get<double>());
      test_err.push_back(last["test_error"].get<double>());
      train_loss.push_back(last["train_loss"].get<double>());
      ece.push_back(last.value("test_ece", 0.0));  // runs of older builds: none
      seconds.push_back(last.value("train_seconds", 0.0));
      if (last.contains("pool_input_zeros") && last["pool_input_zeros"].is_number())
        zeros.push_back(last["pool_input_zeros"].get<double>());
    }
    write_curve(dir / "curves" / (r.name + ".tsv"), curves);
    for (const auto& rows : curves) last_step[r.name] = std::max(last_step[r.name], rows.back()["step"].get<int64_t>());
    res.seeds = static_cast<int>(test_err.size());
    if (res.seeds + res.diverged == seeds) ++finished_runs;
    if (!zeros.empty()) res.pool_zeros = mean(zeros);
    if (res.seeds == 0 && res.diverged > 0) results[r.name] = res;
    if (res.seeds > 0) {
      res.train_error = mean(train_err);
      res.test_error = mean(test_err);
      res.train_loss = mean(train_loss);
      res.test_ece = mean(ece);
      res.train_seconds = mean(seconds);
      res.test_error_sd = sample_sd(test_err);
      res.test_error_min = *std::min_element(test_err.begin(), test_err.end());
      res.test_error_max = *std::max_element(test_err.begin(), test_err.end());
      results[r.name] = res;
    }
  }

  const train::TrainConfig first = run_config(e, runs.front(), o, 0);
  std::vector<double> lrs;  // the learning rates of the runs, in order of appearance
  for (const Run& r : runs)
    if (const double lr = run_config(e, r, o, 0).lr; std::find(lrs.begin(), lrs.end(), lr) == lrs.end()) lrs.push_back(lr);
  std::string rates;  // "0.5 or 0.2"
  for (double lr : lrs) rates += cat(rates.empty() ? "" : " or ", lr);
  std::ostringstream md;
  md << "# " << e.name << ": " << e.title << "\n\n"
     << "Paper: " << e.paper << ".\n\n"
     << "Scale: " << (o.full ? "full (the paper's schedule)" : "default budget") << "; data " << first.data
     << (first.train_limit ? cat(" (first ", first.train_limit, " training images)") : std::string(" (all training images)"))
     << (first.test_limit ? cat(", test on the first ", first.test_limit, " test images") : std::string(", the whole test set"))
     << "; " << first.iters << " iterations of batch " << first.batch << ", lr " << rates
     << (first.schedule == "multistep" ? " divided by 10 at 50% and 75%" : " (" + first.schedule + " schedule)")
     << "; evaluated every " << first.eval_every << " iterations; " << seeds
     << (seeds == 1 ? " seed" : " seeds") << " (the same for every run).\n\n"
     << "| run | params | MACs | train error % | test error % |" << (e.report_ece ? " test ECE % |" : "")
     << (e.report_zeros ? " zeros entering the pool |" : "") << " paper: " << e.paper_metric << " |\n"
     << "|---|---:|---:|---:|---:|" << (e.report_ece ? "---:|" : "") << (e.report_zeros ? "---:|" : "") << "---:|\n";
  for (const Run& r : runs) {
    auto it = results.find(r.name);
    if (it == results.end()) {
      const std::string state = last_step.count(r.name) ? cat("unfinished (step ", last_step[r.name], ")") : "not run";
      md << "| " << r.label << " | | | " << state << " | " << state << " |" << (e.report_ece ? " |" : "")
         << (e.report_zeros ? " |" : "") << " " << r.paper << " |\n";
      continue;
    }
    const Result& x = it->second;
    if (x.seeds == 0) {  // every seed diverged
      md << "| " << r.label << " | | | diverged | " << x.diverged_at << " |" << (e.report_ece ? " |" : "")
         << (e.report_zeros ? " |" : "") << " " << r.paper << " |\n";
      continue;
    }
    std::string test = fixed(x.test_error);
    if (x.diverged > 0) test += cat(" (", x.diverged, " seed(s) diverged)");
    if (x.seeds > 1) test += cat(" ± ", fixed(x.test_error_sd), " (", x.seeds, " seeds, ", fixed(x.test_error_min), "–",
                                 fixed(x.test_error_max), ")");
    else if (seeds > 1) test += " (1 seed)";
    md << "| " << r.label << " | " << with_commas(x.params) << " | " << fixed(static_cast<double>(x.macs) / 1e6, 1)
       << " M | " << fixed(x.train_error) << " | " << test << " |"
       << (e.report_ece ? " " + fixed(x.test_ece) + " |" : "")
       << (e.report_zeros ? " " + (std::isnan(x.pool_zeros) ? std::string("-") : fixed(100 * x.pool_zeros) + "%") + " |" : "")
       << " " << r.paper << " |\n";
  }
  md << "\n"
     << (finished_runs == static_cast<int>(runs.size())
             ? "Verdict: " + e.verdict(results)
             : cat("Verdict: incomplete, ", finished_runs, " of ", runs.size(),
                   " runs finished at every seed; run the same command again to continue."))
     << "\n\n![" << e.name << "](plot.png)\n\nTrain errors are over each run's last "
     << first.eval_every << " iterations, with augmentation (as the paper's curves); test errors at the end.\n\n"
     << "The runs, seed 0 (the other seeds differ in `--seed` only):\n\n```\n";
  for (const Run& r : runs) md << train_command(run_config(e, r, o, 0)) << "\n";
  md << "```\n";
  plot(e, runs, dir);
  {
    std::ofstream out(dir / "report.md");
    out << md.str();
  }
  {
    std::ofstream out(dir / "results.tsv");
    out << "run\tseeds\tparams\tmacs\ttrain_error\ttest_error\ttest_error_sd\ttest_ece\ttrain_seconds\n";
    for (const auto& [name, x] : results)
      out << name << "\t" << x.seeds << "\t" << x.params << "\t" << x.macs << "\t" << x.train_error << "\t"
          << x.test_error << "\t" << x.test_error_sd << "\t" << x.test_ece << "\t" << x.train_seconds << "\n";
  }
  log_info("report: " + (dir / "report.md").string());
  return md.str();
}

}  // namespace incres::experiments
