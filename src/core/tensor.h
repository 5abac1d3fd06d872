// Tensor: an owning, 64-byte aligned, zero-initialised buffer with a shape and a
// dtype. Move-only: copies are explicit (clone), so a parameter never forks silently.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/shape.h"

namespace incres {

enum class DType { f32, f64, i64, u8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: F32, F64, I64, U8

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::u8; }

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape, DType dtype = DType::f32);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  const Shape& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool empty() const { return !buf_; }

  void* raw() { return buf_.get(); }
  const void* raw() const { return buf_.get(); }
  template <class T> T* data() {
    INCRES_CHECK(dtype_of<T>() == dtype_, "tensor of dtype ", dtype_name(dtype_),
                 " read as ", dtype_name(dtype_of<T>()));
    return static_cast<T*>(raw());
  }
  template <class T> const T* data() const { return const_cast<Tensor*>(this)->data<T>(); }

  Tensor clone() const;
  void fill(float v);  // f32 only

 private:
  struct Free { void operator()(void* p) const; };
  Shape shape_;
  DType dtype_ = DType::f32;
  std::unique_ptr<void, Free> buf_;
};

}  // namespace incres
