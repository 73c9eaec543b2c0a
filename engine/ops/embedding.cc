// kEmbedding (a table lookup, torch.nn.functional.embedding) and the
// backward-only kEmbeddingGrad.
//
// ids i32 [...], weight f32 [V, D] → y f32 [..., D], y[..., :] = weight[id, :].
// Ids are data and untrusted: an id outside [0, V) selects no row, its output
// row is zeros and it contributes no gradient, rather than reading out of
// bounds (tokenizers and data loaders reject such ids earlier with a clear
// error). The ids are not differentiable.
#include <algorithm>
#include <cstring>

#include "engine/base/status_macros.h"
#include "engine/ops/op_registry.h"
#include "engine/ops/op_util.h"

namespace fleettune::engine::ops {
namespace {

absl::StatusOr<TensorType> Infer(const Node& node, absl::Span<const TensorType* const> in) {
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kI32, "ids"));
  RETURN_IF_ERROR(ExpectDType(node, *in[1], DType::kF32, "weight"));
  RETURN_IF_ERROR(ExpectRank(node, *in[1], 2, "weight"));
  Shape out = in[0]->shape;
  out.push_back(in[1]->shape[1]);
  if (absl::Status s = ValidateShape(out); !s.ok()) return OpError(node, s.message());
  return TensorType{DType::kF32, out};
}

void Kernel(const KernelArgs& args) {
  const Shape& ws = *args.in(1).shape;
  const int64_t v = ws[0], d = ws[1];
  const int64_t n = args.in(0).num_elements();
  const int32_t* ids = args.in(0).i32();
  const float* w = args.in(1).f32();
  float* y = args.output.f32();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    if (id >= 0 && id < v) {
      std::memcpy(y + i * d, w + id * d, d * sizeof(float));
    } else {
      std::fill_n(y + i * d, d, 0.0f);
    }
  }
}

// dweight[v, :] = Σ over positions p with ids[p] == v of dy[p, :]   (scatter-add)
absl::Status Gradient(GradContext& ctx) {
  if (!ctx.NeedsGrad(1)) return absl::OkStatus();
  ASSIGN_OR_RETURN(ValueId dw, ctx.Emit(OpKind::kEmbeddingGrad, {ctx.input(0), ctx.dy()},
                                        ShapeAttrs{ctx.type(ctx.input(1)).shape}));
  ctx.SetGrad(1, dw);
  return absl::OkStatus();
}

std::vector<bool> DifferentiableInputs(const Node&) { return {false, true}; }

std::vector<OpTestCase> TestCases() {
  OpTestCase batch;  // 6 ids over 5 rows: some rows repeat, the scatter must add
  batch.inputs = {{DType::kI32, {2, 3}}, {DType::kF32, {5, 4}}};
  batch.int_upper = 5;
  OpTestCase flat;
  flat.inputs = {{DType::kI32, {4}}, {DType::kF32, {7, 3}}};
  flat.int_upper = 7;
  return {batch, flat};
}

// Inputs (ids, dy), ShapeAttrs = the table's shape [V, D].
absl::StatusOr<TensorType> InferGrad(const Node& node, absl::Span<const TensorType* const> in) {
  const Shape& table = std::get<ShapeAttrs>(node.attrs).shape;
  RETURN_IF_ERROR(ExpectDType(node, *in[0], DType::kI32, "ids"));
  RETURN_IF_ERROR(ExpectDType(node, *in[1], DType::kF32, "dy"));
  if (table.size() != 2) {
    return OpError(node, "table shape must have rank 2, got ", ShapeToString(table));
  }
  if (absl::Status s = ValidateShape(table); !s.ok()) return OpError(node, s.message());
  Shape want = in[0]->shape;
  want.push_back(table[1]);
  if (in[1]->shape != want) {
    return OpError(node, "dy must be f32", ShapeToString(want), " for ids ", TypeToString(*in[0]),
                   ", got ", TypeToString(*in[1]));
  }
  return TensorType{DType::kF32, table};
}

void GradKernel(const KernelArgs& args) {
  const Shape& ws = *args.output.shape;
  const int64_t v = ws[0], d = ws[1];
  const int64_t n = args.in(0).num_elements();
  const int32_t* ids = args.in(0).i32();
  const float* dy = args.in(1).f32();
  float* dw = args.output.f32();
  std::fill_n(dw, v * d, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ids[i];
    if (id < 0 || id >= v) continue;
    float* row = dw + id * d;
    const float* g = dy + i * d;
    for (int64_t j = 0; j < d; ++j) row[j] += g[j];
  }
}

}  // namespace

OpDef EmbeddingOpDef() {
  OpDef def;
  def.name = "embedding";
  def.min_inputs = def.max_inputs = 2;
  def.infer = Infer;
  def.reference = Kernel;
  def.gradient = Gradient;
  def.differentiable_inputs = DifferentiableInputs;
  def.test_cases = TestCases;
  return def;
}

// Not differentiable: emitted only by embedding's gradient rule (no second order).
OpDef EmbeddingGradOpDef() {
  OpDef def;
  def.name = "embedding_grad";
  def.attrs_index = AttrsIndexOf<ShapeAttrs>();
  def.min_inputs = def.max_inputs = 2;
  def.infer = InferGrad;
  def.reference = GradKernel;
  return def;
}

}  // namespace fleettune::engine::ops
