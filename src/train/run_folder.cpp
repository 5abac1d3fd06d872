#include "train/run_folder.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"

namespace incres::train {

namespace fs = std::filesystem;

namespace {

bool process_alive(long pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

// This process's command line, spaces between the arguments.
std::string own_command() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!s.empty() && s.back() == '\0') s.pop_back();
  for (char& c : s)
    if (c == '\0') c = ' ';
  return s;
}

}  // namespace

RunFolder::RunFolder(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    fail("--out ", dir, " is not a folder; name a folder (it is created when missing)");
  fs::create_directories(dir, ec);
  if (ec) fail("--out ", dir, ": cannot create the folder: ", ec.message());
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    fail("--out ", dir, ": the folder is not writable (", std::strerror(errno), ")");

  const std::string lock = dir + "/run.lock";
  fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("--out ", dir, ": cannot open ", lock, " (", std::strerror(errno), ")");
  std::string holder;
  {
    std::ifstream in(lock);
    std::getline(in, holder);
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK)
      fail(dir, " is in use by another run (", holder.empty() ? "its PID is not recorded yet" : "PID " + holder,
           "); wait for it to end, or choose another --out");
    fail("--out ", dir, ": cannot lock ", lock, " (", std::strerror(err), ")");
  }
  if (!holder.empty()) {
    const long pid = std::atol(holder.c_str());
    if (pid != ::getpid())
      log_info(cat("taking over the lock of a run that did not end cleanly: ", holder,
                   process_alive(pid) ? "" : " (gone)"));
  }
  const std::string me = cat(::getpid(), ", ", own_command(), "\n");
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    log_warn(cat("could not record this process in ", lock, ": ", std::strerror(errno)));
  const int removed = remove_stale_temp_files();
  if (removed > 0) log_info(cat("removed ", removed, " temp file", removed > 1 ? "s" : "", " of runs that are gone from ", dir));
}

RunFolder::~RunFolder() {
  // An empty lock file means the last holder ended cleanly; a name left in it, that it
  // was killed. Closing releases the flock.
  if (fd_ >= 0) {
    if (::ftruncate(fd_, 0) != 0) {}
    ::close(fd_);
  }
}

int RunFolder::remove_stale_temp_files() const {
  int removed = 0;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    const size_t at = name.rfind(".tmp-");
    if (at == std::string::npos || !e.is_regular_file(ec)) continue;
    const std::string pid = name.substr(at + 5);
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (process_alive(std::atol(pid.c_str()))) continue;
    if (fs::remove(e.path(), ec)) ++removed;
  }
  return removed;
}

int64_t drop_metrics_after(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return 0;
  std::string line, kept;
  int64_t dropped = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("step") && j["step"].is_number() && j["step"].get<int64_t>() > step) {
      ++dropped;
      continue;
    }
    kept += line + "\n";
  }
  if (dropped > 0) io::write_file_atomic(path, kept);
  return dropped;
}

}  // namespace incres::train
