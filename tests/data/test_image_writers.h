// Test helpers shared by the image tests: a temporary folder, and JPEG / PNG writers
// (TurboJPEG's tjCompress2, libpng) so that every test image is made by the test.
#pragma once
#include <png.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/image.h"

namespace incres::data::test_images {

namespace fs = std::filesystem;

// A fresh folder under the system temp dir, removed (with its contents) at the end.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "incres-image-XXXXXX").string();
    INCRES_CHECK(::mkdtemp(tmpl.data()), "mkdtemp failed");
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    // Give back permissions a test took away, so that removal works.
    for (auto it = fs::recursive_directory_iterator(path, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
      if (it->is_directory(ec) && !it->is_symlink(ec)) fs::permissions(it->path(), fs::perms::owner_all, ec);
    fs::permissions(path, fs::perms::owner_all, ec);
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  INCRES_CHECK(out.good(), "cannot write ", path);
}

// A smooth RGB test pattern (JPEG reproduces smooth images closely).
inline Image gradient(int64_t h, int64_t w) {
  Image img;
  img.height = h;
  img.width = w;
  img.pixels.resize(static_cast<size_t>(h * w * 3));
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) {
      uint8_t* p = img.pixels.data() + (y * w + x) * 3;
      p[0] = static_cast<uint8_t>(w > 1 ? x * 255 / (w - 1) : 0);
      p[1] = static_cast<uint8_t>(h > 1 ? y * 255 / (h - 1) : 0);
      p[2] = static_cast<uint8_t>(64 + (x + y) % 64);
    }
  return img;
}

// Pseudo-random RGB pixels (for exact geometric checks).
inline Image noise(int64_t h, int64_t w, uint32_t seed = 1) {
  Image img;
  img.height = h;
  img.width = w;
  img.pixels.resize(static_cast<size_t>(h * w * 3));
  uint32_t s = seed;
  for (auto& p : img.pixels) {
    s = s * 1664525u + 1013904223u;
    p = static_cast<uint8_t>(s >> 24);
  }
  return img;
}

// JPEG bytes of `pixels` (h x w, `pf` a TJPF_* format: RGB, GRAY or CMYK).
inline std::vector<uint8_t> jpeg_bytes(const uint8_t* pixels, int w, int h, int pf, int quality = 100) {
  tjhandle tj = tjInitCompress();
  INCRES_CHECK(tj, "tjInitCompress failed");
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  const int samp = pf == TJPF_GRAY ? TJSAMP_GRAY : TJSAMP_444;
  const int rc = tjCompress2(tj, pixels, w, 0, h, pf, &buf, &size, samp, quality, 0);
  std::string err = rc ? tjGetErrorStr2(tj) : "";
  std::vector<uint8_t> out(buf, buf + (rc ? 0 : size));
  tjFree(buf);
  tjDestroy(tj);
  INCRES_CHECK(rc == 0, "tjCompress2 failed: ", err);
  return out;
}
inline std::vector<uint8_t> jpeg_bytes(const Image& img, int quality = 100) {
  return jpeg_bytes(img.pixels.data(), static_cast<int>(img.width), static_cast<int>(img.height), TJPF_RGB,
                    quality);
}

// A PNG: `samples` holds h rows of w pixels of png_channels(color) samples each, one
// value per sample (8- or 16-bit as `depth` says; depth < 8 for grey or palette
// indices, packed here). palette: r, g, b triples; trns: palette alpha values.
struct PngSpec {
  int width = 0, height = 0, color = PNG_COLOR_TYPE_RGB, depth = 8;
  std::vector<uint16_t> samples;
  std::vector<uint8_t> palette, trns;
  bool interlace = false;
};

inline int png_channels(int color) {
  switch (color) {
    case PNG_COLOR_TYPE_GRAY: return 1;
    case PNG_COLOR_TYPE_GRAY_ALPHA: return 2;
    case PNG_COLOR_TYPE_RGB: return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA: return 4;
    default: return 1;  // palette index
  }
}

struct PngSink {
  std::vector<uint8_t>* out;
};
inline void png_sink_write(png_structp png, png_bytep data, size_t n) {
  auto* s = static_cast<PngSink*>(png_get_io_ptr(png));
  s->out->insert(s->out->end(), data, data + n);
}
inline void png_sink_flush(png_structp) {}

// Only trivially destructible locals around setjmp (see image_decode.cpp).
inline bool png_write_into(png_structp png, png_infop info, const PngSpec* spec,
                           const std::vector<png_bytep>* rows, std::vector<png_color>* pal) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_IHDR(png, info, spec->width, spec->height, spec->depth, spec->color,
               spec->interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!pal->empty()) png_set_PLTE(png, info, pal->data(), static_cast<int>(pal->size()));
  if (!spec->trns.empty())
    png_set_tRNS(png, info, spec->trns.data(), static_cast<int>(spec->trns.size()), nullptr);
  png_write_info(png, info);
  png_write_image(png, const_cast<png_bytepp>(rows->data()));
  png_write_end(png, nullptr);
  return true;
}

