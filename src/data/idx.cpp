// IDX reader (the format of MNIST and Fashion-MNIST, described at
// http://yann.lecun.com/exdb/mnist/): a 4-byte big-endian magic 00 00 TT DD (TT the
// element type, 0x08 = unsigned byte; DD the number of dimensions), DD big-endian
// uint32 dimensions, then the elements in row-major order. Files may be gzip'd.
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>
#include <filesystem>
#include <memory>

#include "core/error.h"
#include "data/dataset.h"

namespace incres::data {
namespace {

constexpr uint32_t kImagesMagic = 0x00000803;  // unsigned bytes, 3 dimensions
constexpr uint32_t kLabelsMagic = 0x00000801;  // unsigned bytes, 1 dimension
constexpr int kTypeUnsignedByte = 0x08;

// Sane limits for a header: anything above is a corrupt or hostile file, not data.
constexpr uint64_t kMaxIdxCount = (uint64_t{1} << 31) - 1;  // labels index as int32
constexpr uint64_t kMaxIdxSide = 65536;                      // pixels per image side
constexpr uint64_t kMaxIdxPayload = uint64_t{1} << 36;       // 64 GiB of pixels
// deflate cannot compress better than about 1032:1 (zlib's "Technical details",
// https://www.zlib.net/zlib_tech.html), so a gzip file of B bytes decompresses to at
// most ~1032 B bytes: the bound a gzip'd header is checked against.
constexpr uint64_t kMaxDeflateRatio = 1032;

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08X", v);
  return buf;
}
std::string hex8(unsigned v) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", v);
  return buf;
}
uint32_t be32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | p[3];
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
struct GzCloser {
  void operator()(gzFile_s* g) const { gzclose(g); }
};

// One IDX file, plain or gzip, opened and its header checked; read_payload() then
// reads exactly the bytes the header describes and checks the file ends there.
class IdxFile {
 public:
  IdxFile(std::string path, uint32_t magic, const char* kind) : path_(std::move(path)) {
    open();
    read_header(magic, kind);
  }

  const std::vector<uint64_t>& dims() const { return dims_; }
  uint64_t header_bytes() const { return 4 + 4 * dims_.size(); }
  uint64_t payload_bytes() const { return payload_; }
  const std::string& path() const { return path_; }

  // Reads payload_bytes() into dst (which holds that many) and requires the file
  // (or decompressed stream) to end right after them.
  void read_payload(uint8_t* dst) {
    uint64_t got = read_some(dst, payload_);
    if (got < payload_)
      fail(path_, ": ", gz_ ? "decompressed stream" : "file", " ends after ", header_bytes() + got,
           " bytes, the header (", dims_str(), ") needs ", header_bytes() + payload_,
           "; the file is truncated, download or reinstall it", zlib_note());
    uint8_t extra;
    if (read_some(&extra, 1) != 0)
      fail(path_, ": trailing data after the ", header_bytes() + payload_,
           " bytes the header (", dims_str(), ") describes; the file is corrupt or not this format");
    if (gz_) check_gzip_end();
  }

