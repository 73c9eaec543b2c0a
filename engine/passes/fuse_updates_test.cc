#include "engine/passes/fuse_updates.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/kernels/gemm.h"
#include "engine/ops/op_registry.h"
#include "engine/passes/pipeline.h"
#include "engine/passes/test_util.h"
#include "engine/runtime/executable.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

int Count(const Graph& g, OpKind op) {
  return static_cast<int>(
      std::count_if(g.nodes().begin(), g.nodes().end(), [&](const Node& n) { return n.op == op; }));
}

// The MLP of testing::SmallMlp with another SGD configuration.
absl::StatusOr<testing::TestModel> MlpWith(SgdAttrs sgd) {
  ASSIGN_OR_RETURN(testing::TestModel m, testing::SmallMlp());
  ASSIGN_OR_RETURN(std::vector<std::string> trainable, train::SelectTrainable(m.model, "full"));
  ASSIGN_OR_RETURN(
      m.graph, train::BuildTrainingGraph(m.model, trainable, autodiff::OptimizerConfig::Sgd(sgd)));
  return m;
}

// Fuses the three weight updates of the MLP and checks that training is
// unchanged, with the fast and the reference kernels; returns the arena bytes
// before and after.
void ExpectFusedMlpTrainsTheSame(const testing::TestModel& m) {
  Graph g = m.graph;
  int fused = 0;
  std::vector<ValueId> map;
  ASSERT_OK_AND_ASSIGN(bool changed, FuseUpdates(g, &map, &fused));
  EXPECT_TRUE(changed);
  EXPECT_EQ(fused, 3);  // fc1..fc3 weights; the biases' gradients are column sums
  ASSERT_OK(VerifyGraph(g));
  EXPECT_EQ(Count(g, OpKind::kSgdMatMulUpdate), 3);
  EXPECT_EQ(Count(g, OpKind::kSgdUpdate), 3);
  EXPECT_EQ(Count(g, OpKind::kMatMul), Count(m.graph, OpKind::kMatMul) - 3);
  runtime::CompileOptions off;
  off.in_place = false;
  ASSERT_OK_AND_ASSIGN(testing::TrainResult want,
                       testing::TrainSteps(m.graph, m.model.loss, m, 3, off));
  for (bool reference : {false, true}) {
    SCOPED_TRACE(reference ? "reference kernels" : "fast kernels");
    runtime::CompileOptions options = off;
    options.use_reference_kernels = reference;
    ASSERT_OK_AND_ASSIGN(testing::TrainResult got,
                         testing::TrainSteps(g, map[m.model.loss], m, 3, options));
    testing::ExpectSameTraining(want, got, 1e-5);
    // Without reorder_updates every gradient lives to the end of the step;
    // the fused ones are never stored.
    EXPECT_LT(got.memory.arena_bytes, want.memory.arena_bytes);
  }
}

TEST(FuseUpdates, MomentumSgdAccumulatesTheProductInItsBuffer) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallMlp());  // momentum 0.9, decay 1e-3
  ExpectFusedMlpTrainsTheSame(m);
}

TEST(FuseUpdates, PlainSgdUpdatesTheWeightFromTheProduct) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, MlpWith({0.1f, 0.0f, 1e-3f}));
  ExpectFusedMlpTrainsTheSame(m);
}

TEST(FuseUpdates, InThePipelineTheArenaDoesNotGrow) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallMlp());
  PassOptions all, without;
  without.fuse_updates = false;
  Graph fused = m.graph, unfused = m.graph;
  ASSERT_OK_AND_ASSIGN(PassReport with_report, RunPasses(fused, all));
  ASSERT_OK_AND_ASSIGN(PassReport without_report, RunPasses(unfused, without));
  const auto stats = std::find_if(with_report.passes.begin(), with_report.passes.end(),
                                  [](const PassStats& s) { return s.name == "fuse_updates"; });
  ASSERT_NE(stats, with_report.passes.end());
  EXPECT_EQ(stats->rewrites, 3);
  EXPECT_LE(stats->arena_bytes_after, stats->arena_bytes_before);
  ASSERT_OK_AND_ASSIGN(testing::TrainResult a,
                       testing::TrainSteps(unfused, without_report.Map(m.model.loss), m, 3));
  ASSERT_OK_AND_ASSIGN(testing::TrainResult b,
                       testing::TrainSteps(fused, with_report.Map(m.model.loss), m, 3));
  testing::ExpectSameTraining(a, b, 1e-5);
  EXPECT_LE(b.memory.arena_bytes, a.memory.arena_bytes);
}

