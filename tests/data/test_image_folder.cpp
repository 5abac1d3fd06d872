// scan_image_folder (class order, file order, extensions, empty classes, labels file,
// symlink loops, unreadable folders) and ImageFolderLoader (shapes, determinism across
// workers, resume, skip_bad counting with full batches, the first bad file as error).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "data/image_folder.h"
#include "support.h"
#include "test_image_writers.h"

namespace incres::data {
namespace {

using testing_support::contains;
using testing_support::error_of;
using namespace test_images;

void write_text(const std::string& path, const std::string& text) {
  write_bytes(path, std::vector<uint8_t>(text.begin(), text.end()));
}

// root/{Dog,bird,cat}: JPEG and PNG images in mixed-case extensions, a nested folder,
// and files that do not count (a .txt, an image directly in root).
void make_tree(const TempDir& d) {
  write_bytes(d / "cat/b.PNG", png_bytes(noise(20, 24, 1)));
  write_bytes(d / "cat/a.jpg", jpeg_bytes(gradient(24, 20)));
  write_bytes(d / "cat/sub/c.jpeg", jpeg_bytes(gradient(30, 30)));
  write_text(d / "cat/notes.txt", "not an image");
  write_bytes(d / "Dog/x.png", png_bytes(noise(18, 22, 2)));
  write_bytes(d / "bird/z.JpG", jpeg_bytes(gradient(26, 19)));
  write_bytes(d / "readme.jpg", jpeg_bytes(gradient(8, 8)));  // not in a class folder
}

TEST(ImageFolder, ClassesAndFilesSortedAsTorchvision) {
  TempDir d;
  make_tree(d);
  ImageFolder f = scan_image_folder(d.path.string());
  // Byte order: upper case first, as Python's sorted().
  EXPECT_EQ(f.classes, (std::vector<std::string>{"Dog", "bird", "cat"}));
  EXPECT_EQ(f.class_names, f.classes);
  EXPECT_EQ(f.files, (std::vector<std::string>{d / "Dog/x.png", d / "bird/z.JpG", d / "cat/a.jpg",
                                                d / "cat/b.PNG", d / "cat/sub/c.jpeg"}));
  EXPECT_EQ(f.labels, (std::vector<int32_t>{0, 1, 2, 2, 2}));
  EXPECT_EQ(f.count(), 5);
}

TEST(ImageFolder, FilesOfAFolderComeBeforeItsSubFolders) {
  // os.walk sorted by folder path: cat/z.jpg (folder "cat") before cat/a/y.jpg.
  TempDir d;
  write_bytes(d / "cat/z.jpg", jpeg_bytes(gradient(8, 8)));
  write_bytes(d / "cat/a/y.jpg", jpeg_bytes(gradient(8, 8)));
  EXPECT_EQ(scan_image_folder(d.path.string()).files, (std::vector<std::string>{d / "cat/z.jpg", d / "cat/a/y.jpg"}));
}

TEST(ImageFolder, Extensions) {
  for (const char* yes : {"a.jpg", "A.JPG", "b.jpeg", "c.JpEg", "d.png", "e.PNG", ".x.jpg"})
    EXPECT_TRUE(has_image_extension(yes)) << yes;
  for (const char* no : {"a.gif", "jpg", ".jpg", "a.jpg.txt", "a.webp", "a.pngx", "a"})
    EXPECT_FALSE(has_image_extension(no)) << no;
}

TEST(ImageFolder, EmptyClassOrNoClassesOrNoFolder) {
  TempDir d;
  std::filesystem::create_directories(d.path);
  EXPECT_TRUE(contains(error_of([&] { scan_image_folder(d.path.string()); }), "no class sub-folders"));
  write_bytes(d / "cat/a.jpg", jpeg_bytes(gradient(8, 8)));
  write_text(d / "dog/readme.txt", "no images here");
  std::string e = error_of([&] { scan_image_folder(d.path.string()); });
  EXPECT_TRUE(contains(e, d / "dog"));
  EXPECT_TRUE(contains(e, "holds no image"));
  EXPECT_TRUE(contains(error_of([&] { scan_image_folder(d / "missing"); }), "missing: cannot open the image folder"));
  EXPECT_TRUE(contains(error_of([&] { scan_image_folder(d / "cat/a.jpg"); }), "a.jpg: not a folder"));
}

TEST(ImageFolder, LabelsFileGivesDisplayNames) {
  TempDir d;
  write_bytes(d / "n02/a.jpg", jpeg_bytes(gradient(8, 8)));
  write_bytes(d / "n01/a.jpg", jpeg_bytes(gradient(8, 8)));
  write_text(d.path.string() + "-labels.txt", "tench\r\ngoldfish\n\n");
  ImageFolderOptions o;
  o.labels_file = d.path.string() + "-labels.txt";
  ImageFolder f = scan_image_folder(d.path.string(), o);
  EXPECT_EQ(f.classes, (std::vector<std::string>{"n01", "n02"}));
  EXPECT_EQ(f.class_names, (std::vector<std::string>{"tench", "goldfish"}));
  write_text(o.labels_file, "tench\n");
  std::string e = error_of([&] { scan_image_folder(d.path.string(), o); });
  EXPECT_TRUE(contains(e, "-labels.txt: 1 class names, expected 2"));
  std::filesystem::remove(o.labels_file);
  EXPECT_TRUE(contains(error_of([&] { scan_image_folder(d.path.string(), o); }), "cannot open the labels file"));
}

TEST(ImageFolder, SymlinkLoopEndsWithAnError) {
  TempDir d;
  write_bytes(d / "cat/a.jpg", jpeg_bytes(gradient(8, 8)));
  std::filesystem::create_directory_symlink(d / "cat", d / "cat/again");  // cat/again -> cat
  std::string e = error_of([&] { scan_image_folder(d.path.string()); });
  EXPECT_TRUE(contains(e, d / "cat/again"));
  EXPECT_TRUE(contains(e, "symlink loop"));
  // A link to the root from inside a class.
  std::filesystem::remove(d / "cat/again");
  std::filesystem::create_directory_symlink(d.path, d / "cat/up");
  EXPECT_TRUE(contains(error_of([&] { scan_image_folder(d.path.string()); }), "symlink loop"));
  // A link to a folder elsewhere is followed (as torchvision does).
  std::filesystem::remove(d / "cat/up");
  TempDir other;
  write_bytes(other / "b.png", png_bytes(noise(4, 4)));
  std::filesystem::create_directory_symlink(other.path, d / "cat/more");
  EXPECT_EQ(scan_image_folder(d.path.string()).count(), 2);
}

// The Error message `f` throws when run by an unprivileged user: root reads every
// folder, so the check drops to "nobody" in a child process when the test runs as root.
template <class F>
std::string error_without_root(F f) {
  if (::geteuid() != 0) return error_of(f);
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    std::string msg = "no error";
    if (::setgid(65534) == 0 && ::setuid(65534) == 0) {
      try {
        f();
      } catch (const std::exception& e) {
        msg = e.what();
      }
    } else {
      msg = "setuid failed";
    }
    ssize_t w = ::write(fds[1], msg.data(), msg.size());
    (void)w;
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return msg;
}

TEST(ImageFolder, UnreadableFolderIsAnError) {
  TempDir d;
  write_bytes(d / "cat/a.jpg", jpeg_bytes(gradient(8, 8)));
  write_bytes(d / "dog/secret/b.jpg", jpeg_bytes(gradient(8, 8)));
  std::filesystem::permissions(d.path, std::filesystem::perms::all);  // mkdtemp made it 0700
  std::filesystem::permissions(d / "dog/secret", std::filesystem::perms::none);
  std::string e = error_without_root([&] { scan_image_folder(d.path.string()); });
  EXPECT_TRUE(contains(e, d / "dog/secret"));
  EXPECT_TRUE(contains(e, "Permission denied"));
}

// ---- Loader ----

// `good` decodable images in two classes, named so that they interleave with `bad`
// undecodable ones (empty, text, truncated JPEG).
ImageFolder make_loader_tree(const TempDir& d, int good, bool bad) {
  for (int i = 0; i < good; ++i) {
    const std::string cls = i % 2 ? "b" : "a";
    const std::string name = cat(cls, "/img", 10 + i);
    if (i % 3 == 0)
      write_bytes(d / (name + ".png"), png_bytes(noise(20 + i, 24, static_cast<uint32_t>(i))));
    else
      write_bytes(d / (name + ".jpg"), jpeg_bytes(gradient(24, 20 + i)));
  }
  if (bad) {
    write_bytes(d / "a/img11_empty.jpg", {});
    write_text(d / "b/img12_text.jpg", "<html>");
    std::vector<uint8_t> j = jpeg_bytes(noise(32, 32));
    j.resize(j.size() / 2);
    write_bytes(d / "a/img13_cut.jpg", j);
  }
  return scan_image_folder(d.path.string());
}

struct Copy {
  std::vector<float> images;
  std::vector<int32_t> labels;
  int64_t index, size;
  bool operator==(const Copy&) const = default;
};
std::vector<Copy> run_epoch(ImageFolderLoader& l, int64_t epoch, int64_t first = 0) {
  std::vector<Copy> out;
  l.start_epoch(epoch, first);
  while (const Batch* b = l.next()) {
    const float* p = b->images.data<float>();
    out.push_back({std::vector<float>(p, p + b->images.numel()), b->labels, b->index, b->size});
  }
  return out;
}

ImageLoaderOptions loader_opts(int workers) {
  ImageLoaderOptions o;
  o.batch = 4;
  o.transform = RandomResizedCrop{16};
  o.seed = 9;
  o.workers = workers;
  o.prefetch = 2;
  return o;
}

TEST(ImageFolderLoader, ShapesAndLabels) {
  TempDir d;
  ImageFolder f = make_loader_tree(d, 10, false);
  ImageLoaderOptions o = loader_opts(2);
  o.shuffle = false;
  o.transform = CenterCrop{12};
  ImageFolderLoader l(f, o);
  EXPECT_EQ(l.sample_shape(), (Shape{3, 12, 12}));
  EXPECT_EQ(l.batches_per_epoch(), 2);  // 10 / 4, drop_last
  EXPECT_EQ(l.classes(), 2);
  std::vector<Copy> e = run_epoch(l, 0);
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].images.size(), 4u * 3 * 12 * 12);
  EXPECT_EQ(e[0].labels, (std::vector<int32_t>(f.labels.begin(), f.labels.begin() + 4)));
  // The first sample is f.files[0] through the eval transform and ImageNet normalisation.
  std::vector<float> want = load_eval_image(f.files[0], 12);
  EXPECT_EQ(std::vector<float>(e[0].images.begin(), e[0].images.begin() + 3 * 144), want);
}

