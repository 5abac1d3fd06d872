// Loader and dataset helpers: order, determinism across workers, resume, augmentation,
// normalisation, drop_last, shutdown and worker failures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "data/loader.h"

namespace incres::data {
namespace {

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
#define EXPECT_HAS(msg, part) \
  EXPECT_NE((msg).find(part), std::string::npos) << "missing \"" << (part) << "\" in: " << (msg)

// count images of H x W x C random pixels; label i is i itself (classes = count), so
// a label tells which sample a batch row came from.
Dataset make(int64_t count = 37, int64_t C = 3, int64_t H = 5, int64_t W = 4) {
  Dataset ds;
  ds.count = count;
  ds.channels = C;
  ds.height = H;
  ds.width = W;
  ds.classes = count;
  Rng rng(123);
  ds.images.resize(count * C * H * W);
  for (auto& p : ds.images) p = static_cast<uint8_t>(rng.next());
  for (int64_t i = 0; i < count; ++i) ds.labels.push_back(static_cast<int32_t>(i));
  ds.source = "synthetic";
  return ds;
}

// A copy of one batch, for comparing runs.
struct Copy {
  std::vector<float> images;
  std::vector<int32_t> labels;
  int64_t index, size;
  bool operator==(const Copy& o) const {
    return images.size() == o.images.size() &&
           std::memcmp(images.data(), o.images.data(), images.size() * sizeof(float)) == 0 &&
           labels == o.labels && index == o.index && size == o.size;
  }
};
Copy copy(const Batch& b) {
  const float* p = b.images.data<float>();
  return {std::vector<float>(p, p + b.images.numel()), b.labels, b.index, b.size};
}
// Through the BatchSource interface, as the trainer and evaluate() read it.
std::vector<Copy> run_epoch(BatchSource& l, int64_t epoch, int64_t first = 0) {
  std::vector<Copy> out;
  l.start_epoch(epoch, first);
  while (const Batch* b = l.next()) out.push_back(copy(*b));
  return out;
}

LoaderOptions opts(int workers) {
  LoaderOptions o;
  o.batch = 8;
  o.augment = true;
  o.crop_pad = 2;
  o.out_size = 6;
  o.mean = {0.5f, 0.4f, 0.3f};
  o.std = {0.2f, 0.25f, 0.3f};
  o.seed = 42;
  o.workers = workers;
  o.prefetch = 3;
  return o;
}

TEST(Loader, ShapesAndCounts) {
  Dataset ds = make();
  Loader l(ds, opts(2));
  EXPECT_EQ(l.sample_shape(), (Shape{3, 6, 6}));
  EXPECT_EQ(l.batches_per_epoch(), 4);  // 37 / 8 with drop_last
  l.start_epoch(0);
  const Batch* b = l.next();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->images.shape(), (Shape{8, 3, 6, 6}));
}

TEST(Loader, SameBatchesForAnyNumberOfWorkers) {
  Dataset ds = make();
  std::vector<std::vector<Copy>> runs;
  for (int w : {0, 1, 3}) {
    Loader l(ds, opts(w));
    std::vector<Copy> all = run_epoch(l, 0);
    std::vector<Copy> e1 = run_epoch(l, 1);
    all.insert(all.end(), e1.begin(), e1.end());
    runs.push_back(std::move(all));
  }
  ASSERT_EQ(runs[0].size(), 8u);
  EXPECT_TRUE(runs[0] == runs[1]);
  EXPECT_TRUE(runs[0] == runs[2]);
  // Epochs differ from each other (new permutation and augmentation).
  EXPECT_FALSE(runs[0][0] == runs[0][4]);
  // Another seed gives other batches.
  LoaderOptions o = opts(2);
  o.seed = 43;
  Loader l(ds, o);
  EXPECT_FALSE(run_epoch(l, 0)[0] == runs[0][0]);
}

// Data-parallel shards (data::Shard): batch i of shard k is rows [k * b, (k + 1) * b)
// of batch i of one loader reading b * count at a time, augmentation included, also
// for the last partial batch of an evaluation (a shard past its end gets size 0).
TEST(Loader, ShardsTogetherReadWhatOneLoaderReads) {
  Dataset ds = make(37);
  for (bool drop_last : {true, false}) {
    LoaderOptions whole = opts(1);
    whole.drop_last = drop_last;
    whole.shuffle = drop_last;
    Loader one(ds, whole);
    const std::vector<Copy> ref = run_epoch(one, 1);
    const int64_t per = 3 * 6 * 6;
    for (int count : {2, 4}) {
      std::vector<std::vector<Copy>> shards;
      for (int k = 0; k < count; ++k) {
        LoaderOptions o = whole;
        o.batch = whole.batch / count;
        o.shard = {.index = k, .count = count};
        Loader l(ds, o);
        EXPECT_EQ(l.batches_per_epoch(), one.batches_per_epoch());
        shards.push_back(run_epoch(l, 1));
      }
      for (size_t i = 0; i < ref.size(); ++i) {
        std::vector<int32_t> labels;
        std::vector<float> images;
        for (int k = 0; k < count; ++k) {
          const Copy& c = shards[k][i];
          labels.insert(labels.end(), c.labels.begin(), c.labels.end());
          images.insert(images.end(), c.images.begin(), c.images.begin() + c.size * per);
        }
        EXPECT_EQ(labels, ref[i].labels) << "batch " << i << " of " << count << " shards";
        EXPECT_TRUE(std::equal(images.begin(), images.end(), ref[i].images.begin()))
            << "batch " << i << " of " << count << " shards";
      }
    }
  }
}

TEST(Loader, ResumeEqualsStraightRun) {
  Dataset ds = make();
  Loader straight(ds, opts(3));
  run_epoch(straight, 0);
  std::vector<Copy> e1 = run_epoch(straight, 1);
  // A fresh loader started at (1, 2), as after loading a checkpoint.
  Loader resumed(ds, opts(2));
  std::vector<Copy> tail = run_epoch(resumed, 1, 2);
  ASSERT_EQ(tail.size(), 2u);
  EXPECT_TRUE(tail[0] == e1[2]);
  EXPECT_TRUE(tail[1] == e1[3]);
  EXPECT_EQ(tail[0].index, 2);
  // Restarting mid-epoch while workers are busy, on the same loader.
  straight.start_epoch(5);
  straight.next();
  straight.next();
  std::vector<Copy> again = run_epoch(straight, 1, 1);
  ASSERT_EQ(again.size(), 3u);
  EXPECT_TRUE(again[0] == e1[1]);
  EXPECT_TRUE(again[2] == e1[3]);
  // first_batch == batches_per_epoch is an empty epoch; beyond is an error.
  EXPECT_TRUE(run_epoch(straight, 1, 4).empty());
  EXPECT_HAS(error_of([&] { straight.start_epoch(1, 5); }), "first_batch is 5, expected 0..4");
}

TEST(Loader, ShuffleIsAPermutation) {
  Dataset ds = make();
  LoaderOptions o = opts(2);
  o.drop_last = false;
  Loader l(ds, o);
  std::vector<int32_t> seen[2];
  for (int e = 0; e < 2; ++e)
    for (const Copy& b : run_epoch(l, e)) seen[e].insert(seen[e].end(), b.labels.begin(), b.labels.end());
  std::vector<int32_t> identity(37);
  std::iota(identity.begin(), identity.end(), 0);
  for (auto& s : seen) {
    ASSERT_EQ(s.size(), 37u);
    EXPECT_NE(s, identity);
    std::vector<int32_t> sorted = s;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, identity);
  }
  EXPECT_NE(seen[0], seen[1]);
  // shuffle off: the dataset order, every epoch.
  o.shuffle = false;
  Loader plain(ds, o);
  std::vector<int32_t> order;
  for (const Copy& b : run_epoch(plain, 3)) order.insert(order.end(), b.labels.begin(), b.labels.end());
  EXPECT_EQ(order, identity);
}