TEST(FuseUpdates, LeavesAdamWAlone) {
  ASSERT_OK_AND_ASSIGN(testing::TestModel m, testing::SmallBert("full"));
  Graph g = m.graph;
  int fused = -1;
  ASSERT_OK_AND_ASSIGN(bool changed, FuseUpdates(g, nullptr, &fused));
  EXPECT_FALSE(changed);
  EXPECT_EQ(fused, 0);
  EXPECT_EQ(g.num_nodes(), m.graph.num_nodes());
}

TEST(FuseUpdates, KeepsAGradientSomethingElseReads) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {4, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId dy, g.AddInput("dy", {DType::kF32, {4, 2}}));
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {2, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId grad, g.AddNode(OpKind::kMatMul, {dy, x}, MatMulAttrs{true, false}));
  ASSERT_OK_AND_ASSIGN(ValueId norm, g.AddNode(OpKind::kReduceSum, {grad}, ReduceAttrs{{0, 1}}));
  ASSERT_OK(g.AddNode(OpKind::kSgdUpdate, {w, grad}, SgdAttrs{0.1f, 0.0f, 0.0f}).status());
  g.MarkOutput(norm);
  ASSERT_OK_AND_ASSIGN(bool changed, FuseUpdates(g));
  EXPECT_FALSE(changed);
}

// The fused kernels against the unfused pair (kMatMul's reference, then
// kSgdUpdate's), for every operand layout, with and without momentum and
// partial rows, on the first, a middle and the last slice of a micro-batched
// step; and for tall gradients, which the fast kernel computes transposed in
// blocks of rows (more blocks than scratch slots, the last one short).
struct KernelCase {
  bool ta, tb;
  float momentum, weight_decay;
  int64_t rows;  // of the parameter; 0 = all
  int micro_batch, micro_batches;
  int64_t param_rows = 6, cols = 5;
};

class SgdMatMulKernels : public ::testing::TestWithParam<KernelCase> {};

std::vector<float> Random(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// The index where got and want differ most.
size_t WorstElement(const std::vector<float>& got, const std::vector<float>& want) {
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::abs(got[i] - want[i]) > std::abs(got[worst] - want[worst])) worst = i;
  }
  return worst;
}

TEST_P(SgdMatMulKernels, FastAndReferenceMatchTheUnfusedPair) {
  const KernelCase c = GetParam();
  const int64_t kParamRows = c.param_rows, kN = c.cols, kK = c.param_rows > 1000 ? 520 : 7;
  const int64_t m = c.rows == 0 ? kParamRows : c.rows;
  const Shape p_shape = {kParamRows, kN}, grad_shape = {m, kN};
  const Shape a_shape = c.ta ? Shape{kK, m} : Shape{m, kK};
  const Shape b_shape = c.tb ? Shape{kN, kK} : Shape{kK, kN};
  const std::vector<float> a = Random(m * kK, 1), b = Random(kK * kN, 2);
  const std::vector<float> p0 = Random(kParamRows * kN, 3), buf0 = Random(m * kN, 4);
  const SgdAttrs sgd{0.1f, c.momentum, c.weight_decay, c.rows};
  ops::StepInfo step;
  step.micro_batch = c.micro_batch;
  step.micro_batches = c.micro_batches;
  step.gradient_weight = c.micro_batches == 1 ? 1.0f : 0.25f;
  const bool momentum = c.momentum != 0.0f;

  // Unfused: g = op(a)·op(b) by kMatMul's reference, then kSgdUpdate.
  std::vector<float> g(m * kN), p_want = p0, buf_want = buf0;
  {
    Node node;
    node.op = OpKind::kMatMul;
    node.attrs = MatMulAttrs{c.ta, c.tb};
    const TensorView in[] = {{const_cast<float*>(a.data()), &a_shape},
                             {const_cast<float*>(b.data()), &b_shape}};
    ops::KernelArgs args{&node, in, 2, {g.data(), &grad_shape}, &step};
    ops::GetOpDef(OpKind::kMatMul).reference(args);
    node.op = OpKind::kSgdUpdate;
    node.attrs = sgd;
    const TensorView update_in[] = {
        {p_want.data(), &p_shape}, {g.data(), &grad_shape}, {buf_want.data(), &grad_shape}};
    ops::KernelArgs update{&node, update_in, momentum ? 3 : 2, {}, &step};
    ops::GetOpDef(OpKind::kSgdUpdate).reference(update);
  }
  const ops::OpDef& def = ops::GetOpDef(OpKind::kSgdMatMulUpdate);
  // The tall path takes one scratch slot per thread: keep the team within them.
  if (c.param_rows > 1000) kernels::SetGemmThreads(2);
  for (ops::KernelFn kernel : {def.reference, def.fast}) {
    SCOPED_TRACE(kernel == def.fast ? "fast" : "reference");
    std::vector<float> p = p0, buf = buf0;
    Node node;
    node.op = OpKind::kSgdMatMulUpdate;
    node.attrs = FusedSgdAttrs{sgd, MatMulAttrs{c.ta, c.tb}};
    const TensorView in[] = {{p.data(), &p_shape},
                             {const_cast<float*>(a.data()), &a_shape},
                             {const_cast<float*>(b.data()), &b_shape},
                             {buf.data(), &grad_shape}};
    const TensorType types[] = {{DType::kF32, p_shape},
                                {DType::kF32, a_shape},
                                {DType::kF32, b_shape},
                                {DType::kF32, grad_shape}};
    const TensorType* type_ptrs[] = {&types[0], &types[1], &types[2], &types[3]};
    std::vector<float> scratch(
        def.scratch_bytes(node, absl::MakeConstSpan(type_ptrs, momentum ? 4 : 3)) / sizeof(float));
    if (c.param_rows > 1000) {
      EXPECT_FALSE(scratch.empty()) << "a tall gradient takes slots";
    }
    ops::KernelArgs args{&node, in, momentum ? 4 : 3, {}, &step};
    args.scratch = scratch.data();
    kernel(args);
    // A tall case's gradient sums 520 products (|g| ~ 20) in float.
    const float tol = c.param_rows > 1000 ? 1e-4f : 1e-6f;
    const size_t p_worst = WorstElement(p, p_want), buf_worst = WorstElement(buf, buf_want);
    EXPECT_NEAR(p[p_worst], p_want[p_worst], tol) << "p[" << p_worst << "]";
    EXPECT_NEAR(buf[buf_worst], buf_want[buf_worst], tol) << "buf[" << buf_worst << "]";
  }
}

