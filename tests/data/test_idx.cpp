// IDX / Fashion-MNIST reader: the real files, and every malformed case of
// shared/RELIABILITY.md checked for the facts its error must name.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <zlib.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <new>

#include "core/error.h"
#include "core/rng.h"
#include "data/dataset.h"

// Largest single allocation while g_track is set: proves a hostile header is rejected
// before anything is sized from it. (Replacing global operator new is allowed by the
// standard, [replacement.functions]; the array forms call this one. noinline keeps
// GCC from pairing an inlined new with free() and warning -Wmismatched-new-delete.)
static std::atomic<bool> g_track{false};
static std::atomic<size_t> g_largest{0};
[[gnu::noinline]] void* operator new(size_t n) {
  if (g_track.load(std::memory_order_relaxed)) {
    size_t cur = g_largest.load();
    while (n > cur && !g_largest.compare_exchange_weak(cur, n)) {}
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace incres::data {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "incres-idx-XXXXXX").string();
    path = mkdtemp(t.data());
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::vector<uint8_t> idx(uint32_t magic, const std::vector<uint32_t>& dims,
                         const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> b;
  auto be = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
  };
  be(magic);
  for (uint32_t d : dims) be(d);
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

void write(const std::string& path, const std::vector<uint8_t>& bytes, bool gzip = false) {
  if (gzip) {
    gzFile g = gzopen(path.c_str(), "wb");
    ASSERT_NE(g, nullptr);
    if (!bytes.empty()) {
      ASSERT_EQ(gzwrite(g, bytes.data(), bytes.size()), static_cast<int>(bytes.size()));
    }
    gzclose(g);
  } else {
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
}
std::vector<uint8_t> read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// A small valid pair: n images of 3x2 with pseudo-random pixels, labels i % 4.
struct Pair {
  std::vector<uint8_t> pixels, labels;
  explicit Pair(uint32_t n = 5) {
    Rng rng(7);
    for (uint32_t i = 0; i < n * 6; ++i) pixels.push_back(static_cast<uint8_t>(rng.next()));
    for (uint32_t i = 0; i < n; ++i) labels.push_back(static_cast<uint8_t>(i % 4));
  }
  std::vector<uint8_t> images_file() const {
    return idx(0x803, {static_cast<uint32_t>(labels.size()), 3, 2}, pixels);
  }
  std::vector<uint8_t> labels_file() const {
    return idx(0x801, {static_cast<uint32_t>(labels.size())}, labels);
  }
};

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

TEST(Idx, ReadsPlainAndGzipAlike) {
  TempDir dir;
  Pair p;
  for (bool gz : {false, true}) {
    std::string im = dir / (gz ? "im.gz" : "im"), lb = dir / (gz ? "lb.gz" : "lb");
    write(im, p.images_file(), gz);
    write(lb, p.labels_file(), gz);
    Dataset ds = load_idx(im, lb, 4);
    EXPECT_EQ(ds.count, 5);
    EXPECT_EQ(ds.height, 3);
    EXPECT_EQ(ds.width, 2);
    EXPECT_EQ(ds.channels, 1);
    EXPECT_EQ(ds.classes, 4);
    EXPECT_EQ(ds.images, p.pixels);
    ASSERT_EQ(ds.labels.size(), 5u);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(ds.labels[i], i % 4);
    EXPECT_NO_THROW(validate(ds));
  }
}

TEST(Idx, WrongMagic) {
  TempDir dir;
  Pair p;
  write(dir / "lb", p.labels_file());
  write(dir / "im", p.images_file());
  auto im = p.images_file();
  im[0] = 0x12;  // not an IDX file at all
  write(dir / "bad", im);
  std::string m = error_of([&] { load_idx(dir / "bad", dir / "lb", 4); });
  EXPECT_HAS(m, dir / "bad");
  EXPECT_HAS(m, "0x12000803");
  EXPECT_HAS(m, "expected 0x00000803");
  // The files swapped: each magic is wrong for its role.
  m = error_of([&] { load_idx(dir / "lb", dir / "im", 4); });
  EXPECT_HAS(m, dir / "lb");
  EXPECT_HAS(m, "0x00000801, expected 0x00000803");
  EXPECT_HAS(m, "dimension count 1, expected 3");
  // A labels file with the images magic.
  auto lb = p.labels_file();
  lb[3] = 0x03;
  write(dir / "badlb", lb);
  m = error_of([&] { load_idx(dir / "im", dir / "badlb", 4); });
  EXPECT_HAS(m, dir / "badlb");
  EXPECT_HAS(m, "0x00000803, expected 0x00000801");
}

TEST(Idx, WrongTypeByte) {
  TempDir dir;
  Pair p;
  auto im = p.images_file();
  im[2] = 0x0D;  // float elements
  write(dir / "im", im);
  write(dir / "lb", p.labels_file());
  std::string m = error_of([&] { load_idx(dir / "im", dir / "lb", 4); });
  EXPECT_HAS(m, dir / "im");
  EXPECT_HAS(m, "type byte 0x0D, expected 0x08");
  EXPECT_HAS(m, "expected 0x00000803");
}

TEST(Idx, WrongDimensionCount) {
  TempDir dir;
  Pair p;
  write(dir / "im", idx(0x804, {5, 3, 2, 1}, p.pixels));
  write(dir / "lb", p.labels_file());
  std::string m = error_of([&] { load_idx(dir / "im", dir / "lb", 4); });
  EXPECT_HAS(m, "dimension count 4, expected 3");
}

TEST(Idx, TruncatedPlainFileReportsBytesBeforeReading) {
  TempDir dir;
  Pair p;
  auto im = p.images_file();
  im.resize(im.size() - 7);
  write(dir / "im", im);
  write(dir / "lb", p.labels_file());
  std::string m = error_of([&] { load_idx(dir / "im", dir / "lb", 4); });
  EXPECT_HAS(m, dir / "im");
  EXPECT_HAS(m, "5 x 3 x 2");
  EXPECT_HAS(m, "needs 46 bytes, the file has 39");
  // The header of the real train file (60000 x 28 x 28) in a 1000-byte file: refused
  // from the size, before any pixel buffer is allocated.
  std::vector<uint8_t> big = idx(0x803, {60000, 28, 28}, std::vector<uint8_t>(984));
  write(dir / "big", big);
  write(dir / "lb60k", idx(0x801, {60000}, std::vector<uint8_t>(60000)));
  g_largest = 0;
  g_track = true;
  m = error_of([&] { load_idx(dir / "big", dir / "lb60k", 10); });
  g_track = false;
  EXPECT_HAS(m, "needs 47040016 bytes, the file has 1000");
  EXPECT_LT(g_largest.load(), 64u * 1024);
}

TEST(Idx, TrailingDataIsRejected) {
  TempDir dir;
  Pair p;
  auto im = p.images_file();
  im.push_back(0);
  for (bool gz : {false, true}) {
    write(dir / "im", im, gz);
    write(dir / "lb", p.labels_file(), gz);
    std::string m = error_of([&] { load_idx(dir / "im", dir / "lb", 4); });
    EXPECT_HAS(m, "trailing data");
  }
}

TEST(Idx, TruncatedGzipStream) {
  TempDir dir;
  Pair p(40);
  write(dir / "lb", p.labels_file());
  // A complete gzip stream whose content is too short for its IDX header.
  auto short_im = p.images_file();
  short_im.resize(short_im.size() - 10);
  write(dir / "im.gz", short_im, true);
  std::string m = error_of([&] { load_idx(dir / "im.gz", dir / "lb", 4); });
  EXPECT_HAS(m, "decompressed stream ends after 246 bytes");
  EXPECT_HAS(m, "needs 256");
  // A gzip file cut in half: zlib's "unexpected end of file".
  write(dir / "full.gz", p.images_file(), true);
  auto gz = read(dir / "full.gz");
  gz.resize(gz.size() / 2);
  write(dir / "cut.gz", gz);
  m = error_of([&] { load_idx(dir / "cut.gz", dir / "lb", 4); });
  EXPECT_HAS(m, dir / "cut.gz");
  EXPECT_HAS(m, "ends");
  EXPECT_HAS(m, "unexpected end of file");
}

TEST(Idx, CorruptGzip) {
  TempDir dir;
  Pair p(40);
  write(dir / "lb", p.labels_file());
  write(dir / "im.gz", p.images_file(), true);
  auto gz = read(dir / "im.gz");
  // The CRC-32 of the gzip trailer (RFC 1952: CRC32 then ISIZE, the last 8 bytes).
  auto bad_crc = gz;
  bad_crc[bad_crc.size() - 6] ^= 0xff;
  write(dir / "crc.gz", bad_crc);
  std::string m = error_of([&] { load_idx(dir / "crc.gz", dir / "lb", 4); });
  EXPECT_HAS(m, dir / "crc.gz");
  EXPECT_HAS(m, "corrupt gzip stream");
  // Garbage deflate data right after a valid 10-byte gzip header.
  std::vector<uint8_t> junk(gz.begin(), gz.begin() + 10);
  for (int i = 0; i < 64; ++i) junk.push_back(0xff);
  write(dir / "junk.gz", junk);
  m = error_of([&] { load_idx(dir / "junk.gz", dir / "lb", 4); });
  EXPECT_HAS(m, dir / "junk.gz");
  EXPECT_HAS(m, "corrupt gzip stream");
}

TEST(Idx, OverflowingDimensionsRejectedWithoutAllocating) {
  TempDir dir;
  Pair p;
  write(dir / "lb", p.labels_file());
  for (bool gz : {false, true}) {
    write(dir / "ovf", idx(0x803, {0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF}, {}), gz);
    // 1 x 0xFFFFFFFF x 0xFFFFFFFF fits in 64 bits but breaks the side limit.
    write(dir / "huge", idx(0x803, {1, 0xFFFFFFFF, 0xFFFFFFFF}, {}), gz);
    g_largest = 0;
    g_track = true;
    std::string m1 = error_of([&] { load_idx(dir / "ovf", dir / "lb", 4); });
    std::string m2 = error_of([&] { load_idx(dir / "huge", dir / "lb", 4); });
    g_track = false;
    EXPECT_HAS(m1, "4294967295 x 4294967295 x 4294967295 overflow");
    EXPECT_HAS(m2, "is 4294967295, outside [1, 65536]");
    EXPECT_LT(g_largest.load(), 1024u * 1024) << "gzip " << gz;  // zlib's own buffers only
  }
  // Sides within limits whose product is more than the gzip file could hold.
  write(dir / "bomb.gz", idx(0x803, {60000, 28, 28}, {}), true);
  std::string m = error_of([&] { load_idx(dir / "bomb.gz", dir / "lb", 4); });
  EXPECT_HAS(m, "can hold at most");
}

TEST(Idx, CountMismatchNamesBothFiles) {
  TempDir dir;
  Pair p5(5), p6(6);
  write(dir / "im", p5.images_file());
  write(dir / "lb", p6.labels_file());
  std::string m = error_of([&] { load_idx(dir / "im", dir / "lb", 4); });
  EXPECT_HAS(m, (dir / "im") + " has 5 images");
  EXPECT_HAS(m, (dir / "lb") + " has 6 labels");
}

TEST(Idx, LabelOutOfRangeNamesFileAndIndex) {
  TempDir dir;
  Pair p;
  p.labels[3] = 4;  // classes are 0..3
  write(dir / "im", p.images_file());
  write(dir / "lb", p.labels_file());
  std::string m = error_of([&] { load_idx(dir / "im", dir / "lb", 4); });
  EXPECT_HAS(m, dir / "lb");
  EXPECT_HAS(m, "label 4 at index 3");
  EXPECT_HAS(m, "byte offset 11");
  EXPECT_NO_THROW(load_idx(dir / "im", dir / "lb", 5));
}

TEST(Idx, MissingFiles) {
  TempDir dir;
  std::string m = error_of([&] { load_idx(dir / "nope", dir / "nope2", 10); });
  EXPECT_HAS(m, dir / "nope");
  EXPECT_HAS(m, "cannot open");
  m = error_of([&] { load_fashion_mnist(dir.path.string(), true); });
  EXPECT_HAS(m, dir / "train-images-idx3-ubyte.gz");
  EXPECT_HAS(m, "install the Debian package dataset-fashion-mnist (scripts/install-deps.sh)");
  // The plain (not gzip'd) names are accepted too.
  Pair p;
  write(dir / "t10k-images-idx3-ubyte", p.images_file());
  write(dir / "t10k-labels-idx1-ubyte", p.labels_file());
  Dataset ds = load_fashion_mnist(dir.path.string(), false);
  EXPECT_EQ(ds.count, 5);
  EXPECT_EQ(ds.class_names.size(), 10u);
}

TEST(FashionMnist, RealFiles) {
  if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << kFashionMnistDir << " missing";
  Dataset train = load_fashion_mnist(kFashionMnistDir, true);
  Dataset test = load_fashion_mnist(kFashionMnistDir, false);
  for (const Dataset* ds : {&train, &test}) {
    EXPECT_EQ(ds->height, 28);
    EXPECT_EQ(ds->width, 28);
    EXPECT_EQ(ds->channels, 1);
    EXPECT_EQ(ds->classes, 10);
    EXPECT_NO_THROW(validate(*ds));
    // Balanced classes: 6000 / 1000 of each (Xiao et al. 2017).
    std::vector<int> per(10, 0);
    for (int32_t l : ds->labels) ++per[l];
    for (int c = 0; c < 10; ++c) EXPECT_EQ(per[c], ds->count / 10) << "class " << c;
  }
  EXPECT_EQ(train.count, 60000);
  EXPECT_EQ(test.count, 10000);
  EXPECT_EQ(train.class_names[0], "T-shirt/top");
  EXPECT_EQ(train.class_names[9], "Ankle boot");
  // Values read independently with Python's gzip module from the same files.
  std::vector<int32_t> first(train.labels.begin(), train.labels.begin() + 10);
  EXPECT_EQ(first, (std::vector<int32_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5}));
  int64_t sum = 0;
  for (int i = 0; i < 784; ++i) sum += train.images[i];
  EXPECT_EQ(sum, 76247);
  sum = 0;
  for (int i = 0; i < 784; ++i) sum += test.images[i];
  EXPECT_EQ(sum, 33456);
}

}  // namespace
}  // namespace incres::data
