#include "engine/ir/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fleettune::engine {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kI32:
      return "i32";
  }
  return "?";
}

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(const Shape& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string TypeToString(const TensorType& type) {
  return absl::StrCat(DTypeName(type.dtype), ShapeToString(type.shape));
}

absl::Status ValidateShape(const Shape& shape, int64_t max_elements) {
  if (shape.size() > static_cast<size_t>(kMaxRank)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", ShapeToString(shape), " has rank ", shape.size(), " > ", kMaxRank));
  }
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("negative dimension in shape ", ShapeToString(shape)));
    }
    if (d != 0 && n > max_elements / d) {
      return absl::InvalidArgumentError(absl::StrCat("shape ", ShapeToString(shape),
                                                     " has more than ", max_elements, " elements"));
    }
    n *= d;
  }
  return absl::OkStatus();
}

std::byte* AlignedAllocZeroed(size_t bytes) {
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) std::abort();  // Out of memory is not recoverable here.
  std::memset(p, 0, rounded);
  return static_cast<std::byte*>(p);
}

void AlignedFree(void* p) { std::free(p); }

void Tensor::AlignedFree::operator()(std::byte* p) const { std::free(p); }

Tensor::Tensor(DType dtype, Shape shape)
    : type_{dtype, std::move(shape)}, data_(AlignedAllocZeroed(type_.bytes())) {}

Tensor::Tensor(const Tensor& other)
    : type_(other.type_), data_(AlignedAllocZeroed(other.type_.bytes())) {
  if (other.data_) std::memcpy(data_.get(), other.data_.get(), type_.bytes());
}

Tensor& Tensor::operator=(const Tensor& other) {
  if (this != &other) *this = Tensor(other);
  return *this;
}

absl::StatusOr<Tensor> Tensor::FromF32(Shape shape, absl::Span<const float> values) {
  Tensor t(DType::kF32, std::move(shape));
  if (static_cast<int64_t>(values.size()) != t.num_elements()) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", values.size(), " values for shape ", ShapeToString(t.shape())));
  }
  std::memcpy(t.raw(), values.data(), t.bytes());
  return t;
}

absl::StatusOr<Tensor> Tensor::FromI32(Shape shape, absl::Span<const int32_t> values) {
  Tensor t(DType::kI32, std::move(shape));
  if (static_cast<int64_t>(values.size()) != t.num_elements()) {
    return absl::InvalidArgumentError(
        absl::StrCat("got ", values.size(), " values for shape ", ShapeToString(t.shape())));
  }
  std::memcpy(t.raw(), values.data(), t.bytes());
  return t;
}

}  // namespace fleettune::engine
