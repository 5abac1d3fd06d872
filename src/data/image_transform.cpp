// Geometric transforms and normalisation of decoded images; semantics in image.h.
//
// Everything is one primitive, sample(): output pixel (y, x) is the bilinear sample of
// a box of the source at box coordinate ((y + oy + 0.5) * scale_y - 0.5, ...), clamped
// to the box. "Resize the whole image, then crop" is the whole image as the box with
// the crop offset (oy, ox); "crop, then resize" is the crop as the box with offset 0.
// Computing only the kept pixels saves resizing a 480-pixel-short-side image of which
// a 224 crop is used.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "data/image.h"

namespace incres::data {
namespace {

// Beyond this an output side is a typo, not an experiment.
constexpr int64_t kMaxSide = 16384;

// One output coordinate's two source taps and the weight of the second.
struct Tap {
  int64_t i0, i1;
  float f;
};

std::vector<Tap> taps(int64_t out, int64_t offset, double scale, int64_t box_start, int64_t box_len) {
  std::vector<Tap> t(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    // Pixel centres: identity scale gives s = o + offset exactly (no interpolation).
    double s = (static_cast<double>(o + offset) + 0.5) * scale - 0.5;
    s = std::clamp(s, 0.0, static_cast<double>(box_len - 1));
    const int64_t i0 = static_cast<int64_t>(s);  // s >= 0: truncation is floor
    const int64_t i1 = std::min(i0 + 1, box_len - 1);
    t[static_cast<size_t>(o)] = {box_start + i0, box_start + i1, static_cast<float>(s - static_cast<double>(i0))};
  }
  return t;
}

Image sample(const Image& img, const Box& box, double scale_y, double scale_x, int64_t oy, int64_t ox,
             int64_t out_h, int64_t out_w, bool flip) {
  const std::vector<Tap> ty = taps(out_h, oy, scale_y, box.top, box.height);
  const std::vector<Tap> tx = taps(out_w, ox, scale_x, box.left, box.width);
  Image out;
  out.height = out_h;
  out.width = out_w;
  out.channels = 3;
  out.pixels.resize(static_cast<size_t>(out_h * out_w * 3));
  for (int64_t y = 0; y < out_h; ++y) {
    const Tap& a = ty[static_cast<size_t>(y)];
    const uint8_t* r0 = img.pixels.data() + a.i0 * img.width * 3;
    const uint8_t* r1 = img.pixels.data() + a.i1 * img.width * 3;
    uint8_t* dst = out.pixels.data() + y * out_w * 3;
    for (int64_t x = 0; x < out_w; ++x) {
      const Tap& b = tx[static_cast<size_t>(flip ? out_w - 1 - x : x)];
      for (int c = 0; c < 3; ++c) {
        const float top = r0[b.i0 * 3 + c] + b.f * (r0[b.i1 * 3 + c] - r0[b.i0 * 3 + c]);
        const float bot = r1[b.i0 * 3 + c] + b.f * (r1[b.i1 * 3 + c] - r1[b.i0 * 3 + c]);
        const float v = top + a.f * (bot - top);  // within [0, 255]: a convex combination
        dst[x * 3 + c] = static_cast<uint8_t>(std::min(v + 0.5f, 255.0f));
      }
    }
  }
  return out;
}

// The size torchvision's Resize(side) gives: the shorter side becomes `side`, the
// longer one side * long / short, truncated.
void shorter_side_size(int64_t h, int64_t w, int64_t side, int64_t* nh, int64_t* nw) {
  if (h <= w) {
    *nh = side;
    *nw = side * w / h;
  } else {
    *nw = side;
    *nh = side * h / w;
  }
}

void check_image(const Image& img, const char* what) {
  INCRES_CHECK(img.channels == 3 && img.height >= 1 && img.width >= 1 &&
                   img.pixels.size() == static_cast<size_t>(img.height * img.width * 3),
               what, ": expected an RGB image with pixels, got ", img.height, "x", img.width, "x",
               img.channels, " with ", img.pixels.size(), " bytes");
}

int64_t center_side(const CenterCrop& t) {
  return static_cast<int64_t>(std::nearbyint(static_cast<double>(t.size) / t.crop_fraction));
}

// Python's round() (ties to even) under the default rounding mode, as torchvision.
int64_t round_even(double v) { return static_cast<int64_t>(std::nearbyint(v)); }

}  // namespace

int64_t output_size(const Transform& t) {
  return std::visit([](const auto& x) { return x.size; }, t);
}

void validate(const Transform& t) {
  const int64_t size = output_size(t);
  INCRES_CHECK(size >= 1 && size <= kMaxSide, "transform output size is ", size, ", expected 1..", kMaxSide);
  if (const auto* s = std::get_if<ScaleAugment>(&t)) {
    INCRES_CHECK(s->min_side >= s->size && s->max_side >= s->min_side && s->max_side <= kMaxSide,
                 "ScaleAugment: shorter side range [", s->min_side, ", ", s->max_side,
                 "] must satisfy size (", s->size, ") <= min <= max <= ", kMaxSide,
                 " (the paper: [256, 480] with a 224 crop)");
  } else if (const auto* r = std::get_if<RandomResizedCrop>(&t)) {
    INCRES_CHECK(r->scale_min > 0 && r->scale_min <= r->scale_max && r->scale_max <= 1,
                 "RandomResizedCrop: scale range (", r->scale_min, ", ", r->scale_max,
                 ") must satisfy 0 < min <= max <= 1 (Inception: 0.08, 1)");
    INCRES_CHECK(r->ratio_min > 0 && r->ratio_min <= r->ratio_max && std::isfinite(r->ratio_max),
                 "RandomResizedCrop: ratio range (", r->ratio_min, ", ", r->ratio_max,
                 ") must satisfy 0 < min <= max (Inception: 3/4, 4/3)");
    INCRES_CHECK(r->tries >= 0 && r->tries <= 1000, "RandomResizedCrop: tries is ", r->tries,
                 ", expected 0..1000 (torchvision: 10)");
  } else if (const auto* c = std::get_if<CenterCrop>(&t)) {
    INCRES_CHECK(c->crop_fraction > 0 && c->crop_fraction <= 1 && center_side(*c) <= kMaxSide,
                 "CenterCrop: crop_fraction is ", c->crop_fraction,
                 ", expected in (0, 1] (0.875: a 224 crop of a 256 resize)");
  }
}

Image resized_crop(const Image& img, int64_t top, int64_t left, int64_t h, int64_t w, int64_t out_h,
                   int64_t out_w, bool flip) {
  check_image(img, "resized_crop");
  INCRES_CHECK(top >= 0 && left >= 0 && h >= 1 && w >= 1 && top + h <= img.height && left + w <= img.width,
               "resized_crop: box top ", top, " left ", left, " size ", h, "x", w, " outside the image ",
               img.height, "x", img.width);
  INCRES_CHECK(out_h >= 1 && out_w >= 1 && out_h <= kMaxSide && out_w <= kMaxSide,
               "resized_crop: output ", out_h, "x", out_w, ", expected 1..", kMaxSide);
  return sample(img, Box{top, left, h, w}, static_cast<double>(h) / out_h, static_cast<double>(w) / out_w,
                0, 0, out_h, out_w, flip);
}

Image resize_shorter(const Image& img, int64_t side) {
  check_image(img, "resize_shorter");
  INCRES_CHECK(side >= 1 && side <= kMaxSide, "resize_shorter: side ", side, ", expected 1..", kMaxSide);
  int64_t nh, nw;
  shorter_side_size(img.height, img.width, side, &nh, &nw);
  INCRES_CHECK(nh >= 1 && nw >= 1 && nh * nw <= (int64_t{1} << 28), "resize_shorter: ", img.height,
               "x", img.width, " to shorter side ", side, " gives ", nh, "x", nw, ", out of range");
  return resized_crop(img, 0, 0, img.height, img.width, nh, nw);
}

Box random_resized_crop_box(const RandomResizedCrop& t, int64_t height, int64_t width, Rng& rng) {
  // torchvision.transforms.RandomResizedCrop.get_params, step for step.
  const double area = static_cast<double>(height) * static_cast<double>(width);
  const double log_lo = std::log(t.ratio_min), log_hi = std::log(t.ratio_max);
  for (int i = 0; i < t.tries; ++i) {
    const double target = area * (t.scale_min + (t.scale_max - t.scale_min) * rng.uniform());
    const double ratio = std::exp(log_lo + (log_hi - log_lo) * rng.uniform());
    const int64_t w = round_even(std::sqrt(target * ratio));
    const int64_t h = round_even(std::sqrt(target / ratio));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const int64_t top = static_cast<int64_t>(rng.below(static_cast<uint64_t>(height - h + 1)));
      const int64_t left = static_cast<int64_t>(rng.below(static_cast<uint64_t>(width - w + 1)));
      return {top, left, h, w};
    }
  }
  // Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  int64_t w = width, h = height;
  if (in_ratio < t.ratio_min)
    h = std::clamp<int64_t>(round_even(static_cast<double>(w) / t.ratio_min), 1, height);
  else if (in_ratio > t.ratio_max)
    w = std::clamp<int64_t>(round_even(static_cast<double>(h) * t.ratio_max), 1, width);
  return {(height - h) / 2, (width - w) / 2, h, w};
}

