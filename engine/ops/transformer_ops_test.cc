// Behaviour of the transformer ops beyond what the conformance test checks:
// shape errors, out-of-range ids, the causal mask's alignment, attribute
// validation. Gradients and kernels are checked by ops_conformance_test.cc.
#include <cmath>
#include <tuple>
#include <vector>

#include "engine/autodiff/autodiff.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/graph.h"
#include "engine/ops/op_registry.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::ops {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::FloatNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;

std::vector<float> Values(const TensorView& v) {
  return std::vector<float>(v.f32(), v.f32() + v.num_elements());
}

TEST(TransformerOps, ShapeErrorsNameTheOpAndTheProblem) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 3, 5}}));
  ASSERT_OK_AND_ASSIGN(ValueId x4, g.AddInput("x4", {DType::kF32, {2, 3, 4}}));
  ASSERT_OK_AND_ASSIGN(ValueId y, g.AddInput("y", {DType::kF32, {3, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId ids, g.AddInput("ids", {DType::kI32, {2, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId pos, g.AddInput("pos", {DType::kI32, {4}}));
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {4}}));
  ASSERT_OK_AND_ASSIGN(ValueId table, g.AddParameter("table", {DType::kF32, {7, 4}}));
  ASSERT_OK_AND_ASSIGN(ValueId b3, g.AddParameter("b3", {DType::kF32, {3, 4, 5}}));
  const auto invalid = absl::StatusCode::kInvalidArgument;

  EXPECT_THAT(
      g.AddNode(OpKind::kRope, {x, pos}, RopeAttrs{}),
      StatusIs(invalid, HasSubstr("rope: x needs an even last dimension, got f32[2, 3, 5]")));
  EXPECT_THAT(g.AddNode(OpKind::kRope, {x4, pos}, RopeAttrs{}),
              StatusIs(invalid, HasSubstr("positions i32[4] do not broadcast to [2, 3]")));
  EXPECT_THAT(g.AddNode(OpKind::kEmbedding, {x, table}),
              StatusIs(invalid, HasSubstr("embedding: ids must be i32, got f32[2, 3, 5]")));
  EXPECT_THAT(g.AddNode(OpKind::kEmbeddingGrad, {ids, x}, ShapeAttrs{{7, 4}}),
              StatusIs(invalid, HasSubstr("embedding_grad: dy must be f32[2, 3, 4] for ids "
                                          "i32[2, 3], got f32[2, 3, 5]")));
  EXPECT_THAT(g.AddNode(OpKind::kMatMul, {x4, b3}, MatMulAttrs{}),
              StatusIs(invalid, HasSubstr("matmul: batch dimensions: shapes [2] and [3] do not "
                                          "broadcast")));
  EXPECT_THAT(g.AddNode(OpKind::kMatMul, {w, b3}, MatMulAttrs{}),
              StatusIs(invalid, HasSubstr("a must have rank >= 2, got f32[4]")));
  EXPECT_THAT(g.AddNode(OpKind::kConcat, {x4, x}, AxisAttrs{1}),
              StatusIs(invalid, HasSubstr("concat: input 1 f32[2, 3, 5] does not fit input 0 "
                                          "f32[2, 3, 4] along axis 1")));
  EXPECT_THAT(g.AddNode(OpKind::kConcat, {y}, AxisAttrs{2}),
              StatusIs(invalid, HasSubstr("axis 2 out of range for f32[3, 3]")));
  EXPECT_THAT(g.AddNode(OpKind::kSlice, {y}, SliceAttrs{{2, 0}, {1, 3}, {1, 1}}),
              StatusIs(invalid, HasSubstr("slice: axis 0: need 0 <= begin <= end <= 3 and step "
                                          ">= 1, got 2:1:1")));
  EXPECT_THAT(g.AddNode(OpKind::kSlice, {y}, SliceAttrs{{0, 0}, {3, 3}, {1, 0}}),
              StatusIs(invalid, HasSubstr("got 0:3:0")));
  EXPECT_THAT(g.AddNode(OpKind::kSlice, {y}, SliceAttrs{{0}, {3}, {1}}),
              StatusIs(invalid, HasSubstr("begin, end and step need 2 entries each")));
  EXPECT_THAT(g.AddNode(OpKind::kTranspose, {y}, PermuteAttrs{{0, 0}}),
              StatusIs(invalid, HasSubstr("perm must be a permutation of [0, 2), got axis 0 at "
                                          "position 1")));
  EXPECT_THAT(g.AddNode(OpKind::kTranspose, {y}, PermuteAttrs{{0}}),
              StatusIs(invalid, HasSubstr("perm has 1 axes for x f32[3, 3]")));
  EXPECT_THAT(g.AddNode(OpKind::kSoftmax, {w}, SoftmaxAttrs{true}),
              StatusIs(invalid, HasSubstr("softmax: x must have rank >= 2 when causal")));
  EXPECT_THAT(g.AddNode(OpKind::kLayerNorm, {x, w}, NormAttrs{}),
              StatusIs(invalid, HasSubstr("layer_norm: weight must be f32[5] for x f32[2, 3, 5], "
                                          "got f32[4]")));
  EXPECT_THAT(g.AddNode(OpKind::kRmsNorm, {x4, w}, NormAttrs{-1.0f}),
              StatusIs(invalid, HasSubstr("rms_norm: eps must be finite and >= 0, got -1")));
  EXPECT_THAT(g.AddNode(OpKind::kRmsNorm, {x4, w, w}, NormAttrs{}),
              StatusIs(invalid, HasSubstr("expects 1 to 2 inputs, got 3")));
  EXPECT_THAT(g.AddNode(OpKind::kSliceGrad, {y}, SliceGradAttrs{{{0, 0}, {2, 3}, {1, 1}}, {3, 3}}),
              StatusIs(invalid, HasSubstr("slice_grad: dy must have the sliced shape [2, 3], got "
                                          "f32[3, 3]")));
}

// Ids outside [0, V) are data errors: they select no row (zeros) and receive
// no gradient, and nothing reads or writes outside the table.
TEST(Embedding, OutOfRangeIdsGiveZeroRowsAndNoGradient) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId ids, g.AddInput("ids", {DType::kI32, {5}}));
  ASSERT_OK_AND_ASSIGN(ValueId table, g.AddParameter("table", {DType::kF32, {3, 2}}));
  ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kEmbedding, {ids, table}));
  ASSERT_OK_AND_ASSIGN(ValueId loss, g.AddNode(OpKind::kReduceSum, {y}, ReduceAttrs{{0, 1}}));
  ASSERT_OK_AND_ASSIGN(autodiff::GradientMap grads, autodiff::BuildBackward(g, loss, {table}));
  g.MarkOutput(y);
  g.MarkOutput(grads.at(table));
  runtime::ParameterStore params;
  ASSERT_OK_AND_ASSIGN(Tensor t, Tensor::FromF32({3, 2}, {1, 2, 3, 4, 5, 6}));
  ASSERT_OK(params.Set("table", t));
  ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(g, &params));
  ASSERT_OK_AND_ASSIGN(Tensor id_values, Tensor::FromI32({5}, {2, -1, 3, 2, 1 << 30}));
  ASSERT_OK(exe->SetInput("ids", id_values));
  ASSERT_OK(exe->Run());
  ASSERT_OK_AND_ASSIGN(TensorView out, exe->Output(y));
  EXPECT_THAT(Values(out), ElementsAre(5, 6, 0, 0, 0, 0, 5, 6, 0, 0));
  ASSERT_OK_AND_ASSIGN(TensorView dtable, exe->Output(grads.at(table)));
  EXPECT_THAT(Values(dtable), ElementsAre(0, 0, 0, 0, 2, 2));  // id 2 twice
}

