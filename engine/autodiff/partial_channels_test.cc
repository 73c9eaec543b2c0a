// Partial-channel sparse backpropagation: a weight training its first k output
// channels gets exactly the first k rows of the full gradient, computed from
// the first k channels of the output gradient only; updates leave the other
// rows alone and keep k-row optimizer state.
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "absl/strings/match.h"
#include "engine/autodiff/autodiff.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/printer.h"
#include "engine/ir/verifier.h"
#include "engine/models/mlp.h"
#include "engine/runtime/executable.h"
#include "engine/testing/gradcheck.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::autodiff {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

// x → op(x, w[, b]) → y; loss = Σ y² (so dy = 2y differs per channel).
struct Net {
  Graph graph;
  ValueId w = kNoValue, b = kNoValue, loss = kNoValue;
  runtime::ParameterStore params;
  std::map<std::string, Tensor> inputs;
};

Net MakeNet(OpKind op, const TensorType& x_type, const TensorType& w_type, Attrs attrs, bool bias) {
  Net n;
  std::mt19937_64 rng(3);
  ValueId x = *n.graph.AddInput("x", x_type);
  n.w = *n.graph.AddParameter("w", w_type);
  std::vector<ValueId> in = {x, n.w};
  if (bias) {
    n.b = *n.graph.AddParameter("b", {DType::kF32, {w_type.shape[0]}});
    in.push_back(n.b);
    EXPECT_OK(n.params.Set("b", testing::RandomTensor(n.graph.type(n.b), rng)));
  }
  ValueId y = *n.graph.AddNode(op, in, attrs);
  ValueId sq = *n.graph.AddNode(OpKind::kMul, {y, y});
  std::vector<int> axes(n.graph.type(sq).shape.size());
  for (size_t i = 0; i < axes.size(); ++i) axes[i] = static_cast<int>(i);
  n.loss = *n.graph.AddNode(OpKind::kReduceSum, {sq}, ReduceAttrs{axes, false});
  EXPECT_OK(n.params.Set("w", testing::RandomTensor(w_type, rng)));
  n.inputs["x"] = testing::RandomTensor(x_type, rng);
  return n;
}

// Runs the backward graph for `trainable` and returns the gradients by name.
std::map<std::string, Tensor> Gradients(Net& n, const std::vector<TrainableParam>& trainable) {
  Graph g = n.graph;
  absl::StatusOr<GradientMap> grads = BuildPartialBackward(g, n.loss, trainable);
  EXPECT_OK(grads.status());
  EXPECT_OK(VerifyGraph(g));
  for (const auto& [p, d] : *grads) g.MarkOutput(d);
  runtime::CompileOptions reference;
  reference.use_reference_kernels = true;
  auto exe = runtime::Executable::Compile(g, &n.params, reference);
  EXPECT_OK(exe.status());
  for (const auto& [name, t] : n.inputs) EXPECT_OK((*exe)->SetInput(name, t));
  EXPECT_OK((*exe)->Run());
  std::map<std::string, Tensor> out;
  for (const auto& [p, d] : *grads) {
    TensorView v = *(*exe)->Output(d);
    Tensor t(DType::kF32, g.type(d).shape);
    std::memcpy(t.f32(), v.f32(), t.bytes());
    out[g.node(p).name] = std::move(t);
  }
  return out;
}

// The partial gradient equals the first k rows of the full one.
void ExpectFirstRows(Net& n, int64_t k) {
  std::map<std::string, Tensor> full = Gradients(n, {{n.w, 0}});
  std::map<std::string, Tensor> part = Gradients(n, {{n.w, k}});
  const Tensor& f = full["w"];
  const Tensor& p = part["w"];
  Shape want = f.shape();
  want[0] = k;
  ASSERT_EQ(p.shape(), want);
  for (int64_t i = 0; i < p.num_elements(); ++i) {
    EXPECT_NEAR(p.f32()[i], f.f32()[i], 1e-4f * (1.0f + std::abs(f.f32()[i]))) << "element " << i;
  }
}

TEST(PartialChannels, LinearGradientIsTheFullGradientsFirstRows) {
  Net n = MakeNet(OpKind::kLinear, {DType::kF32, {3, 5}}, {DType::kF32, {8, 5}}, NoAttrs{}, true);
  ExpectFirstRows(n, 2);
  ExpectFirstRows(n, 4);
}

