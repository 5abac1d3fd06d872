// Training telemetry: a JSON-lines metrics file and a progress line for the console.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>  // callers that build rows include json.hpp

namespace incres::train {

// One JSON object per line (jsonl), flushed after every row so a crashed or
// killed run keeps everything written so far. NaN and Inf are written as null
// (JSON has no spelling for them); invalid UTF-8 in strings is replaced by U+FFFD.
class MetricsLog {
 public:
  // append=false truncates an existing file. Throws incres::Error naming the path
  // when it cannot be opened.
  MetricsLog(const std::string& path, bool append);
  // A log that leaves an existing file as it is until commit(): rows are held in
  // memory, and the first commit() replaces the file with them atomically (later rows
  // append). A new run calls commit() once its first checkpoint is durable, so a run
  // that fails before that leaves the earlier run's log untouched.
  static MetricsLog replacing_at_commit(const std::string& path);
  void commit();
  MetricsLog(MetricsLog&&) noexcept = default;
  MetricsLog& operator=(MetricsLog&&) noexcept = default;

  // row must be a JSON object. Throws when the write or flush fails (disk full).
  void write(const nlohmann::json& row);
  const std::string& path() const { return path_; }

 private:
  struct Close { void operator()(std::FILE* f) const; };
  MetricsLog() = default;
  void open(bool append);
  std::string path_;
  std::unique_ptr<std::FILE, Close> file_;
  bool pending_ = false;  // rows held in pending_rows_ until commit()
  std::string pending_rows_;
};

// A progress display on stderr. On a terminal it redraws one line with a bar,
// percentage, ETA and the caller's extra text, at most ~10 times a second;
// otherwise (a log file, a pipe) it prints a plain line every 10% or 30 s.
// total <= 0 means unknown: no bar, percentage or ETA, only counts and rate.
class Progress {
 public:
  Progress(std::string label, int64_t total, bool terminal);
  ~Progress();  // ends a half-drawn terminal line so later output starts clean
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // Whether update(done, ...) would draw now. A caller whose `extra` text costs
  // something to build (a training step's loss line allocates) builds it only when
  // this is true; skipped updates change nothing.
  bool due(int64_t done) const;
  // done: items finished so far; extra: e.g. "loss 0.41 err 12.3% 1520 img/s".
  void update(int64_t done, const std::string& extra);
  // Draws the final state (with the elapsed time) and ends the line. The second form
  // also sets the final count and text, for callers that skip updates with due().
  void finish();
  void finish(int64_t done, const std::string& extra);

 private:
  using Clock = std::chrono::steady_clock;
  std::string render(double elapsed_s, bool bar) const;

  std::string label_;
  int64_t total_;
  bool terminal_;
  int64_t done_ = 0;
  std::string extra_;
  Clock::time_point start_, last_draw_;
  bool drawn_ = false;     // a terminal line is on screen, not yet ended
  bool finished_ = false;
  int64_t next_tenth_ = 1; // plain mode: the next 10% boundary to report
};

}  // namespace incres::train
