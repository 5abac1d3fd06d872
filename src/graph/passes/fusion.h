// The planning pass every backend shares: which nodes run fused into others, which
// values need no buffer of their own, and which may live in another value's buffer.
// A pure analysis of the graph (and which nodes run, and whether it trains): it
// reads the ops' traits (graph.h, OpTraits) and the shapes, and returns plain data;
// a backend turns the plan into primitives (backend/cpu/program.cpp for oneDNN).
//
// What it decides:
//  - inference: each op that absorbs an epilogue (a conv) takes the per-channel
//    affine op after it (BN, folded into its weights and bias), then an activation
//    (ReLU), or the residual sum it feeds (when the sum's other input is ready before
//    the conv and read by nothing after it: the conv writes onto that buffer) and the
//    activation after the sum;
//  - an op that fuses a following activation (BN) takes its sole consumer if that is
//    one (ReLU), in training too;
//  - a sum runs in place over one of its inputs when nothing else reads that input and
//    the op producing it may have its output overwritten; an activation that may run in
//    place does so over an input of the same kind.
#pragma once
#include <vector>

#include "graph/graph.h"

namespace incres::graph {

// What an inference conv absorbed; node ids, -1 where absent.
struct ConvChain {
  int bn = -1, relu = -1, add = -1, post_relu = -1;
  int other = -1;  // value: the sum's other input, whose buffer the conv writes onto
  int out = -1;    // value the fused conv writes (its own output when it absorbs nothing)
  // The sum as y = conv_scale * (conv's chain) + sum_scale * (what the destination
  // holds): add(a, b) = a + scale * b with the chain as a (slot 0) or as b.
  float conv_scale = 1.f, sum_scale = 0.f;
};

struct FusionPlan {
  struct NodePlan {
    bool skip = false;      // runs inside another node (absorbed by a conv, fused into a BN)
    int fused_relu = -1;    // a BN: the activation node it runs with
    ConvChain chain;        // a conv (inference): what it absorbs
    int in_place_slot = -1; // a sum: the input slot it overwrites
  };
  struct ValuePlan {
    bool hidden = false;  // inside a fused chain: no buffer at all
    int alias = -1;       // lives in this value's buffer (in place), or -1
  };
  std::vector<NodePlan> nodes;    // per node
  std::vector<ValuePlan> values;  // per value
};

// live: per node, whether the program runs it; outputs: the values the caller reads
// (never hidden, never overwritten in place).
FusionPlan plan_fusion(const Graph& g, const std::vector<bool>& live, const std::vector<int>& outputs,
                       bool training);

}  // namespace incres::graph
