// Memory planned by value lifetime: every buffer of a program is a block with the
// span of steps that use it; blocks whose spans overlap get disjoint bytes of one
// arena, the others may share. Greedy: the largest block first, each at the lowest
// offset that clears every placed block it lives alongside.
#pragma once
#include <cstddef>
#include <vector>

namespace incres::backend {

struct Block {
  size_t bytes = 0;
  int first = 0, last = 0;  // steps, inclusive
  size_t offset = 0;        // set by plan_memory
};

// Sets every block's offset; returns the arena's size. Offsets are multiples of align.
size_t plan_memory(std::vector<Block>& blocks, size_t align = 64);
// The most bytes live at one step: no plan can use less.
size_t live_peak(const std::vector<Block>& blocks);

}  // namespace incres::backend