// With fewer rows (queries) than columns (keys), the queries are the last
// positions: row i sees columns j <= i + (S − L). A row that sees nothing is 0.
TEST(Softmax, CausalMaskIsBottomRightAligned) {
  for (const auto& [l, s, want] : std::vector<std::tuple<int64_t, int64_t, std::vector<float>>>{
           {2, 3, {0.5f, 0.5f, 0.0f, 1 / 3.0f, 1 / 3.0f, 1 / 3.0f}},
           {2, 2, {1.0f, 0.0f, 0.5f, 0.5f}},
           {3, 2, {0.0f, 0.0f, 1.0f, 0.0f, 0.5f, 0.5f}}}) {
    SCOPED_TRACE(::testing::Message() << "L=" << l << " S=" << s);
    Graph g;
    ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {l, s}}));
    ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kSoftmax, {x}, SoftmaxAttrs{true}));
    g.MarkOutput(y);
    runtime::ParameterStore params;
    ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(g, &params));
    ASSERT_OK(exe->SetInput("x", Tensor::Zeros(DType::kF32, {l, s})));
    ASSERT_OK(exe->Run());
    ASSERT_OK_AND_ASSIGN(TensorView out, exe->Output(y));
    EXPECT_THAT(Values(out), Pointwise(FloatNear(1e-6f), want));
  }
}