TEST(ImageFolderLoader, SameBatchesForAnyNumberOfWorkersAndOnResume) {
  TempDir d;
  ImageFolder f = make_loader_tree(d, 13, false);
  std::vector<std::vector<Copy>> runs;
  for (int w : {0, 1, 3}) {
    ImageFolderLoader l(f, loader_opts(w));
    std::vector<Copy> all = run_epoch(l, 0), e1 = run_epoch(l, 1);
    all.insert(all.end(), e1.begin(), e1.end());
    runs.push_back(std::move(all));
  }
  ASSERT_EQ(runs[0].size(), 6u);
  EXPECT_TRUE(runs[0] == runs[1]);
  EXPECT_TRUE(runs[0] == runs[2]);
  EXPECT_FALSE(runs[0][0] == runs[0][3]);  // epochs differ
  ImageFolderLoader l(f, loader_opts(2));
  std::vector<Copy> resumed = run_epoch(l, 1, 1);
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_TRUE(resumed[0] == runs[0][4]);
  EXPECT_TRUE(resumed[1] == runs[0][5]);
}

// Data-parallel shards: together, batch by batch, they read what one loader of the
// whole batch reads (random-resized crops and flips included), partial batch too.
TEST(ImageFolderLoader, ShardsTogetherReadWhatOneLoaderReads) {
  TempDir d;
  ImageFolder f = make_loader_tree(d, 13, false);
  for (bool drop_last : {true, false}) {
    ImageLoaderOptions whole = loader_opts(1);
    whole.drop_last = drop_last;
    ImageFolderLoader one(f, whole);
    const std::vector<Copy> ref = run_epoch(one, 1);
    const size_t per = 3 * 16 * 16;
    std::vector<std::vector<Copy>> shards;
    for (int k = 0; k < 2; ++k) {
      ImageLoaderOptions o = whole;
      o.batch = 2;
      o.shard = {.index = k, .count = 2};
      ImageFolderLoader l(f, o);
      ASSERT_EQ(l.batches_per_epoch(), one.batches_per_epoch());
      shards.push_back(run_epoch(l, 1));
    }
    for (size_t i = 0; i < ref.size(); ++i) {
      std::vector<int32_t> labels;
      std::vector<float> images;
      for (const auto& s : shards) {
        labels.insert(labels.end(), s[i].labels.begin(), s[i].labels.end());
        images.insert(images.end(), s[i].images.begin(), s[i].images.begin() + s[i].size * per);
      }
      EXPECT_EQ(labels, ref[i].labels) << "batch " << i;
      EXPECT_TRUE(std::equal(images.begin(), images.end(), ref[i].images.begin())) << "batch " << i;
    }
  }
}

