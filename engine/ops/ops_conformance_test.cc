// Conformance test over every registered op. It reads the op list, so adding
// an op needs no edit here: give the OpDef test cases and they are checked for
// shape inference, reference vs fast kernel, central-difference gradients, and
// that a frozen input gets no gradient.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/autodiff/autodiff.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/graph.h"
#include "engine/ir/verifier.h"
#include "engine/ops/op_registry.h"
#include "engine/runtime/executable.h"
#include "engine/testing/gradcheck.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::ops {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

struct Instance {
  OpKind kind;
  OpTestCase test_case;
  std::string name;
};

std::vector<Instance> AllInstances() {
  std::vector<Instance> out;
  for (int k = 0; k < kNumOpKinds; ++k) {
    const OpDef& def = GetOpDef(static_cast<OpKind>(k));
    if (def.test_cases == nullptr) continue;
    std::vector<OpTestCase> cases = def.test_cases();
    for (size_t i = 0; i < cases.size(); ++i) {
      out.push_back({static_cast<OpKind>(k), cases[i], absl::StrCat(def.name, "_", i)});
    }
  }
  return out;
}

// The op applied to random inputs, reduced to a scalar: loss = Σ op(...) ⊙ r.
struct OpGraph {
  Graph graph;
  ValueId out = kNoValue;
  ValueId loss = kNoValue;
  std::vector<ValueId> operands;
  std::vector<bool> differentiable;
  runtime::ParameterStore params;
  std::map<std::string, Tensor> inputs;
};

void BuildOpGraph(const Instance& inst, uint64_t seed, OpGraph* og) {
  std::mt19937_64 rng(seed);
  Graph& g = og->graph;
  for (size_t i = 0; i < inst.test_case.inputs.size(); ++i) {
    const TensorType& t = inst.test_case.inputs[i];
    const std::string name = absl::StrCat("in", i);
    Tensor value = testing::RandomTensor(t, rng, inst.test_case.int_upper);
    const std::vector<int>& positive = inst.test_case.positive_inputs;
    if (std::count(positive.begin(), positive.end(), static_cast<int>(i)) > 0) {
      for (float& v : value.f32_span()) v = std::abs(v);
    }
    if (t.dtype == DType::kF32) {
      ASSERT_OK_AND_ASSIGN(ValueId id, g.AddParameter(name, t));
      og->operands.push_back(id);
      ASSERT_OK(og->params.Set(name, value));
    } else {
      ASSERT_OK_AND_ASSIGN(ValueId id, g.AddInput(name, t));
      og->operands.push_back(id);
      og->inputs[name] = value;
    }
  }
  ASSERT_OK_AND_ASSIGN(og->out, g.AddNode(inst.kind, og->operands, inst.test_case.attrs));
  const Node& node = g.node(og->out);
  const OpDef& def = GetOpDef(inst.kind);
  for (size_t i = 0; i < og->operands.size(); ++i) {
    bool d = inst.test_case.inputs[i].dtype == DType::kF32;
    if (def.differentiable_inputs != nullptr) d = d && def.differentiable_inputs(node)[i];
    og->differentiable.push_back(d);
  }
  const TensorType out_type = g.type(og->out);
  g.MarkOutput(og->out);
  // A loss to differentiate, for f32 outputs (i32 ones are not differentiable).
  if (out_type.dtype != DType::kF32) {
    ASSERT_TRUE(def.gradient == nullptr) << def.name << " has an i32 output and a gradient";
    ASSERT_OK(VerifyGraph(g));
    return;
  }
  ASSERT_OK_AND_ASSIGN(ValueId r, g.AddInput("r", out_type));
  og->inputs["r"] = testing::RandomTensor(out_type, rng);
  ASSERT_OK_AND_ASSIGN(ValueId prod, g.AddNode(OpKind::kMul, {og->out, r}));
  ReduceAttrs all;
  all.axes.resize(out_type.shape.size());
  std::iota(all.axes.begin(), all.axes.end(), 0);
  ASSERT_OK_AND_ASSIGN(og->loss, g.AddNode(OpKind::kReduceSum, {prod}, all));
  g.MarkOutput(og->loss);
  ASSERT_OK(VerifyGraph(g));
}

