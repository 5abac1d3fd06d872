// Numbers as people read them in tables and messages.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace incres {

// 27161264 -> "27,161,264"; -1234 -> "-1,234".
inline std::string with_commas(int64_t v) {
  const std::string digits = std::to_string(v < 0 ? -static_cast<uint64_t>(v) : static_cast<uint64_t>(v));
  std::string out = v < 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// 8.5 -> "8.50" (digits after the point).
inline std::string fixed(double v, int digits = 2) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace incres
