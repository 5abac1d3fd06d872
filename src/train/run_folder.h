// The folder of a run (`incres train --out DIR`): one writer at a time, no stale temp
// files, and a metrics log that always agrees with the checkpoint beside it.
#pragma once
#include <cstdint>
#include <string>

namespace incres::train {

class RunFolder {
 public:
  // Creates DIR when missing and checks that it is a writable folder (an Error naming
  // it otherwise), then takes DIR/run.lock: an advisory flock held until destruction,
  // the file naming the holder's PID and command. A live holder is an Error naming
  // them; a lock file left by a process that is gone is taken over with a note (flock
  // dies with its process, so "gone" needs no guessing). Then removes the checkpoint
  // temp files (`*.tmp-PID`) of processes that are gone.
  explicit RunFolder(const std::string& dir);
  ~RunFolder();
  RunFolder(const RunFolder&) = delete;
  RunFolder& operator=(const RunFolder&) = delete;

  const std::string& dir() const { return dir_; }
  std::string checkpoint() const { return checkpoint_in(dir_); }
  static std::string checkpoint_in(const std::string& dir) { return dir + "/last.safetensors"; }
  std::string metrics() const { return dir_ + "/metrics.jsonl"; }

  // Removes the folder's `*.tmp-PID` files whose process is gone; returns how many.
  int remove_stale_temp_files() const;

 private:
  std::string dir_;
  int fd_ = -1;
};

// Rewrites a metrics log without its rows past `step` (atomically; lines that are not
// rows are kept). Returns the number of rows dropped; a missing file drops none.
int64_t drop_metrics_after(const std::string& path, int64_t step);

}  // namespace incres::train
