#include "train/metrics.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"

namespace incres::train {

// ---- MetricsLog ----

void MetricsLog::Close::operator()(std::FILE* f) const { std::fclose(f); }

MetricsLog::MetricsLog(const std::string& path, bool append) : path_(path) { open(append); }

void MetricsLog::open(bool append) {
  std::FILE* f = std::fopen(path_.c_str(), append ? "a" : "w");
  if (!f)
    fail("metrics log '", path_, "': cannot open for ", append ? "appending" : "writing", " (",
         std::strerror(errno), "); check that the folder exists and is writable");
  file_.reset(f);
}

MetricsLog MetricsLog::replacing_at_commit(const std::string& path) {
  MetricsLog log;
  log.path_ = path;
  log.pending_ = true;
  return log;
}

void MetricsLog::commit() {
  if (!pending_) return;
  io::write_file_atomic(path_, pending_rows_);
  pending_ = false;
  pending_rows_.clear();
  open(true);
}

void MetricsLog::write(const nlohmann::json& row) {
  INCRES_CHECK(row.is_object(), "metrics log '", path_, "': a row must be a JSON object, got ",
               row.type_name());
  std::string line =
      row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  if (pending_) {
    pending_rows_ += line;
    return;
  }
  INCRES_CHECK(file_, "metrics log '", path_, "': write after the log was moved from");
  errno = 0;
  if (std::fwrite(line.data(), 1, line.size(), file_.get()) != line.size() ||
      std::fflush(file_.get()) != 0)
    fail("metrics log '", path_, "': write failed (", std::strerror(errno),
         "); check free disk space");
}

// ---- Progress ----

namespace {

// Columns of the terminal on stderr; 80 when unknown.
int terminal_columns() {
  winsize ws{};
  if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

// "1:05:09" or "5:09".
std::string clock_text(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  return buf;
}

constexpr int kBarWidth = 24;
constexpr double kRedrawSeconds = 0.1;  // at most ~10 redraws a second
constexpr double kPlainSeconds = 30;    // plain mode: a line at least this often

}  // namespace

Progress::Progress(std::string label, int64_t total, bool terminal)
    : label_(std::move(label)), total_(total), terminal_(terminal), start_(Clock::now()),
      last_draw_(start_) {}

Progress::~Progress() {
  if (drawn_) std::fputc('\n', stderr);
}

std::string Progress::render(double elapsed, bool bar) const {
  std::string s = label_;
  char buf[96];
  if (total_ > 0) {
    double frac = std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_));
    if (bar) {
      int fill = static_cast<int>(frac * kBarWidth);
      s += " [" + std::string(fill, '#') + std::string(kBarWidth - fill, '.') + "]";
    }
    std::snprintf(buf, sizeof buf, " %3d%% %lld/%lld", static_cast<int>(frac * 100),
                  static_cast<long long>(done_), static_cast<long long>(total_));
    s += buf;
    if (finished_) {
      s += " in " + clock_text(elapsed);
    } else if (done_ > 0) {
      // ETA from the average rate so far.
      double eta = elapsed * static_cast<double>(total_ - done_) / static_cast<double>(done_);
      s += " ETA " + clock_text(eta);
    }
  } else {
    std::snprintf(buf, sizeof buf, " %lld", static_cast<long long>(done_));
    s += buf;
    s += (finished_ ? " in " : " elapsed ") + clock_text(elapsed);
  }
  if (!extra_.empty()) s += "  " + extra_;
  return s;
}

bool Progress::due(int64_t done) const {
  if (finished_) return false;
  const double since_draw = std::chrono::duration<double>(Clock::now() - last_draw_).count();
  if (terminal_) return !drawn_ || since_draw >= kRedrawSeconds;
  // Plain mode: on crossing the next 10% boundary, or every 30 s. The 100% line is
  // finish()'s, which adds the elapsed time.
  if (total_ > 0 && done >= total_) return false;
  const bool tenth = total_ > 0 && next_tenth_ <= 10 && done * 10 >= next_tenth_ * total_;
  return tenth || since_draw >= kPlainSeconds;
}

void Progress::update(int64_t done, const std::string& extra) {
  if (!due(done)) {
    if (!finished_) done_ = done;  // no text copied: skipped updates stay cheap
    return;
  }
  done_ = done;
  extra_ = extra;
  const Clock::time_point now = Clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (terminal_) {
    std::string line = render(elapsed, true);
    // Keep the line narrower than the terminal: a wrapped line cannot be redrawn by \r.
    size_t cols = static_cast<size_t>(terminal_columns());
    if (line.size() >= cols) line.resize(cols - 1);
    std::fprintf(stderr, "\r%s\x1b[K", line.c_str());  // ESC[K clears the old tail
    std::fflush(stderr);
    drawn_ = true;
    last_draw_ = now;
    return;
  }
  // Plain mode (due() decided): move past every 10% boundary crossed.
  while (total_ > 0 && next_tenth_ <= 10 && done * 10 >= next_tenth_ * total_) ++next_tenth_;
  log_info(render(elapsed, false));
  last_draw_ = now;
}

void Progress::finish(int64_t done, const std::string& extra) {
  if (finished_) return;
  done_ = done;
  extra_ = extra;
  finish();
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  if (terminal_) {
    std::string line = render(elapsed, true);
    size_t cols = static_cast<size_t>(terminal_columns());
    if (line.size() >= cols) line.resize(cols - 1);
    std::fprintf(stderr, "\r%s\x1b[K\n", line.c_str());
    std::fflush(stderr);
    drawn_ = false;
  } else {
    log_info(render(elapsed, false));
  }
}

}  // namespace incres::train