Image apply(const Transform& t, const Image& img, Rng& rng) {
  check_image(img, "image transform");
  if (const auto* s = std::get_if<ScaleAugment>(&t)) {
    const bool coin = rng.uniform() < 0.5;  // drawn even when flip is off: same crops
    const int64_t side = s->min_side + static_cast<int64_t>(rng.below(static_cast<uint64_t>(s->max_side - s->min_side + 1)));
    int64_t nh, nw;
    shorter_side_size(img.height, img.width, side, &nh, &nw);
    // nh, nw >= side >= size: the crop fits.
    const int64_t top = static_cast<int64_t>(rng.below(static_cast<uint64_t>(nh - s->size + 1)));
    const int64_t left = static_cast<int64_t>(rng.below(static_cast<uint64_t>(nw - s->size + 1)));
    return sample(img, Box{0, 0, img.height, img.width}, static_cast<double>(img.height) / nh,
                  static_cast<double>(img.width) / nw, top, left, s->size, s->size, s->flip && coin);
  }
  if (const auto* r = std::get_if<RandomResizedCrop>(&t)) {
    const bool coin = rng.uniform() < 0.5;
    const Box b = random_resized_crop_box(*r, img.height, img.width, rng);
    return sample(img, b, static_cast<double>(b.height) / r->size, static_cast<double>(b.width) / r->size, 0, 0,
                  r->size, r->size, r->flip && coin);
  }
  const auto& c = std::get<CenterCrop>(t);
  int64_t nh, nw;
  shorter_side_size(img.height, img.width, center_side(c), &nh, &nw);
  const int64_t top = round_even(static_cast<double>(nh - c.size) / 2.0);
  const int64_t left = round_even(static_cast<double>(nw - c.size) / 2.0);
  return sample(img, Box{0, 0, img.height, img.width}, static_cast<double>(img.height) / nh,
                static_cast<double>(img.width) / nw, top, left, c.size, c.size, false);
}

