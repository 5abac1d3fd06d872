#include "train/plot.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "core/log.h"

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
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) return false;
  fs::path file = fs::temp_directory_path() / ("incres-plot-" + std::to_string(getpid()) + ".gp");
  {
    std::ofstream out(file);
    out << script << "\n";
    if (!out) return false;
  }
  const bool ok = std::system(("gnuplot " + file.string() + " 2>/dev/null").c_str()) == 0;
  fs::remove(file);
  return ok;
}

void plot_run(const std::string& dir_name) {
  fs::path dir(dir_name), tsv = dir / "curve.tsv", png = dir / "curve.png";
  std::vector<nlohmann::json> rows = read_metrics((dir / "metrics.jsonl").string());
  if (rows.empty()) return;
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
