// safetensors checkpoints (https://huggingface.co/docs/safetensors, reference
// implementation github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of UTF-8 JSON, then the data section. The JSON object maps each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end)} (offsets relative to
// the data section) and may hold "__metadata__", a string -> string map.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace incres::io {

// The reference implementation's MAX_HEADER_SIZE: a larger header is refused unread.
constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;

struct SafeTensors {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
  std::string path;  // the file it was loaded from, for error messages; empty if built in memory
};

// Writes `tensors` (in the given order, data packed back to back) and `metadata` to
// `path` atomically (write_file_atomic). The JSON header is padded with spaces to a
// multiple of 8 bytes, as the reference implementation does, so the data section is
// 8-byte aligned. Requires unique, valid UTF-8 names other than "__metadata__" and
// tensors with storage; throws Error otherwise, before writing anything.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads and validates `path`; throws an Error naming the file (and tensor) on anything
// malformed: a short file; a header length < 2, > kMaxSafetensorsHeader or past the end
// of the file (checked before the header is read); invalid UTF-8 or JSON, a header
// that is not an object, duplicate keys; an unknown or unsupported dtype (incres
// holds F32, F64, I64, U8); a bad shape or data_offsets; a shape whose byte size
// overflows or differs from end - begin; tensors that overlap, leave gaps or do not
// cover the data section exactly; "__metadata__" that is not string -> string.
// Tensors are allocated only after all of that has been checked, so no allocation
// exceeds the file's size. Unknown fields of a tensor entry are ignored, as the
// reference implementation does.
SafeTensors load_safetensors(const std::string& path);

}  // namespace incres::io
