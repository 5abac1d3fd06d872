#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>

#include "core/error.h"
#include "io/atomic_file.h"

namespace incres::io {

// safetensors stores elements little-endian; we copy bytes straight into tensors.
static_assert(std::endian::native == std::endian::little,
              "incres reads and writes safetensors on little-endian hosts only");

namespace {

using json = nlohmann::json;

// A valid header nests 3 deep (object -> tensor entry -> shape array); anything much
// deeper is a hostile file, refused before it costs memory.
constexpr int kMaxJsonDepth = 8;

// Every dtype of the safetensors format (the reference's `Dtype` enum); those incres
// has no DType for are known but unsupported, which deserves a different message than
// a typo.
struct DTypeSpelling {
  const char* name;
  std::optional<DType> dtype;
};
constexpr DTypeSpelling kDTypes[] = {
    {"BOOL", {}}, {"U8", DType::u8},   {"I8", {}},          {"F8_E5M2", {}},
    {"F8_E4M3", {}}, {"I16", {}},      {"U16", {}},         {"F16", {}},
    {"BF16", {}}, {"I32", {}},         {"U32", {}},         {"F32", DType::f32},
    {"F64", DType::f64}, {"I64", DType::i64}, {"U64", {}},
};

// Offset of the first byte that is not well-formed UTF-8 (Unicode 15, Table 3-7:
// no overlong forms, no surrogates, nothing above U+10FFFF), or npos.
size_t first_invalid_utf8(std::string_view s) {
  size_t i = 0, n = s.size();
  auto cont = [&](size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) {
    const unsigned b = k < n ? static_cast<unsigned char>(s[k]) : 0;
    return k < n && b >= lo && b <= hi;
  };
  while (i < n) {
    unsigned c = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    if (c < 0x80) len = 1;
    else if (c >= 0xC2 && c <= 0xDF) len = cont(i + 1) ? 2 : 0;
    else if (c == 0xE0) len = cont(i + 1, 0xA0) && cont(i + 2) ? 3 : 0;
    else if (c == 0xED) len = cont(i + 1, 0x80, 0x9F) && cont(i + 2) ? 3 : 0;
    else if (c >= 0xE1 && c <= 0xEF) len = cont(i + 1) && cont(i + 2) ? 3 : 0;
    else if (c == 0xF0) len = cont(i + 1, 0x90) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    else if (c >= 0xF1 && c <= 0xF3) len = cont(i + 1) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    else if (c == 0xF4) len = cont(i + 1, 0x80, 0x8F) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

std::string hex_byte(unsigned char c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", c);
  return buf;
}

// A JSON value, shortened for an error message.
std::string brief(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

std::string dims_str(const std::vector<uint64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// One validated tensor entry of the header.
struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

// Parses the header text; checks UTF-8, nesting and duplicate keys on the way.
json parse_json(const std::string& path, const std::string& text) {
  const std::string where = "safetensors file '" + path + "': ";
  if (size_t bad = first_invalid_utf8(text); bad != std::string_view::npos)
    fail(where, "header is not valid UTF-8 (byte ", hex_byte(text[bad]), " at header offset ",
         bad, "); the file is corrupt or not a safetensors file");
  // nlohmann's lexer takes a NUL byte for the end of input, which would accept "{}\0junk";
  // JSON allows NUL only escaped, so any raw NUL makes the header invalid.
  if (size_t nul = text.find('\0'); nul != std::string::npos)
    fail(where, "header is not valid JSON: raw NUL byte at header offset ", nul,
         "; the file is corrupt");
  // The reference writes '{' first and announces it will require it (InvalidHeaderStart).
  if (text[0] != '{')
    fail(where, "header must be a JSON object starting with '{', found ", hex_byte(text[0]),
         " ('", text[0] >= 0x20 && text[0] < 0x7F ? std::string(1, text[0]) : "?",
         "'); the file is corrupt or not a safetensors file");

  // nlohmann::json silently keeps the last of duplicate keys; RFC 8259 Sec. 4 calls the
  // behaviour of receivers "unpredictable" (some keep the first, some fail), so such a
  // file means different things to different tools: refuse it. One key set per object.
  struct Frame {
    std::set<std::string> keys;
    std::string last_key;
  };
  std::vector<Frame> frames;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth >= kMaxJsonDepth)
          fail(where, "header nests deeper than ", kMaxJsonDepth,
               " levels (a valid one needs 3); the file is corrupt");
        if (event == json::parse_event_t::object_start) frames.emplace_back();
        break;
      case json::parse_event_t::object_end:
        frames.pop_back();
        break;
      case json::parse_event_t::key: {
        Frame& top = frames.back();
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!top.keys.insert(key).second) {
          std::string inside =
              frames.size() >= 2 ? " inside '" + frames[frames.size() - 2].last_key + "'" : "";
          fail(where, "duplicate key '", key, "'", inside,
               " in the header; readers disagree on which one wins, so the file is ambiguous "
               "- rewrite it without duplicates");
        }
        top.last_key = key;
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/true,
                       /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    fail(where, "header is not valid JSON: ", e.what());
  }
}

std::vector<Entry> parse_entries(const std::string& path, const json& header,
                                 std::map<std::string, std::string>& metadata) {
  const std::string file = "safetensors file '" + path + "': ";
  std::vector<Entry> entries;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      INCRES_CHECK(v.is_object(), file, "__metadata__ must be an object mapping strings to "
                   "strings, found ", brief(v));
      for (const auto& [k, s] : v.items()) {
        INCRES_CHECK(s.is_string(), file, "__metadata__ must map strings to strings, but '", k,
                     "' maps to ", brief(s));
        metadata[k] = s.get<std::string>();
      }
      continue;
    }
    const std::string where = file + "tensor '" + name + "': ";
    INCRES_CHECK(v.is_object(), where, "entry must be an object with dtype, shape and "
                 "data_offsets, found ", brief(v));
    for (const char* field : {"dtype", "shape", "data_offsets"})
      INCRES_CHECK(v.contains(field), where, "missing field '", field, "'");

    // dtype
    const json& jd = v["dtype"];
    INCRES_CHECK(jd.is_string(), where, "dtype must be a string, found ", brief(jd));
    const std::string& ds = jd.get_ref<const std::string&>();
    const DTypeSpelling* spelling = nullptr;
    for (const DTypeSpelling& k : kDTypes)
      if (ds == k.name) spelling = &k;
    INCRES_CHECK(spelling, where, "unknown dtype '", ds, "'; safetensors dtypes are BOOL, U8, "
                 "I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64");
    INCRES_CHECK(spelling->dtype, where, "dtype ", ds, " is not supported by incres (it holds "
                 "F32, F64, I64, U8); convert the checkpoint, e.g. to F32");
    const DType dtype = *spelling->dtype;

    // shape: non-negative integers. Shape and Tensor compute in int64 (Shape::numel()
    // multiplies left to right), so every dimension and every partial product of the
    // byte size must stay below 2^63; checked left to right like the reference's try_fold.
    const json& js = v["shape"];
    INCRES_CHECK(js.is_array(), where, "shape must be an array of non-negative integers, "
                 "found ", brief(js));
    constexpr uint64_t kMaxI64 = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    std::vector<uint64_t> dims;
    uint64_t bytes = dtype_size(dtype);
    bool too_large = false;
    for (size_t i = 0; i < js.size(); ++i) {
      INCRES_CHECK(js[i].is_number_unsigned(), where, "shape[", i, "] must be a non-negative "
                   "integer, found ", brief(js[i]), " in shape ", brief(js));
      const uint64_t d = js[i].get<uint64_t>();
      dims.push_back(d);
      too_large |= d > kMaxI64 || __builtin_mul_overflow(bytes, d, &bytes) || bytes > kMaxI64;
    }
    INCRES_CHECK(!too_large, where, "shape ", dims_str(dims), " of ", ds, " overflows: a "
                 "dimension or its size in bytes exceeds 2^63 - 1; the file is corrupt");

    // data_offsets: [begin, end) within the data section, sized exactly by shape and dtype.
    const json& jo = v["data_offsets"];
    INCRES_CHECK(jo.is_array() && jo.size() == 2 && jo[0].is_number_unsigned() &&
                     jo[1].is_number_unsigned(),
                 where, "data_offsets must be two non-negative integers [begin, end], found ",
                 brief(jo));
    const uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    INCRES_CHECK(begin <= end, where, "data_offsets [", begin, ", ", end,
                 "] are reversed (begin > end); the file is corrupt");
    INCRES_CHECK(end - begin == bytes, where, "shape ", dims_str(dims), " of ", ds, " needs ",
                 bytes, " bytes but data_offsets [", begin, ", ", end, "] hold ", end - begin,
                 "; the file is corrupt");

    std::vector<int64_t> sdims(dims.begin(), dims.end());
    entries.push_back({name, dtype, Shape(std::move(sdims)), begin, end});
  }
  return entries;
}

// The tensors must tile the data section: sorted by begin, each starts where the last
// ended, and the last ends at the end of the file (the reference's validate()).
void check_tiling(const std::string& path, std::vector<Entry>& entries, uint64_t data_size) {
  const std::string file = "safetensors file '" + path + "': ";
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t at = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : entries) {
    INCRES_CHECK(e.begin >= at, file, "tensor '", e.name, "' data_offsets [", e.begin, ", ",
                 e.end, "] overlap tensor '", prev ? prev->name : "", "', which ends at ", at,
                 "; the file is corrupt");
    INCRES_CHECK(e.begin == at, file, "gap of ", e.begin - at, " bytes in the data section "
                 "before tensor '", e.name, "' (it begins at ", e.begin, ", the previous tensor "
                 "ends at ", at, "); the file is corrupt");
    at = e.end;
    prev = &e;
  }
  INCRES_CHECK(at <= data_size, file, "tensor '", prev ? prev->name : "", "' ends at data "
               "offset ", at, " but the data section has only ", data_size,
               " bytes; the file is truncated");
  INCRES_CHECK(at == data_size, file, "the tensors cover ", at, " bytes but the data section "
               "has ", data_size, " bytes (", data_size - at, " bytes belong to no tensor); "
               "the file is corrupt");
}

// A file descriptor that closes itself.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly n bytes; fails with the file, what was being read and the reason.
void read_exact(int fd, void* dst, uint64_t n, const std::string& path, const char* what) {
  auto* p = static_cast<char*>(dst);
  uint64_t done = 0;
  while (done < n) {
    // Reads of at most 1 GiB: Linux caps a single read(2) at about 2 GiB anyway.
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(n - done, uint64_t{1} << 30));
    ssize_t r = ::read(fd, p + done, chunk);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      fail("safetensors file '", path, "': cannot read the ", what, ": ", std::strerror(errno));
    if (r == 0)
      fail("safetensors file '", path, "': unexpected end of file reading the ", what, " (",
           done, " of ", n, " bytes); was the file changed while it was read?");
    done += static_cast<uint64_t>(r);
  }
}

}  // namespace

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const std::string where = "save_safetensors '" + path + "': ";
  auto check_utf8 = [&](const std::string& s, const char* what) {
    INCRES_CHECK(first_invalid_utf8(s) == std::string_view::npos, where, what, " '", s,
                 "' is not valid UTF-8; safetensors headers are UTF-8 JSON");
  };
  for (const auto& [k, v] : metadata) {
    check_utf8(k, "metadata key");
    check_utf8(v, "metadata value");
  }

  // Build the header as the reference does: compact JSON, "__metadata__" first, each
  // entry as {"dtype", "shape", "data_offsets"}; our tensors keep the caller's order.
  auto quoted = [](const std::string& s) { return json(s).dump(); };
  std::string header = "{";
  if (!metadata.empty()) header += quoted("__metadata__") + ":" + json(metadata).dump();
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    check_utf8(name, "tensor name");
    INCRES_CHECK(name != "__metadata__", where, "'__metadata__' is reserved and cannot name a "
                 "tensor; rename it");
    INCRES_CHECK(seen.insert(name).second, where, "tensor name '", name, "' appears twice; "
                 "names must be unique");
    INCRES_CHECK(t != nullptr && !t->empty(), where, "tensor '", name, "' has no storage");
    std::string shape = "[";
    for (int i = 0; i < t->shape().rank(); ++i)
      shape += (i ? "," : "") + std::to_string(t->shape()[i]);
    shape += "]";
    if (header.size() > 1) header += ",";
    header += quoted(name) + ":{\"dtype\":\"" + dtype_name(t->dtype()) + "\",\"shape\":" + shape +
              ",\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t->nbytes()) + "]}";
    offset += t->nbytes();
  }
  header += "}";
  // Pad with spaces to a multiple of 8, so the data section is 8-byte aligned (reference).
  header.append((8 - header.size() % 8) % 8, ' ');

  write_file_atomic(path, [&](std::FILE* f) {
    const uint64_t len = header.size();
    unsigned char n[8];  // little-endian
    for (int i = 0; i < 8; ++i) n[i] = static_cast<unsigned char>(len >> (8 * i));
    write_all(f, n, 8);
    write_all(f, header.data(), header.size());
    for (const auto& [name, t] : tensors) write_all(f, t->raw(), t->nbytes());
  });
}

