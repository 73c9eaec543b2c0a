#include "engine/passes/pack_masks.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <variant>

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/kernels/isa.h"
#include "engine/passes/test_util.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes {
namespace {

bool IsRelu6Grad(const Node& node) {
  const auto* attrs = std::get_if<ActivationAttrs>(&node.attrs);
  return node.op == OpKind::kActivationGrad && attrs != nullptr &&
         attrs->fn == ActivationFn::kRelu6;
}

// x → y = relu6(x) or relu(x) → z = 2y (a forward reader) and
// dx = relu'(y)·g, where g = 1·dy comes after z as a backward value does; x
// over both sides of each boundary, ±inf, NaN, and counts that leave a
// partial last mask word.
struct ReluGraph {
  Graph g;
  ValueId y = kNoValue, z = kNoValue, dx = kNoValue;
};

absl::StatusOr<ReluGraph> BuildReluGraph(int64_t n, bool relu6) {
  ReluGraph r;
  ASSIGN_OR_RETURN(ValueId x, r.g.AddInput("x", {DType::kF32, {n}}));
  ASSIGN_OR_RETURN(ValueId dy, r.g.AddInput("dy", {DType::kF32, {n}}));
  const ActivationAttrs six{ActivationFn::kRelu6};
  ASSIGN_OR_RETURN(
      r.y, relu6 ? r.g.AddNode(OpKind::kActivation, {x}, six) : r.g.AddNode(OpKind::kRelu, {x}));
  ASSIGN_OR_RETURN(r.z, r.g.AddNode(OpKind::kScale, {r.y}, ScalarAttrs{2.0f}));
  ASSIGN_OR_RETURN(ValueId grad, r.g.AddNode(OpKind::kScale, {dy}, ScalarAttrs{1.0f}));
  ASSIGN_OR_RETURN(r.dx, relu6 ? r.g.AddNode(OpKind::kActivationGrad, {grad, r.y}, six)
                               : r.g.AddNode(OpKind::kReluGrad, {grad, r.y}));
  r.g.MarkOutput(r.z);
  r.g.MarkOutput(r.dx);
  return r;
}

std::vector<float> RunReluGraph(const Graph& g, ValueId dx, int64_t n, bool reference,
                                const std::string& isa) {
  Tensor x(DType::kF32, {n}), dy(DType::kF32, {n});
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const float specials[] = {
      0.0f,    -0.0f, 6.0f,  5.9999995f, 1e-30f,
      -1e-30f, kInf,  -kInf, 6.0000005f, std::numeric_limits<float>::quiet_NaN()};
  for (int64_t i = 0; i < n; ++i) {
    x.f32()[i] = i % 5 == 0 ? specials[(i / 5) % 10] : -2.0f + 0.37f * static_cast<float>(i % 29);
    dy.f32()[i] = 0.5f + static_cast<float>(i);
  }
  runtime::ParameterStore params;
  runtime::CompileOptions options;
  options.use_reference_kernels = reference;
  options.kernel_isa = isa;
  absl::StatusOr<std::unique_ptr<runtime::Executable>> exe =
      runtime::Executable::Compile(g, &params, options);
  EXPECT_OK(exe.status());
  if (!exe.ok()) return {};
  EXPECT_OK((*exe)->SetInput("x", x));
  EXPECT_OK((*exe)->SetInput("dy", dy));
  EXPECT_OK((*exe)->Run());
  absl::StatusOr<TensorView> out = (*exe)->Output(dx);
  EXPECT_OK(out.status());
  if (!out.ok()) return {};
  return std::vector<float>(out->f32(), out->f32() + n);
}

class GradientThroughTheMask : public ::testing::TestWithParam<bool> {};  // relu6?

TEST_P(GradientThroughTheMask, IsBitIdentical) {
  const bool relu6 = GetParam();
  for (int64_t n : {1, 31, 32, 33, 70, 4099}) {
    SCOPED_TRACE(n);
    ASSERT_OK_AND_ASSIGN(ReluGraph r, BuildReluGraph(n, relu6));
    const std::vector<float> want = RunReluGraph(r.g, r.dx, n, /*reference=*/true, "");
    Graph g = r.g;
    std::vector<ValueId> map;
    int packed = 0;
    ASSERT_OK_AND_ASSIGN(bool changed, PackActivationMasks(g, &map, &packed));
    EXPECT_TRUE(changed);
    EXPECT_EQ(packed, 1);
    ASSERT_OK(VerifyGraph(g));
    EXPECT_EQ(g.node(map[r.dx]).op, OpKind::kMaskedGrad);
    EXPECT_EQ(
        testing::CountOps(g, OpKind::kActivationGrad) + testing::CountOps(g, OpKind::kReluGrad), 0);
    // The mask comes right after y, so y's last reader is the forward scale.
    const Node& mask = g.node(map[r.y] + 1);
    EXPECT_EQ(mask.op, OpKind::kActivationMask);
    EXPECT_EQ(std::get<ScalarAttrs>(mask.attrs).value,
              relu6 ? 6.0f : std::numeric_limits<float>::infinity());
    EXPECT_EQ(g.type(map[r.y] + 1), (TensorType{DType::kI32, {(n + 31) / 32}}));
    std::vector<std::string> isas = {"generic"};
    for (const char* isa : {"avx2", "avx512"}) {
      absl::StatusOr<kernels::Isa> parsed = kernels::ParseIsa(isa);
      if (parsed.ok() && kernels::HostSupports(*parsed)) isas.push_back(isa);
    }
    for (bool reference : {true, false}) {
      for (const std::string& isa : isas) {
        SCOPED_TRACE(reference ? "reference " + isa : "fast " + isa);
        const std::vector<float> got = RunReluGraph(g, map[r.dx], n, reference, isa);
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(std::memcmp(got.data(), want.data(), n * sizeof(float)), 0);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Relus, GradientThroughTheMask, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "relu6" : "relu"; });

TEST(PackActivationMasks, KeepsOutputsAndValuesTheBackwardStillReads) {
  ASSERT_OK_AND_ASSIGN(ReluGraph r, BuildReluGraph(40, /*relu6=*/true));
  // y read again after its gradient (as a trainable layer's weight gradient
  // reads its input): packing would not end y's life, so it stays.
  Graph later = r.g;
  ASSERT_OK_AND_ASSIGN(ValueId again, later.AddNode(OpKind::kScale, {r.y}, ScalarAttrs{3.0f}));
  later.MarkOutput(again);
  int packed = -1;
  ASSERT_OK_AND_ASSIGN(bool changed, PackActivationMasks(later, nullptr, &packed));
  EXPECT_FALSE(changed);
  EXPECT_EQ(packed, 0);
  // A marked output lives to the end of the step anyway.
  Graph output = r.g;
  output.MarkOutput(r.y);
  std::vector<ValueId> map;
  ASSERT_OK_AND_ASSIGN(changed, PackActivationMasks(output, &map));
  EXPECT_FALSE(changed);
  ASSERT_EQ(map.size(), static_cast<size_t>(output.num_nodes()));
  for (ValueId id = 0; id < output.num_nodes(); ++id) EXPECT_EQ(map[id], id);
}

// Bias-only MobileNetV2: every convolution is frozen, so the ReLU6 outputs are
// kept for their masks alone. All are packed, the arena shrinks, and three
// steps train bit-identically.
TEST(PackActivationMasks, FrozenMobileNetV2TrainsTheSameInLessMemory) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m,
                       testing::SmallMobileNetV2(models::Mode::kEval, "bias-only"));
  const int relu6_grads = [&] {
    int n = 0;
    for (const Node& node : m.graph.nodes()) n += IsRelu6Grad(node);
    return n;
  }();
  ASSERT_GT(relu6_grads, 10);
  Graph g = m.graph;
  std::vector<ValueId> map;
  int packed = 0;
  ASSERT_OK_AND_ASSIGN(bool changed, PackActivationMasks(g, &map, &packed));
  EXPECT_TRUE(changed);
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(testing::CountOps(g, OpKind::kMaskedGrad), relu6_grads);
  EXPECT_EQ(testing::CountOps(g, OpKind::kActivationMask), packed);
  EXPECT_EQ(testing::CountOps(g, OpKind::kActivationGrad) -
                testing::CountOps(m.graph, OpKind::kActivationGrad),
            -relu6_grads);
  const size_t before = testing::ArenaBytes(m.graph), after = testing::ArenaBytes(g);
  EXPECT_LT(after, before * 3 / 4) << before << " -> " << after;

  runtime::CompileOptions options;
  ASSERT_OK_AND_ASSIGN(testing::TrainResult want,
                       testing::TrainSteps(m.graph, m.model.loss, m, 3, options));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult got,
                       testing::TrainSteps(g, map[m.model.loss], m, 3, options));
  testing::ExpectSameTraining(want, got, 0.0);
}

