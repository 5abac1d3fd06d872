// Plots through gnuplot (Debian's gnuplot-nox, which scripts/install-deps.sh installs):
// a run's training curve, and the shared reader of the metrics a run writes.
#pragma once
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace incres::train {

// The rows of a run's metrics.jsonl in step order, one per step: where a resume
// logged a step twice, the later row wins. Lines that are not JSON objects with a
// "step" are skipped. A missing file gives no rows.
std::vector<nlohmann::json> read_metrics(const std::string& path);

// Runs a gnuplot script. False, with nothing written, when gnuplot is not installed or
// fails (its messages are dropped).
bool gnuplot(const std::string& script);

// gnuplot's quoting of a file name or title: single quotes, doubled inside.
std::string gnuplot_quote(const std::string& s);

// The evaluated rows of a run's metrics as timm's summary.csv: epoch (fractional for
// spans shorter than an epoch), train_loss, eval_loss, eval_top1, eval_top5 (accuracy
// in percent) and lr; an empty cell where a row lacks the value. Written atomically.
void write_summary_csv(const std::string& path, const std::vector<nlohmann::json>& rows);

// DIR/summary.csv (write_summary_csv), DIR/curve.tsv (epoch, errors, losses by row of DIR/metrics.jsonl) and DIR/curve.png:
// error and loss against epochs, train and test. Logs the PNG's path when written.
void plot_run(const std::string& dir);

}  // namespace incres::train
