// data::resized: bilinear with half-pixel centres, any channel count.
#include <gtest/gtest.h>

#include "data/dataset.h"

namespace incres::data {
namespace {

TEST(Resize, UpsamplesBilinearlyWithHalfPixelCentres) {
  Dataset ds;
  ds.count = 1;
  ds.channels = 1;
  ds.height = 2;  // two equal rows of two pixels
  ds.width = 2;
  ds.classes = 1;
  ds.images = {0, 200, 0, 200};
  ds.labels = {0};
  const Dataset r = resized(ds, 4);
  EXPECT_EQ(r.height, 4);
  EXPECT_EQ(r.width, 4);
  // Output x = 0..3 samples input x = (x + 0.5) / 2 - 0.5 = -0.25 (clamped 0), 0.25,
  // 0.75, 1.25 (clamped 1): 0, 50, 150, 200 on every row.
  for (int y = 0; y < 4; ++y) {
    EXPECT_EQ(r.images[y * 4 + 0], 0);
    EXPECT_EQ(r.images[y * 4 + 1], 50);
    EXPECT_EQ(r.images[y * 4 + 2], 150);
    EXPECT_EQ(r.images[y * 4 + 3], 200);
  }
  EXPECT_EQ(r.labels, ds.labels);
}

TEST(Resize, KeepsChannelsApartAndConstantsConstant) {
  Dataset ds;
  ds.count = 2;
  ds.channels = 3;
  ds.height = ds.width = 3;
  ds.classes = 2;
  ds.labels = {0, 1};
  for (int n = 0; n < 2; ++n)
    for (int i = 0; i < 9; ++i)
      for (int c = 0; c < 3; ++c) ds.images.push_back(static_cast<uint8_t>(10 * (c + 1) + n));
  const Dataset r = resized(ds, 7);
  ASSERT_EQ(r.images.size(), 2u * 7 * 7 * 3);
  for (size_t i = 0; i < r.images.size(); ++i) EXPECT_EQ(r.images[i], 10 * (i % 3 + 1) + i / (7 * 7 * 3));
}

}  // namespace
}  // namespace incres::data
