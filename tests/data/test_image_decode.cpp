// decode_image: every PNG colour type and depth to exact RGB, JPEG within tolerance,
// and every bad case of shared/RELIABILITY.md's image rows as one Error naming the file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "data/image.h"
#include "support.h"
#include "test_image_writers.h"

namespace incres::data {
namespace {

using testing_support::contains;
using testing_support::error_of;
using namespace test_images;

int max_abs_diff(const Image& a, const Image& b) {
  EXPECT_EQ(a.pixels.size(), b.pixels.size());
  int d = 0;
  for (size_t i = 0; i < std::min(a.pixels.size(), b.pixels.size()); ++i)
    d = std::max(d, std::abs(int{a.pixels[i]} - int{b.pixels[i]}));
  return d;
}

Image decode_bytes(const std::vector<uint8_t>& b, const DecodeOptions& o = {}) {
  return decode_image(b.data(), b.size(), "mem.img", o);
}

// ---- PNG: exact ----

TEST(ImageDecode, PngRgb8Exact) {
  TempDir dir;
  Image src = noise(13, 17);
  write_bytes(dir / "a.png", png_bytes(src));
  Image got = decode_image(dir / "a.png");
  EXPECT_EQ(got.height, 13);
  EXPECT_EQ(got.width, 17);
  EXPECT_EQ(got.channels, 3);
  EXPECT_EQ(got.pixels, src.pixels);
}

TEST(ImageDecode, PngInterlacedExact) {
  Image src = noise(9, 11, 5);
  PngSpec s;
  s.width = 11;
  s.height = 9;
  s.samples.assign(src.pixels.begin(), src.pixels.end());
  s.interlace = true;
  EXPECT_EQ(decode_bytes(png_bytes(s)).pixels, src.pixels);
}

// Every pixel of `got` is (v, v, v) with v = expect(i) for pixel i.
template <class F>
void expect_grey(const Image& got, int64_t n, F expect) {
  ASSERT_EQ(got.pixels.size(), static_cast<size_t>(n * 3));
  for (int64_t i = 0; i < n; ++i)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(got.pixels[i * 3 + c], expect(i)) << "pixel " << i << " channel " << c;
}

TEST(ImageDecode, PngGreyAllDepthsToRgb) {
  for (int depth : {1, 2, 4, 8, 16}) {
    PngSpec s;
    s.width = 7;
    s.height = 5;
    s.color = PNG_COLOR_TYPE_GRAY;
    s.depth = depth;
    const int maxv = (1 << depth) - 1;
    for (int i = 0; i < 35; ++i) s.samples.push_back(static_cast<uint16_t>((i * 2654435761u >> 7) % (maxv + 1)));
    Image got = decode_bytes(png_bytes(s));
    SCOPED_TRACE(depth);
    // Low depths scale to 0..255 (v * 255 / max); 16-bit keeps the high byte.
    expect_grey(got, 35, [&](int64_t i) {
      const int v = s.samples[i];
      return static_cast<uint8_t>(depth == 16 ? v >> 8 : v * 255 / maxv);
    });
  }
}

TEST(ImageDecode, PngGreyAlphaDropsAlpha) {
  PngSpec s;
  s.width = 4;
  s.height = 3;
  s.color = PNG_COLOR_TYPE_GRAY_ALPHA;
  for (int i = 0; i < 12; ++i) {
    s.samples.push_back(static_cast<uint16_t>(20 * i));  // grey
    s.samples.push_back(static_cast<uint16_t>(i % 2 ? 0 : 128));  // alpha, ignored
  }
  expect_grey(decode_bytes(png_bytes(s)), 12, [](int64_t i) { return static_cast<uint8_t>(20 * i); });
}

TEST(ImageDecode, PngRgbaDropsAlpha) {
  Image src = noise(6, 5, 9);
  PngSpec s;
  s.width = 5;
  s.height = 6;
  s.color = PNG_COLOR_TYPE_RGB_ALPHA;
  for (size_t i = 0; i < src.pixels.size(); i += 3) {
    s.samples.insert(s.samples.end(), {src.pixels[i], src.pixels[i + 1], src.pixels[i + 2]});
    s.samples.push_back(static_cast<uint16_t>(i % 256));  // alpha: not composited
  }
  EXPECT_EQ(decode_bytes(png_bytes(s)).pixels, src.pixels);
}

TEST(ImageDecode, Png16BitRgbKeepsHighByte) {
  PngSpec s;
  s.width = 3;
  s.height = 2;
  s.depth = 16;
  std::vector<uint8_t> want;
  for (int i = 0; i < 18; ++i) {
    const uint16_t v = static_cast<uint16_t>(i * 3641 + 255);
    s.samples.push_back(v);
    want.push_back(static_cast<uint8_t>(v >> 8));
  }
  EXPECT_EQ(decode_bytes(png_bytes(s)).pixels, want);
}

TEST(ImageDecode, PngPaletteExpandedTransparencyIgnored) {
  for (int depth : {2, 8}) {
    PngSpec s;
    s.width = 5;
    s.height = 3;
    s.color = PNG_COLOR_TYPE_PALETTE;
    s.depth = depth;
    s.palette = {255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30};
    s.trns = {0, 128};  // entries 0 and 1 transparent-ish: dropped like any alpha
    std::vector<uint8_t> want;
    for (int i = 0; i < 15; ++i) {
      const int idx = (i * 7) % 4;
      s.samples.push_back(static_cast<uint16_t>(idx));
      want.insert(want.end(), s.palette.begin() + 3 * idx, s.palette.begin() + 3 * idx + 3);
    }
    SCOPED_TRACE(depth);
    EXPECT_EQ(decode_bytes(png_bytes(s)).pixels, want);
  }
}

TEST(ImageDecode, FormatFromContentNotExtension) {
  TempDir dir;
  Image src = noise(4, 4);
  write_bytes(dir / "really_a_png.jpg", png_bytes(src));
  EXPECT_EQ(decode_image(dir / "really_a_png.jpg").pixels, src.pixels);
  write_bytes(dir / "really_a_jpeg.png", jpeg_bytes(gradient(8, 8)));
  EXPECT_EQ(decode_image(dir / "really_a_jpeg.png").width, 8);
}

// ---- JPEG: within tolerance at quality 100 ----

TEST(ImageDecode, JpegRgbQuality100) {
  TempDir dir;
  Image src = gradient(31, 45);
  write_bytes(dir / "a.JPG", jpeg_bytes(src));
  Image got = decode_image(dir / "a.JPG");
  EXPECT_EQ(got.height, 31);
  EXPECT_EQ(got.width, 45);
  EXPECT_LE(max_abs_diff(got, src), 3);
}

TEST(ImageDecode, JpegGreyToRgb) {
  std::vector<uint8_t> grey(20 * 24);
  for (size_t i = 0; i < grey.size(); ++i) grey[i] = static_cast<uint8_t>(40 + (i % 24) * 6);
  Image got = decode_bytes(jpeg_bytes(grey.data(), 24, 20, TJPF_GRAY));
  ASSERT_EQ(got.pixels.size(), grey.size() * 3);
  int d = 0;
  for (size_t i = 0; i < grey.size(); ++i) {
    EXPECT_EQ(got.pixels[3 * i], got.pixels[3 * i + 1]);
    EXPECT_EQ(got.pixels[3 * i], got.pixels[3 * i + 2]);
    d = std::max(d, std::abs(int{got.pixels[3 * i]} - int{grey[i]}));
  }
  EXPECT_LE(d, 2);
}

TEST(ImageDecode, JpegCmykConvertedToRgb) {
  // TurboJPEG writes CMYK as YCCK with an Adobe marker; the stored values are then
  // read as Adobe-inverted inks (as PIL does), so R = C * K / 255 of the raw values.
  const uint8_t cmyk[4] = {200, 100, 50, 220};
  std::vector<uint8_t> raw;
  for (int i = 0; i < 16 * 16; ++i) raw.insert(raw.end(), cmyk, cmyk + 4);
  Image got = decode_bytes(jpeg_bytes(raw.data(), 16, 16, TJPF_CMYK));
  ASSERT_EQ(got.channels, 3);
  ASSERT_EQ(got.pixels.size(), 16u * 16 * 3);
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(got.pixels[c], cmyk[c] * cmyk[3] / 255.0, 3) << "channel " << c;
}

// ---- Bad files: one Error naming the file ----

TEST(ImageDecode, EmptyFile) {
  TempDir dir;
  write_bytes(dir / "empty.jpg", {});
  std::string e = error_of([&] { decode_image(dir / "empty.jpg"); });
  EXPECT_TRUE(contains(e, dir / "empty.jpg"));
  EXPECT_TRUE(contains(e, "empty file (0 bytes)"));
}

TEST(ImageDecode, JpgThatIsNotAJpeg) {
  TempDir dir;
  const std::string text = "<html>404 Not Found</html>";
  write_bytes(dir / "x.jpg", std::vector<uint8_t>(text.begin(), text.end()));
  std::string e = error_of([&] { decode_image(dir / "x.jpg"); });
  EXPECT_TRUE(contains(e, dir / "x.jpg"));
  EXPECT_TRUE(contains(e, "not a JPEG or PNG image"));
  EXPECT_TRUE(contains(e, "HTML"));
  write_bytes(dir / "y.jpg", {'G', 'I', 'F', '8', '9', 'a', 0, 0});
  EXPECT_TRUE(contains(error_of([&] { decode_image(dir / "y.jpg"); }), "a GIF image"));
  write_bytes(dir / "z.jpg", {0x00, 0x01, 0x02});
  EXPECT_TRUE(contains(error_of([&] { decode_image(dir / "z.jpg"); }), "bytes 00 01 02"));
}

TEST(ImageDecode, MissingFile) {
  std::string e = error_of([] { decode_image("/nonexistent/incres/cat.jpg"); });
  EXPECT_TRUE(contains(e, "/nonexistent/incres/cat.jpg: cannot open image"));
}

TEST(ImageDecode, TruncatedJpegIsAnErrorNotAGreyHalf) {
  TempDir dir;
  std::vector<uint8_t> full = jpeg_bytes(noise(64, 64));
  // Cut inside the entropy-coded data: libjpeg only warns ("Premature end of JPEG
  // file") and pads with grey; the decoder must turn that into an error.
  for (size_t keep : {full.size() / 2, full.size() - 2}) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<ptrdiff_t>(keep));
    write_bytes(dir / "cut.jpg", cut);
    std::string e = error_of([&] { decode_image(dir / "cut.jpg"); });
    SCOPED_TRACE(keep);
    EXPECT_TRUE(contains(e, dir / "cut.jpg"));
    EXPECT_TRUE(contains(e, "truncated or corrupt JPEG"));
  }
  // Cut inside the header.
  std::vector<uint8_t> head(full.begin(), full.begin() + 40);
  write_bytes(dir / "head.jpg", head);
  std::string e = error_of([&] { decode_image(dir / "head.jpg"); });
  EXPECT_TRUE(contains(e, dir / "head.jpg"));
  EXPECT_TRUE(contains(e, "JPEG"));
}