std::vector<ValueId> Trainable(const OpGraph& og, int except = -1) {
  std::vector<ValueId> out;
  for (size_t i = 0; i < og.operands.size(); ++i) {
    if (og.differentiable[i] && static_cast<int>(i) != except) out.push_back(og.operands[i]);
  }
  return out;
}

class OpConformance : public ::testing::TestWithParam<Instance> {};

TEST_P(OpConformance, InfersTypeAndRunsReferenceKernel) {
  OpGraph og;
  ASSERT_NO_FATAL_FAILURE(BuildOpGraph(GetParam(), 1, &og));
  runtime::CompileOptions options;
  options.use_reference_kernels = true;
  ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(og.graph, &og.params, options));
  for (const auto& [name, value] : og.inputs) ASSERT_OK(exe->SetInput(name, value));
  ASSERT_OK(exe->Run());
  ASSERT_OK_AND_ASSIGN(TensorView out, exe->Output(og.out));
  EXPECT_EQ(*out.shape, og.graph.type(og.out).shape);
  if (og.graph.type(og.out).dtype == DType::kI32) return;  // any bits are valid
  for (int64_t i = 0; i < out.num_elements(); ++i) {
    ASSERT_TRUE(std::isfinite(out.f32()[i])) << "element " << i;
  }
}

TEST_P(OpConformance, FastKernelMatchesReference) {
  if (GetOpDef(GetParam().kind).fast == nullptr) GTEST_SKIP() << "no fast kernel";
  OpGraph og;
  ASSERT_NO_FATAL_FAILURE(BuildOpGraph(GetParam(), 2, &og));
  std::vector<float> results[2];
  std::vector<int32_t> words[2];  // i32 outputs must match exactly
  for (bool reference : {false, true}) {
    runtime::CompileOptions options;
    options.use_reference_kernels = reference;
    ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(og.graph, &og.params, options));
    for (const auto& [name, value] : og.inputs) ASSERT_OK(exe->SetInput(name, value));
    ASSERT_OK(exe->Run());
    ASSERT_OK_AND_ASSIGN(TensorView out, exe->Output(og.out));
    if (og.graph.type(og.out).dtype == DType::kI32) {
      words[reference].assign(out.i32(), out.i32() + out.num_elements());
    } else {
      results[reference].assign(out.f32(), out.f32() + out.num_elements());
    }
  }
  EXPECT_EQ(words[0], words[1]);
  ASSERT_EQ(results[0].size(), results[1].size());
  for (size_t i = 0; i < results[0].size(); ++i) {
    EXPECT_NEAR(results[0][i], results[1][i], 1e-5f + 1e-5f * std::abs(results[1][i]))
        << "element " << i;
  }
}

TEST_P(OpConformance, GradientMatchesCentralDifferences) {
  if (GetOpDef(GetParam().kind).gradient == nullptr) GTEST_SKIP() << "not differentiable";
  OpGraph og;
  ASSERT_NO_FATAL_FAILURE(BuildOpGraph(GetParam(), 3, &og));
  std::vector<ValueId> trainable = Trainable(og);
  ASSERT_FALSE(trainable.empty());
  ASSERT_OK_AND_ASSIGN(testing::GradCheckResult r,
                       testing::CheckGradients(og.graph, og.loss, trainable, og.params, og.inputs));
  EXPECT_GT(r.checked, 0);
  EXPECT_LE(r.worst_excess, 0.0) << r.worst;
}

