// CNN op behaviour the generic conformance test does not cover: shape errors
// that name the problem, and dropout's mask as a function of (seed, optimizer
// step, index) — the conformance test checks the gradient, which recomputes
// the mask, but not the mask itself.
#include <cmath>
#include <random>
#include <vector>

#include "engine/autodiff/autodiff.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/graph.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::ops {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

constexpr int64_t kSize = 4096;

TEST(CnnOps, ShapeErrorsNameTheOpAndTheProblem) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2, 6, 8, 8}}));
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {4, 3, 3, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId big, g.AddParameter("big", {DType::kF32, {4, 6, 9, 9}}));
  ASSERT_OK_AND_ASSIGN(ValueId c4, g.AddParameter("c4", {DType::kF32, {4}}));
  EXPECT_THAT(
      g.AddNode(OpKind::kConv2d, {x, w}, Conv2dAttrs{}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("conv2d: weight f32[4, 3, 3, 3] needs 6 input channels per group")));
  EXPECT_OK(g.AddNode(OpKind::kConv2d, {x, w}, Conv2dAttrs{1, 1, 1, 1, 1, 1, 2}).status());
  EXPECT_THAT(g.AddNode(OpKind::kConv2d, {x, w}, Conv2dAttrs{1, 1, 1, 1, 1, 1, 4}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("groups 4 must divide the 6 input and the 4 output channels")));
  EXPECT_THAT(g.AddNode(OpKind::kConv2d, {x, big}, Conv2dAttrs{}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("kernel 9x9 with dilation 1x1 does not fit the padded 8x8")));
  EXPECT_THAT(g.AddNode(OpKind::kConv2d, {x, w, c4}, Conv2dAttrs{0, 1, 0, 0, 1, 1, 2}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("stride 0x1")));
  EXPECT_THAT(g.AddNode(OpKind::kMaxPool2d, {x}, Pool2dAttrs{2, 2, 2, 2, 2, 0, true}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("max_pool2d: padding 2x0 exceeds half the kernel 2x2")));
  EXPECT_THAT(g.AddNode(OpKind::kBatchNorm, {x, c4, c4}, BatchNormAttrs{}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("batch_norm: weight must be f32[6] for x f32[2, 6, 8, 8]")));
  ASSERT_OK_AND_ASSIGN(ValueId one, g.AddInput("one", {DType::kF32, {1, 4}}));
  EXPECT_THAT(
      g.AddNode(OpKind::kBatchNorm, {one, c4, c4}, BatchNormAttrs{}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("more than one value per channel")));
  EXPECT_THAT(
      g.AddNode(OpKind::kMseLoss, {x, one}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("mse_loss: target f32[1, 4] and prediction f32[2, 6, 8, 8] differ")));
  EXPECT_THAT(g.AddNode(OpKind::kDropout, {x}, DropoutAttrs{-0.5f, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("p must be in [0, 1]")));
}

// y = dropout(x) for x = 1 at optimizer step `step`.
std::vector<float> Mask(float p, uint64_t seed, int64_t step) {
  Graph g;
  const TensorType type{DType::kF32, {kSize}};
  ValueId x = *g.AddInput("x", type);
  ValueId y = *g.AddNode(OpKind::kDropout, {x}, DropoutAttrs{p, seed});
  g.MarkOutput(y);
  runtime::ParameterStore params;
  auto exe = runtime::Executable::Compile(g, &params);
  EXPECT_OK(exe.status());
  (*exe)->set_steps_run(step - 1);
  Tensor ones(DType::kF32, {kSize});
  for (float& v : ones.f32_span()) v = 1.0f;
  EXPECT_OK((*exe)->SetInput("x", ones));
  EXPECT_OK((*exe)->Run());
  TensorView out = *(*exe)->Output(y);
  return std::vector<float>(out.f32(), out.f32() + kSize);
}

TEST(Dropout, KeepsAboutOneMinusPAndScalesTheKeptOnes) {
  const std::vector<float> y = Mask(0.25f, 11, 1);
  int kept = 0;
  for (float v : y) {
    if (v != 0.0f) {
      ++kept;
      EXPECT_FLOAT_EQ(v, 1.0f / 0.75f);
    }
  }
  // Binomial(4096, 0.75): mean 3072, standard deviation about 28.
  EXPECT_NEAR(kept, 3072, 5 * 28);
}

TEST(Dropout, MaskIsAFunctionOfSeedAndStep) {
  EXPECT_EQ(Mask(0.5f, 3, 7), Mask(0.5f, 3, 7));
  EXPECT_NE(Mask(0.5f, 3, 7), Mask(0.5f, 3, 8));
  EXPECT_NE(Mask(0.5f, 3, 7), Mask(0.5f, 4, 7));
}

// The backward pass applies the forward's mask: with y = dropout(x) and
// loss = Σ y, dloss/dx is the mask scaled by 1/(1 − p), i.e. y / x.
TEST(Dropout, GradientReusesTheForwardMask) {
  Graph g;
  const TensorType type{DType::kF32, {kSize}};
  ValueId w = *g.AddParameter("w", type);
  ValueId y = *g.AddNode(OpKind::kDropout, {w}, DropoutAttrs{0.5f, 9});
  ValueId loss = *g.AddNode(OpKind::kReduceSum, {y}, ReduceAttrs{{0}, false});
  g.MarkOutput(y);
  ASSERT_OK_AND_ASSIGN(autodiff::GradientMap grads, autodiff::BuildBackward(g, loss, {w}));
  g.MarkOutput(grads.at(w));
  runtime::ParameterStore params;
  Tensor x(DType::kF32, {kSize});
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> u(0.5f, 2.0f);
  for (float& v : x.f32_span()) v = u(rng);
  ASSERT_OK(params.Set("w", x));
  ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(g, &params));
  ASSERT_OK(exe->Run());
  ASSERT_OK_AND_ASSIGN(TensorView out, exe->Output(y));
  ASSERT_OK_AND_ASSIGN(TensorView grad, exe->Output(grads.at(w)));
  for (int64_t i = 0; i < kSize; ++i) {
    ASSERT_FLOAT_EQ(grad.f32()[i], out.f32()[i] / x.f32()[i]) << i;
  }
}

}  // namespace
}  // namespace fleettune::engine::ops
