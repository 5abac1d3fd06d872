// CIFAR-10 / CIFAR-100 binary readers. The layout is that of the "binary version"
// on https://www.cs.toronto.edu/~kriz/cifar.html: fixed-size records, each a label
// byte (CIFAR-100: coarse then fine label) and 3072 pixel bytes, the 1024 red, then
// the 1024 green, then the 1024 blue values of a 32x32 image in row-major order.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "data/dataset.h"

namespace incres::data {
namespace {

constexpr int64_t kSide = 32, kChannels = 3, kPixels = kSide * kSide * kChannels;  // 3072
// The largest official file is 150 MB (CIFAR-100 train.bin); 4 GiB means corruption.
constexpr uint64_t kMaxCifarFile = uint64_t{1} << 32;

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

const char* kHowToGet =
    "download the binary version from https://www.cs.toronto.edu/~kriz/cifar.html and "
    "extract it";

// Appends the records of one file to ds: labels checked, pixels CHW -> HWC.
void read_cifar_file(const std::string& path, int classes, Dataset& ds) {
  namespace fs = std::filesystem;
  const int64_t label_bytes = classes == 10 ? 1 : 2;
  const int64_t record = label_bytes + kPixels;
  if (!fs::exists(path))
    fail("CIFAR-", classes, " file ", path, " not found; ", kHowToGet);
  std::error_code ec;
  uint64_t size = fs::file_size(path, ec);
  if (ec) fail(path, ": cannot read the file size (", ec.message(), ")");
  if (size > kMaxCifarFile)
    fail(path, ": CIFAR file of ", size, " bytes, above the limit of ", kMaxCifarFile,
         "; this is not a CIFAR batch file");
  if (size == 0 || size % record != 0)
    fail(path, ": CIFAR-", classes, " file size ", size, " is not a positive multiple of the ",
         record, "-byte record (", size / record, " whole records and ", size % record,
         " bytes left); the file is truncated or not CIFAR-", classes);

  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (!f) fail(path, ": cannot open (", std::strerror(errno), ")");
  std::vector<uint8_t> buf(size);  // size checked against the file and the limit above
  size_t got = std::fread(buf.data(), 1, buf.size(), f.get());
  if (got != size) fail(path, ": read ", got, " of ", size, " bytes; the file changed or is unreadable");

  const int64_t n = static_cast<int64_t>(size) / record;
  const size_t base = ds.images.size();
  ds.images.resize(base + static_cast<size_t>(n * kPixels));
  ds.labels.reserve(ds.labels.size() + n);
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* rec = buf.data() + r * record;
    if (classes == 100 && rec[0] >= 20)
      fail(path, ": record ", r, " (byte offset ", r * record, ") has coarse label ", int{rec[0]},
           ", expected 0..19; the file is corrupt or not CIFAR-100");
    const int label = rec[label_bytes - 1];  // CIFAR-100: the fine label, the second byte
    if (label >= classes)
      fail(path, ": record ", r, " (byte offset ", r * record + label_bytes - 1, ") has label ",
           label, ", expected 0..", classes - 1, "; the file is corrupt or not CIFAR-", classes);
    ds.labels.push_back(label);
    const uint8_t* planes = rec + label_bytes;
    uint8_t* out = ds.images.data() + base + r * kPixels;
    for (int64_t p = 0; p < kSide * kSide; ++p)
      for (int64_t c = 0; c < kChannels; ++c) out[p * kChannels + c] = planes[c * kSide * kSide + p];
  }
  ds.count += n;
}

// One name per non-empty line; the file must name every class if it exists.
std::vector<std::string> read_class_names(const std::string& path, int classes) {
  std::vector<std::string> names;
  std::ifstream in(path);
  if (!in) {
    for (int i = 0; i < classes; ++i) names.push_back(std::to_string(i));
    return names;
  }
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  if (names.size() != static_cast<size_t>(classes))
    fail(path, ": ", names.size(), " class names, expected ", classes,
         " (one per line); fix or remove the file");
  return names;
}

}  // namespace

Dataset load_cifar(const std::string& dir, bool train, int classes) {
  INCRES_CHECK(classes == 10 || classes == 100, "load_cifar(", dir, "): classes is ", classes,
               ", expected 10 or 100");
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  if (classes == 10) {
    if (train)
      for (int i = 1; i <= 5; ++i) files.push_back((fs::path(dir) / cat("data_batch_", i, ".bin")).string());
    else
      files.push_back((fs::path(dir) / "test_batch.bin").string());
  } else {
    files.push_back((fs::path(dir) / (train ? "train.bin" : "test.bin")).string());
  }

  Dataset ds;
  ds.channels = kChannels;
  ds.height = kSide;
  ds.width = kSide;
  ds.classes = classes;
  for (const auto& f : files) read_cifar_file(f, classes, ds);
  ds.class_names = read_class_names(
      (fs::path(dir) / (classes == 10 ? "batches.meta.txt" : "fine_label_names.txt")).string(),
      classes);
  ds.source = cat("CIFAR-", classes, " ", train ? "train" : "test", " (", dir, ")");
  return ds;
}

}  // namespace incres::data
