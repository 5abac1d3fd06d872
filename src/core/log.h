// Minimal logging to stderr. INCRES_LOG=quiet silences info lines.
#pragma once
#include <cstdio>
#include <string>

namespace incres {
void log_info(const std::string& line);
void log_warn(const std::string& line);
bool stderr_is_terminal();
// Silences info and warning lines (the data-parallel processes other than rank 0,
// which would repeat what it says). Errors are the caller's to print.
void set_log_silent(bool silent);
}  // namespace incres