TEST(ImageFolderLoader, FirstBadFileIsAnErrorNamingIt) {
  TempDir d;
  ImageFolder f = make_loader_tree(d, 6, true);
  ImageLoaderOptions o = loader_opts(2);
  o.shuffle = false;  // a/img10.png, a/img11_empty.jpg, ...: the empty file is in batch 0
  ImageFolderLoader l(f, o);
  l.start_epoch(0);
  std::string e = error_of([&] { l.next(); });
  EXPECT_TRUE(contains(e, "image loader: batch 0 of epoch 0 failed: "));
  EXPECT_TRUE(contains(e, d / "a/img11_empty.jpg"));
  EXPECT_TRUE(contains(e, "empty file"));
}

TEST(ImageFolderLoader, SkipBadCountsAndKeepsBatchesFull) {
  TempDir d;
  ImageFolder f = make_loader_tree(d, 11, true);  // 14 files, 3 bad
  ASSERT_EQ(f.count(), 14);
  std::vector<std::vector<Copy>> runs;
  for (int w : {0, 3}) {
    ImageLoaderOptions o = loader_opts(w);
    o.batch = 7;
    o.drop_last = false;
    o.skip_bad = true;
    ImageFolderLoader l(f, o);
    std::vector<Copy> e = run_epoch(l, 0);
    ASSERT_EQ(e.size(), 2u);
    for (const Copy& b : e) {
      EXPECT_EQ(b.size, 7);
      EXPECT_EQ(b.labels.size(), 7u);
    }
    EXPECT_EQ(l.bad_count(), 3);
    EXPECT_EQ(l.bad_files(), (std::vector<std::string>{d / "a/img11_empty.jpg", d / "a/img13_cut.jpg",
                                                       d / "b/img12_text.jpg"}));
    std::vector<Copy> again = run_epoch(l, 0);  // known bad files are skipped the same way
    EXPECT_TRUE(again == e);
    EXPECT_EQ(l.bad_count(), 3);  // counted once each
    runs.push_back(std::move(e));
  }
  EXPECT_TRUE(runs[0] == runs[1]);
}

