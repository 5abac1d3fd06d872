// Minimal logging to stderr. INCRES_LOG=quiet silences info lines.
#pragma once
#include <cstdio>
#include <string>

namespace incres {
void log_info(const std::string& line);
void log_warn(const std::string& line);
bool stderr_is_terminal();
}  // namespace incres