TEST(PartialChannels, Rank3LinearGradientIsTheFullGradientsFirstRows) {
  Net n =
      MakeNet(OpKind::kLinear, {DType::kF32, {2, 3, 5}}, {DType::kF32, {8, 5}}, NoAttrs{}, false);
  ExpectFirstRows(n, 1);
}

TEST(PartialChannels, ConvGradientIsTheFullGradientsFirstRows) {
  Conv2dAttrs a;
  a.pad_h = a.pad_w = 1;
  Net n =
      MakeNet(OpKind::kConv2d, {DType::kF32, {2, 4, 5, 5}}, {DType::kF32, {8, 4, 3, 3}}, a, true);
  ExpectFirstRows(n, 4);
}

TEST(PartialChannels, GroupedConvSlicesTheInputToTheGroupsItReads) {
  Conv2dAttrs a;
  a.groups = 4;  // 2 output and 2 input channels per group
  a.stride_h = a.stride_w = 2;
  Net n =
      MakeNet(OpKind::kConv2d, {DType::kF32, {2, 8, 6, 6}}, {DType::kF32, {8, 2, 3, 3}}, a, false);
  ExpectFirstRows(n, 4);  // whole groups
  ExpectFirstRows(n, 3);  // half a group: computed for 2 groups, cut to 3 rows
}

TEST(PartialChannels, DepthwiseConvGradientIsTheFullGradientsFirstRows) {
  Conv2dAttrs a;
  a.groups = 8;
  a.pad_h = a.pad_w = 1;
  Net n =
      MakeNet(OpKind::kConv2d, {DType::kF32, {2, 8, 5, 5}}, {DType::kF32, {8, 1, 3, 3}}, a, false);
  ExpectFirstRows(n, 2);
  Graph g = n.graph;
  ASSERT_OK(BuildPartialBackward(g, n.loss, std::vector<TrainableParam>{{n.w, 2}}).status());
  // The weight gradient reads 2 input channels and 2 output-gradient channels.
  bool found = false;
  for (ValueId id = n.graph.num_nodes(); id < g.num_nodes(); ++id) {
    if (g.node(id).op != OpKind::kConv2dBackwardWeight) continue;
    found = true;
    EXPECT_EQ(g.type(g.node(id).inputs[0]).shape, (Shape{2, 2, 5, 5}));
    EXPECT_EQ(g.type(g.node(id).inputs[1]).shape, (Shape{2, 2, 5, 5}));
    EXPECT_EQ(g.type(id).shape, (Shape{2, 1, 3, 3}));
  }
  EXPECT_TRUE(found);
}

// Every appended node feeds a gradient that an update consumes.
TEST(PartialChannels, EmitsNothingNoUpdateNeeds) {
  models::MlpConfig config{{20, 16, 8, 4}, 3};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(config));
  Graph g = m.graph;
  const int forward = g.num_nodes();
  const ValueId fc1 = *g.FindByName("fc1.weight");
  const ValueId fc3 = *g.FindByName("fc3.weight");
  ASSERT_OK_AND_ASSIGN(
      GradientMap grads,
      BuildPartialBackward(g, m.loss, std::vector<TrainableParam>{{fc1, 4}, {fc3, 1}}));
  ASSERT_OK(AddOptimizerUpdates(g, grads, OptimizerConfig::Sgd({0.1f, 0.9f, 0.0f})));
  ASSERT_OK(VerifyGraph(g));
  std::vector<int> consumers(g.num_nodes(), 0);
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    for (ValueId in : g.node(id).inputs) ++consumers[in];
  }
  int updates = 0;
  for (ValueId id = forward; id < g.num_nodes(); ++id) {
    const Node& node = g.node(id);
    if (node.op == OpKind::kSgdUpdate) {
      ++updates;
      EXPECT_EQ(std::get<SgdAttrs>(node.attrs).rows, node.inputs[0] == fc1 ? 4 : 1);
      continue;
    }
    if (node.op == OpKind::kParameter) continue;
    EXPECT_GT(consumers[id], 0) << "dead: " << PrintNode(g, id);
    // Nothing below fc1: no gradient w.r.t. x ([3, 20]).
    EXPECT_NE(g.type(id).shape, (Shape{3, 20})) << PrintNode(g, id);
  }
  EXPECT_EQ(updates, 2);
  EXPECT_EQ(g.type(*g.FindByName("fc1.weight.momentum_buffer")).shape, (Shape{4, 20}));
}

