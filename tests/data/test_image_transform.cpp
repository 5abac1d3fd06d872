// Image transforms: exact crops where no resampling happens, bilinear values, the
// torchvision size rules, RandomResizedCrop statistics and fallback, determinism of
// the (seed, epoch, position) streams, normalisation and load_eval_image.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/rng.h"
#include "data/image.h"
#include "support.h"
#include "test_image_writers.h"

namespace incres::data {
namespace {

using testing_support::contains;
using testing_support::error_of;
using namespace test_images;

// The h x w window of img at (top, left), optionally mirrored left-right.
Image window(const Image& img, int64_t top, int64_t left, int64_t h, int64_t w, bool flip = false) {
  Image out;
  out.height = h;
  out.width = w;
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      const uint8_t* p = img.at(top + y, left + (flip ? w - 1 - x : x));
      out.pixels.insert(out.pixels.end(), p, p + 3);
    }
  return out;
}

// Where `crop` sits in img as an exact (possibly mirrored) window: {top, left, flip},
// or top = -1.
struct Found {
  int64_t top = -1, left = -1;
  bool flip = false;
};
Found find_window(const Image& img, const Image& crop) {
  for (int flip = 0; flip < 2; ++flip)
    for (int64_t t = 0; t + crop.height <= img.height; ++t)
      for (int64_t l = 0; l + crop.width <= img.width; ++l)
        if (window(img, t, l, crop.height, crop.width, flip).pixels == crop.pixels) return {t, l, flip == 1};
  return {};
}

Rng stream(uint64_t seed, uint64_t epoch, uint64_t position) { return Rng(mix_key(seed, epoch, position)); }

TEST(ImageTransform, CenterCropOfKnownImageIsExact) {
  // 256 = round(224 / 0.875): the resize is the identity and the crop copies pixels.
  for (auto [h, w] : {std::pair<int64_t, int64_t>{256, 300}, {301, 256}, {256, 256}}) {
    Image img = noise(h, w, 3);
    Rng rng(0);
    Image got = apply(CenterCrop{224}, img, rng);
    ASSERT_EQ(got.height, 224);
    ASSERT_EQ(got.width, 224);
    // top = round((H - 224) / 2) with ties to even: 38 for 300, 38 for 301 (38.5), 16 for 256.
    const int64_t top = static_cast<int64_t>(std::nearbyint((h - 224) / 2.0));
    const int64_t left = static_cast<int64_t>(std::nearbyint((w - 224) / 2.0));
    EXPECT_EQ(got.pixels, window(img, top, left, 224, 224).pixels) << h << "x" << w;
  }
}

TEST(ImageTransform, ResizeShorterSideFollowsTorchvision) {
  Image img = noise(375, 500);
  Image r = resize_shorter(img, 256);
  EXPECT_EQ(r.height, 256);
  EXPECT_EQ(r.width, 341);  // int(256 * 500 / 375) = 341 (truncated)
  Image t = resize_shorter(noise(500, 375), 299);
  EXPECT_EQ(t.width, 299);
  EXPECT_EQ(t.height, 398);  // int(299 * 500 / 375) = 398
  // Side == shorter side: pixels copied exactly.
  EXPECT_EQ(resize_shorter(img, 375).pixels, img.pixels);
}

TEST(ImageTransform, BilinearOnPixelCentres) {
  // One row [0, 255] upsampled x2: source x = (x + 0.5) / 2 - 0.5 -> clamp(-0.25) = 0,
  // 0.25, 0.75, clamp(1.25) = 1: 0, 63.75, 191.25, 255.
  Image img;
  img.height = 1;
  img.width = 2;
  img.pixels = {0, 0, 0, 255, 255, 255};
  Image up = resized_crop(img, 0, 0, 1, 2, 1, 4);
  ASSERT_EQ(up.pixels.size(), 12u);
  const uint8_t want[4] = {0, 64, 191, 255};
  for (int x = 0; x < 4; ++x) EXPECT_EQ(up.pixels[3 * x], want[x]) << x;
  // Downsampling by 2 without antialiasing averages the two middle taps of each pair.
  Image row;
  row.height = 1;
  row.width = 4;
  row.pixels = {0, 0, 0, 100, 100, 100, 200, 200, 200, 250, 250, 250};
  Image down = resized_crop(row, 0, 0, 1, 4, 1, 2);
  EXPECT_EQ(down.pixels[0], 50);   // x = 0.5: (0 + 100) / 2
  EXPECT_EQ(down.pixels[3], 225);  // x = 2.5: (200 + 250) / 2
  // Flip mirrors the output.
  Image flipped = resized_crop(img, 0, 0, 1, 2, 1, 4, true);
  for (int x = 0; x < 4; ++x) EXPECT_EQ(flipped.pixels[3 * x], want[3 - x]);
}

TEST(ImageTransform, ScaleAugmentWithoutRescaleIsARandomWindow) {
  // min_side = max_side = the shorter side: no resampling, so each output is an exact
  // window (or its mirror) of the image, at a random place.
  Image img = noise(40, 52, 11);
  const ScaleAugment t{32, 40, 40, true};
  std::set<std::pair<int64_t, int64_t>> places;
  int flips = 0;
  for (uint64_t p = 0; p < 40; ++p) {
    Rng rng = stream(7, 0, p);
    Image got = apply(t, img, rng);
    ASSERT_EQ(got.height, 32);
    Found f = find_window(img, got);
    ASSERT_GE(f.top, 0) << "position " << p;
    places.insert({f.top, f.left});
    flips += f.flip;
  }
  EXPECT_GT(places.size(), 20u);
  EXPECT_GT(flips, 5);
  EXPECT_LT(flips, 35);
}

TEST(ImageTransform, SameStreamSameCropOtherStreamOtherCrop) {
  Image img = noise(120, 90, 2);
  const Transform ts[] = {ScaleAugment{64, 72, 128, true}, RandomResizedCrop{48}, CenterCrop{64}};
  for (const Transform& t : ts) {
    Rng a = stream(1, 2, 3), b = stream(1, 2, 3);
    Image x = apply(t, img, a), y = apply(t, img, b);
    EXPECT_EQ(x.pixels, y.pixels);
    int differ = 0;
    for (uint64_t p = 4; p < 12; ++p) {
      Rng c = stream(1, 2, p);
      differ += apply(t, img, c).pixels != x.pixels;
    }
    if (std::holds_alternative<CenterCrop>(t))
      EXPECT_EQ(differ, 0);
    else
      EXPECT_GE(differ, 7);
  }
}

TEST(ImageTransform, OutputSizeIsConfigurable) {
  Image img = noise(50, 70, 4);
  for (int64_t s : {32, 75, 224, 299}) {
    const Transform ts[] = {ScaleAugment{s, s + 4, s + 40, true}, RandomResizedCrop{s}, CenterCrop{s}};
    for (const Transform& t : ts) {
      validate(t);
      EXPECT_EQ(output_size(t), s);
      Rng rng = stream(0, 0, static_cast<uint64_t>(s));
      Image got = apply(t, img, rng);
      EXPECT_EQ(got.height, s);
      EXPECT_EQ(got.width, s);
      EXPECT_EQ(got.pixels.size(), static_cast<size_t>(s * s * 3));
    }
  }
}

TEST(ImageTransform, RandomResizedCropStatistics) {
  const RandomResizedCrop t{299};
  const int64_t H = 375, W = 500;
  double lo = 1, hi = 0, sum = 0;
  const int n = 4000;
  for (int i = 0; i < n; ++i) {
    Rng rng = stream(3, 0, static_cast<uint64_t>(i));
    Box b = random_resized_crop_box(t, H, W, rng);
    ASSERT_GE(b.top, 0);
    ASSERT_GE(b.left, 0);
    ASSERT_LE(b.top + b.height, H);
    ASSERT_LE(b.left + b.width, W);
    const double frac = static_cast<double>(b.height * b.width) / (H * W);
    const double ratio = static_cast<double>(b.width) / b.height;
    // Rounding w and h to integers moves both by a hair.
    EXPECT_GE(frac, 0.08 * 0.98);
    EXPECT_LE(frac, 1.0);
    EXPECT_GE(ratio, 0.75 * 0.98);
    EXPECT_LE(ratio, 4.0 / 3.0 * 1.02);
    lo = std::min(lo, frac);
    hi = std::max(hi, frac);
    sum += frac;
  }
  // Uniform area fractions in [0.08, 1], minus the large ones that do not fit at the
  // drawn ratio: the mean sits a little under 0.54.
  EXPECT_LT(lo, 0.09);
  EXPECT_GT(hi, 0.9);
  EXPECT_GT(sum / n, 0.40);
  EXPECT_LT(sum / n, 0.54);
}

TEST(ImageTransform, RandomResizedCropFallbackIsTheCentreAtTheRatioLimit) {
  RandomResizedCrop t{32};
  t.tries = 0;  // straight to the fallback
  Rng rng(0);
  // 100 x 400 is wider than 4/3: height kept, width round(100 * 4/3) = 133, centred.
  Box b = random_resized_crop_box(t, 100, 400, rng);
  EXPECT_EQ(b.height, 100);
  EXPECT_EQ(b.width, 133);
  EXPECT_EQ(b.top, 0);
  EXPECT_EQ(b.left, 133);
  // 400 x 100 is taller than 3/4: width kept, height round(100 / 0.75) = 133.
  b = random_resized_crop_box(t, 400, 100, rng);
  EXPECT_EQ(b.width, 100);
  EXPECT_EQ(b.height, 133);
  EXPECT_EQ(b.top, 133);
  // Within the range: the whole image.
  b = random_resized_crop_box(t, 90, 100, rng);
  EXPECT_EQ(b.height, 90);
  EXPECT_EQ(b.width, 100);
  // A thin strip makes every try fail (no 8%-of-area box fits the 3/4..4/3 ratio).
  t.tries = 10;
  b = random_resized_crop_box(t, 2, 1000, rng);
  EXPECT_EQ(b.height, 2);
  EXPECT_EQ(b.width, 3);
}

TEST(ImageTransform, BadOptionsAreErrors) {
  EXPECT_TRUE(contains(error_of([] { validate(ScaleAugment{300, 256, 480}); }), "size (300) <= min"));
  EXPECT_TRUE(contains(error_of([] { validate(ScaleAugment{224, 480, 256}); }), "[480, 256]"));
  RandomResizedCrop r;
  r.scale_min = 0;
  EXPECT_TRUE(contains(error_of([&] { validate(r); }), "RandomResizedCrop: scale range (0, 1)"));
  EXPECT_TRUE(contains(error_of([] { validate(CenterCrop{224, 1.5}); }), "crop_fraction is 1.5"));
  EXPECT_TRUE(contains(error_of([] { validate(CenterCrop{0}); }), "output size is 0"));
  Image img = noise(4, 4);
  std::vector<float> out(48);
  EXPECT_TRUE(contains(error_of([&] { normalize(img, {0.5f}, {}, out.data()); }), "mean has 1 values"));
  EXPECT_TRUE(contains(error_of([&] { normalize(img, {}, {1, 0, 1}, out.data()); }), "std[1] is 0"));
}

TEST(ImageTransform, NormalizeToChw) {
  Image img;
  img.height = 1;
  img.width = 2;
  img.pixels = {0, 51, 255, 255, 102, 0};
  std::vector<float> out(6);
  normalize(img, {0.5f, 0.2f, 0.0f}, {0.5f, 0.1f, 2.0f}, out.data());
  // Channel planes: R = (0, 1), G = (0.2, 0.4), B = (1, 0), each (v - mean) / std.
  const float want[6] = {-1.0f, 1.0f, 0.0f, 2.0f, 0.5f, 0.0f};
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(out[i], want[i], 1e-6) << i;
}

TEST(ImageTransform, LoadEvalImage) {
  TempDir dir;
  Image img = noise(256, 260, 8);
  write_bytes(dir / "cat.png", png_bytes(img));
  std::vector<float> v = load_eval_image(dir / "cat.png", 224, {}, {});
  ASSERT_EQ(v.size(), 3u * 224 * 224);
  Image crop = window(img, 16, 18, 224, 224);
  for (int c = 0; c < 3; ++c)
    for (int64_t i = 0; i < 224 * 224; i += 997)
      EXPECT_FLOAT_EQ(v[c * 224 * 224 + i], crop.pixels[i * 3 + c] / 255.0f);
  std::vector<float> net = load_eval_image(dir / "cat.png", 32);  // ImageNet mean/std by default
  EXPECT_EQ(net.size(), 3u * 32 * 32);
  EXPECT_TRUE(contains(error_of([&] { load_eval_image(dir / "dog.png", 224); }), "dog.png: cannot open image"));
}

}  // namespace
}  // namespace incres::data
