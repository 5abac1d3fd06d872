// safetensors: round trips, known bytes from the reference implementation, and one
// distinct error per malformed header (RELIABILITY.md, "Checkpoints").
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;
using incres::DType;
using incres::Error;
using incres::Shape;
using incres::Tensor;
using incres::io::load_safetensors;
using incres::io::save_safetensors;

#include "support.h"

using incres::testing_support::contains;
using incres::testing_support::error_of;
using incres::testing_support::slurp;

namespace {

// 8-byte little-endian length n, then `header`, then `data`.
std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}
std::string st_bytes(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}
// One header entry.
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

class SafeTensorsTest : public testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("incres-io-st-" + std::string(testing::UnitTest::GetInstance()->current_test_info()->name()) +
           "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }

  // Writes raw bytes and returns the load error's message.
  std::string load_error(const std::string& bytes) {
    const std::string path = (dir / "bad.safetensors").string();
    incres::io::write_file_atomic(path, bytes);
    std::string msg = error_of([&] { load_safetensors(path); });
    EXPECT_TRUE(contains(msg, path)) << "the error must name the file";
    return msg;
  }
  std::string path(const char* name) const { return (dir / name).string(); }
  fs::path dir;
};

template <class T>
Tensor make(Shape shape, std::initializer_list<T> values) {
  Tensor t(std::move(shape), incres::dtype_of<T>());
  EXPECT_EQ(static_cast<size_t>(t.numel()), values.size());
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// ---------------------------------------------------------------- round trips

TEST_F(SafeTensorsTest, RoundTripAllDtypesMetadataEmptyAndScalar) {
  Tensor f32 = make<float>({2, 3}, {1.5f, -2.f, 0.f, 3.25f, 1e-30f, -0.f});
  Tensor f64 = make<double>({4}, {1.0 / 3, -1e300, 0.0, 42.0});
  Tensor i64 = make<int64_t>({3}, {-1, int64_t{1} << 62, 7});
  Tensor u8 = make<uint8_t>({5}, {0, 1, 127, 128, 255});
  Tensor scalar = make<float>({}, {7.f});
  Tensor empty(Shape{0});
  Tensor empty2(Shape{3, 0}, DType::u8);
  // Deliberately not in name order, and U8 before F64 (misaligned data is fine for us).
  std::vector<std::pair<std::string, const Tensor*>> list = {
      {"z.f32", &f32}, {"u8", &u8}, {"a.f64", &f64}, {"empty", &empty},
      {"i64", &i64},   {"scalar", &scalar}, {"empty2", &empty2}};
  std::map<std::string, std::string> meta = {
      {"format", "pt"}, {"note", "unicode \xC3\xBC \xE2\x9C\x93 and \"quotes\"\n"}, {"blank", ""}};
  const std::string p = path("all.safetensors");
  save_safetensors(p, list, meta);

  incres::io::SafeTensors st = load_safetensors(p);
  EXPECT_EQ(st.path, p);
  EXPECT_EQ(st.metadata, meta);
  ASSERT_EQ(st.tensors.size(), list.size());
  for (const auto& [name, t] : list) {
    ASSERT_TRUE(st.tensors.count(name)) << name;
    EXPECT_TRUE(same(st.tensors.at(name), *t)) << name;
  }
  EXPECT_EQ(st.tensors.at("scalar").shape().rank(), 0);
  EXPECT_EQ(st.tensors.at("empty2").shape(), (Shape{3, 0}));

  // The file keeps the given order: data_offsets grow along `list`, and the header is
  // padded to a multiple of 8 so the data section is aligned.
  const std::string bytes = slurp(p);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  uint64_t at = 0;
  for (const auto& [name, t] : list) {
    EXPECT_EQ(header[name]["data_offsets"][0].get<uint64_t>(), at) << name;
    at += t->nbytes();
    EXPECT_EQ(header[name]["data_offsets"][1].get<uint64_t>(), at) << name;
  }
  EXPECT_EQ(bytes.size(), 8 + n + at);
}

TEST_F(SafeTensorsTest, NoTensorsAtAll) {
  save_safetensors(path("none.safetensors"), {});
  incres::io::SafeTensors st = load_safetensors(path("none.safetensors"));
  EXPECT_TRUE(st.tensors.empty());
  EXPECT_TRUE(st.metadata.empty());
}

// Known answers from the reference implementation's own tests (safetensors/src/tensor.rs,
// test_serialization and test_empty): our writer produces the same bytes.
TEST_F(SafeTensorsTest, SameBytesAsTheReferenceImplementation) {
  Tensor t = make<float>({1, 2, 3}, {0, 1, 2, 3, 4, 5});
  save_safetensors(path("ref.safetensors"), {{"attn.0", &t}});
  const std::string header = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  ASSERT_EQ(header.size(), 64u);
  std::string data(24, '\0');
  std::memcpy(data.data(), t.raw(), 24);
  EXPECT_EQ(slurp(dir / "ref.safetensors"), st_bytes(header, data));

  save_safetensors(path("empty.safetensors"), {});
  EXPECT_EQ(slurp(dir / "empty.safetensors"), st_bytes("{}      "));

  save_safetensors(path("meta.safetensors"), {}, {{"framework", "pt"}});
  EXPECT_EQ(slurp(dir / "meta.safetensors"), st_bytes(R"({"__metadata__":{"framework":"pt"}}     )"));
}

// Other writers put tensors in any order in the JSON and pad with spaces; both load.
TEST_F(SafeTensorsTest, LoadsHeadersInAnyKeyOrder) {
  std::string data(12, '\0');
  float a = 2.5f, b[2] = {1.f, -1.f};
  std::memcpy(data.data(), b, 8);
  std::memcpy(data.data() + 8, &a, 4);
  const std::string header = "{" + entry("a", "F32", "[]", "[8,12]") + "," +
                             entry("b", "F32", "[2]", "[0,8]") + R"(,"__metadata__":{}})" + "   ";
  incres::io::write_file_atomic(path("x.safetensors"), st_bytes(header, data));
  incres::io::SafeTensors st = load_safetensors(path("x.safetensors"));
  EXPECT_EQ(st.tensors.at("a").data<float>()[0], 2.5f);
  EXPECT_EQ(st.tensors.at("b").data<float>()[1], -1.f);
}

TEST_F(SafeTensorsTest, SaveRejectsBadInputBeforeWriting) {
  Tensor t(Shape{2});
  Tensor none;
  const std::string p = path("bad.safetensors");
  EXPECT_TRUE(contains(error_of([&] { save_safetensors(p, {{"a", &t}, {"a", &t}}); }),
                       "tensor name 'a' appears twice"));
  EXPECT_TRUE(contains(error_of([&] { save_safetensors(p, {{"__metadata__", &t}}); }),
                       "'__metadata__' is reserved"));
  EXPECT_TRUE(contains(error_of([&] { save_safetensors(p, {{"n", nullptr}}); }),
                       "tensor 'n' has no storage"));
  EXPECT_TRUE(contains(error_of([&] { save_safetensors(p, {{"n", &none}}); }),
                       "tensor 'n' has no storage"));
  EXPECT_TRUE(contains(error_of([&] { save_safetensors(p, {{"bad\xFF", &t}}); }),
                       "is not valid UTF-8"));
  EXPECT_TRUE(contains(error_of([&] { save_safetensors(p, {}, {{"k", "\xC0\xAF"}}); }),
                       "metadata value"));
  EXPECT_FALSE(fs::exists(p));
}

TEST_F(SafeTensorsTest, MissingFileAndFolder) {
  EXPECT_TRUE(contains(error_of([&] { load_safetensors(path("nope")); }), "No such file"));
  EXPECT_TRUE(contains(error_of([&] { load_safetensors(dir.string()); }), "not a regular file"));
}

// ---------------------------------------------------------------- malformed files

TEST_F(SafeTensorsTest, ShortFile) {
  EXPECT_TRUE(contains(load_error(""), "has 0 bytes, fewer than the 8-byte header length"));
  EXPECT_TRUE(contains(load_error(std::string("\x02\0\0\0\0\0\0", 7)), "has 7 bytes"));
}

TEST_F(SafeTensorsTest, HeaderLengthIsCheckedBeforeAllocating) {
  EXPECT_TRUE(contains(load_error(le64(0)), "header length is 0, less than 2"));
  EXPECT_TRUE(contains(load_error(le64(1) + "{"), "header length is 1, less than 2"));
  // Lengths that would be fatal to allocate are refused from the 8 bytes alone.
  EXPECT_TRUE(contains(load_error(le64(~uint64_t{0}) + "{}"),
                       "header length 18446744073709551615 exceeds the limit of 100000000 bytes"));
  EXPECT_TRUE(contains(load_error(le64(100'000'001) + "{}"), "exceeds the limit"));
  EXPECT_TRUE(contains(load_error(le64(100'000'000) + "{}"),
                       "header length 100000000 is larger than the 2 bytes after it"));
  EXPECT_TRUE(contains(load_error(le64(3) + "{}"), "header length 3 is larger than the 2 bytes"));
}

TEST_F(SafeTensorsTest, InvalidUtf8) {
  EXPECT_TRUE(contains(load_error(st_bytes("{\"a\xFF\":1}")),
                       "header is not valid UTF-8 (byte 0xFF at header offset 3)"));
  // An overlong '/', an encoded surrogate (U+D800), and a sequence cut short.
  EXPECT_TRUE(contains(load_error(st_bytes("{\"\xC0\xAF\":1}")), "byte 0xC0 at header offset 2"));
  EXPECT_TRUE(contains(load_error(st_bytes("{\"\xED\xA0\x80\":1}")), "byte 0xED at header offset 2"));
  EXPECT_TRUE(contains(load_error(st_bytes("{}  \xE2\x82")), "byte 0xE2 at header offset 4"));
  // Above U+10FFFF.
  EXPECT_TRUE(contains(load_error(st_bytes("{\"\xF4\x90\x80\x80\":1}")), "not valid UTF-8"));
}

TEST_F(SafeTensorsTest, InvalidJson) {
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"a":})")), "header is not valid JSON"));
  EXPECT_TRUE(contains(load_error(st_bytes(R"({} x)")), "header is not valid JSON"));
  EXPECT_TRUE(contains(load_error(st_bytes(R"({/* c */})")), "header is not valid JSON"));
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"a":{)")), "header is not valid JSON"));
  // nlohmann's lexer would stop at a NUL and accept the "{}" before it.
  EXPECT_TRUE(contains(load_error(st_bytes(std::string("{}\0junk", 7))),
                       "raw NUL byte at header offset 2"));
  // A lone surrogate escape is invalid JSON text.
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"\ud800":1})")), "header is not valid JSON"));
}