// ResNet's ReLUs (fused into its convolutions and residual adds) under
// bias-only updates: packed the same way, and training is bit-identical.
TEST(PackActivationMasks, FrozenResNetReluOutputsArePacked) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m,
                       testing::SmallResNet(models::Mode::kEval, "bias-only"));
  Graph g = m.graph;
  std::vector<ValueId> map;
  int packed = 0;
  ASSERT_OK_AND_ASSIGN(bool changed, PackActivationMasks(g, &map, &packed));
  EXPECT_TRUE(changed);
  EXPECT_GE(packed, 3);
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(testing::CountOps(g, OpKind::kReluGrad),
            testing::CountOps(m.graph, OpKind::kReluGrad) - packed);
  // This ResNet is too small for its peak to be the saved activations.
  EXPECT_LE(testing::ArenaBytes(g), testing::ArenaBytes(m.graph));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult want, testing::TrainSteps(m.graph, m.model.loss, m, 3));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult got, testing::TrainSteps(g, map[m.model.loss], m, 3));
  testing::ExpectSameTraining(want, got, 0.0);
}

// Full fine-tuning: each ReLU6 output is also the next convolution's input,
// whose weight gradient reads it in the backward pass, so only the last one
// (read by the global pooling alone) is packed.
TEST(PackActivationMasks, LeavesActivationsTrainableLayersRead) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m,
                       testing::SmallMobileNetV2(models::Mode::kEval, "full"));
  Graph g = m.graph;
  std::vector<ValueId> map;
  int packed = -1;
  ASSERT_OK_AND_ASSIGN(bool changed, PackActivationMasks(g, &map, &packed));
  EXPECT_TRUE(changed);
  EXPECT_EQ(packed, 1);
  const auto users = g.ComputeUsers();
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    if (!IsRelu6Grad(g.node(id))) continue;
    const ValueId y = g.node(id).inputs[1];
    bool weight_gradient = false;
    for (ValueId u : users[y]) weight_gradient |= g.node(u).op == OpKind::kConv2dBackwardWeight;
    EXPECT_TRUE(weight_gradient) << "%" << y << " was left whole for no reader";
  }
}

