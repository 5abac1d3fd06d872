// load_image_folder_dataset: a small image folder decoded once into a Dataset.
#include <algorithm>
#include <atomic>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "data/image_folder.h"

namespace incres::data {

Dataset load_image_folder_dataset(const ImageFolder& folder, int64_t size, bool skip_bad, int threads,
                                  const DecodeOptions& decode) {
  const Transform t = CenterCrop{size, 1.0};
  validate(t);
  const int64_t n = folder.count();
  INCRES_CHECK(n > 0 && folder.labels.size() == folder.files.size(), "load_image_folder_dataset: ", folder.root,
               " has ", n, " files and ", folder.labels.size(), " labels; build it with scan_image_folder");
  const int64_t per = size * size * 3;
  INCRES_CHECK(n <= (int64_t{1} << 36) / per, "load_image_folder_dataset: ", n, " images of ", size, "x", size,
               " need ", n * per, " bytes in memory; use ImageFolderLoader, which decodes on the fly");

  std::vector<uint8_t> pixels(static_cast<size_t>(n * per));
  std::vector<std::string> errors(static_cast<size_t>(n));  // per file: "" = decoded
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t i; (i = next.fetch_add(1)) < n;) {
      try {
        Rng unused(0);  // CenterCrop draws nothing
        Image img = apply(t, decode_image(folder.files[static_cast<size_t>(i)], decode), unused);
        std::copy(img.pixels.begin(), img.pixels.end(), pixels.begin() + i * per);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(i)] = e.what();
      }
    }
  };
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int k = 1; k < std::min<int64_t>(threads, n); ++k) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();

  // Compact the good images in file order; the first error in file order decides
  // (not the first one a thread happened to meet), so the outcome is deterministic.
  Dataset ds;
  ds.channels = 3;
  ds.height = ds.width = size;
  ds.classes = static_cast<int64_t>(folder.classes.size());
  ds.class_names = folder.class_names;
  ds.source = folder.root;
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const std::string& err = errors[static_cast<size_t>(i)];
    if (!err.empty()) {
      if (!skip_bad) fail(err);
      log_warn(cat("skipping bad image: ", err));
      continue;
    }
    if (kept != i) std::copy_n(pixels.begin() + i * per, per, pixels.begin() + kept * per);
    ds.labels.push_back(folder.labels[static_cast<size_t>(i)]);
    ++kept;
  }
  INCRES_CHECK(kept > 0, folder.root, ": none of the ", n, " images could be decoded; see the warnings above");
  pixels.resize(static_cast<size_t>(kept * per));
  ds.images = std::move(pixels);
  ds.count = kept;
  validate(ds, folder.root);
  return ds;
}

}  // namespace incres::data
