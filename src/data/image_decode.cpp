// JPEG and PNG decoding to 8-bit RGB; see image.h for the conversions.
//
// JPEG goes through TurboJPEG (libjpeg-turbo's SIMD decoder) with
// TJFLAG_STOPONWARNING: libjpeg treats a truncated file as a *warning* ("Premature
// end of JPEG file") and fills the rest with grey, so without the flag a half image
// would pass as a good one. PNG goes through libpng, whose errors longjmp: the one
// function that calls setjmp (png_read_into) holds only trivially destructible locals
// and returns right after a longjmp, and every C++ object it fills lives in its
// caller, so no destructor is skipped and no local is read after being clobbered.
#include <png.h>
#include <sys/stat.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "data/image.h"

namespace incres::data {
namespace {

constexpr uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

bool is_jpeg(const uint8_t* d, size_t n) { return n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF; }
bool is_png(const uint8_t* d, size_t n) { return n >= 8 && std::memcmp(d, kPngSignature, 8) == 0; }

// What a file that is neither JPEG nor PNG looks like, for the message.
std::string describe_other(const uint8_t* d, size_t n) {
  auto starts = [&](const char* s) { return n >= std::strlen(s) && std::memcmp(d, s, std::strlen(s)) == 0; };
  if (starts("GIF8")) return "a GIF image";
  if (starts("BM")) return "a BMP image";
  if (starts("RIFF") && n >= 12 && std::memcmp(d + 8, "WEBP", 4) == 0) return "a WebP image";
  if (starts("II*") || starts("MM")) return "a TIFF image";
  if (starts("<")) return "text/HTML (a failed download?)";
  std::string hex;
  for (size_t i = 0; i < std::min<size_t>(n, 8); ++i) {
    char b[4];
    std::snprintf(b, sizeof b, "%s%02X", i ? " " : "", d[i]);
    hex += b;
  }
  return cat("unknown data starting with bytes ", hex);
}

void check_pixels(const std::string& name, const char* format, int64_t width, int64_t height,
                  const DecodeOptions& opts) {
  if (width <= 0 || height <= 0)
    fail(name, ": ", format, " header gives a size of ", width, "x", height,
         ", expected positive; the file is corrupt");
  // Both sides are below 2^31 here, so the product cannot overflow int64.
  if (width * height > opts.max_pixels)
    fail(name, ": ", format, " header gives ", width, "x", height, " = ", width * height,
         " pixels, above the cap of ", opts.max_pixels,
         " (DecodeOptions::max_pixels); the file is corrupt or too large, shrink it or raise the cap");
}

// ---- JPEG ----

struct TjFree {
  void operator()(void* h) const { tjDestroy(h); }
};

// One decompressor per thread: creating one costs more than decoding a thumbnail.
// After an error the handle is thrown away (forget_decompressor): libjpeg-turbo 2.1
// leaves a failed handle mid-state, and the next file would then fail with the
// previous file's error.
std::unique_ptr<void, TjFree>& thread_handle() {
  thread_local std::unique_ptr<void, TjFree> handle;
  return handle;
}
tjhandle thread_decompressor() {
  auto& handle = thread_handle();
  if (!handle) {
    handle.reset(tjInitDecompress());
    INCRES_CHECK(handle, "libjpeg-turbo: tjInitDecompress failed (", tjGetErrorStr2(nullptr), ")");
  }
  return handle.get();
}
// The handle's error text, then the handle itself discarded.
std::string forget_decompressor() {
  std::string msg = tjGetErrorStr2(thread_handle().get());
  thread_handle().reset();
  return msg;
}

// Whether the JPEG carries an Adobe APP14 marker before its first scan: Adobe
// (Photoshop) writes CMYK inverted (0 = full ink), and PIL then reads it inverted.
bool has_adobe_marker(const uint8_t* d, size_t n) {
  size_t p = 2;  // after SOI
  while (p + 4 <= n) {
    if (d[p] != 0xFF) return false;  // not at a marker: stop looking, the decoder judges
    uint8_t m = d[p + 1];
    if (m == 0xFF) {  // fill byte
      ++p;
      continue;
    }
    if (m == 0xDA || m == 0xD9) return false;  // start of scan / end of image
    size_t len = size_t{d[p + 2]} << 8 | d[p + 3];  // includes the two length bytes
    if (len < 2 || p + 2 + len > n) return false;
    if (m == 0xEE && len >= 7 && std::memcmp(d + p + 4, "Adobe", 5) == 0) return true;
    p += 2 + len;
  }
  return false;
}

Image decode_jpeg(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& opts) {
  tjhandle tj = thread_decompressor();
  int width = 0, height = 0, subsamp = 0, colorspace = 0;
  if (tjDecompressHeader3(tj, data, static_cast<unsigned long>(size), &width, &height, &subsamp,
                          &colorspace) != 0)
    fail(name, ": corrupt JPEG header (libjpeg-turbo: ", forget_decompressor(),
         "); re-encode or remove the file");
  check_pixels(name, "JPEG", width, height, opts);

  // Warnings (truncation, corrupt entropy data) stop decoding and report -1 here;
  // LIMITSCANS refuses progressive files with absurdly many scans (a CPU bomb).
  const int flags = TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS;
  const bool cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
  Image img;
  img.height = height;
  img.width = width;
  img.channels = 3;
  std::vector<uint8_t> raw(static_cast<size_t>(width) * height * (cmyk ? 4 : 3));
  if (tjDecompress2(tj, data, static_cast<unsigned long>(size), raw.data(), width, 0, height,
                    cmyk ? TJPF_CMYK : TJPF_RGB, flags) != 0) {
    const bool warning = tjGetErrorCode(tj) == TJERR_WARNING;
    fail(name, ": ", warning ? "truncated or corrupt JPEG data" : "cannot decode JPEG",
         " (libjpeg-turbo: ", forget_decompressor(), "); re-encode or remove the file");
  }
  if (!cmyk) {
    img.pixels = std::move(raw);
    return img;
  }
  // CMYK -> RGB as PIL's cmyk2rgb: R = (255 - C)(255 - K) / 255, rounded like its
  // MULDIV255. Adobe files store the inks inverted.
  const uint8_t invert = has_adobe_marker(data, size) ? 255 : 0;
  img.pixels.resize(static_cast<size_t>(width) * height * 3);
  auto muldiv255 = [](int a, int b) {
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
  };
  for (size_t i = 0, n = static_cast<size_t>(width) * height; i < n; ++i) {
    const uint8_t* s = raw.data() + 4 * i;
    const int nk = 255 - (s[3] ^ invert);
    for (int c = 0; c < 3; ++c) img.pixels[3 * i + c] = static_cast<uint8_t>(nk - muldiv255(s[c] ^ invert, nk));
  }
  return img;
}

// ---- PNG ----

// The state libpng's callbacks see (through the io and error pointers).
struct PngSource {
  const uint8_t* data;
  size_t size;
  size_t pos;
  char message[256];  // libpng's error text, copied before the longjmp
};

void png_read_cb(png_structp png, png_bytep out, size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->pos) png_error(png, "file ends early (truncated)");
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

[[noreturn]] void png_error_cb(png_structp png, png_const_charp msg) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->message, sizeof src->message, "%s", msg ? msg : "unknown error");
  png_longjmp(png, 1);
}