 private:
  // zlib's gzread ignores bytes after the last gzip member that do not start another
  // one; `gzip -t` reports them. A second pass inflates the members to find where the
  // last one ends, and anything after it is an error naming the offset.
  void check_gzip_end() {
    std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path_.c_str(), "rb"));
    if (!f) fail(path_, ": cannot reopen (", std::strerror(errno), ")");
    z_stream z{};
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) fail(path_, ": zlib: cannot start inflate");
    std::vector<uint8_t> in(1 << 18), out(1 << 18);
    uint64_t offset = 0, member_end = 0;  // bytes of the file read; where the last member ended
    bool in_member = true;
    int rc = Z_OK;
    for (;;) {
      if (z.avail_in == 0) {
        const size_t n = std::fread(in.data(), 1, in.size(), f.get());
        if (n == 0) break;
        z.next_in = in.data();
        z.avail_in = static_cast<uInt>(n);
        offset += n;
      }
      if (!in_member) {
        // Another member must start with the gzip magic, else this is trailing data.
        if (z.avail_in < 2 && !std::feof(f.get())) {
          // The magic straddles a read: keep the byte and read on.
          const uint8_t first = *z.next_in;
          const size_t n = std::fread(in.data() + 1, 1, in.size() - 1, f.get());
          in[0] = first;
          z.next_in = in.data();
          z.avail_in = static_cast<uInt>(n + 1);
          offset += n;
        }
        if (z.avail_in < 2 || z.next_in[0] != 0x1f || z.next_in[1] != 0x8b) break;
        inflateReset(&z);
        in_member = true;
      }
      z.next_out = out.data();
      z.avail_out = static_cast<uInt>(out.size());
      rc = inflate(&z, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        in_member = false;
        member_end = offset - z.avail_in;
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        break;  // the first pass read every member cleanly; nothing more to say
      }
    }
    inflateEnd(&z);
    if (!in_member && member_end < file_bytes_)
      fail(path_, ": ", file_bytes_ - member_end, " bytes of trailing data after the gzip stream, from byte ",
           member_end, " (gzip -t reports it too); the file is corrupt, download or reinstall it");
  }

  void open() {
    std::FILE* f = std::fopen(path_.c_str(), "rb");
    if (!f) fail(path_, ": cannot open IDX file (", std::strerror(errno), "); check the path");
    file_.reset(f);
    std::error_code ec;
    file_bytes_ = std::filesystem::file_size(path_, ec);
    if (ec) fail(path_, ": cannot read the file size (", ec.message(), ")");
    uint8_t m[2] = {0, 0};
    size_t n = std::fread(m, 1, 2, f);
    if (n == 2 && m[0] == 0x1f && m[1] == 0x8b) {  // gzip magic (RFC 1952)
      file_.reset();
      gz_.reset(gzopen(path_.c_str(), "rb"));
      if (!gz_) fail(path_, ": cannot open gzip file (", std::strerror(errno), ")");
      gzbuffer(gz_.get(), 1 << 18);
    } else {
      std::rewind(f);
    }
  }

  // Reads up to n bytes; fewer only at the end of the data. A corrupt gzip stream
  // (bad deflate data, CRC or length mismatch) throws.
  uint64_t read_some(uint8_t* dst, uint64_t n) {
    uint64_t got = 0;
    while (got < n) {
      // gzread and fread take at most an unsigned int / size_t: read in 1 GiB steps.
      unsigned step = static_cast<unsigned>(std::min<uint64_t>(n - got, 1u << 30));
      int64_t r;
      if (gz_) {
        r = gzread(gz_.get(), dst + got, step);
        if (r < 0) {
          int errnum = 0;
          const char* msg = gzerror(gz_.get(), &errnum);
          fail(path_, ": corrupt gzip stream after ", got, " bytes of this read (zlib: ", msg,
               "); download or reinstall the file");
        }
      } else {
        r = static_cast<int64_t>(std::fread(dst + got, 1, step, file_.get()));
        if (r == 0 && std::ferror(file_.get()))
          fail(path_, ": read error (", std::strerror(errno), ")");
      }
      if (r == 0) break;
      got += static_cast<uint64_t>(r);
    }
    return got;
  }

  // zlib's own reason when a gzip stream ended early ("unexpected end of file").
  std::string zlib_note() const {
    if (!gz_) return "";
    int errnum = 0;
    const char* msg = gzerror(gz_.get(), &errnum);
    return errnum == Z_OK ? "" : cat(" (zlib: ", msg, ")");
  }

  void read_exact_header(uint8_t* dst, uint64_t n, uint64_t offset, const char* field) {
    uint64_t got = read_some(dst, n);
    if (got < n)
      fail(path_, ": ", gz_ ? "decompressed stream" : "file", " ends at byte ", offset + got,
           " inside the IDX header (", field, " needs bytes ", offset, "..", offset + n - 1,
           "); the file is truncated or not an IDX file", zlib_note());
  }

  void read_header(uint32_t expected, const char* kind) {
    uint8_t b[4];
    read_exact_header(b, 4, 0, "magic");
    uint32_t magic = be32(b);
    int want_dims = static_cast<int>(expected & 0xff);
    std::string head = cat(path_, ": IDX magic ", hex32(magic), ", expected ", hex32(expected),
                           " (", kind, ")");
    if ((magic >> 16) != 0)
      fail(head, ": the first two bytes must be zero; this is not an IDX ", kind,
           " file, check the path");
    unsigned type = (magic >> 8) & 0xff;
    if (type != kTypeUnsignedByte)
      fail(head, ": type byte ", hex8(type), ", expected ", hex8(kTypeUnsignedByte),
           " (unsigned byte); only uint8 IDX files are supported");
    int ndims = static_cast<int>(magic & 0xff);
    if (ndims != want_dims)
      fail(head, ": dimension count ", ndims, ", expected ", want_dims,
           "; check that images and labels files are not swapped");

    uint8_t d[4 * 3];
    read_exact_header(d, 4 * static_cast<uint64_t>(ndims), 4, "dimensions");
    // Overflow-checked product first, so that no later arithmetic can wrap.
    uint64_t product = 1;
    for (int i = 0; i < ndims; ++i) {
      dims_.push_back(be32(d + 4 * i));
      if (__builtin_mul_overflow(product, dims_.back(), &product))
        fail(path_, ": IDX dimensions ", dims_str_all(d, ndims),
             " overflow a 64-bit byte count; the header is corrupt");
    }
    if (dims_[0] == 0 || dims_[0] > kMaxIdxCount)
      fail(path_, ": IDX item count ", dims_[0], " outside [1, ", kMaxIdxCount,
           "]; the header is corrupt");
    for (int i = 1; i < ndims; ++i)
      if (dims_[i] == 0 || dims_[i] > kMaxIdxSide)
        fail(path_, ": IDX dimension ", i, " is ", dims_[i], ", outside [1, ", kMaxIdxSide,
             "]; the header is corrupt");
    if (product > kMaxIdxPayload)
      fail(path_, ": IDX header (", dims_str(), ") describes ", product,
           " bytes, above the limit of ", kMaxIdxPayload, "; the header is corrupt");
    payload_ = product;

    // Check the size before anything is allocated or read.
    uint64_t want = header_bytes() + payload_;
    if (!gz_) {
      if (file_bytes_ < want)
        fail(path_, ": truncated IDX file: the header (", dims_str(), ") needs ", want,
             " bytes, the file has ", file_bytes_, "; download or reinstall it");
      if (file_bytes_ > want)
        fail(path_, ": IDX file has ", file_bytes_, " bytes, the header (", dims_str(),
             ") describes ", want, "; trailing data, the file is corrupt or not this format");
    } else if (want > file_bytes_ * kMaxDeflateRatio) {
      fail(path_, ": the IDX header (", dims_str(), ") describes ", want,
           " bytes but a gzip file of ", file_bytes_, " bytes can hold at most ",
           file_bytes_ * kMaxDeflateRatio, "; the file is truncated or corrupt");
    }
  }

  std::string dims_str() const {
    std::string s;
    for (size_t i = 0; i < dims_.size(); ++i) s += (i ? " x " : "") + std::to_string(dims_[i]);
    return s;
  }
  static std::string dims_str_all(const uint8_t* d, int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += (i ? " x " : "") + std::to_string(be32(d + 4 * i));
    return s;
  }

  std::string path_;
  std::unique_ptr<std::FILE, FileCloser> file_;
  std::unique_ptr<gzFile_s, GzCloser> gz_;
  uint64_t file_bytes_ = 0;
  std::vector<uint64_t> dims_;
  uint64_t payload_ = 0;
};