TEST_F(SafeTensorsTest, NotAnObject) {
  EXPECT_TRUE(contains(load_error(st_bytes("[1,2]")), "must be a JSON object starting with '{', found 0x5B ('[')"));
  EXPECT_TRUE(contains(load_error(st_bytes("\"{}\"")), "must be a JSON object"));
  EXPECT_TRUE(contains(load_error(st_bytes(" {}")), "found 0x20"));
}

TEST_F(SafeTensorsTest, DeepNesting) {
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"a":[[[[[[[[[[[[1]]]]]]]]]]]]})")),
                       "header nests deeper than"));
}

TEST_F(SafeTensorsTest, DuplicateKeys) {
  const std::string a = entry("a", "U8", "[1]", "[0,1]");
  EXPECT_TRUE(contains(load_error(st_bytes("{" + a + "," + a + "}", "x")),
                       "duplicate key 'a' in the header"));
  EXPECT_TRUE(contains(
      load_error(st_bytes(R"({"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}})", "x")),
      "duplicate key 'dtype' inside 'a'"));
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"__metadata__":{"k":"1","k":"2"}})")),
                       "duplicate key 'k' inside '__metadata__'"));
  // The same key in different objects is fine.
  incres::io::write_file_atomic(path("ok.safetensors"),
                                st_bytes("{" + a + "," + entry("b", "U8", "[1]", "[1,2]") + "}", "xy"));
  EXPECT_EQ(load_safetensors(path("ok.safetensors")).tensors.size(), 2u);
}