// RoPE at position 0 is the identity, and rotating by θ then −θ gives x back.
TEST(Rope, PositionZeroIsIdentityAndInverseUndoesIt) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 4}}));
  ASSERT_OK_AND_ASSIGN(ValueId pos, g.AddInput("pos", {DType::kI32, {2}}));
  ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kRope, {x, pos}, RopeAttrs{10000.0f, false}));
  ASSERT_OK_AND_ASSIGN(ValueId back, g.AddNode(OpKind::kRope, {y, pos}, RopeAttrs{10000.0f, true}));
  g.MarkOutput(y);
  g.MarkOutput(back);
  runtime::ParameterStore params;
  ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(g, &params));
  const std::vector<float> xs = {1, 2, 3, 4, 5, 6, 7, 8};
  ASSERT_OK_AND_ASSIGN(Tensor xt, Tensor::FromF32({2, 4}, xs));
  ASSERT_OK_AND_ASSIGN(Tensor pt, Tensor::FromI32({2}, {0, 1000}));
  ASSERT_OK(exe->SetInput("x", xt));
  ASSERT_OK(exe->SetInput("pos", pt));
  ASSERT_OK(exe->Run());
  ASSERT_OK_AND_ASSIGN(TensorView out, exe->Output(y));
  const std::vector<float> rotated = Values(out);
  EXPECT_THAT(std::vector<float>(rotated.begin(), rotated.begin() + 4), ElementsAre(1, 2, 3, 4));
  EXPECT_NE(rotated[4], 5.0f);
  ASSERT_OK_AND_ASSIGN(TensorView restored, exe->Output(back));
  EXPECT_THAT(Values(restored), Pointwise(FloatNear(1e-4f), xs));
}

// Head dims past the kernel's inv_freq table (D > 512) take the per-element
// path; both follow y_j = x_j cos θ_j − x_{j+h} sin θ_j, θ_j = p·base^(−2j/D).
TEST(Rope, MatchesTheFormulaForSmallAndLargeHeadDims) {
  for (int64_t d : {8, 2 * 300}) {
    SCOPED_TRACE(::testing::Message() << "D=" << d);
    Graph g;
    ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, d}}));
    ASSERT_OK_AND_ASSIGN(ValueId pos, g.AddInput("pos", {DType::kI32, {2}}));
    ASSERT_OK_AND_ASSIGN(ValueId y, g.AddNode(OpKind::kRope, {x, pos}, RopeAttrs{500.0f, false}));
    g.MarkOutput(y);
    runtime::ParameterStore params;
    ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(g, &params));
    Tensor xt(DType::kF32, {2, d});
    for (int64_t i = 0; i < xt.num_elements(); ++i) xt.f32()[i] = std::sin(0.37 * i);
    const std::vector<int32_t> positions = {3, 11};
    ASSERT_OK_AND_ASSIGN(Tensor pt, Tensor::FromI32({2}, positions));
    ASSERT_OK(exe->SetInput("x", xt));
    ASSERT_OK(exe->SetInput("pos", pt));
    ASSERT_OK(exe->Run());
    ASSERT_OK_AND_ASSIGN(TensorView out, exe->Output(y));
    const int64_t h = d / 2;
    for (int64_t r = 0; r < 2; ++r) {
      for (int64_t j = 0; j < h; ++j) {
        const double theta = positions[r] * std::pow(500.0, -2.0 * j / d);
        const double a = xt.f32()[r * d + j], b = xt.f32()[r * d + j + h];
        EXPECT_NEAR(out.f32()[r * d + j], a * std::cos(theta) - b * std::sin(theta), 1e-5)
            << r << ", " << j;
        EXPECT_NEAR(out.f32()[r * d + j + h], b * std::cos(theta) + a * std::sin(theta), 1e-5)
            << r << ", " << j;
      }
    }
  }
}

TEST(Rope, RejectsABaseThatIsNotAboveOne) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 4}}));
  ASSERT_OK_AND_ASSIGN(ValueId pos, g.AddInput("pos", {DType::kI32, {2}}));
  EXPECT_THAT(g.AddNode(OpKind::kRope, {x, pos}, RopeAttrs{1.0f, false}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("rope: base must be finite and > 1, got 1")));
}

}  // namespace
}  // namespace fleettune::engine::ops
