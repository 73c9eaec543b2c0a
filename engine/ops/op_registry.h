// Op definitions: one OpDef per OpKind, each defined in one file of this
// directory together with its shape inference, reference kernel, optional fast
// kernel, gradient rule and conformance test cases.
//
//   const OpDef& def = GetOpDef(OpKind::kLinear);
//   ASSIGN_OR_RETURN(TensorType t, InferType(node, input_types));
//
// Adding an op: add its OpKind, write `OpDef XxxOpDef()` in its own file, and
// list it in op_registry.cc. The conformance test (ops_conformance_test.cc)
// walks every OpDef, so it needs no edit. Thread-safe: the table is immutable.
#ifndef FLEETTUNE_ENGINE_OPS_OP_REGISTRY_H_
#define FLEETTUNE_ENGINE_OPS_OP_REGISTRY_H_

#include <cstdint>
#include <type_traits>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/ir/node.h"

namespace fleettune::engine::ops {

// Per-step values visible to kernels.
struct StepInfo {
  int64_t step = 1;  // 1-based optimizer step (AdamW bias correction)
  // Micro-batched steps (runtime::CompileOptions::micro_batches): the step's
  // batch runs as `micro_batches` slices, this is slice `micro_batch`, and
  // its gradients count `gradient_weight` of the batch's (its share of the
  // loss's counted examples). Optimizer updates accumulate the slices and
  // apply the sum on the last one.
  int micro_batch = 0;
  int micro_batches = 1;
  float gradient_weight = 1.0f;
  bool first_micro_batch() const { return micro_batch == 0; }
  bool last_micro_batch() const { return micro_batch == micro_batches - 1; }
};

// What a kernel sees. Shapes were validated when the node was built; kernels
// do no checking and no allocation.
struct KernelArgs {
  const Node* node = nullptr;
  const TensorView* inputs = nullptr;
  int num_inputs = 0;
  TensorView output;
  const StepInfo* step = nullptr;
  // Workspace of at least OpDef::scratch_bytes, shared by all kernels of an
  // executable (they run one at a time); null when the op asks for none.
  float* scratch = nullptr;
  // Set on a conv2d_activation (ReLU or ReLU6) whose activation_mask node
  // the runtime absorbed (runtime::AbsorbedMasks): the kernel also writes
  // that node's output here, in activation_mask's layout, as it activates
  // each plane.
  int32_t* activation_mask = nullptr;
  // Set on a conv2d_backward_input whose reduce_sum over (N, H, W) the
  // runtime absorbed (runtime::AbsorbedChannelSums): the kernel also writes
  // those per-channel sums of dx here, the bits reduce_sum's fast kernel
  // computes, summing each plane while it is in cache.
  float* channel_sums = nullptr;
  // Set on a softmax_cross_entropy_grad whose loss node the runtime absorbed
  // (runtime::AbsorbedLosses): the kernel also writes that loss here, the
  // bits softmax_cross_entropy's fast kernel computes, from the row
  // statistics the gradient needs anyway.
  float* cross_entropy_loss = nullptr;
  // Set on a convolution that computes the convolution producing its input
  // too (runtime::AbsorbedProducers): that node's kernel arguments (its
  // operands and absorbed outputs; no output of its own).
  const KernelArgs* producer = nullptr;
  // Set on rope nodes that rotate by the same positions (runtime::RopeTables):
  // their cos/sin table ([positions][D/2] cosines, then as many sines),
  // which the first of them in the program (`rope_table_owner`) computes each
  // time it runs and the others read, instead of each computing its own in
  // scratch.
  float* rope_table = nullptr;
  bool rope_table_owner = false;

  const TensorView& in(int i) const { return inputs[i]; }
  template <typename T>
  const T& attrs() const {
    return std::get<T>(node->attrs);
  }
};
using KernelFn = void (*)(const KernelArgs&);

// Gradient rules talk to autodiff through this interface, so ops do not depend
// on the graph class. Used only at compile time.
class GradContext {
 public:
  virtual ~GradContext() = default;
  // The forward node, its id, and the gradient of the loss w.r.t. its output.
  virtual const Node& node() const = 0;
  virtual ValueId self() const = 0;
  virtual ValueId dy() const = 0;
  ValueId input(int i) const { return node().inputs[i]; }
  virtual const TensorType& type(ValueId v) const = 0;
  // Whether the loss gradient w.r.t. input i is needed by some update.
  virtual bool NeedsGrad(int input) const = 0;
  // Adds a backward node (type-checked like Graph::AddNode).
  virtual absl::StatusOr<ValueId> Emit(OpKind op, std::vector<ValueId> inputs,
                                       Attrs attrs = NoAttrs{}) = 0;
  // Contributes `grad` (same type as the input) to input i's gradient.
  virtual void SetGrad(int input, ValueId grad) = 0;
};
using GradFn = absl::Status (*)(GradContext&);
using InferFn = absl::StatusOr<TensorType> (*)(const Node& node,
                                               absl::Span<const TensorType* const> inputs);

// One instance of an op for the conformance test: input types and attributes.
// i32 inputs are filled with values in [0, int_upper).
struct OpTestCase {
  std::vector<TensorType> inputs;
  Attrs attrs = NoAttrs{};
  int32_t int_upper = 1;
  // Indices of f32 inputs drawn positive, from [0.1, 1] (variances).
  std::vector<int> positive_inputs;
};

// Index of attribute struct T in the Attrs variant.
template <typename T, size_t I = 0>
constexpr size_t AttrsIndexOf() {
  if constexpr (std::is_same_v<T, std::variant_alternative_t<I, Attrs>>) {
    return I;
  } else {
    return AttrsIndexOf<T, I + 1>();
  }
}

struct OpDef {
  const char* name = "?";
  // The Attrs alternative this op takes (NoAttrs unless set).
  size_t attrs_index = AttrsIndexOf<NoAttrs>();
  int min_inputs = 0;
  int max_inputs = 0;
  bool has_output = true;
  InferFn infer = nullptr;
  KernelFn reference = nullptr;  // portable, obviously-correct; the test oracle
  KernelFn fast = nullptr;       // optional optimized kernel, tested against `reference`
  GradFn gradient = nullptr;     // nullptr: not differentiable (the op file says why)
  // Which inputs may receive gradients (e.g. not integer labels).
  std::vector<bool> (*differentiable_inputs)(const Node& node) = nullptr;
  std::vector<OpTestCase> (*test_cases)() = nullptr;
  // Bytes of workspace the op's kernels need (im2col buffers), from its input
  // types; nullptr = none. Compile() sizes it once, so kernels never allocate.
  size_t (*scratch_bytes)(const Node& node, absl::Span<const TensorType* const> inputs) = nullptr;
};

const OpDef& GetOpDef(OpKind op);

// Checks arity and attribute type, then runs the op's inference.
absl::StatusOr<TensorType> InferType(const Node& node, absl::Span<const TensorType* const> inputs);

// Gradient helper for broadcasting ops: sums `grad` over the axes that were
// broadcast to go from `target` to grad's shape, then reshapes to `target`.
absl::StatusOr<ValueId> ReduceToShape(GradContext& ctx, ValueId grad, const Shape& target);

// Numpy-style broadcast of two shapes; InvalidArgument if incompatible.
absl::StatusOr<Shape> BroadcastShapes(const Shape& a, const Shape& b);

}  // namespace fleettune::engine::ops

#endif  // FLEETTUNE_ENGINE_OPS_OP_REGISTRY_H_