// Normalised value of pixel byte p in channel c, as the options define it.
float norm(const LoaderOptions& o, int c, int p) {
  return static_cast<float>((p / 255.0 - o.mean[c]) / o.std[c]);
}

TEST(Loader, NormalisesAndPadsWithoutAugmentation) {
  Dataset ds = make();
  LoaderOptions o = opts(2);
  o.augment = false;
  o.shuffle = false;
  o.out_size = 7;  // 5x4 -> 7x7: top 1, bottom 1, left 1, right 2
  Loader l(ds, o);
  l.start_epoch(0);
  const Batch* b = l.next();
  ASSERT_NE(b, nullptr);
  const float* x = b->images.data<float>();
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < 7; ++y)
        for (int xx = 0; xx < 7; ++xx) {
          int iy = y - 1, ix = xx - 1;
          int p = (iy >= 0 && iy < 5 && ix >= 0 && ix < 4) ? ds.images[((r * 5 + iy) * 4 + ix) * 3 + c] : 0;
          ASSERT_NEAR(x[((r * 3 + c) * 7 + y) * 7 + xx], norm(o, c, p), 1e-6)
              << "row " << r << " c " << c << " y " << y << " x " << xx;
        }
  // Empty mean/std: plain pixel / 255.
  o.mean.clear();
  o.std.clear();
  o.out_size = 0;
  Loader raw(ds, o);
  raw.start_epoch(0);
  b = raw.next();
  EXPECT_FLOAT_EQ(b->images.data<float>()[0], ds.images[0] / 255.0f);
  EXPECT_FLOAT_EQ(b->images.data<float>()[20], ds.images[1] / 255.0f);  // channel 1, (0, 0)
}

