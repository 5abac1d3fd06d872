// Dataset: a labelled image set held in memory as uint8 pixels, plus the readers
// for the formats incres trains on (IDX for Fashion-MNIST, the CIFAR binaries).
//
// Every reader follows shared/RELIABILITY.md: a malformed file is a one-line
// incres::Error naming the file, the field or offset, the expected and the actual
// value; no buffer is sized by a number read from a file before that number was
// checked against the file's size and sane limits.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace incres::data {

struct Dataset {
  int64_t count = 0, channels = 0, height = 0, width = 0, classes = 0;
  std::vector<uint8_t> images;  // count * height * width * channels, HWC per image
  std::vector<int32_t> labels;  // count values in [0, classes)
  std::vector<std::string> class_names;  // classes names (or empty)
  std::string source;  // where it came from, for messages and logs
};

// Throws Error unless the sizes agree (images, labels, class_names) and every label
// is in [0, classes). `what` names the dataset in the message.
void validate(const Dataset& ds, const std::string& what = "dataset");

// The first n samples (0 <= n <= ds.count), with the same shape and class names.
Dataset subset(const Dataset& ds, int64_t n);

// Every image resized to size x size, bilinearly with half-pixel centres (the
// sampling of PyTorch's interpolate(align_corners=False) and of OpenCV, without
// antialiasing); any channel count.
Dataset resized(const Dataset& ds, int64_t size);

// Per-channel mean and (population) standard deviation over every pixel of every
// image, in [0, 1] pixel units: the values LoaderOptions::mean/std expect.
std::pair<std::vector<float>, std::vector<float>> channel_mean_std(const Dataset& ds);

// ---- IDX (the MNIST / Fashion-MNIST format) ----
// Reads an idx3-ubyte images file (magic 0x00000803: count x rows x cols) and an
// idx1-ubyte labels file (magic 0x00000801: count), each plain or gzip (detected by
// the magic bytes 1f 8b). Requires equal counts and every label < classes.
Dataset load_idx(const std::string& images_path, const std::string& labels_path,
                 int64_t classes);

// Where the Debian package dataset-fashion-mnist installs the four files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in dir; 10 classes with the
// names of Xiao et al. 2017 (T-shirt/top ... Ankle boot).
Dataset load_fashion_mnist(const std::string& dir = kFashionMnistDir, bool train = true);

// ---- CIFAR binaries (https://www.cs.toronto.edu/~kriz/cifar.html) ----
// classes == 10: data_batch_1..5.bin (train) or test_batch.bin, records of
// 1 label byte + 3072 pixel bytes. classes == 100: train.bin or test.bin, records of
// 2 label bytes (coarse, fine; the fine label is used) + 3072 pixel bytes. Pixels
// are stored as R, G, B planes of 32x32 and converted to HWC. Class names come from
// batches.meta.txt (CIFAR-10) or fine_label_names.txt (CIFAR-100) when present in
// dir, else "0", "1", ...
Dataset load_cifar(const std::string& dir, bool train, int classes);

}  // namespace incres::data