inline std::vector<uint8_t> png_bytes(const PngSpec& spec) {
  const int ch = png_channels(spec.color);
  const size_t row_bytes = (static_cast<size_t>(spec.width) * ch * spec.depth + 7) / 8;
  std::vector<uint8_t> raw(row_bytes * spec.height, 0);
  for (int y = 0; y < spec.height; ++y)
    for (int i = 0; i < spec.width * ch; ++i) {
      const uint16_t v = spec.samples[static_cast<size_t>(y) * spec.width * ch + i];
      uint8_t* row = raw.data() + y * row_bytes;
      if (spec.depth == 16) {
        row[2 * i] = static_cast<uint8_t>(v >> 8);  // PNG is big-endian
        row[2 * i + 1] = static_cast<uint8_t>(v & 0xff);
      } else if (spec.depth == 8) {
        row[i] = static_cast<uint8_t>(v);
      } else {  // packed, most significant bits first
        const int per = 8 / spec.depth;
        row[i / per] |= static_cast<uint8_t>(v << (8 - spec.depth * (i % per + 1)));
      }
    }
  std::vector<png_bytep> rows(spec.height);
  for (int y = 0; y < spec.height; ++y) rows[y] = raw.data() + y * row_bytes;
  std::vector<png_color> pal;
  for (size_t i = 0; i + 2 < spec.palette.size(); i += 3)
    pal.push_back({spec.palette[i], spec.palette[i + 1], spec.palette[i + 2]});

  std::vector<uint8_t> out;
  PngSink sink{&out};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(png, &sink, png_sink_write, png_sink_flush);
  const bool ok = png_write_into(png, info, &spec, &rows, &pal);
  png_destroy_write_struct(&png, &info);
  INCRES_CHECK(ok, "libpng failed to write the test PNG");
  return out;
}

// An 8-bit RGB PNG of img.
inline std::vector<uint8_t> png_bytes(const Image& img) {
  PngSpec s;
  s.width = static_cast<int>(img.width);
  s.height = static_cast<int>(img.height);
  s.samples.assign(img.pixels.begin(), img.pixels.end());
  return png_bytes(s);
}

// Rewrites the CRC of the PNG chunk that starts (length field) at `offset`.
inline void fix_png_crc(std::vector<uint8_t>& png, size_t offset) {
  const uint32_t len = uint32_t{png[offset]} << 24 | uint32_t{png[offset + 1]} << 16 |
                       uint32_t{png[offset + 2]} << 8 | png[offset + 3];
  const uLong crc = crc32(0, png.data() + offset + 4, 4 + len);
  for (int i = 0; i < 4; ++i) png[offset + 8 + len + i] = static_cast<uint8_t>(crc >> (24 - 8 * i));
}

}  // namespace incres::data::test_images
