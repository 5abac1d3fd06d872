// The collectives, run under `mpirun -np 2` (tests/CMakeLists.txt: over TCP loopback,
// so the wire path is the one exercised). Every rank runs every test.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/rng.h"
#include "dist/communicator.h"
#include "dist/gradient_exchange.h"

using namespace incres;

namespace {
dist::Communicator& w() { return dist::world(); }
}  // namespace

TEST(Dist, LaunchedAsTwoRanks) {
  ASSERT_TRUE(dist::launched_by_mpi()) << "run under mpirun -np 2";
  EXPECT_EQ(w().size(), 2) << w().describe();
}

TEST(Dist, IntegerSumsAreExact) {
  // Beyond double precision (2^53): 2^61 + rank, and numbers of every size.
  ASSERT_EQ(w().size(), 2);
  std::vector<int64_t> x = {(int64_t{1} << 61) + w().rank(), -(int64_t{1} << 61) - 3 * w().rank(), 7, 0};
  x[3] = w().rank() == 0 ? (int64_t{1} << 53) + 1 : 1;
  w().sum(x.data(), static_cast<int64_t>(x.size()), "test");
  EXPECT_EQ(x[0], (int64_t{1} << 62) + 1);
  EXPECT_EQ(x[1], -(int64_t{1} << 62) - 3);
  EXPECT_EQ(x[2], 14);
  EXPECT_EQ(x[3], (int64_t{1} << 53) + 2);
}

TEST(Dist, FloatSumsGiveEveryRankTheSameBitsEveryTime) {
  const int64_t n = 100003;  // not a multiple of anything the ring splits by
  std::vector<float> mine(n);
  Rng rng(11 + w().rank());
  for (float& v : mine) v = static_cast<float>(rng.normal() * 1e3);
  std::vector<float> a = mine, b = mine;
  w().sum(a.data(), n, "test");
  w().sum(b.data(), n, "test");
  EXPECT_EQ(std::memcmp(a.data(), b.data(), n * sizeof(float)), 0) << "the same sum twice gave other bits";
  std::vector<float> root = a;
  w().broadcast(root.data(), n * static_cast<int64_t>(sizeof(float)), 0, "test");
  EXPECT_EQ(std::memcmp(a.data(), root.data(), n * sizeof(float)), 0) << "rank " << w().rank() << " holds other bits";
}

TEST(Dist, BroadcastFromEitherRoot) {
  for (int root = 0; root < w().size(); ++root) {
    int64_t v[2] = {w().rank() * 100 + 1, w().rank() * 100 + 2};
    w().broadcast(v, sizeof v, root, "test");
    EXPECT_EQ(v[0], root * 100 + 1);
    EXPECT_EQ(v[1], root * 100 + 2);
  }
}

TEST(Dist, GradientExchangeAveragesEveryBucket) {
  // Seven buffers of assorted sizes in buckets of at least 256 bytes: several buckets,
  // each started as its last buffer is reported, some reported out of order.
  const std::vector<size_t> sizes = {3, 100, 1, 64, 17, 200, 5};
  std::vector<std::vector<float>> bufs(sizes.size());
  std::vector<std::span<float>> spans;
  for (size_t i = 0; i < sizes.size(); ++i) {
    bufs[i].resize(sizes[i]);
    spans.emplace_back(bufs[i]);
  }
  dist::GradientExchange ex(w(), spans, 256);
  EXPECT_GT(ex.buckets(), 2);
  for (int step = 0; step < 3; ++step) {
    for (size_t i = 0; i < sizes.size(); ++i)
      for (size_t j = 0; j < sizes[i]; ++j) bufs[i][j] = static_cast<float>((w().rank() + 1) * (i + 1) + j + step);
    for (int i : {1, 0, 2, 3, 5, 4, 6}) ex.ready(i);
    ex.finish();
    const float mean_rank = (w().size() + 1) / 2.f;  // of rank + 1
    for (size_t i = 0; i < sizes.size(); ++i)
      for (size_t j = 0; j < sizes[i]; ++j)
        ASSERT_EQ(bufs[i][j], mean_rank * static_cast<float>(i + 1) + static_cast<float>(j + step))
            << "step " << step << " buffer " << i << " element " << j;
  }
  // A buffer never reported goes out in finish().
  for (auto& b : bufs) std::fill(b.begin(), b.end(), static_cast<float>(w().rank()));
  ex.finish();
  EXPECT_EQ(bufs[6][0], (w().size() - 1) / 2.f);
}