TEST_F(SafeTensorsTest, BadEntries) {
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"a":5})")),
                       "tensor 'a': entry must be an object with dtype, shape and data_offsets, found 5"));
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"a":{"dtype":"U8","shape":[0]}})")),
                       "tensor 'a': missing field 'data_offsets'"));
}

TEST_F(SafeTensorsTest, Dtypes) {
  EXPECT_TRUE(contains(load_error(st_bytes("{" + entry("w", "F31", "[1]", "[0,4]") + "}", "1234")),
                       "tensor 'w': unknown dtype 'F31'"));
  EXPECT_TRUE(contains(load_error(st_bytes("{" + entry("w", "f32", "[1]", "[0,4]") + "}", "1234")),
                       "unknown dtype 'f32'"));
  for (const char* known : {"BF16", "F16", "I32", "BOOL", "U64", "F8_E4M3"})
    EXPECT_TRUE(contains(load_error(st_bytes("{" + entry("w", known, "[1]", "[0,2]") + "}", "12")),
                         "tensor 'w': dtype " + std::string(known) + " is not supported by incres"));
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", "1234")),
                       "tensor 'w': dtype must be a string, found 4"));
}

TEST_F(SafeTensorsTest, Shapes) {
  auto bad_shape = [&](const std::string& shape) {
    return load_error(st_bytes("{" + entry("w", "U8", shape, "[0,2]") + "}", "12"));
  };
  EXPECT_TRUE(contains(bad_shape("[-2]"), "tensor 'w': shape[0] must be a non-negative integer, found -2"));
  EXPECT_TRUE(contains(bad_shape("[1,2.0]"), "shape[1] must be a non-negative integer, found 2.0"));
  EXPECT_TRUE(contains(bad_shape(R"(["2"])"), "found \"2\""));
  EXPECT_TRUE(contains(bad_shape("[1e1]"), "shape[0] must be a non-negative integer"));
  EXPECT_TRUE(contains(bad_shape("2"), "tensor 'w': shape must be an array"));
  EXPECT_TRUE(contains(bad_shape("[18446744073709551616]"), "must be a non-negative integer"));
}