// The gzip'd file if present, else the plain one; neither is an error saying how to
// get them.
std::string find_fashion_file(const std::string& dir, const std::string& stem) {
  namespace fs = std::filesystem;
  fs::path gz = fs::path(dir) / (stem + ".gz"), plain = fs::path(dir) / stem;
  if (fs::exists(gz)) return gz.string();
  if (fs::exists(plain)) return plain.string();
  fail("Fashion-MNIST file ", gz.string(), " not found (nor ", plain.string(),
       "); install the Debian package dataset-fashion-mnist (scripts/install-deps.sh)");
}

}  // namespace

Dataset load_idx(const std::string& images_path, const std::string& labels_path,
                 int64_t classes) {
  INCRES_CHECK(classes >= 1 && classes <= 256, "load_idx(", images_path, "): classes is ",
               classes, ", expected 1..256 (IDX labels are bytes)");
  // Both headers first: a count mismatch is reported before any pixel is read.
  IdxFile images(images_path, kImagesMagic, "images");
  IdxFile labels(labels_path, kLabelsMagic, "labels");
  if (images.dims()[0] != labels.dims()[0])
    fail("IDX count mismatch: ", images_path, " has ", images.dims()[0], " images but ",
         labels_path, " has ", labels.dims()[0], " labels; use matching files");

  Dataset ds;
  ds.count = static_cast<int64_t>(images.dims()[0]);
  ds.height = static_cast<int64_t>(images.dims()[1]);
  ds.width = static_cast<int64_t>(images.dims()[2]);
  ds.channels = 1;
  ds.classes = classes;
  ds.source = images_path;
  ds.images.resize(images.payload_bytes());
  images.read_payload(ds.images.data());

  std::vector<uint8_t> raw(labels.payload_bytes());
  labels.read_payload(raw.data());
  ds.labels.resize(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] >= classes)
      fail(labels_path, ": label ", int{raw[i]}, " at index ", i, " (byte offset ",
           labels.header_bytes() + i, ") is not below the ", classes,
           " classes; the file is corrupt or for another dataset");
    ds.labels[i] = raw[i];
  }
  return ds;
}

Dataset load_fashion_mnist(const std::string& dir, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  std::string images = find_fashion_file(dir, prefix + "-images-idx3-ubyte");
  std::string labels = find_fashion_file(dir, prefix + "-labels-idx1-ubyte");
  Dataset ds = load_idx(images, labels, 10);
  // Label order of Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST", Table 1.
  ds.class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  ds.source = cat("Fashion-MNIST ", train ? "train" : "test", " (", dir, ")");
  return ds;
}

}  // namespace incres::data
