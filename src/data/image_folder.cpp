// scan_image_folder: the walk of root/<class>/..., following torchvision's
// ImageFolder (sorted classes, files sorted by folder then name, symlinks followed)
// but guaranteed to end: every folder's (device, inode) is compared with those of its
// ancestors, so a link back up the tree is reported instead of walked forever.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <utility>

#include "core/error.h"
#include "data/image_folder.h"

namespace incres::data {
namespace {

namespace fs = std::filesystem;

struct Ancestor {
  dev_t dev;
  ino_t ino;
  std::string path;
};

// The sub-folders (symlinks to folders included) and image files of `dir`, unsorted.
void list_dir(const fs::path& dir, std::vector<std::string>* subdirs, std::vector<std::string>* images) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  if (ec) fail(dir.string(), ": cannot read folder (", ec.message(), "); check that it exists and its permissions");
  for (; it != end; it.increment(ec)) {
    // is_directory follows symlinks; a broken link or a link loop reports an error
    // code and counts as "not a folder": if it has an image name it is listed and
    // the decoder reports it (or skip_bad skips it) like any other unreadable file.
    std::error_code sec;
    const std::string name = it->path().filename().string();
    if (it->is_directory(sec))
      subdirs->push_back(name);
    else if (images && has_image_extension(name))
      images->push_back(name);
  }
  if (ec) fail(dir.string(), ": error while listing the folder (", ec.message(), ")");
}

// Adds (folder relative to the class folder, file name) for every image below dir.
void walk(const fs::path& dir, const std::string& rel, int depth, const ImageFolderOptions& opts,
          std::vector<Ancestor>& ancestors, std::vector<std::pair<std::string, std::string>>& out) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0)
    fail(dir.string(), ": cannot read folder (", std::strerror(errno), ")");
  for (const Ancestor& a : ancestors)
    if (a.dev == st.st_dev && a.ino == st.st_ino)
      fail(dir.string(), ": symlink loop in the image folder: this is ", a.path,
           " again (a link points back up the tree); remove the link");
  if (depth > opts.max_depth)
    fail(dir.string(), ": folders nested deeper than ", opts.max_depth,
         " levels inside a class folder (ImageFolderOptions::max_depth); is a link making the tree endless?");
  std::vector<std::string> subdirs, images;
  list_dir(dir, &subdirs, &images);
  for (std::string& name : images) out.emplace_back(rel, std::move(name));
  std::sort(subdirs.begin(), subdirs.end());
  ancestors.push_back({st.st_dev, st.st_ino, dir.string()});
  for (const std::string& sub : subdirs)
    walk(dir / sub, rel.empty() ? sub : rel + "/" + sub, depth + 1, opts, ancestors, out);
  ancestors.pop_back();
}

}  // namespace

std::vector<std::string> read_labels_file(const std::string& path, size_t classes) {
  std::ifstream in(path);
  if (!in) fail(path, ": cannot open the labels file (", std::strerror(errno), ")");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  if (in.bad()) fail(path, ": read error in the labels file");
  while (!lines.empty() && lines.back().find_first_not_of(" \t") == std::string::npos) lines.pop_back();
  for (size_t i = 0; i < lines.size(); ++i)
    if (lines[i].find_first_not_of(" \t") == std::string::npos)
      fail(path, ": line ", i + 1, " is blank, expected one class name per line");
  if (lines.size() != classes)
    fail(path, ": ", lines.size(), " class names, expected ", classes,
         " (one per class sub-folder, in sorted folder order)");
  return lines;
}

bool has_image_extension(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  auto ends = [&](const char* ext) {
    const size_t n = std::strlen(ext);
    return lower.size() > n && lower.compare(lower.size() - n, n, ext) == 0;
  };
  return ends(".jpg") || ends(".jpeg") || ends(".png");
}

ImageFolder scan_image_folder(const std::string& root, const ImageFolderOptions& opts) {
  INCRES_CHECK(opts.max_depth >= 0, "ImageFolderOptions::max_depth is ", opts.max_depth, ", expected >= 0");
  struct stat st {};
  if (::stat(root.c_str(), &st) != 0)
    fail(root, ": cannot open the image folder (", std::strerror(errno), "); check the path");
  if (!S_ISDIR(st.st_mode)) fail(root, ": not a folder; expected root/<class>/<image> (as torchvision's ImageFolder)");

  ImageFolder f;
  f.root = root;
  list_dir(root, &f.classes, nullptr);
  std::sort(f.classes.begin(), f.classes.end());
  if (f.classes.empty())
    fail(root, ": no class sub-folders; expected root/<class>/<image> (as torchvision's ImageFolder)");
  INCRES_CHECK(f.classes.size() < (size_t{1} << 31), root, ": too many classes (", f.classes.size(), ")");

  std::vector<Ancestor> ancestors{{st.st_dev, st.st_ino, root}};
  for (size_t c = 0; c < f.classes.size(); ++c) {
    const fs::path dir = fs::path(root) / f.classes[c];
    std::vector<std::pair<std::string, std::string>> found;
    walk(dir, "", 0, opts, ancestors, found);
    if (found.empty())
      fail(dir.string(), ": class folder '", f.classes[c],
           "' holds no image (.jpg, .jpeg, .png in any case); add images or remove the folder");
    std::sort(found.begin(), found.end());  // by folder, then name (os.walk + sorted)
    for (const auto& [rel, name] : found) {
      f.files.push_back(((rel.empty() ? dir : dir / rel) / name).string());
      f.labels.push_back(static_cast<int32_t>(c));
    }
  }
  f.class_names = opts.labels_file.empty() ? f.classes : read_labels_file(opts.labels_file, f.classes.size());
  return f;
}

}  // namespace incres::data