void validate_normalization(const std::vector<float>& mean, const std::vector<float>& std) {
  INCRES_CHECK(mean.empty() || mean.size() == 3, "image normalisation: mean has ", mean.size(),
               " values, expected 0 or 3 (R, G, B)");
  INCRES_CHECK(std.empty() || std.size() == 3, "image normalisation: std has ", std.size(),
               " values, expected 0 or 3 (R, G, B)");
  for (size_t c = 0; c < mean.size(); ++c)
    INCRES_CHECK(std::isfinite(mean[c]), "image normalisation: mean[", c, "] is ", mean[c], ", expected finite");
  for (size_t c = 0; c < std.size(); ++c)
    INCRES_CHECK(std::isfinite(std[c]) && std[c] > 0, "image normalisation: std[", c, "] is ", std[c],
                 ", expected finite and > 0");
}

void normalize(const Image& img, const std::vector<float>& mean, const std::vector<float>& std, float* out) {
  check_image(img, "normalize");
  validate_normalization(mean, std);
  // A table per channel, computed in double exactly as the Loader does.
  float lut[3][256];
  for (int c = 0; c < 3; ++c) {
    const double m = mean.empty() ? 0.0 : mean[c], sd = std.empty() ? 1.0 : std[c];
    for (int p = 0; p < 256; ++p) lut[c][p] = static_cast<float>((p / 255.0 - m) / sd);
  }
  const int64_t plane = img.height * img.width;
  const uint8_t* px = img.pixels.data();
  for (int64_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) out[c * plane + i] = lut[c][px[i * 3 + c]];
}

std::vector<float> load_eval_image(const std::string& path, int64_t size, const std::vector<float>& mean,
                                   const std::vector<float>& std, const DecodeOptions& opts, double crop_fraction) {
  const Transform t = CenterCrop{size, crop_fraction};
  validate(t);
  validate_normalization(mean, std);
  Image img = decode_image(path, opts);
  Rng unused(0);  // CenterCrop draws nothing
  Image crop = apply(t, img, unused);
  std::vector<float> out(static_cast<size_t>(3 * size * size));
  normalize(crop, mean, std, out.data());
  return out;
}

}  // namespace incres::data
