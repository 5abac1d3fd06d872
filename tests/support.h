// Helpers shared by the GoogleTest files: message checks, file reading, tensor error.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"

namespace incres::testing_support {

// max |a - b| / max(max |b|, 1e-6): one number per tensor, scale-free.
inline double rel_err(const float* a, const float* b, int64_t n) {
  double diff = 0, ref = 1e-6;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
    ref = std::max(ref, static_cast<double>(std::fabs(b[i])));
  }
  return diff / ref;
}

// Passes when `text` contains `part`, and shows both when it does not.
inline testing::AssertionResult contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return testing::AssertionSuccess();
  return testing::AssertionFailure() << "\"" << text << "\"\n  does not contain \"" << part << "\"";
}

// The message of the incres::Error `f` throws ("" and a test failure if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an incres::Error";
  return "";
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace incres::testing_support