SafeTensors load_safetensors(const std::string& path) {
  const std::string file = "safetensors file '" + path + "': ";
  Fd in;
  in.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (in.fd < 0) fail("cannot open safetensors file '", path, "': ", std::strerror(errno));
  struct stat st{};
  if (::fstat(in.fd, &st) != 0) fail(file, "cannot stat: ", std::strerror(errno));
  INCRES_CHECK(S_ISREG(st.st_mode), file, "not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);

  // 8-byte little-endian header length, checked against limits before anything is allocated.
  INCRES_CHECK(size >= 8, file, "the file has ", size, " bytes, fewer than the 8-byte header "
               "length; it is truncated or not a safetensors file");
  unsigned char nb[8];
  read_exact(in.fd, nb, 8, path, "header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | nb[i];
  INCRES_CHECK(n >= 2, file, "header length is ", n, ", less than 2, the size of the smallest "
               "header '{}'; the file is corrupt");
  INCRES_CHECK(n <= kMaxSafetensorsHeader, file, "header length ", n, " exceeds the limit of ",
               kMaxSafetensorsHeader, " bytes; the file is corrupt or not a safetensors file");
  INCRES_CHECK(n <= size - 8, file, "header length ", n, " is larger than the ", size - 8,
               " bytes after it; the file is truncated or not a safetensors file");

  std::string text(static_cast<size_t>(n), '\0');
  read_exact(in.fd, text.data(), n, path, "header");
  const json header = parse_json(path, text);
  text.clear();
  text.shrink_to_fit();

  SafeTensors out;
  out.path = path;
  std::vector<Entry> entries = parse_entries(path, header, out.metadata);
  check_tiling(path, entries, size - 8 - n);

  // Every size is now known to fit in the file: allocate and read, in file order.
  for (Entry& e : entries) {
    Tensor t(std::move(e.shape), e.dtype);
    read_exact(in.fd, t.raw(), e.end - e.begin, path, ("data of tensor '" + e.name + "'").c_str());
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace incres::io
