// Crash-safe file writing: every file incres writes (checkpoints, logs of record,
// exported tensors) goes through write_file_atomic, so a kill -9, a full disk or a
// permission error never leaves a half-written file at the final path.
#pragma once
#include <cstddef>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>

namespace incres::io {

// Writes `path` atomically: `write` fills a temp file `<path>.tmp-<pid>` in the same
// folder, which is then flushed, fsync'd and renamed over `path`, and the folder is
// fsync'd so the rename itself survives a power cut (the recipe of rename(2) and
// fsync(2); see also "Ensuring data reaches disk", LWN 457667).
//
// Guarantees: on success `path` holds exactly what `write` wrote. On any failure (the
// folder is missing or read-only, the disk is full, `write` throws) the temp file is
// removed, the previous `path` (if any) is unchanged, and an Error naming `path` and
// the system's reason is thrown. An incres::Error thrown by `write` is rethrown with
// `path` prepended; any other exception is rethrown unchanged after the clean-up.
// The one exception to "unchanged": if only the final fsync of the folder fails, the
// new file is already in place, and the Error says so.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write);

// The same, for content already in memory.
void write_file_atomic(const std::string& path, std::string_view bytes);

// fwrite that throws an Error (with strerror) on a short write, so a callback of
// write_file_atomic stops at the first failure, e.g. ENOSPC, instead of writing on.
void write_all(std::FILE* f, const void* data, size_t n);

}  // namespace incres::io
