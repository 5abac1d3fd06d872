#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace incres::io {
namespace {

const char* kUnchanged = "the previous file, if any, is unchanged";

// The folder holding `path` ("." for a bare file name), the one whose entry rename changes.
std::string folder_of(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

// fsync of the folder makes the rename durable (fsync(2): "Calling fsync() does not
// necessarily ensure that the entry in the directory containing the file has also
// reached disk. For that an explicit fsync() on a file descriptor for the directory is
// also needed."). Returns 0 or an errno value.
int sync_folder(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  // Some file systems cannot fsync a folder and say EINVAL; there is nothing more to do.
  return err == EINVAL ? 0 : err;
}

}  // namespace

void write_all(std::FILE* f, const void* data, size_t n) {
  if (n == 0) return;
  errno = 0;
  size_t done = std::fwrite(data, 1, n, f);
  if (done != n) {
    int err = errno ? errno : EIO;
    fail("short write (", done, " of ", n, " bytes): ", std::strerror(err));
  }
}

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write) {
  INCRES_CHECK(!path.empty(), "write_file_atomic: empty path");
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  auto io_fail = [&](const std::string& step, int err) {
    fail("cannot write '", path, "': ", step, ": ", std::strerror(err), "; ", kUnchanged,
         " (check that the folder exists, is writable and has free space)");
  };

  // "e": O_CLOEXEC, so a child process never inherits the half-written file.
  std::FILE* f = std::fopen(tmp.c_str(), "wbe");
  if (!f) io_fail("cannot create temp file '" + tmp + "'", errno);
  try {
    write(f);
  } catch (const Error& e) {
    std::fclose(f);
    ::unlink(tmp.c_str());
    fail("cannot write '", path, "': ", e.what(), "; ", kUnchanged);
  } catch (...) {
    std::fclose(f);
    ::unlink(tmp.c_str());
    throw;
  }

  // Flush, sync and close, keeping the first failure; errno is read right after each call.
  std::string step;
  int err = 0;
  auto failed = [&](const char* what, int e) {
    if (err != 0) return;
    step = what;
    err = e ? e : EIO;
  };
  errno = 0;
  if (std::ferror(f)) failed("write failed", errno);  // a callback that ignored fwrite's result
  if (err == 0 && std::fflush(f) != 0) failed("flush failed", errno);
  if (err == 0 && ::fsync(::fileno(f)) != 0) failed("fsync failed", errno);
  if (std::fclose(f) != 0) failed("close failed", errno);
  if (err != 0) {
    ::unlink(tmp.c_str());
    io_fail(step, err);
  }

  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    ::unlink(tmp.c_str());
    io_fail("cannot rename '" + tmp + "' over it", err);
  }
  const std::string dir = folder_of(path);
  if (int e = sync_folder(dir); e != 0)
    fail("wrote '", path, "' but cannot fsync its folder '", dir, "': ", std::strerror(e),
         "; the new file is in place but may not survive a power cut");
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  write_file_atomic(path, [&](std::FILE* f) { write_all(f, bytes.data(), bytes.size()); });
}

}  // namespace incres::io