// The second step on bias-only MobileNetV2: every ReLU6 gradient there masks a
// convolution's input gradient, which takes the mask instead. Three steps
// train bit-identically, with the reference kernels and with the fast ones.
TEST(FoldMasksIntoConvGrads, MobileNetV2InputGradientsTakeTheirMasks) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m,
                       testing::SmallMobileNetV2(models::Mode::kEval, "bias-only"));
  Graph packed = m.graph;
  std::vector<ValueId> pack_map;
  ASSERT_OK(PackActivationMasks(packed, &pack_map).status());
  const int masked_grads = testing::CountOps(packed, OpKind::kMaskedGrad);
  Graph g = packed;
  std::vector<ValueId> fold_map;
  int folded = 0;
  ASSERT_OK_AND_ASSIGN(bool changed, FoldMasksIntoConvGrads(g, &fold_map, &folded));
  EXPECT_TRUE(changed);
  ASSERT_OK(VerifyGraph(g));
  EXPECT_GT(folded, 10);
  EXPECT_EQ(testing::CountOps(g, OpKind::kMaskedGrad), masked_grads - folded);
  int with_mask = 0;
  for (const Node& node : g.nodes()) {
    with_mask += node.op == OpKind::kConv2dBackwardInput && node.inputs.size() == 3;
  }
  EXPECT_EQ(with_mask, folded);
  EXPECT_EQ(g.num_nodes(), packed.num_nodes() - folded);

  const ValueId loss = pack_map[m.model.loss];
  for (bool reference : {true, false}) {
    SCOPED_TRACE(reference ? "reference kernels" : "fast kernels");
    runtime::CompileOptions options;
    options.use_reference_kernels = reference;
    ASSERT_OK_AND_ASSIGN(testing::TrainResult want,
                         testing::TrainSteps(packed, loss, m, 3, options));
    ASSERT_OK_AND_ASSIGN(testing::TrainResult got,
                         testing::TrainSteps(g, fold_map[loss], m, 3, options));
    testing::ExpectSameTraining(want, got, 0.0);
  }
}

// An input gradient something else also reads keeps its masked_grad: the
// other reader needs it unmasked.
TEST(FoldMasksIntoConvGrads, KeepsAGradientWithAnotherReader) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m,
                       testing::SmallMobileNetV2(models::Mode::kEval, "bias-only"));
  Graph g = m.graph;
  ASSERT_OK(PackActivationMasks(g).status());
  Graph all = g;
  int folded_all = 0;
  ASSERT_OK(FoldMasksIntoConvGrads(all, nullptr, &folded_all).status());
  ValueId read = kNoValue;
  for (ValueId id = 0; id < g.num_nodes() && read == kNoValue; ++id) {
    const Node& node = g.node(id);
    if (node.op == OpKind::kMaskedGrad &&
        g.node(node.inputs[0]).op == OpKind::kConv2dBackwardInput) {
      read = node.inputs[0];
    }
  }
  ASSERT_NE(read, kNoValue);
  ASSERT_OK_AND_ASSIGN(ValueId also, g.AddNode(OpKind::kScale, {read}, ScalarAttrs{2.0f}));
  g.MarkOutput(also);
  int folded = 0;
  ASSERT_OK(FoldMasksIntoConvGrads(g, nullptr, &folded).status());
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(folded, folded_all - 1);
}

}  // namespace
}  // namespace fleettune::engine::passes