TEST_P(OpConformance, FrozenInputGetsNoGradient) {
  if (GetOpDef(GetParam().kind).gradient == nullptr) GTEST_SKIP() << "not differentiable";
  OpGraph og;
  ASSERT_NO_FATAL_FAILURE(BuildOpGraph(GetParam(), 4, &og));
  const std::vector<ValueId> all = Trainable(og);
  Graph full = og.graph;
  ASSERT_OK_AND_ASSIGN(autodiff::GradientMap full_grads,
                       autodiff::BuildBackward(full, og.loss, all));
  ASSERT_OK(VerifyGraph(full));
  for (size_t i = 0; i < og.operands.size(); ++i) {
    if (!og.differentiable[i]) continue;
    Graph frozen = og.graph;
    const std::vector<ValueId> rest = Trainable(og, static_cast<int>(i));
    ASSERT_OK_AND_ASSIGN(autodiff::GradientMap grads,
                         autodiff::BuildBackward(frozen, og.loss, rest));
    ASSERT_OK(VerifyGraph(frozen));
    EXPECT_EQ(grads.count(og.operands[i]), 0u);
    // Freezing never adds work. When input i's gradient in the full graph is a
    // value nothing else uses (not shared with another input, not feeding
    // another gradient), freezing must remove the nodes that computed it.
    EXPECT_LE(frozen.num_nodes(), full.num_nodes()) << "input " << i;
    const ValueId gi = full_grads.at(og.operands[i]);
    const bool dedicated = full.ComputeUsers()[gi].empty() &&
                           std::count_if(full_grads.begin(), full_grads.end(),
                                         [&](const auto& kv) { return kv.second == gi; }) == 1;
    if (dedicated) {
      EXPECT_LT(frozen.num_nodes(), full.num_nodes()) << "input " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllOps, OpConformance, ::testing::ValuesIn(AllInstances()),
                         [](const ::testing::TestParamInfo<Instance>& info) {
                           return info.param.name;
                         });

TEST(OpRegistry, EveryOpIsDefined) {
  for (int k = 0; k < kNumOpKinds; ++k) {
    const OpDef& def = GetOpDef(static_cast<OpKind>(k));
    SCOPED_TRACE(def.name);
    EXPECT_STRNE(def.name, "?") << "op kind " << k << " is not registered";
    EXPECT_NE(def.infer, nullptr);
    const OpKind kind = static_cast<OpKind>(k);
    if (kind != OpKind::kInput && kind != OpKind::kParameter) {
      EXPECT_NE(def.reference, nullptr);
    }
    // A differentiable op must come with cases for the gradient check.
    if (def.gradient != nullptr) {
      EXPECT_NE(def.test_cases, nullptr);
    }
  }
}

TEST(OpRegistry, ShapeErrorsNameTheOpAndTheProblem) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {8, 784}}));
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {256, 512}}));
  EXPECT_THAT(g.AddNode(OpKind::kLinear, {x, w}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("linear: x has 784 features but weight f32[256, 512]")));
  EXPECT_THAT(g.AddNode(OpKind::kMatMul, {x, w}, MatMulAttrs{}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("inner dims 784 vs 256")));
  EXPECT_THAT(g.AddNode(OpKind::kAdd, {x, w}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("do not broadcast")));
  EXPECT_THAT(g.AddNode(OpKind::kRelu, {x, w}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expects 1 inputs, got 2")));
  EXPECT_THAT(g.AddNode(OpKind::kReshape, {x}, ShapeAttrs{{3, 5}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot reshape")));
  EXPECT_THAT(g.AddNode(OpKind::kMatMul, {x, w}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("matmul: takes MatMulAttrs, got no attributes")));
  EXPECT_THAT(g.AddNode(OpKind::kRelu, {x}, MatMulAttrs{}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("relu: takes no attributes, got MatMulAttrs")));
  EXPECT_THAT(g.AddNode(OpKind::kRelu, {99}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("does not exist")));
}

}  // namespace
}  // namespace fleettune::engine::ops