TEST(ImageFolderLoader, BadOptions) {
  TempDir d;
  ImageFolder f = make_loader_tree(d, 3, false);
  ImageLoaderOptions o = loader_opts(0);
  EXPECT_TRUE(contains(error_of([&] { ImageFolderLoader l(f, o); }), "not one full batch of 4"));
  o.batch = 2;
  o.mean = {0.5f, 0.5f};
  EXPECT_TRUE(contains(error_of([&] { ImageFolderLoader l(f, o); }), "mean has 2 values"));
  o.mean.clear();
  o.transform = ScaleAugment{300, 256, 480};
  EXPECT_TRUE(contains(error_of([&] { ImageFolderLoader l(f, o); }), "ScaleAugment"));
}

}  // namespace
}  // namespace incres::data

namespace incres::data {
namespace {

TEST(ImageFolderDataset, SmallFolderIntoMemory) {
  TempDir d;
  ImageFolder f = make_loader_tree(d, 7, true);  // 10 files, 3 bad
  std::string e = error_of([&] { load_image_folder_dataset(f, 16, false, 3); });
  EXPECT_TRUE(contains(e, d / "a/img11_empty.jpg"));  // the first bad one in file order
  Dataset ds = load_image_folder_dataset(f, 16, true, 3);
  EXPECT_EQ(ds.count, 7);
  EXPECT_EQ(ds.channels, 3);
  EXPECT_EQ(ds.height, 16);
  EXPECT_EQ(ds.classes, 2);
  EXPECT_EQ(ds.images.size(), 7u * 16 * 16 * 3);
  // The first file, a/img10.png (20 x 24): shorter side 20 -> 16, then the centre.
  Image want = resize_shorter(decode_image(f.files[0]), 16);
  Rng unused(0);
  Image crop = apply(CenterCrop{16, 1.0}, decode_image(f.files[0]), unused);
  EXPECT_EQ(std::vector<uint8_t>(ds.images.begin(), ds.images.begin() + 16 * 16 * 3), crop.pixels);
  EXPECT_EQ(want.height, 16);
  // The in-memory Loader takes it.
  LoaderOptions lo;
  lo.batch = 3;
  lo.workers = 0;
  Loader l(ds, lo);
  l.start_epoch(0);
  EXPECT_EQ(l.next()->images.shape(), (Shape{3, 3, 16, 16}));
}

}  // namespace
}  // namespace incres::data

namespace incres::data {
namespace {

TEST(ImageFolderLoader, RestartAndDestroyMidEpoch) {
  TempDir d;
  ImageFolder f = make_loader_tree(d, 16, false);
  ImageFolderLoader straight(f, loader_opts(2));
  std::vector<Copy> e2 = run_epoch(straight, 2);
  for (int trial = 0; trial < 3; ++trial) {
    ImageFolderLoader l(f, loader_opts(3));
    l.start_epoch(0);
    ASSERT_NE(l.next(), nullptr);  // workers are filling the next slots now
    std::vector<Copy> resumed = run_epoch(l, 2, 2);  // restart while fills are in flight
    ASSERT_EQ(resumed.size(), 2u);
    EXPECT_TRUE(resumed[0] == e2[2]);
    EXPECT_TRUE(resumed[1] == e2[3]);
    l.start_epoch(1);
    l.next();  // and destroyed with the epoch half read
  }
}

}  // namespace
}  // namespace incres::data