std::vector<KernelCase> KernelCases() {
  std::vector<KernelCase> out;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      out.push_back({ta, tb, 0.9f, 1e-2f, 0, 0, 1});
      out.push_back({ta, tb, 0.0f, 1e-2f, 0, 0, 1});
    }
  }
  out.push_back({true, false, 0.9f, 0.0f, 3, 0, 1});   // partial rows
  out.push_back({true, false, 0.9f, 1e-2f, 0, 0, 4});  // first of 4 slices
  out.push_back({true, false, 0.9f, 1e-2f, 0, 2, 4});  // a middle slice
  out.push_back({true, false, 0.9f, 1e-2f, 4, 3, 4});  // the last, partial rows
  // Tall: [1100, 256] over 520 samples is 5 blocks of 256 rows in 4 slots.
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      out.push_back({ta, tb, 0.9f, 1e-2f, 0, 0, 1, 1100, 256});
      out.push_back({ta, tb, 0.0f, 1e-2f, 0, 0, 1, 1100, 256});
    }
  }
  out.push_back({true, false, 0.9f, 1e-2f, 1030, 2, 4, 1100, 256});  // middle slice, partial
  out.push_back({true, false, 0.9f, 1e-2f, 0, 3, 4, 1100, 256});     // the last slice
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cases, SgdMatMulKernels, ::testing::ValuesIn(KernelCases()));

TEST(SgdMatMulUpdate, RejectsOperandsThatDoNotMakeTheGradient) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId w, g.AddParameter("w", {DType::kF32, {2, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId buf,
                       g.AddParameter("buf", {DType::kF32, {2, 3}}, ParamRole::kOptimizerState));
  ASSERT_OK_AND_ASSIGN(ValueId dy, g.AddInput("dy", {DType::kF32, {4, 2}}));
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {4, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId x5, g.AddInput("x5", {DType::kF32, {5, 3}}));
  ASSERT_OK_AND_ASSIGN(ValueId x3d, g.AddInput("x3d", {DType::kF32, {1, 4, 3}}));
  const FusedSgdAttrs momentum{SgdAttrs{0.1f, 0.9f, 0.0f}, MatMulAttrs{true, false}};
  ASSERT_OK(g.AddNode(OpKind::kSgdMatMulUpdate, {w, dy, x, buf}, momentum).status());
  EXPECT_THAT(g.AddNode(OpKind::kSgdMatMulUpdate, {w, dy, x5, buf}, momentum).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("inner dims 4 vs 5")));
  EXPECT_THAT(g.AddNode(OpKind::kSgdMatMulUpdate, {w, dy, x3d, buf}, momentum).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("b must have rank 2")));
  EXPECT_THAT(g.AddNode(OpKind::kSgdMatMulUpdate, {w, dy, x}, momentum).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("momentum_buffer")));
  // x·xᵀ is [4, 4], not the weight's [2, 3].
  const FusedSgdAttrs plain{SgdAttrs{0.1f, 0.0f, 0.0f}, MatMulAttrs{false, true}};
  EXPECT_THAT(g.AddNode(OpKind::kSgdMatMulUpdate, {w, x, x}, plain).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("operand 1")));
}

}  // namespace
}  // namespace fleettune::engine::passes