TEST(ImageDecode, CorruptJpegHeader) {
  std::vector<uint8_t> b = jpeg_bytes(gradient(16, 16));
  // Keep SOI, then garbage where the markers should be.
  for (size_t i = 3; i < 40; ++i) b[i] = 0x55;
  std::string e = error_of([&] { decode_bytes(b); });
  EXPECT_TRUE(contains(e, "mem.img: corrupt JPEG header"));
}

TEST(ImageDecode, GiantJpegHeaderRejectedByThePixelCap) {
  std::vector<uint8_t> b = jpeg_bytes(gradient(8, 8));
  // SOF0 (FF C0): length (2), precision (1), height (2), width (2).
  size_t p = 2;
  while (p + 1 < b.size() && !(b[p] == 0xFF && b[p + 1] == 0xC0)) ++p;
  ASSERT_LT(p + 9, b.size());
  b[p + 5] = b[p + 7] = 0xFF;  // 65500 = 0xFFDC
  b[p + 6] = b[p + 8] = 0xDC;
  std::string e = error_of([&] { decode_bytes(b); });
  EXPECT_TRUE(contains(e, "mem.img: JPEG header gives 65500x65500 = 4290250000 pixels, above the cap"));
  EXPECT_TRUE(contains(e, "max_pixels"));
}