TEST_F(SafeTensorsTest, ShapeByteSizeOverflowAndMismatch) {
  // 2^62 * 4 elements * 4 bytes overflows 64 bits.
  EXPECT_TRUE(contains(load_error(st_bytes("{" + entry("w", "F32", "[4611686018427387904,4]", "[0,4]") + "}", "1234")),
                       "tensor 'w': shape [4611686018427387904, 4] of F32 overflows"));
  // Fits uint64 but not the int64 a Shape holds.
  EXPECT_TRUE(contains(load_error(st_bytes("{" + entry("w", "U8", "[9223372036854775808]", "[0,1]") + "}", "1")),
                       "overflows"));
  // Partial products must fit too: Shape::numel() multiplies left to right in int64, so
  // [2^62, 3, 0] (0 bytes in the end) would overflow it on the way.
  EXPECT_TRUE(contains(load_error(st_bytes("{" + entry("w", "U8", "[4611686018427387904,3,0]", "[0,0]") + "}")),
                       "shape [4611686018427387904, 3, 0] of U8 overflows"));
  EXPECT_TRUE(contains(load_error(st_bytes("{" + entry("w", "U8", "[0,9223372036854775808]", "[0,0]") + "}")),
                       "overflows"));
  // A zero dimension makes any product zero, however large the others are.
  EXPECT_TRUE(contains(load_error(st_bytes("{" + entry("w", "F32", "[0,4611686018427387904,4]", "[0,4]") + "}", "1234")),
                       "needs 0 bytes but data_offsets [0, 4] hold 4"));
  EXPECT_TRUE(contains(load_error(st_bytes("{" + entry("w", "F32", "[2]", "[0,4]") + "}", "1234")),
                       "tensor 'w': shape [2] of F32 needs 8 bytes but data_offsets [0, 4] hold 4"));
}