TEST(PartialChannels, AdamWStepsLeaveTheOtherRowsAndSizeStateForKRows) {
  Conv2dAttrs a;
  Net n =
      MakeNet(OpKind::kConv2d, {DType::kF32, {2, 3, 4, 4}}, {DType::kF32, {8, 3, 1, 1}}, a, true);
  Graph g = n.graph;
  ASSERT_OK_AND_ASSIGN(
      GradientMap grads,
      BuildPartialBackward(g, n.loss, std::vector<TrainableParam>{{n.w, 2}, {n.b, 0}}));
  ASSERT_OK(AddOptimizerUpdates(g, grads, OptimizerConfig::AdamW({})));
  ASSERT_OK(VerifyGraph(g));
  const Tensor before = *n.params.Find("w");
  ASSERT_OK_AND_ASSIGN(auto exe, runtime::Executable::Compile(g, &n.params));
  ASSERT_OK(exe->SetInput("x", n.inputs["x"]));
  for (int step = 0; step < 3; ++step) ASSERT_OK(exe->Run());
  const Tensor& after = *n.params.Find("w");
  const int64_t row = 3;
  for (int64_t i = 0; i < 2 * row; ++i) EXPECT_NE(after.f32()[i], before.f32()[i]) << i;
  EXPECT_EQ(std::memcmp(after.f32() + 2 * row, before.f32() + 2 * row, 6 * row * sizeof(float)), 0);
  EXPECT_EQ(n.params.Find("w.exp_avg")->shape(), (Shape{2, 3, 1, 1}));
  EXPECT_EQ(n.params.Find("w.exp_avg_sq")->shape(), (Shape{2, 3, 1, 1}));
  EXPECT_EQ(n.params.Find("b.exp_avg")->shape(), (Shape{8}));
  EXPECT_EQ(exe->memory().optimizer_state_bytes, 2 * (2 * 3 + 8) * sizeof(float));
}

TEST(PartialChannels, RejectsBadRowsAndUnsupportedConsumers) {
  Net n = MakeNet(OpKind::kLinear, {DType::kF32, {3, 5}}, {DType::kF32, {8, 5}}, NoAttrs{}, true);
  Graph g = n.graph;
  EXPECT_THAT(BuildPartialBackward(g, n.loss, std::vector<TrainableParam>{{n.w, 9}}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("parameter 'w' f32[8, 5]: rows 9 is outside [0, dim 0]")));
  EXPECT_THAT(BuildPartialBackward(g, n.loss, std::vector<TrainableParam>{{n.w, 2}, {n.w, 0}}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'w' is listed twice")));
  // The bias feeds the linear's third input, which has no partial rule.
  EXPECT_THAT(
      BuildPartialBackward(g, n.loss, std::vector<TrainableParam>{{n.b, 2}}),
      StatusIs(absl::StatusCode::kUnimplemented,
               HasSubstr("parameter 'b' trains 2 of its output channels but feeds input 2")));
}

TEST(PartialChannels, UpdateOpsCheckTheRowCount) {
  Graph g;
  ValueId p = *g.AddParameter("p", {DType::kF32, {4, 2}});
  ValueId grad = *g.AddInput("g", {DType::kF32, {2, 2}});
  SgdAttrs sgd;
  EXPECT_THAT(g.AddNode(OpKind::kSgdUpdate, {p, grad}, sgd),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("but must be f32[4, 2]")));
  sgd.rows = 2;
  EXPECT_OK(g.AddNode(OpKind::kSgdUpdate, {p, grad}, sgd).status());
  sgd.rows = 5;
  EXPECT_THAT(
      g.AddNode(OpKind::kSgdUpdate, {p, grad}, sgd),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rows 5 must be in [1, dim 0]")));
  AdamWAttrs adam;
  adam.rows = -1;
  EXPECT_THAT(g.AddNode(OpKind::kAdamWUpdate, {p, grad, grad, grad}, adam),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("rows -1")));
}

}  // namespace
}  // namespace fleettune::engine::autodiff
