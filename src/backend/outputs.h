// What the backends share about a graph's outputs: which value each one is, and which
// nodes a program must run to compute them.
#pragma once
#include <vector>

#include "backend/program.h"
#include "core/error.h"
#include "graph/graph.h"

namespace incres::backend {

// The values of Program::output(i): the graph's output, then its auxiliary outputs.
// They must be distinct, since each is seeded with its own gradient.
inline std::vector<int> output_values(const graph::Graph& g) {
  std::vector<int> outs{g.output};
  for (int v : g.aux_outputs) {
    INCRES_CHECK(v >= 0 && v < static_cast<int>(g.values.size()), "auxiliary output value ", v,
                 " is not a value of the graph");
    for (int o : outs)
      INCRES_CHECK(o != v, "value ", v, " is listed twice among the graph's outputs");
    outs.push_back(v);
  }
  return outs;
}

// Per node, whether a program of this mode runs it: training computes every output,
// inference only output 0; either way a node no computed output depends on is skipped.
inline std::vector<bool> live_nodes(const graph::Graph& g, Mode mode) {
  std::vector<bool> needed(g.values.size(), false), live(g.nodes.size(), false);
  const std::vector<int> outs = output_values(g);
  for (size_t i = 0; i < (mode == Mode::train ? outs.size() : 1); ++i) needed[outs[i]] = true;
  for (size_t id = g.nodes.size(); id-- > 0;) {
    if (!needed[g.nodes[id].output]) continue;
    live[id] = true;
    for (int v : g.nodes[id].inputs) needed[v] = true;
  }
  return live;
}

}  // namespace incres::backend
