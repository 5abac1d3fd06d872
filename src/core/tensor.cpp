#include "core/tensor.h"

#include <cstdlib>
#include <cstring>

namespace incres {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::i64: return 8;
    case DType::u8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
  }
  return "?";
}

void Tensor::Free::operator()(void* p) const { std::free(p); }

Tensor::Tensor(Shape shape, DType dtype) : shape_(std::move(shape)), dtype_(dtype) {
  for (int64_t d : shape_.dims()) INCRES_CHECK(d >= 0, "negative dimension in shape ", shape_.str());
  size_t bytes = (nbytes() + 63) / 64 * 64;
  if (bytes == 0) bytes = 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) fail("out of memory allocating ", bytes, " bytes for a tensor of shape ", shape_.str());
  std::memset(p, 0, bytes);
  buf_.reset(p);
}

Tensor Tensor::clone() const {
  Tensor t(shape_, dtype_);
  if (buf_) std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

void Tensor::fill(float v) {
  float* p = data<float>();
  for (int64_t i = 0; i < numel(); ++i) p[i] = v;
}

}  // namespace incres
