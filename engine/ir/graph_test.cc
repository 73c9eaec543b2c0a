#include "engine/ir/graph.h"

#include <string>

#include "engine/base/status_matchers.h"
#include "engine/ir/printer.h"
#include "engine/ir/verifier.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

// x → linear → relu → loss, with an SGD update of the weight.
struct Small {
  Graph g;
  ValueId x, labels, w, b, h, r, loss;
};

Small BuildSmall() {
  Small s;
  s.x = *s.g.AddInput("x", {DType::kF32, {2, 3}});
  s.labels = *s.g.AddInput("labels", {DType::kI32, {2}});
  s.w = *s.g.AddParameter("fc.weight", {DType::kF32, {4, 3}});
  s.b = *s.g.AddParameter("fc.bias", {DType::kF32, {4}});
  s.h = *s.g.AddNode(OpKind::kLinear, {s.x, s.w, s.b});
  s.r = *s.g.AddNode(OpKind::kRelu, {s.h});
  s.loss = *s.g.AddNode(OpKind::kSoftmaxCrossEntropy, {s.r, s.labels}, CrossEntropyAttrs{});
  s.g.MarkOutput(s.loss);
  return s;
}

TEST(PrintGraph, IsStableText) {
  Small s = BuildSmall();
  ValueId grad = *s.g.AddNode(OpKind::kFill, {}, FillAttrs{1.0f, {4, 3}});
  ASSERT_OK(s.g.AddNode(OpKind::kSgdUpdate, {s.w, grad}, SgdAttrs{0.1f, 0.0f, 0.0f}).status());
  EXPECT_EQ(PrintGraph(s.g),
            "%0 = input \"x\" : f32[2, 3]\n"
            "%1 = input \"labels\" : i32[2]\n"
            "%2 = parameter \"fc.weight\" {role=weight} : f32[4, 3]\n"
            "%3 = parameter \"fc.bias\" {role=weight} : f32[4]\n"
            "%4 = linear(%0, %2, %3) : f32[2, 4]\n"
            "%5 = relu(%4) : f32[2, 4]\n"
            "%6 = softmax_cross_entropy(%5, %1) {ignore_index=-100} : f32[]\n"
            "%7 = fill() {value=1, shape=[4, 3]} : f32[4, 3]\n"
            "sgd_update(%2, %7) {lr=0.1, momentum=0, weight_decay=0}\n"
            "outputs: %6\n");
  EXPECT_OK(VerifyGraph(s.g));
}

TEST(Graph, RejectsDuplicateNamesAndBadShapes) {
  Graph g;
  ASSERT_OK(g.AddInput("x", {DType::kF32, {2}}).status());
  EXPECT_THAT(g.AddParameter("x", {DType::kF32, {2}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicate name 'x'")));
  EXPECT_THAT(g.AddInput("y", {DType::kF32, {-1}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("negative dimension")));
  EXPECT_THAT(g.AddInput("", {DType::kF32, {1}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("non-empty name")));
}

TEST(VerifyGraph, CatchesForwardReference) {
  Small s = BuildSmall();
  Node bad;
  bad.op = OpKind::kRelu;
  bad.inputs = {s.loss + 5};
  bad.type = {DType::kF32, {2, 4}};
  s.g.AddUncheckedNode(bad);
  EXPECT_THAT(VerifyGraph(s.g), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("(relu): input %11 is not an earlier node")));
}

TEST(VerifyGraph, CatchesWrongStoredType) {
  Small s = BuildSmall();
  s.g.mutable_node(s.r).type.shape = {2, 5};
  EXPECT_THAT(
      VerifyGraph(s.g),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("node 5 (relu): type is f32[2, 5] but inference gives f32[2, 4]")));
}

TEST(VerifyGraph, CatchesReadAfterUpdate) {
  Small s = BuildSmall();
  ValueId grad = *s.g.AddNode(OpKind::kFill, {}, FillAttrs{1.0f, {4, 3}});
  ASSERT_OK(s.g.AddNode(OpKind::kSgdUpdate, {s.w, grad}, SgdAttrs{}).status());
  ASSERT_OK(s.g.AddNode(OpKind::kLinear, {s.x, s.w, s.b}).status());
  EXPECT_THAT(VerifyGraph(s.g), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("reads %2 after its optimizer update")));
}

TEST(VerifyGraph, CatchesUpdateOfNonParameter) {
  Small s = BuildSmall();
  ValueId grad = *s.g.AddNode(OpKind::kFill, {}, FillAttrs{1.0f, {2, 4}});
  ASSERT_OK(s.g.AddNode(OpKind::kSgdUpdate, {s.h, grad}, SgdAttrs{}).status());
  EXPECT_THAT(VerifyGraph(s.g), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("must be a weight parameter")));
}

TEST(VerifyGraph, CatchesAnUpdateReadingWhatItWrites) {
  Small s = BuildSmall();
  // w [4, 3] as its own gradient, and as a factor of a fused one.
  ASSERT_OK(s.g.AddNode(OpKind::kSgdUpdate, {s.w, s.w}, SgdAttrs{}).status());
  EXPECT_THAT(VerifyGraph(s.g),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("operand 1 reads %2, which this update writes")));
  Small f = BuildSmall();
  const ValueId ones = *f.g.AddNode(OpKind::kFill, {}, FillAttrs{1.0f, {4, 4}});
  ASSERT_OK(f.g.AddNode(OpKind::kSgdMatMulUpdate, {f.w, ones, f.w},
                        FusedSgdAttrs{SgdAttrs{}, MatMulAttrs{}})
                .status());
  EXPECT_THAT(VerifyGraph(f.g),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("operand 2 reads %2, which this update writes")));
}

TEST(VerifyGraph, CatchesDoubleUpdate) {
  Small s = BuildSmall();
  ValueId grad = *s.g.AddNode(OpKind::kFill, {}, FillAttrs{1.0f, {4}});
  ASSERT_OK(s.g.AddNode(OpKind::kSgdUpdate, {s.b, grad}, SgdAttrs{}).status());
  Node again = s.g.node(s.g.num_nodes() - 1);
  s.g.AddUncheckedNode(again);
  EXPECT_THAT(VerifyGraph(s.g), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("after its optimizer update")));
}

}  // namespace
}  // namespace fleettune::engine
