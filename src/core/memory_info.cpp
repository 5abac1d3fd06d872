#include "core/memory_info.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace incres {

namespace {

// A number read from a one-line file ("max" and unreadable files give -1).
int64_t read_number(const char* path) {
  std::ifstream in(path);
  std::string s;
  if (!(in >> s) || s == "max") return -1;
  return std::atoll(s.c_str());
}

}  // namespace

int64_t available_memory() {
  int64_t avail = -1;
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (meminfo >> key >> kb) {
    std::getline(meminfo, unit);
    if (key == "MemAvailable:") {
      avail = kb * 1024;
      break;
    }
  }
  // cgroup v2: the limit less what the group uses now.
  const int64_t limit = read_number("/sys/fs/cgroup/memory.max"), used = read_number("/sys/fs/cgroup/memory.current");
  if (limit > 0 && used >= 0) avail = avail < 0 ? limit - used : std::min(avail, limit - used);
  if (const char* cap = std::getenv("INCRES_MEMORY_LIMIT"); cap && *cap) {
    const int64_t c = std::atoll(cap);
    avail = avail < 0 ? c : std::min(avail, c);
  }
  return avail;
}

std::string bytes_text(double bytes) {
  char buf[32];
  if (bytes >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  return buf;
}

}  // namespace incres