TEST(Loader, AugmentationIsACropAndFlipThatKeepsTheLabel) {
  Dataset ds = make();
  LoaderOptions o = opts(2);
  o.out_size = 0;
  Loader aug(ds, o);
  o.augment = false;
  Loader ref(ds, o);
  std::vector<Copy> a = run_epoch(aug, 2), r = run_epoch(ref, 2);
  ASSERT_EQ(a.size(), r.size());
  int changed = 0, flipped = 0, shifted = 0;
  const int H = 5, W = 4, P = 2;
  for (size_t bi = 0; bi < a.size(); ++bi) {
    EXPECT_EQ(a[bi].labels, r[bi].labels);  // same order, same labels
    for (int row = 0; row < 8; ++row) {
      const float* got = a[bi].images.data() + row * 60;
      const float* src = r[bi].images.data() + row * 60;
      changed += std::memcmp(got, src, 60 * sizeof(float)) != 0;
      // Find the (dy, dx, flip) that explains the output: pad by P, crop, flip.
      bool found = false;
      for (int dy = -P; dy <= P && !found; ++dy)
        for (int dx = -P; dx <= P && !found; ++dx)
          for (int f = 0; f < 2 && !found; ++f) {
            bool ok = true;
            for (int c = 0; c < 3 && ok; ++c)
              for (int y = 0; y < H && ok; ++y)
                for (int x = 0; x < W && ok; ++x) {
                  int sy = y + dy, sx = (f ? W - 1 - x : x) + dx;
                  float want = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? src[(c * H + sy) * W + sx]
                                                                         : norm(o, c, 0);
                  ok = got[(c * H + y) * W + x] == want;
                }
            if (ok) {
              found = true;
              flipped += f;
              shifted += dy != 0 || dx != 0;
            }
          }
      EXPECT_TRUE(found) << "batch " << bi << " row " << row << " is no crop/flip of its image";
    }
  }
  // 32 samples: about half flipped, 24 in 25 shifted; these bounds fail with p < 1e-6.
  EXPECT_GT(changed, 20);
  EXPECT_GT(flipped, 4);
  EXPECT_LT(flipped, 28);
  EXPECT_GT(shifted, 20);
}

