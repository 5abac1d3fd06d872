// Numbers as people read them in tables and messages.
#pragma once
#include <cstdint>
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

}  // namespace incres
