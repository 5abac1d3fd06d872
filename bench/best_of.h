// The bench tools' timing: the fastest of n runs of f, in seconds (on a shared machine
// the fastest run is the one least disturbed).
#pragma once
#include <algorithm>
#include <chrono>

template <class F>
double best_of(int n, F&& f) {
  double best = 1e9;
  for (int i = 0; i < n; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