TEST(Loader, DropLast) {
  Dataset ds = make();
  LoaderOptions o = opts(2);
  o.drop_last = false;
  Loader l(ds, o);
  EXPECT_EQ(l.batches_per_epoch(), 5);
  std::vector<Copy> e = run_epoch(l, 0);
  ASSERT_EQ(e.size(), 5u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(e[i].size, 8);
  EXPECT_EQ(e[4].size, 5);
  EXPECT_EQ(e[4].index, 4);
  EXPECT_EQ(e[4].labels.size(), 5u);
  // The unused rows of the partial batch are zero, the tensor keeps 8 rows.
  ASSERT_EQ(e[4].images.size(), 8u * 3 * 6 * 6);
  for (size_t i = 5 * 108; i < e[4].images.size(); ++i) ASSERT_EQ(e[4].images[i], 0.0f);
  EXPECT_EQ(l.next(), nullptr);  // stays at the end
  o.drop_last = true;
  Loader d(ds, o);
  EXPECT_EQ(d.batches_per_epoch(), 4);
  EXPECT_EQ(run_epoch(d, 0).size(), 4u);
  // Fewer samples than a batch with drop_last: refused, not an empty loader.
  o.batch = 40;
  EXPECT_HAS(error_of([&] { Loader(ds, o); }), "37 samples, not one full batch of 40");
}

TEST(Loader, DestructorMidEpochAndUnstarted) {
  Dataset ds = make(400, 3, 16, 16);
  LoaderOptions o = opts(3);
  o.batch = 16;
  o.mean.assign(3, 0.5f);
  o.std.assign(3, 0.5f);
  o.out_size = 0;
  for (int i = 0; i < 20; ++i) {
    Loader l(ds, o);
    if (i % 3 == 0) continue;  // never started
    l.start_epoch(i);
    if (i % 3 == 1) continue;  // workers busy from the start
    ASSERT_NE(l.next(), nullptr);
  }
  SUCCEED();
}

TEST(Loader, WorkerFailureSurfacesInNext) {
  for (int workers : {0, 2}) {
    Dataset ds = make();
    LoaderOptions o = opts(workers);
    o.shuffle = false;
    Loader l(ds, o);
    ds.labels[20] = 999;  // changed after the loader checked it: batch 2 (rows 16..23)
    l.start_epoch(0);
    ASSERT_NE(l.next(), nullptr);
    ASSERT_NE(l.next(), nullptr);
    std::string m = error_of([&] { l.next(); });
    EXPECT_HAS(m, "batch 2 of epoch 0 failed");
    EXPECT_HAS(m, "label 999 of sample 20");
    // The loader is still usable once the data is fixed.
    ds.labels[20] = 20;
    EXPECT_EQ(run_epoch(l, 0).size(), 4u);
  }
}

TEST(Loader, RejectsBadOptionsAndData) {
  Dataset ds = make();
  LoaderOptions o = opts(1);
  o.mean = {0.5f};
  EXPECT_HAS(error_of([&] { Loader(ds, o); }), "LoaderOptions.mean has 1 values, expected 0 or 3");
  o = opts(1);
  o.std[1] = 0;
  EXPECT_HAS(error_of([&] { Loader(ds, o); }), "LoaderOptions.std[1] is 0");
  o = opts(1);
  o.out_size = 4;
  EXPECT_HAS(error_of([&] { Loader(ds, o); }), "out_size is 4");
  Dataset bad = make();
  bad.images.pop_back();
  EXPECT_HAS(error_of([&] { Loader(bad, opts(1)); }), "images holds 2219 bytes, expected count*H*W*C = 2220");
  Loader l(ds, opts(1));
  EXPECT_HAS(error_of([&] { l.next(); }), "before start_epoch");
}

TEST(Dataset, SubsetAndChannelStats) {
  Dataset ds = make();
  Dataset s = subset(ds, 10);
  EXPECT_EQ(s.count, 10);
  EXPECT_EQ(s.images.size(), 10u * 60);
  EXPECT_TRUE(std::equal(s.images.begin(), s.images.end(), ds.images.begin()));
  EXPECT_EQ(s.labels.back(), 9);
  EXPECT_NO_THROW(validate(s));
  EXPECT_HAS(error_of([&] { subset(ds, 38); }), "n is 38, expected 0..37");

  // Channel 0 all 255, channel 1 alternating 0 / 255, channel 2 all 51.
  Dataset c;
  c.count = 2;
  c.channels = 3;
  c.height = 1;
  c.width = 2;
  c.classes = 1;
  c.images = {255, 0, 51, 255, 255, 51, 255, 0, 51, 255, 255, 51};
  c.labels = {0, 0};
  auto [mean, sd] = channel_mean_std(c);
  ASSERT_EQ(mean.size(), 3u);
  EXPECT_FLOAT_EQ(mean[0], 1.0f);
  EXPECT_FLOAT_EQ(mean[1], 0.5f);
  EXPECT_FLOAT_EQ(mean[2], 0.2f);
  EXPECT_NEAR(sd[0], 0.0f, 1e-7);
  EXPECT_FLOAT_EQ(sd[1], 0.5f);
  EXPECT_NEAR(sd[2], 0.0f, 1e-7);
}

}  // namespace
}  // namespace incres::data
