#include "engine/autodiff/autodiff.h"

#include <map>
#include <random>
#include <string>

#include "absl/strings/match.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/printer.h"
#include "engine/ir/verifier.h"
#include "engine/models/mlp.h"
#include "engine/runtime/executable.h"
#include "engine/testing/gradcheck.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::autodiff {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

std::vector<ValueId> Ids(const Graph& g, const std::vector<std::string>& names) {
  std::vector<ValueId> ids;
  for (const auto& n : names) ids.push_back(*g.FindByName(n));
  return ids;
}

// Whole-graph gradient check of a small MLP for several schemes.
class MlpGradCheck : public ::testing::TestWithParam<std::string> {};

TEST_P(MlpGradCheck, MatchesCentralDifferences) {
  models::MlpConfig config{{6, 5, 4, 3}, 4};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(config));
  runtime::ParameterStore params;
  ASSERT_OK(models::InitializeMlp(config, 7, &params));
  std::mt19937_64 rng(11);
  std::map<std::string, Tensor> inputs;
  inputs["x"] = testing::RandomTensor(m.graph.type(m.input), rng);
  inputs["labels"] = testing::RandomTensor(m.graph.type(m.labels), rng, 3);
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> names, train::SelectTrainable(m, GetParam()));
  ASSERT_OK_AND_ASSIGN(
      testing::GradCheckResult r,
      testing::CheckGradients(m.graph, m.loss, Ids(m.graph, names), params, inputs));
  EXPECT_GT(r.checked, 0);
  EXPECT_LE(r.kinks, r.checked / 20) << "too many elements sit at a ReLU kink";
  EXPECT_LE(r.worst_excess, 0.0) << r.worst;
}

