// write_file_atomic: the new content appears whole or not at all, and a failure leaves
// the previous file and no temp file behind.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using incres::Error;
using incres::io::write_file_atomic;

#include "support.h"

using incres::testing_support::contains;
using incres::testing_support::error_of;
using incres::testing_support::slurp;

namespace {

class AtomicFile : public testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("incres-io-atomic-" + std::string(testing::UnitTest::GetInstance()->current_test_info()->name()) +
           "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }
  // Names of the files in `dir`, sorted: the final file and nothing else (no temp file).
  std::vector<std::string> listing() const {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }
  fs::path dir;
};

TEST_F(AtomicFile, WritesAndReplaces) {
  const std::string path = (dir / "a.bin").string();
  write_file_atomic(path, std::string_view("first"));
  EXPECT_EQ(slurp(path), "first");
  write_file_atomic(path, [](std::FILE* f) {
    incres::io::write_all(f, "second", 6);
    incres::io::write_all(f, "", 0);
  });
  EXPECT_EQ(slurp(path), "second");
  EXPECT_EQ(listing(), std::vector<std::string>{"a.bin"});
}

TEST_F(AtomicFile, BareFileNameUsesTheCurrentFolder) {
  const fs::path cwd = fs::current_path();
  fs::current_path(dir);
  EXPECT_NO_THROW(write_file_atomic("bare.txt", std::string_view("x")));
  fs::current_path(cwd);
  EXPECT_EQ(slurp(dir / "bare.txt"), "x");
}

TEST_F(AtomicFile, CallbackThrowingMidWriteKeepsTheOldFile) {
  const std::string path = (dir / "ckpt.safetensors").string();
  write_file_atomic(path, std::string_view("old content"));
  std::string msg = error_of([&] {
    write_file_atomic(path, [](std::FILE* f) {
      incres::io::write_all(f, "half of the new", 15);
      incres::fail("tensor 'x' is not finite");
    });
  });
  EXPECT_TRUE(contains(msg, path));
  EXPECT_TRUE(contains(msg, "tensor 'x' is not finite"));
  EXPECT_TRUE(contains(msg, "unchanged"));
  EXPECT_EQ(slurp(path), "old content");
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST_F(AtomicFile, OtherExceptionsPassThroughAfterCleanUp) {
  const std::string path = (dir / "f").string();
  write_file_atomic(path, std::string_view("old"));
  EXPECT_THROW(write_file_atomic(path, [](std::FILE* f) {
                 incres::io::write_all(f, "new", 3);
                 throw std::out_of_range("boom");
               }),
               std::out_of_range);
  EXPECT_EQ(slurp(path), "old");
  EXPECT_EQ(listing(), std::vector<std::string>{"f"});
}

TEST_F(AtomicFile, MissingFolderIsAClearError) {
  const std::string path = (dir / "no-such-dir" / "ckpt.safetensors").string();
  std::string msg = error_of([&] { write_file_atomic(path, std::string_view("x")); });
  EXPECT_TRUE(contains(msg, "cannot write '" + path + "'"));
  EXPECT_TRUE(contains(msg, "No such file or directory"));
  EXPECT_TRUE(listing().empty());
}

TEST_F(AtomicFile, RenameOverAFolderFailsAndRemovesTheTempFile) {
  const fs::path target = dir / "taken";
  fs::create_directories(target / "inside");
  std::string msg = error_of([&] { write_file_atomic(target.string(), std::string_view("x")); });
  EXPECT_TRUE(contains(msg, "cannot rename"));
  EXPECT_TRUE(contains(msg, "Is a directory"));
  EXPECT_EQ(listing(), std::vector<std::string>{"taken"});
  EXPECT_TRUE(fs::is_directory(target / "inside"));
}

// A real I/O error from the kernel, without needing a full disk: a file-size limit makes
// write(2) fail with EFBIG once the temp file reaches it (setrlimit(2)), as ENOSPC would.
TEST_F(AtomicFile, WriteErrorFromTheKernelKeepsTheOldFile) {
  const std::string path = (dir / "big").string();
  write_file_atomic(path, std::string_view("old"));

  rlimit old_limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // else the process is killed
  rlimit small = old_limit;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string msg = error_of([&] {
    write_file_atomic(path, std::string(1 << 20, 'x'));
  });
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);

  EXPECT_TRUE(contains(msg, path));
  EXPECT_TRUE(contains(msg, "File too large"));
  EXPECT_EQ(slurp(path), "old");
  EXPECT_EQ(listing(), std::vector<std::string>{"big"});
}

// A callback that ignores fwrite's result still gets the error: ferror is checked.
TEST_F(AtomicFile, IgnoredWriteErrorIsStillCaught) {
  const std::string path = (dir / "big").string();
  write_file_atomic(path, std::string_view("old"));
  rlimit old_limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old_limit;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string big(1 << 20, 'x');
  std::string msg = error_of([&] {
    write_file_atomic(path, [&](std::FILE* f) { (void)!std::fwrite(big.data(), 1, big.size(), f); });
  });
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(contains(msg, "cannot write '" + path + "'"));
  EXPECT_EQ(slurp(path), "old");
  EXPECT_EQ(listing(), std::vector<std::string>{"big"});
}

TEST_F(AtomicFile, SaveSafetensorsIsAtomicToo) {
  const std::string path = (dir / "no-such-dir" / "m.safetensors").string();
  incres::Tensor t(incres::Shape{2});
  std::string msg = error_of([&] { incres::io::save_safetensors(path, {{"t", &t}}); });
  EXPECT_TRUE(contains(msg, path));
  EXPECT_TRUE(contains(msg, "No such file or directory"));
}

}  // namespace
