#include "backend/memory_plan.h"

#include <algorithm>
#include <map>
#include <numeric>

namespace incres::backend {

namespace {
size_t round_up(size_t n, size_t align) { return (n + align - 1) / align * align; }
bool overlap(const Block& a, const Block& b) { return a.first <= b.last && b.first <= a.last; }
}  // namespace

size_t plan_memory(std::vector<Block>& blocks, size_t align) {
  std::vector<size_t> order(blocks.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return blocks[a].bytes > blocks[b].bytes; });
  std::vector<size_t> placed;
  size_t arena = 0;
  for (size_t i : order) {
    Block& b = blocks[i];
    // The byte ranges of the placed blocks alive with this one, by offset.
    std::vector<std::pair<size_t, size_t>> taken;
    for (size_t j : placed)
      if (overlap(b, blocks[j])) taken.emplace_back(blocks[j].offset, blocks[j].offset + round_up(blocks[j].bytes, align));
    std::sort(taken.begin(), taken.end());
    size_t offset = 0;
    const size_t size = round_up(b.bytes, align);
    for (const auto& [begin, end] : taken) {
      if (offset + size <= begin) break;
      offset = std::max(offset, end);
    }
    b.offset = offset;
    arena = std::max(arena, offset + size);
    placed.push_back(i);
  }
  return arena;
}

size_t live_peak(const std::vector<Block>& blocks) {
  std::map<int, long long> delta;  // bytes that start (+) and stop (-) living at a step
  for (const Block& b : blocks) {
    delta[b.first] += static_cast<long long>(b.bytes);
    delta[b.last + 1] -= static_cast<long long>(b.bytes);
  }
  long long live = 0, peak = 0;
  for (const auto& [step, d] : delta) peak = std::max(peak, live += d);
  return static_cast<size_t>(peak);
}

}  // namespace incres::backend
