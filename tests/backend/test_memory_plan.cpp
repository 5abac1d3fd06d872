// Memory planned by value lifetime: the planner on hand-made spans, and the guard on
// real programs: the planned arena stays within a stated factor (1.25) of the most
// bytes live at one step, the least any plan could use.
#include <gtest/gtest.h>

#include "backend/memory_plan.h"
#include "backend/program.h"
#include "models/models.h"

using namespace incres;
using backend::Block;

namespace {
bool disjoint(const Block& a, const Block& b) {
  const bool same_time = a.first <= b.last && b.first <= a.last;
  return !same_time || a.offset + a.bytes <= b.offset || b.offset + b.bytes <= a.offset;
}
}  // namespace

TEST(MemoryPlan, BlocksLiveTogetherNeverShareBytes) {
  // A chain a -> b -> c -> d (each live over two steps) and one block live throughout.
  std::vector<Block> blocks{{1000, 0, 1}, {2000, 1, 2}, {1000, 2, 3}, {2000, 3, 4}, {64, 0, 4}};
  const size_t arena = backend::plan_memory(blocks);
  for (size_t i = 0; i < blocks.size(); ++i)
    for (size_t j = i + 1; j < blocks.size(); ++j) EXPECT_TRUE(disjoint(blocks[i], blocks[j])) << i << " and " << j;
  EXPECT_EQ(backend::live_peak(blocks), 3064u);
  EXPECT_LE(arena, 3136u);  // 2048 + 1024 + 64 with 64-byte alignment: a and c share, b and d share
  for (const Block& b : blocks) EXPECT_EQ(b.offset % 64, 0u);
}

TEST(MemoryPlan, ProgramsStayWithinAFactorOfTheLiveTensors) {
  struct Case {
    const char* model;
    int64_t image, batch;
    backend::Mode mode;
  };
  for (const Case& c : {Case{"resnet20", 32, 64, backend::Mode::train}, Case{"resnet50", 224, 8, backend::Mode::train},
                        Case{"resnet50", 224, 8, backend::Mode::infer},
                        Case{"inception_v3", 139, 4, backend::Mode::train},
                        Case{"inception_resnet_v2", 139, 4, backend::Mode::infer}}) {
    models::ModelConfig cfg = models::find_model(c.model).defaults;
    cfg.image = c.image;
    cfg.aux = false;  // Inception-v3's auxiliary head needs 299x299
    SCOPED_TRACE(std::string(c.model) + (c.mode == backend::Mode::train ? " train" : " infer"));
    graph::Graph g = models::build_model(c.model, cfg);
    graph::ParamStore store(g);
    auto p = backend::compile_cpu(g, store, {c.batch, c.mode});
    const backend::MemoryPlan m = p->memory_plan();
    EXPECT_GT(m.live_peak, 0);
    EXPECT_LE(static_cast<double>(m.arena), 1.25 * static_cast<double>(m.live_peak));
    // Sharing by lifetime pays in training too, which keeps activations for backward
    // but not every gradient. (Inference memory is mostly its prepared weights.)
    if (c.mode == backend::Mode::train) {
      EXPECT_LT(static_cast<double>(m.arena), 0.6 * static_cast<double>(m.unplanned));
    }
  }
}