INSTANTIATE_TEST_SUITE_P(Schemes, MlpGradCheck,
                         ::testing::Values("full", "bias-only", "freeze:fc1", "last-k:1"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

// The nodes BuildBackward appended, as printed lines.
std::vector<std::string> BackwardLines(const Graph& g, int forward_size) {
  std::vector<std::string> lines;
  for (ValueId id = forward_size; id < g.num_nodes(); ++id) lines.push_back(PrintNode(g, id));
  return lines;
}

TEST(SparseAutodiff, FreezingFirstLayerRemovesItsBackwardNodes) {
  models::MlpConfig config{{784, 256, 128, 10}, 64};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(config));
  const int forward_size = m.graph.num_nodes();
  const ValueId x = m.input;
  const ValueId fc1_out = *m.graph.FindByName("fc1.weight") + 2;  // weight, bias, linear

  Graph full = m.graph;
  ASSERT_OK_AND_ASSIGN(GradientMap full_grads,
                       BuildBackward(full, m.loss,
                                     Ids(full, {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                                "fc3.weight", "fc3.bias"})));
  Graph frozen = m.graph;
  ASSERT_OK_AND_ASSIGN(
      GradientMap frozen_grads,
      BuildBackward(frozen, m.loss,
                    Ids(frozen, {"fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"})));
  ASSERT_OK(VerifyGraph(full));
  ASSERT_OK(VerifyGraph(frozen));
  ASSERT_EQ(frozen.node(fc1_out).op, OpKind::kLinear);

  // Full: a weight gradient of fc1's shape, and a backward node reads x.
  auto reads = [](const Graph& g, int from, ValueId v) {
    for (ValueId id = from; id < g.num_nodes(); ++id) {
      for (ValueId in : g.node(id).inputs) {
        if (in == v) return true;
      }
    }
    return false;
  };
  auto has_grad_of_shape = [](const std::vector<std::string>& lines, const std::string& type) {
    for (const auto& l : lines) {
      if (absl::StrContains(l, "matmul") && absl::EndsWith(l, type)) return true;
    }
    return false;
  };
  EXPECT_TRUE(reads(full, forward_size, x));
  EXPECT_TRUE(has_grad_of_shape(BackwardLines(full, forward_size), "f32[256, 784]"));
  // Frozen: no fc1 weight gradient, no backward node reads x or fc1's output
  // gradient path below fc2 (no relu_grad for fc1's activation).
  EXPECT_FALSE(reads(frozen, forward_size, x));
  EXPECT_FALSE(has_grad_of_shape(BackwardLines(frozen, forward_size), "f32[256, 784]"));
  int relu_grads_full = 0, relu_grads_frozen = 0;
  for (const auto& l : BackwardLines(full, forward_size))
    relu_grads_full += absl::StrContains(l, "relu_grad");
  for (const auto& l : BackwardLines(frozen, forward_size))
    relu_grads_frozen += absl::StrContains(l, "relu_grad");
  EXPECT_EQ(relu_grads_full, 2);
  EXPECT_EQ(relu_grads_frozen, 1);
  EXPECT_LT(frozen.num_nodes(), full.num_nodes());
  EXPECT_EQ(frozen_grads.size(), 4u);
  EXPECT_EQ(full_grads.size(), 6u);
}

TEST(SparseAutodiff, FreezingFirstLayerLowersPeakArenaBytes) {
  models::MlpConfig config{{784, 256, 128, 10}, 64};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(config));
  const auto sgd = OptimizerConfig::Sgd({0.01f, 0.9f, 0.0f});
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> all, train::SelectTrainable(m, "full"));
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> some, train::SelectTrainable(m, "freeze:fc1"));
  ASSERT_OK_AND_ASSIGN(Graph full, train::BuildTrainingGraph(m, all, sgd));
  ASSERT_OK_AND_ASSIGN(Graph frozen, train::BuildTrainingGraph(m, some, sgd));
  runtime::ParameterStore params;
  ASSERT_OK(models::InitializeMlp(config, 0, &params));
  ASSERT_OK_AND_ASSIGN(auto full_exe, runtime::Executable::Compile(full, &params));
  ASSERT_OK_AND_ASSIGN(auto frozen_exe, runtime::Executable::Compile(frozen, &params));
  const double ratio = static_cast<double>(frozen_exe->memory().arena_bytes) /
                       static_cast<double>(full_exe->memory().arena_bytes);
  // Without fc1's weight gradient (256×784 floats) the arena must shrink a lot.
  EXPECT_LT(ratio, 0.6) << frozen_exe->memory().arena_bytes << " vs "
                        << full_exe->memory().arena_bytes;
  EXPECT_LT(frozen_exe->memory().optimizer_state_bytes, full_exe->memory().optimizer_state_bytes);
}

TEST(Autodiff, RejectsNonScalarLoss) {
  models::MlpConfig config{{4, 3}, 2};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(config));
  EXPECT_THAT(BuildBackward(m.graph, m.logits, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be an f32 scalar")));
}

TEST(Autodiff, RejectsTrainableThatIsNotAWeight) {
  models::MlpConfig config{{4, 3}, 2};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(config));
  EXPECT_THAT(BuildBackward(m.graph, m.loss, {m.input}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a weight parameter")));
}

TEST(Autodiff, RejectsTrainableThatDoesNotAffectTheLoss) {
  models::MlpConfig config{{4, 3}, 2};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(config));
  ASSERT_OK_AND_ASSIGN(ValueId stray, m.graph.AddParameter("stray", {DType::kF32, {3}}));
  EXPECT_THAT(
      BuildBackward(m.graph, m.loss, {stray}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'stray' does not affect the loss")));
}

TEST(Autodiff, RejectsBadOptimizerHyperParameters) {
  models::MlpConfig config{{4, 3}, 2};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(config));
  EXPECT_THAT(train::BuildTrainingGraph(m, {"fc1.weight"}, OptimizerConfig::Sgd({0.1f, 1.5f, 0})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("momentum < 1")));
  AdamWAttrs bad;
  bad.eps = 0;
  EXPECT_THAT(train::BuildTrainingGraph(m, {"fc1.weight"}, OptimizerConfig::AdamW(bad)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("eps > 0")));
}

}  // namespace
}  // namespace fleettune::engine::autodiff
