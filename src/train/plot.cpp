#include "train/plot.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"

extern char** environ;

namespace incres::train {

namespace fs = std::filesystem;

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::ifstream in(path);
  std::map<int64_t, nlohmann::json> by_step;
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number()) continue;
    const int64_t step = j["step"].get<int64_t>();
    by_step[step] = std::move(j);
  }
  std::vector<nlohmann::json> rows;
  for (auto& [step, row] : by_step) rows.push_back(std::move(row));
  return rows;
}

std::string gnuplot_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("''") : std::string(1, c);
  return q + "'";
}

bool gnuplot(const std::string& script) {
  // The script goes to a file and gnuplot gets its name as its one argument, with no
  // shell between: no file or folder name in the script can be read as a command.
  static std::atomic<int> serial{0};
  const fs::path file = fs::temp_directory_path() /
                        ("incres-plot-" + std::to_string(getpid()) + "-" + std::to_string(serial++) + ".gp");
  {
    std::ofstream out(file);
    out << script << "\n";
    if (!out) return false;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  std::string arg0 = "gnuplot", arg1 = file.string();
  char* argv[] = {arg0.data(), arg1.data(), nullptr};
  pid_t pid = 0;
  int status = 0;
  // posix_spawnp reports a gnuplot that is not on PATH as an error (ENOENT).
  const bool ok = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv, environ) == 0 &&
                  waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  posix_spawn_file_actions_destroy(&actions);
  std::error_code ec;
  fs::remove(file, ec);
  return ok;
}

void write_summary_csv(const std::string& path, const std::vector<nlohmann::json>& rows) {
  std::string csv = "epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n";
  auto num = [](const nlohmann::json& j, const char* key) {
    return j.contains(key) && j[key].is_number() ? cat(std::setprecision(8), j[key].get<double>()) : std::string();
  };
  auto accuracy = [](const nlohmann::json& j, const char* key) {
    return j.contains(key) && j[key].is_number() ? cat(std::setprecision(8), 100.0 - j[key].get<double>())
                                                  : std::string();
  };
  for (const nlohmann::json& j : rows) {
    if (!j.contains("test_error")) continue;
    const double epoch = j.contains("epochs_done") ? j["epochs_done"].get<double>() : j["epoch"].get<double>();
    csv += cat(std::setprecision(8), epoch, ",", num(j, "train_loss"), ",", num(j, "test_loss"), ",",
               accuracy(j, "test_error"), ",", accuracy(j, "test_top5_error"), ",", num(j, "lr"), "\n");
  }
  io::write_file_atomic(path, csv);
}

void plot_run(const std::string& dir_name) {
  fs::path dir(dir_name), tsv = dir / "curve.tsv", png = dir / "curve.png";
  std::vector<nlohmann::json> rows = read_metrics((dir / "metrics.jsonl").string());
  if (rows.empty()) return;
  write_summary_csv((dir / "summary.csv").string(), rows);
  std::FILE* out = std::fopen(tsv.c_str(), "w");
  if (!out) return;
  std::fprintf(out, "epoch\ttrain_error\ttest_error\ttrain_loss\ttest_loss\n");
  for (const nlohmann::json& j : rows) {
    if (!j.contains("test_error")) continue;
    const double epoch = j.contains("epochs_done") ? j["epochs_done"].get<double>() : j["epoch"].get<double>();
    std::fprintf(out, "%g\t%g\t%g\t%g\t%g\n", epoch, j["train_error"].get<double>(), j["test_error"].get<double>(),
                 j["train_loss"].get<double>(), j["test_loss"].get<double>());
  }
  std::fclose(out);
  const std::string t = gnuplot_quote(tsv.string());
  const std::string script =
      "set terminal pngcairo size 1000,420 font ',10'\nset output " + gnuplot_quote(png.string()) + "\n"
      "set multiplot layout 1,2\nset grid\nset key top right\nset xlabel 'epoch'\n"
      "set ylabel 'error (%)'\nset title 'error'\n"
      "plot " + t + " using 1:2 with linespoints title 'train', '' using 1:3 with linespoints title 'test'\n"
      "set ylabel 'loss'\nset title 'loss'\n"
      "plot " + t + " using 1:4 with linespoints title 'train', '' using 1:5 with linespoints title 'test'\n"
      "unset multiplot";
  if (gnuplot(script)) log_info("training curve: " + png.string());
}

}  // namespace incres::train
