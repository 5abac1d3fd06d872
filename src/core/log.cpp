#include "core/log.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace incres {

static bool silent = false;
static bool quiet() {
  const char* v = std::getenv("INCRES_LOG");
  return silent || (v && std::strcmp(v, "quiet") == 0);
}
void log_info(const std::string& line) {
  if (!quiet()) std::fprintf(stderr, "%s\n", line.c_str());
}
void log_warn(const std::string& line) {
  if (!silent) std::fprintf(stderr, "warning: %s\n", line.c_str());
}
void set_log_silent(bool s) { silent = s; }
bool stderr_is_terminal() { return isatty(2); }

}  // namespace incres