// Warnings (an unknown ancillary chunk, a bad gAMA value, ...) do not affect pixels.
void png_warning_cb(png_structp, png_const_charp) {}

struct PngDestroy {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngDestroy() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

enum class PngStatus { ok, libpng_error, too_many_pixels };

// Reads the PNG into *pixels (RGB8). Only trivially destructible locals: see the top
// of the file. *width / *height are set as soon as the header is read.
PngStatus png_read_into(png_structp png, png_infop info, int64_t max_pixels, int64_t* width,
                        int64_t* height, std::vector<uint8_t>* pixels, std::vector<png_bytep>* rows) {
  if (setjmp(png_jmpbuf(png))) return PngStatus::libpng_error;
  png_read_info(png, info);
  png_uint_32 w = 0, h = 0;
  int depth = 0, color = 0;
  png_get_IHDR(png, info, &w, &h, &depth, &color, nullptr, nullptr, nullptr);
  *width = w;
  *height = h;
  if (int64_t{w} * int64_t{h} > max_pixels) return PngStatus::too_many_pixels;

  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_strip_16(png);  // the high byte, as PIL
  if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  // Alpha from the colour type or from a tRNS chunk (which palette expansion turns
  // into alpha) is dropped.
  png_set_strip_alpha(png);
  png_set_interlace_handling(png);  // Adam7 files come out whole
  png_read_update_info(png, info);
  if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8 ||
      png_get_rowbytes(png, info) != size_t{w} * 3)
    png_error(png, "unexpected layout after conversion to RGB8 (libpng transform bug?)");

