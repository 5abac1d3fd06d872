// CIFAR-10/100 binary reader on small synthetic files.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "data/dataset.h"

namespace incres::data {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "incres-cifar-XXXXXX").string();
    path = mkdtemp(t.data());
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
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

// A pixel value that tells record, channel and position apart.
uint8_t pixel(int record, int c, int p) { return static_cast<uint8_t>(record * 37 + c * 101 + p * 7); }

// n records of CIFAR layout: label byte(s), then R, G, B planes of 32x32.
std::vector<uint8_t> records(int n, int first, const std::vector<std::vector<uint8_t>>& labels) {
  std::vector<uint8_t> b;
  for (int r = 0; r < n; ++r) {
    for (uint8_t l : labels[r]) b.push_back(l);
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p) b.push_back(pixel(first + r, c, p));
  }
  return b;
}
void write(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

// CIFAR-10: 5 train batches of 2 records and a test batch of 3.
void write_cifar10(const TempDir& dir) {
  for (int f = 1; f <= 5; ++f)
    write(dir / ("data_batch_" + std::to_string(f) + ".bin"),
          records(2, 2 * (f - 1), {{uint8_t(2 * f - 2)}, {uint8_t((2 * f - 1) % 10)}}));
  write(dir / "test_batch.bin", records(3, 0, {{9}, {0}, {5}}));
}

TEST(Cifar, Cifar10GoodFiles) {
  TempDir dir;
  write_cifar10(dir);
  Dataset train = load_cifar(dir.path.string(), true, 10);
  EXPECT_EQ(train.count, 10);
  EXPECT_EQ(train.channels, 3);
  EXPECT_EQ(train.height, 32);
  EXPECT_EQ(train.width, 32);
  EXPECT_EQ(train.classes, 10);
  EXPECT_NO_THROW(validate(train));
  for (int r = 0; r < 10; ++r) EXPECT_EQ(train.labels[r], r);
  // Planes (CHW) became HWC: pixel p of channel c at (p * 3 + c).
  for (int r : {0, 7, 9})
    for (int c = 0; c < 3; ++c)
      for (int p : {0, 1, 31, 32, 555, 1023})
        EXPECT_EQ(train.images[r * 3072 + p * 3 + c], pixel(r, c, p)) << r << " " << c << " " << p;
  // No names file: numbers.
  EXPECT_EQ(train.class_names.front(), "0");
  EXPECT_EQ(train.class_names.back(), "9");

  std::ofstream(dir / "batches.meta.txt")
      << "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
  Dataset test = load_cifar(dir.path.string(), false, 10);
  EXPECT_EQ(test.count, 3);
  EXPECT_EQ(test.labels, (std::vector<int32_t>{9, 0, 5}));
  EXPECT_EQ(test.class_names[1], "automobile");
  EXPECT_EQ(test.class_names[9], "truck");
}

TEST(Cifar, Cifar100UsesFineLabel) {
  TempDir dir;
  write(dir / "train.bin", records(3, 0, {{3, 77}, {19, 99}, {0, 0}}));
  Dataset ds = load_cifar(dir.path.string(), true, 100);
  EXPECT_EQ(ds.count, 3);
  EXPECT_EQ(ds.classes, 100);
  EXPECT_EQ(ds.labels, (std::vector<int32_t>{77, 99, 0}));
  EXPECT_EQ(ds.images[2 * 3072 + 5 * 3 + 1], pixel(2, 1, 5));
  EXPECT_EQ(ds.class_names.size(), 100u);
}

TEST(Cifar, SizeNotAMultipleOfTheRecord) {
  TempDir dir;
  write_cifar10(dir);
  auto b = records(2, 0, {{1}, {2}});
  b.resize(b.size() + 5);
  write(dir / "data_batch_3.bin", b);
  std::string m = error_of([&] { load_cifar(dir.path.string(), true, 10); });
  EXPECT_HAS(m, dir / "data_batch_3.bin");
  EXPECT_HAS(m, "size 6151");
  EXPECT_HAS(m, "3073-byte record");
  // CIFAR-10 records read as CIFAR-100 are 3074 bytes: 2 x 3073 is not a multiple.
  write(dir / "test.bin", records(2, 0, {{1}, {2}}));
  m = error_of([&] { load_cifar(dir.path.string(), false, 100); });
  EXPECT_HAS(m, "size 6146");
  EXPECT_HAS(m, "3074-byte record");
  write(dir / "test_batch.bin", {});
  m = error_of([&] { load_cifar(dir.path.string(), false, 10); });
  EXPECT_HAS(m, "size 0");
}

TEST(Cifar, LabelOutOfRangeNamesRecordAndOffset) {
  TempDir dir;
  write_cifar10(dir);
  write(dir / "test_batch.bin", records(3, 0, {{1}, {2}, {10}}));
  std::string m = error_of([&] { load_cifar(dir.path.string(), false, 10); });
  EXPECT_HAS(m, dir / "test_batch.bin");
  EXPECT_HAS(m, "record 2 (byte offset 6146) has label 10, expected 0..9");

  write(dir / "test.bin", records(2, 0, {{1, 5}, {2, 100}}));
  m = error_of([&] { load_cifar(dir.path.string(), false, 100); });
  EXPECT_HAS(m, "record 1 (byte offset 3075) has label 100, expected 0..99");
  write(dir / "test.bin", records(2, 0, {{1, 5}, {20, 1}}));
  m = error_of([&] { load_cifar(dir.path.string(), false, 100); });
  EXPECT_HAS(m, "record 1 (byte offset 3074) has coarse label 20");
}

TEST(Cifar, MissingFileAndBadArguments) {
  TempDir dir;
  std::string m = error_of([&] { load_cifar(dir.path.string(), true, 10); });
  EXPECT_HAS(m, dir / "data_batch_1.bin");
  EXPECT_HAS(m, "not found");
  m = error_of([&] { load_cifar(dir.path.string(), true, 20); });
  EXPECT_HAS(m, "classes is 20, expected 10 or 100");
  write_cifar10(dir);
  std::ofstream(dir / "batches.meta.txt") << "airplane\nautomobile\n";
  m = error_of([&] { load_cifar(dir.path.string(), true, 10); });
  EXPECT_HAS(m, "2 class names, expected 10");
}

}  // namespace
}  // namespace incres::data
