// Tensors: shapes, element types and an owning, contiguous host tensor.
//
// fleettune tensors are dense and row-major. Two element types exist: float32
// for everything numeric and int32 for class labels and token ids.
//
//   Tensor w = Tensor::Zeros(DType::kF32, {256, 784});
//   w.f32()[0] = 1.0f;
//
// `Tensor` owns 64-byte aligned storage; `TensorView` is a non-owning view used
// by kernels (it points into the runtime arena or into parameter storage).
// Neither is thread-safe for concurrent mutation.
#ifndef FLEETTUNE_ENGINE_IR_TENSOR_H_
#define FLEETTUNE_ENGINE_IR_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace fleettune::engine {

enum class DType : uint8_t { kF32, kI32 };

// "f32" / "i32".
const char* DTypeName(DType dtype);
constexpr size_t DTypeSize(DType) { return 4; }

using Shape = std::vector<int64_t>;

// Highest tensor rank the engine accepts; kernels keep per-dimension state in
// fixed arrays of this size so they never allocate.
inline constexpr int kMaxRank = 8;

// Product of the dimensions; 1 for a scalar (rank 0).
int64_t NumElements(const Shape& shape);
// "[2, 3]"; "[]" for a scalar.
std::string ShapeToString(const Shape& shape);
// InvalidArgument if the rank exceeds kMaxRank, a dimension is negative or the
// element count overflows `max_elements`.
absl::Status ValidateShape(const Shape& shape, int64_t max_elements = int64_t{1} << 34);

// The static type of a graph value.
struct TensorType {
  DType dtype = DType::kF32;
  Shape shape;

  int64_t num_elements() const { return NumElements(shape); }
  size_t bytes() const { return static_cast<size_t>(num_elements()) * DTypeSize(dtype); }
  bool operator==(const TensorType& o) const { return dtype == o.dtype && shape == o.shape; }
  bool operator!=(const TensorType& o) const { return !(*this == o); }
};

// "f32[2, 3]".
std::string TypeToString(const TensorType& type);

// Non-owning view of contiguous tensor data.
struct TensorView {
  void* data = nullptr;
  const Shape* shape = nullptr;
  DType dtype = DType::kF32;

  float* f32() const { return static_cast<float*>(data); }
  int32_t* i32() const { return static_cast<int32_t*>(data); }
  int64_t num_elements() const { return NumElements(*shape); }
};

// Owning, 64-byte aligned, zero-initialized host tensor.
class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape);

  static Tensor Zeros(DType dtype, Shape shape) { return Tensor(dtype, std::move(shape)); }
  // Copies `values`; InvalidArgument if the count does not match the shape.
  static absl::StatusOr<Tensor> FromF32(Shape shape, absl::Span<const float> values);
  static absl::StatusOr<Tensor> FromI32(Shape shape, absl::Span<const int32_t> values);

  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  DType dtype() const { return type_.dtype; }
  const Shape& shape() const { return type_.shape; }
  const TensorType& type() const { return type_; }
  int64_t num_elements() const { return type_.num_elements(); }
  size_t bytes() const { return type_.bytes(); }

  float* f32() { return reinterpret_cast<float*>(data_.get()); }
  const float* f32() const { return reinterpret_cast<const float*>(data_.get()); }
  int32_t* i32() { return reinterpret_cast<int32_t*>(data_.get()); }
  const int32_t* i32() const { return reinterpret_cast<const int32_t*>(data_.get()); }
  void* raw() { return data_.get(); }
  const void* raw() const { return data_.get(); }

  absl::Span<float> f32_span() { return {f32(), static_cast<size_t>(num_elements())}; }
  absl::Span<const float> f32_span() const { return {f32(), static_cast<size_t>(num_elements())}; }

  TensorView view() { return TensorView{data_.get(), &type_.shape, type_.dtype}; }

 private:
  struct AlignedFree {
    void operator()(std::byte* p) const;
  };
  TensorType type_;
  std::unique_ptr<std::byte[], AlignedFree> data_;
};

// Allocates `bytes` (rounded up to 64) with 64-byte alignment, zeroed.
std::byte* AlignedAllocZeroed(size_t bytes);
void AlignedFree(void* p);

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_IR_TENSOR_H_