  pixels->resize(size_t{w} * h * 3);
  rows->resize(h);
  for (png_uint_32 y = 0; y < h; ++y) (*rows)[y] = pixels->data() + size_t{y} * w * 3;
  png_read_image(png, rows->data());
  // Reads through IEND: checks the CRCs of the chunks after the pixels and that the
  // file is not cut short after the image data.
  png_read_end(png, nullptr);
  return PngStatus::ok;
}

Image decode_png(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& opts) {
  PngSource src{data, size, 0, {}};
  PngDestroy guard;
  guard.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_error_cb, png_warning_cb);
  INCRES_CHECK(guard.png, name, ": libpng: png_create_read_struct failed (out of memory?)");
  guard.info = png_create_info_struct(guard.png);
  INCRES_CHECK(guard.info, name, ": libpng: png_create_info_struct failed (out of memory?)");
  png_set_read_fn(guard.png, &src, png_read_cb);
  // libpng's per-side limits (default 1,000,000) give way to our pixel cap, which is
  // checked right after IHDR; one ancillary chunk (iCCP, zTXt) may decompress to at
  // most 8 MiB (libpng's default, made explicit: a zip bomb in a text chunk stops there).
  png_set_user_limits(guard.png, 0x7fffffff, 0x7fffffff);
  png_set_chunk_malloc_max(guard.png, 8 << 20);

  Image img;
  std::vector<png_bytep> rows;
  switch (png_read_into(guard.png, guard.info, opts.max_pixels, &img.width, &img.height,
                        &img.pixels, &rows)) {
    case PngStatus::ok:
      break;
    case PngStatus::too_many_pixels:
      check_pixels(name, "PNG", img.width, img.height, opts);  // throws with the numbers
      fail(name, ": PNG too large");                           // not reached
    case PngStatus::libpng_error:
      fail(name, ": truncated or corrupt PNG (libpng: ", src.message, "); re-encode or remove the file");
  }
  img.channels = 3;
  return img;
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& opts) {
  INCRES_CHECK(opts.max_pixels >= 1, "DecodeOptions::max_pixels is ", opts.max_pixels, ", expected >= 1");
  if (size == 0) fail(name, ": empty file (0 bytes), expected a JPEG or PNG image; remove or replace it");
  if (is_jpeg(data, size)) return decode_jpeg(data, size, name, opts);
  if (is_png(data, size)) return decode_png(data, size, name, opts);
  fail(name, ": not a JPEG or PNG image (", describe_other(data, size),
       "); the format is taken from the content, not the extension; convert or remove the file");
}

Image decode_image(const std::string& path, const DecodeOptions& opts) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    fail(path, ": cannot open image (", std::strerror(errno), "); check the path");
  if (!S_ISREG(st.st_mode)) fail(path, ": not a regular file, expected a JPEG or PNG image");
  if (st.st_size > opts.max_file_bytes)
    fail(path, ": file has ", st.st_size, " bytes, above the limit of ", opts.max_file_bytes,
         " (DecodeOptions::max_file_bytes)");
  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (!f) fail(path, ": cannot open image (", std::strerror(errno), ")");
  // Sized by the file's size, which was just checked against the limit.
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t got = bytes.empty() ? 0 : std::fread(bytes.data(), 1, bytes.size(), f.get());
  if (got != bytes.size())
    fail(path, ": read ", got, " of ", bytes.size(), " bytes (", std::ferror(f.get()) ? std::strerror(errno) : "file shrank",
         ")");
  return decode_image(bytes.data(), bytes.size(), path, opts);
}

}  // namespace incres::data
