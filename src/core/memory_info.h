// How much memory this process may still take: the kernel's MemAvailable, lowered to
// the cgroup's remaining limit where one is set (containers). INCRES_MEMORY_LIMIT
// (bytes) caps it further, for tests and for users who share a machine.
#pragma once
#include <cstdint>
#include <string>

namespace incres {

// Bytes available, or -1 when nothing can be read.
int64_t available_memory();

// "31.14 GB", "512.0 MB".
std::string bytes_text(double bytes);

}  // namespace incres
