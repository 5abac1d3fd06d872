#include "graph/passes/fusion.h"

#include <algorithm>

namespace incres::graph {

namespace {

// The pass's view of the graph: which nodes run, which values the caller reads.
struct Planner {
  const Graph& g;
  const std::vector<bool>& live;
  const std::vector<int>& outputs;
  FusionPlan plan;

  OpTraits of(int node) const { return node >= 0 ? traits(g.nodes[node].op) : OpTraits{}; }
  bool is_output(int v) const { return std::find(outputs.begin(), outputs.end(), v) != outputs.end(); }
  // The only live node reading v, or -1 (none, several, or v is read by the caller).
  int sole_consumer(int v) const {
    if (is_output(v)) return -1;
    int found = -1, count = 0;
    for (int c : g.values[v].consumers)
      if (live[c]) found = c, ++count;
    return count == 1 ? found : -1;
  }

  ConvChain conv_chain(int conv) const;
  void absorb_into_convs();
  void fuse_activations_into_bn();
  void sums_in_place();
  void activations_in_place();
};

ConvChain Planner::conv_chain(int conv) const {
  ConvChain ch;
  int v = g.nodes[conv].output, c = sole_consumer(v);
  if (of(c).per_channel_affine && g.values[v].shape.rank() == 3) {
    ch.bn = c;
    v = g.nodes[c].output;
    c = sole_consumer(v);
  }
  if (of(c).activation) {
    ch.relu = c;
    v = g.nodes[c].output;
  } else if (of(c).sum) {
    // The conv writes onto the other input's buffer, which must be computed before the
    // conv runs and read by nothing after it but this sum; equal shapes have equal
    // layouts (one channel block per graph).
    const Node& add = g.nodes[c];
    const int slot = add.inputs[0] == v ? 0 : 1, other = add.inputs[1 - slot];
    bool ready = other != v && g.values[other].shape == g.values[v].shape && !is_output(other) &&
                 g.values[other].producer < conv;
    for (int u : g.values[other].consumers) ready = ready && (u == c || !live[u] || u < conv);
    if (ready) {
      const float scale = std::get<Add>(add.op).scale;
      ch.add = c;
      ch.other = other;
      ch.conv_scale = slot == 0 ? 1.f : scale;
      ch.sum_scale = slot == 0 ? scale : 1.f;
      v = add.output;
      if (int r = sole_consumer(v); of(r).activation) {
        ch.post_relu = r;
        v = g.nodes[r].output;
      }
    }
  }
  ch.out = v;
  return ch;
}

void Planner::absorb_into_convs() {
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (!live[i] || !of(static_cast<int>(i)).absorbs_epilogue) continue;
    const ConvChain ch = plan.nodes[i].chain = conv_chain(static_cast<int>(i));
    for (int m : {ch.bn, ch.relu, ch.add, ch.post_relu}) {
      if (m < 0) continue;
      plan.nodes[m].skip = true;
      for (int v : g.nodes[m].inputs)
        if (v != ch.other) plan.values[v].hidden = true;
    }
    if (ch.add >= 0) plan.values[ch.out].alias = ch.other;
  }
}

void Planner::fuse_activations_into_bn() {
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (!live[i] || plan.nodes[i].skip || !of(static_cast<int>(i)).fuses_activation) continue;
    const int y = g.nodes[i].output;
    const auto& cons = g.values[y].consumers;
    if (cons.size() == 1 && of(cons[0]).activation && !is_output(y)) {
      plan.nodes[i].fused_relu = cons[0];
      plan.nodes[cons[0]].skip = true;
      plan.values[y].hidden = true;
    }
  }
}

void Planner::sums_in_place() {
  // Over an input of gradient d(y) (the first, or the second when unscaled) that
  // nothing else reads, whose producer's output may be overwritten (a BN that runs
  // its ReLU keeps its output: the ReLU's backward reads it).
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (!live[i] || plan.nodes[i].skip || !of(static_cast<int>(i)).sum) continue;
    const Node& add = g.nodes[i];
    for (int slot : {0, 1}) {
      const int a = add.inputs[slot], pa = g.values[a].producer;
      bool safe = pa >= 0 && of(pa).output_overwritable && plan.nodes[pa].fused_relu < 0;
      safe = safe && (slot == 0 || std::get<Add>(add.op).scale == 1.f) && add.inputs[0] != add.inputs[1];
      if (safe && g.values[a].consumers.size() == 1 && !is_output(a) && !plan.values[a].hidden) {
        plan.values[add.output].alias = a;
        plan.nodes[i].in_place_slot = slot;
        break;
      }
    }
  }
}

void Planner::activations_in_place() {
  // An activation whose backward reads its output may write it over its input, when
  // nothing else reads that input and its producer's output may be overwritten.
  for (size_t v = 0; v < g.values.size(); ++v) {
    const int p = g.values[v].producer;
    if (p < 0 || !live[p] || plan.nodes[p].skip || !of(p).activation) continue;
    const int x = g.nodes[p].inputs[0], px = g.values[x].producer;
    const bool safe = px >= 0 && (of(px).output_overwritable || of(px).sum);
    if (safe && g.values[x].consumers.size() == 1 && !is_output(x) && !plan.values[x].hidden)
      plan.values[v].alias = x;
  }
}

}  // namespace

FusionPlan plan_fusion(const Graph& g, const std::vector<bool>& live, const std::vector<int>& outputs,
                       bool training) {
  Planner p{g, live, outputs, {}};
  p.plan.nodes.resize(g.nodes.size());
  p.plan.values.resize(g.values.size());
  if (!training) p.absorb_into_convs();
  p.fuse_activations_into_bn();
  p.sums_in_place();
  p.activations_in_place();
  return p.plan;
}

}  // namespace incres::graph
