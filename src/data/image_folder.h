// Image folders (root/<class>/<file>, the layout of ImageNet's train and val folders
// and of torchvision's ImageFolder) and a loader that decodes them on the fly into
// the same Batch the in-memory Loader produces.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/shape.h"
#include "data/batch_ring.h"
#include "data/image.h"
#include "data/loader.h"

namespace incres::data {

// ---- The folder ----

struct ImageFolderOptions {
  // Optional display names: one class name per line, in class order (the sorted
  // folder names), exactly one line per class; trailing blank lines and '\r' are
  // ignored. Empty = the folder names.
  std::string labels_file;
  // Folders nested deeper than this inside a class folder are an error (a guard on
  // top of the symlink-loop check).
  int max_depth = 32;
};

struct ImageFolder {
  std::string root;
  std::vector<std::string> classes;      // sub-folder names, sorted: label i is classes[i]
  std::vector<std::string> class_names;  // display names (labels file), else == classes
  std::vector<std::string> files;        // every image, in label order, then path order
  std::vector<int32_t> labels;           // one per file, in [0, classes.size())

  int64_t count() const { return static_cast<int64_t>(files.size()); }
};

// Whether `name` ends in .jpg, .jpeg or .png, in any case: the files a folder counts.
// (The decoder then goes by the content.)
bool has_image_extension(const std::string& name);

// Lists root/<class>/... as torchvision's ImageFolder does: classes are the sorted
// names of root's sub-folders (symlinks to folders included); each class holds every
// file with an image extension below its folder, recursively, sorted by folder then
// name (byte order). Files directly in root and other extensions are ignored. Nothing
// is decoded here.
// Throws Error naming the path when root is missing or not a folder, has no
// sub-folder, a class folder holds no image, a folder cannot be read, the walk meets
// a symlink loop (a folder that is its own ancestor) or nests deeper than max_depth,
// or the labels file does not have one line per class.
ImageFolder scan_image_folder(const std::string& root, const ImageFolderOptions& opts = {});

// The class names of a labels file (the format of ImageFolderOptions::labels_file).
// Throws Error naming the file unless it holds exactly `classes` names.
std::vector<std::string> read_labels_file(const std::string& path, size_t classes);

// Small folders, for the in-memory Loader: every image decoded, its shorter side
// resized to `size` and the central size x size square kept (CenterCrop with
// crop_fraction 1), as a Dataset of 3 channels with the folder's classes and display
// names. Memory is count * size^2 * 3 bytes, so this is for folders of up to a few
// hundred thousand small images; ImageNet-sized folders take ImageFolderLoader.
// Decodes on `threads` threads (0 = the hardware's). skip_bad: bad files are logged
// and left out; otherwise the first bad file in file order is the Error.
Dataset load_image_folder_dataset(const ImageFolder& folder, int64_t size, bool skip_bad = false,
                                  int threads = 0, const DecodeOptions& decode = {});

// ---- The loader ----

struct ImageLoaderOptions {
  int64_t batch = 256;
  bool shuffle = true;
  bool drop_last = true;  // drop the last partial batch of an epoch
  // ScaleAugment{} (ResNet), RandomResizedCrop{299} (Inception) for training;
  // CenterCrop{} for evaluation. The output side is the transform's size.
  Transform transform = CenterCrop{};
  std::vector<float> mean = kImageNetMean, std = kImageNetStd;  // empty = 0 and 1
  uint64_t seed = 0;
  int workers = 4;   // 0 = decode inside next()
  int prefetch = 4;  // ring slots; memory is prefetch * batch * 3 * size^2 floats
  // false: the first file that fails to decode fails its batch (the Error names the
  // file). true: a bad file is logged once, counted (bad_count()) and replaced by the
  // next good sample of the epoch order, so every batch stays full.
  bool skip_bad = false;
  DecodeOptions decode;
  Shard shard;  // data-parallel: this process's share of each batch (batch_source.h)
};

// Batches of decoded, transformed and normalised images, with the interface of
// Loader: start_epoch(epoch, first_batch), then next() until nullptr.
//
// Order: per epoch e, a Fisher-Yates permutation of the files from
// Rng(mix_key(seed ^ "SHUFFLE", e)) (the Loader's stream), identity without shuffle.
// The sample at epoch position p is transformed with Rng(mix_key(seed, e, p)). A
// batch's content is therefore a function of (seed, epoch, index) and the files,
// never of the number of workers or timing; resuming at (epoch, first_batch) gives
// the batches a straight run gives.
//
// With skip_bad, the file at position p that fails is replaced by the file at
// position p + 1 (then p + 2, ... wrapping), transformed with p's stream: the result
// depends only on which files are bad, so it is deterministic too. The replacement
// appears twice in that epoch.
class ImageFolderLoader : public BatchSource {
 public:
  // folder must outlive the loader. Throws Error on bad options or an empty folder.
  ImageFolderLoader(const ImageFolder& folder, ImageLoaderOptions opts);
  ImageFolderLoader(ImageFolder&&, ImageLoaderOptions) = delete;  // would dangle
  ~ImageFolderLoader() override;  // stops and joins the workers, also mid-epoch
  ImageFolderLoader(const ImageFolderLoader&) = delete;
  ImageFolderLoader& operator=(const ImageFolderLoader&) = delete;

  int64_t batches_per_epoch() const override { return batches_; }
  Shape sample_shape() const override { return Shape{3, size_, size_}; }
  int64_t classes() const { return static_cast<int64_t>(folder_.classes.size()); }

  // As BatchSource (batch_source.h).
  using BatchSource::start_epoch;
  void start_epoch(int64_t epoch, int64_t first_batch) override;
  const Batch* next() override;

  // Files that failed to decode so far (skip_bad), each counted once.
  int64_t bad_count() const;
  std::vector<std::string> bad_files() const;  // sorted

 private:
  void fill(Batch& b, int64_t epoch, int64_t index) const;
  int32_t fill_sample(float* out, int64_t epoch, int64_t position) const;
  bool known_bad(int64_t sample) const;
  void note_bad(int64_t sample, const std::string& message) const;
  void compute_order(int64_t epoch);

  const ImageFolder& folder_;
  ImageLoaderOptions opts_;
  int64_t size_ = 0;                    // output side
  int64_t batches_ = 0;
  std::vector<int64_t> order_;          // epoch position -> file index

  mutable std::mutex bad_mu_;           // guards bad_
  mutable std::map<int64_t, std::string> bad_;  // file index -> first error

  // Last, so that it is destroyed first: its workers stop before what they read goes.
  // Built once the options are checked.
  std::optional<BatchRing> ring_;
};

}  // namespace incres::data