TEST_F(SafeTensorsTest, Offsets) {
  auto bad_offsets = [&](const std::string& offsets) {
    return load_error(st_bytes("{" + entry("w", "U8", "[2]", offsets) + "}", "12"));
  };
  const char* want = "tensor 'w': data_offsets must be two non-negative integers [begin, end]";
  EXPECT_TRUE(contains(bad_offsets("[0.0,2]"), want));
  EXPECT_TRUE(contains(bad_offsets("[0]"), want));
  EXPECT_TRUE(contains(bad_offsets("[0,2,4]"), want));
  EXPECT_TRUE(contains(bad_offsets("[-1,1]"), want));
  EXPECT_TRUE(contains(bad_offsets(R"({"begin":0})"), want));
  EXPECT_TRUE(contains(bad_offsets("[2,0]"), "tensor 'w': data_offsets [2, 0] are reversed"));
}

TEST_F(SafeTensorsTest, TensorsMustTileTheDataSection) {
  const std::string data(16, 'd');
  auto two = [&](const std::string& a_off, const std::string& b_off, const std::string& d) {
    return load_error(st_bytes("{" + entry("a", "U8", "[8]", a_off) + "," +
                                   entry("b", "U8", "[8]", b_off) + "}", d));
  };
  EXPECT_TRUE(contains(two("[0,8]", "[4,12]", data),
                       "tensor 'b' data_offsets [4, 12] overlap tensor 'a', which ends at 8"));
  EXPECT_TRUE(contains(two("[0,8]", "[0,8]", data), "overlap tensor 'a'"));
  EXPECT_TRUE(contains(two("[0,8]", "[12,20]", std::string(20, 'd')),
                       "gap of 4 bytes in the data section before tensor 'b'"));
  EXPECT_TRUE(contains(two("[4,12]", "[12,20]", std::string(20, 'd')),
                       "gap of 4 bytes in the data section before tensor 'a'"));
  EXPECT_TRUE(contains(two("[0,8]", "[8,16]", data + "xyz"),
                       "the tensors cover 16 bytes but the data section has 19 bytes"));
  EXPECT_TRUE(contains(two("[0,8]", "[8,16]", std::string(10, 'd')),
                       "tensor 'b' ends at data offset 16 but the data section has only 10 bytes"));
  // Data but no tensors.
  EXPECT_TRUE(contains(load_error(st_bytes("{}", "x")), "the tensors cover 0 bytes"));
}

TEST_F(SafeTensorsTest, Metadata) {
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"__metadata__":["a"]})")),
                       "__metadata__ must be an object mapping strings to strings, found [\"a\"]"));
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"__metadata__":{"epoch":3}})")),
                       "__metadata__ must map strings to strings, but 'epoch' maps to 3"));
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"__metadata__":{"x":{"y":"z"}}})")),
                       "but 'x' maps to {\"y\":\"z\"}"));
  EXPECT_TRUE(contains(load_error(st_bytes(R"({"__metadata__":null})")),
                       "must be an object mapping strings to strings, found null"));
}

}  // namespace