TEST(ImageDecode, PixelCapIsConfigurable) {
  std::vector<uint8_t> jpg = jpeg_bytes(gradient(20, 10)), png = png_bytes(noise(20, 10));
  DecodeOptions o;
  o.max_pixels = 199;
  EXPECT_TRUE(contains(error_of([&] { decode_bytes(jpg, o); }), "10x20 = 200 pixels, above the cap of 199"));
  EXPECT_TRUE(contains(error_of([&] { decode_bytes(png, o); }), "PNG header gives 10x20 = 200 pixels"));
  o.max_pixels = 200;
  EXPECT_EQ(decode_bytes(jpg, o).width, 10);
  EXPECT_EQ(decode_bytes(png, o).height, 20);
}

TEST(ImageDecode, GiantPngHeaderRejectedByThePixelCap) {
  std::vector<uint8_t> b = png_bytes(noise(4, 4));
  // IHDR data at 16: width, height (big-endian); fix its CRC so libpng accepts it.
  for (int i : {16, 20}) {
    b[i] = 0x00;
    b[i + 1] = 0x00;
    b[i + 2] = 0xEA;  // 60000 = 0xEA60
    b[i + 3] = 0x60;
  }
  fix_png_crc(b, 8);
  EXPECT_TRUE(contains(error_of([&] { decode_bytes(b); }), "PNG header gives 60000x60000 = 3600000000 pixels"));
}

