// Dataset helpers: validation, subsets, resizing and channel statistics.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "data/dataset.h"

namespace incres::data {

void validate(const Dataset& ds, const std::string& what) {
  INCRES_CHECK(ds.count >= 0 && ds.channels >= 1 && ds.height >= 1 && ds.width >= 1,
               what, " (", ds.source, "): shape count=", ds.count, " C=", ds.channels,
               " H=", ds.height, " W=", ds.width, ", expected count >= 0 and C, H, W >= 1");
  INCRES_CHECK(ds.classes >= 1, what, " (", ds.source, "): classes is ", ds.classes,
               ", expected >= 1");
  const uint64_t pixels = static_cast<uint64_t>(ds.count) * ds.channels * ds.height * ds.width;
  INCRES_CHECK(ds.images.size() == pixels, what, " (", ds.source, "): images holds ",
               ds.images.size(), " bytes, expected count*H*W*C = ", pixels);
  INCRES_CHECK(ds.labels.size() == static_cast<uint64_t>(ds.count), what, " (", ds.source,
               "): labels holds ", ds.labels.size(), " values, expected count = ", ds.count);
  INCRES_CHECK(ds.class_names.empty() || ds.class_names.size() == static_cast<uint64_t>(ds.classes),
               what, " (", ds.source, "): ", ds.class_names.size(),
               " class names, expected 0 or classes = ", ds.classes);
  for (size_t i = 0; i < ds.labels.size(); ++i)
    INCRES_CHECK(ds.labels[i] >= 0 && ds.labels[i] < ds.classes, what, " (", ds.source,
                 "): label ", ds.labels[i], " of sample ", i, " outside [0, ", ds.classes, ")");
}

Dataset subset(const Dataset& ds, int64_t n) {
  INCRES_CHECK(n >= 0 && n <= ds.count, "subset of ", ds.source, ": n is ", n,
               ", expected 0..", ds.count, " (the dataset's count)");
  const int64_t per_image = ds.channels * ds.height * ds.width;
  Dataset out;
  out.count = n;
  out.channels = ds.channels;
  out.height = ds.height;
  out.width = ds.width;
  out.classes = ds.classes;
  out.images.assign(ds.images.begin(), ds.images.begin() + n * per_image);
  out.labels.assign(ds.labels.begin(), ds.labels.begin() + n);
  out.class_names = ds.class_names;
  out.source = cat(ds.source, " (first ", n, ")");
  return out;
}

std::pair<std::vector<float>, std::vector<float>> channel_mean_std(const Dataset& ds) {
  validate(ds, "channel_mean_std");
  INCRES_CHECK(ds.count > 0, "channel_mean_std of ", ds.source, ": the dataset is empty");
  const size_t C = static_cast<size_t>(ds.channels);
  // Exact integer sums: 255^2 * pixels stays far below 2^64 for any dataset that fits
  // in memory (2^64 / 255^2 ~ 2.8e14 pixels per channel).
  std::vector<uint64_t> sum(C, 0), sumsq(C, 0);
  for (size_t i = 0; i < ds.images.size(); i += C)
    for (size_t c = 0; c < C; ++c) {
      uint64_t v = ds.images[i + c];
      sum[c] += v;
      sumsq[c] += v * v;
    }
  const double n = static_cast<double>(ds.images.size() / C);
  std::vector<float> mean(C), stdev(C);
  for (size_t c = 0; c < C; ++c) {
    double m = sum[c] / n, var = sumsq[c] / n - m * m;  // population variance, 0..255 units
    mean[c] = static_cast<float>(m / 255.0);
    stdev[c] = static_cast<float>(std::sqrt(std::max(var, 0.0)) / 255.0);
  }
  return {mean, stdev};
}

Dataset resized(const Dataset& ds, int64_t size) {
  INCRES_CHECK(size >= 1 && size <= 4096, "resize to ", size, "x", size, ": size must be in [1, 4096]");
  Dataset out = ds;
  out.height = out.width = size;
  const int64_t C = ds.channels, H = ds.height, W = ds.width;
  out.images.assign(static_cast<size_t>(ds.count * size * size * C), 0);
  // Source coordinate of output pixel i: (i + 0.5) * in / out - 0.5, clamped.
  auto taps = [size](int64_t in) {
    std::vector<std::pair<int64_t, float>> t(static_cast<size_t>(size));
    for (int64_t i = 0; i < size; ++i) {
      double s = std::clamp((static_cast<double>(i) + 0.5) * static_cast<double>(in) / static_cast<double>(size) - 0.5,
                            0.0, static_cast<double>(in - 1));
      int64_t i0 = std::min<int64_t>(static_cast<int64_t>(s), in - 1);
      t[static_cast<size_t>(i)] = {i0, static_cast<float>(s - static_cast<double>(i0))};
    }
    return t;
  };
  const auto ty = taps(H), tx = taps(W);
  for (int64_t n = 0; n < ds.count; ++n) {
    const uint8_t* src = ds.images.data() + n * H * W * C;
    uint8_t* dst = out.images.data() + n * size * size * C;
    for (int64_t y = 0; y < size; ++y) {
      const auto [y0, fy] = ty[static_cast<size_t>(y)];
      const int64_t y1 = std::min(y0 + 1, H - 1);
      for (int64_t x = 0; x < size; ++x) {
        const auto [x0, fx] = tx[static_cast<size_t>(x)];
        const int64_t x1 = std::min(x0 + 1, W - 1);
        for (int64_t c = 0; c < C; ++c) {
          auto at = [&](int64_t yy, int64_t xx) { return static_cast<float>(src[(yy * W + xx) * C + c]); };
          float v = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1));
          dst[(y * size + x) * C + c] = static_cast<uint8_t>(std::lround(std::clamp(v, 0.f, 255.f)));
        }
      }
    }
  }
  return out;
}

}  // namespace incres::data