TEST(ImageDecode, TruncatedPng) {
  TempDir dir;
  std::vector<uint8_t> full = png_bytes(noise(40, 40));
  for (size_t keep : {size_t{20}, full.size() / 2, full.size() - 12 /* IEND gone */, full.size() - 1}) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<ptrdiff_t>(keep));
    write_bytes(dir / "cut.png", cut);
    std::string e = error_of([&] { decode_image(dir / "cut.png"); });
    SCOPED_TRACE(keep);
    EXPECT_TRUE(contains(e, dir / "cut.png"));
    EXPECT_TRUE(contains(e, "truncated or corrupt PNG"));
  }
}

TEST(ImageDecode, CorruptPngData) {
  std::vector<uint8_t> b = png_bytes(noise(16, 16));
  const uint8_t idat[4] = {'I', 'D', 'A', 'T'};
  auto it = std::search(b.begin(), b.end(), idat, idat + 4);
  ASSERT_NE(it, b.end());
  // A wrong CRC on intact data.
  const size_t len_at = static_cast<size_t>(it - b.begin()) - 4;
  const size_t len = size_t{b[len_at]} << 24 | size_t{b[len_at + 1]} << 16 | size_t{b[len_at + 2]} << 8 | b[len_at + 3];
  std::vector<uint8_t> bad_crc = b;
  bad_crc[len_at + 8 + len] ^= 0x01;
  std::string e = error_of([&] { decode_bytes(bad_crc); });
  EXPECT_TRUE(contains(e, "mem.img: truncated or corrupt PNG"));
  EXPECT_TRUE(contains(e, "CRC"));
  // Damaged compressed data: zlib refuses it (or the CRC does, whichever comes first).
  it[10] ^= 0x5A;
  EXPECT_TRUE(contains(error_of([&] { decode_bytes(b); }), "mem.img: truncated or corrupt PNG (libpng: "));
}

TEST(ImageDecode, AnErrorDoesNotPoisonTheNextDecode) {
  std::vector<uint8_t> bad = jpeg_bytes(gradient(16, 16)), good = bad;
  for (size_t i = 3; i < 40; ++i) bad[i] = 0x55;
  std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<ptrdiff_t>(good.size() / 2));
  for (int round = 0; round < 2; ++round) {
    error_of([&] { decode_bytes(bad); });
    EXPECT_EQ(decode_bytes(good).width, 16);
    error_of([&] { decode_bytes(cut); });
    EXPECT_EQ(decode_bytes(good).width, 16);
  }
}

}  // namespace
}  // namespace incres::data

namespace incres::data {
namespace {

// Damaged files (random bytes changed, random cuts) either decode to a consistent
// image or throw incres::Error naming the file; nothing else (run under ASan/UBSan to
// also rule out out-of-bounds reads).
TEST(ImageDecode, DamagedFilesDecodeOrFailCleanly) {
  using namespace test_images;
  const std::vector<std::vector<uint8_t>> originals = {jpeg_bytes(noise(40, 56, 1), 85), png_bytes(noise(33, 21, 2)),
                                                       jpeg_bytes(gradient(64, 48), 100)};
  Rng rng(2024);
  int errors = 0, decoded = 0;
  for (int round = 0; round < 300; ++round) {
    std::vector<uint8_t> b = originals[static_cast<size_t>(round) % originals.size()];
    const int flips = 1 + static_cast<int>(rng.below(4));
    for (int k = 0; k < flips; ++k) b[rng.below(b.size())] = static_cast<uint8_t>(rng.next());
    if (rng.uniform() < 0.3) b.resize(rng.below(b.size()));
    try {
      Image img = decode_image(b.data(), b.size(), "damaged.bin");
      ASSERT_GT(img.height, 0);
      ASSERT_EQ(img.pixels.size(), static_cast<size_t>(img.height * img.width * 3));
      ++decoded;
    } catch (const Error& e) {
      ASSERT_TRUE(testing_support::contains(e.what(), "damaged.bin: "));
      ++errors;
    }
  }
  EXPECT_GT(errors, 50);
}

}  // namespace
}  // namespace incres::data
