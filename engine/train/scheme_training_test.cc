// The sparse and pockengine presets on real architectures: their training
// graphs verify, compile and run; partial-channel weights change only their
// first rows; and they need less memory than full fine-tuning.
#include <cmath>
#include <cstring>
#include <random>

#include "engine/base/status_matchers.h"
#include "engine/ir/verifier.h"
#include "engine/models/bert.h"
#include "engine/models/mobilenet_v2.h"
#include "engine/runtime/executable.h"
#include "engine/testing/gradcheck.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::train {
namespace {

// Random weights (either sign) and buffers (variances positive) for every
// parameter the model's graph holds.
void RandomParams(const models::Model& m, runtime::ParameterStore* params) {
  std::mt19937_64 rng(9);
  for (const Node& n : m.graph.nodes()) {
    if (n.op != OpKind::kParameter) continue;
    Tensor t = testing::RandomTensor(n.type, rng);
    if (n.type.dtype == DType::kF32 &&
        std::get<ParameterAttrs>(n.attrs).role == ParamRole::kBuffer) {
      for (int64_t i = 0; i < t.num_elements(); ++i) t.f32()[i] = std::abs(t.f32()[i]);
    }
    ASSERT_OK(params->Set(n.name, t));
  }
}

struct Compiled {
  std::unique_ptr<runtime::Executable> exe;
  scheme::ResolvedScheme resolved;
};

Compiled Compile(const models::Model& m, const std::string& preset,
                 runtime::ParameterStore* params) {
  Compiled r;
  absl::StatusOr<scheme::ResolvedScheme> resolved = ResolvePreset(m, preset);
  EXPECT_OK(resolved.status());
  r.resolved = *resolved;
  absl::StatusOr<Graph> g =
      BuildSchemeTrainingGraph(m, r.resolved, autodiff::OptimizerConfig::Sgd({0.05f, 0.9f, 0.0f}));
  EXPECT_OK(g.status());
  EXPECT_OK(VerifyGraph(*g));
  auto exe = runtime::Executable::Compile(*g, params);
  EXPECT_OK(exe.status());
  r.exe = *std::move(exe);
  return r;
}

const scheme::ParamPlan& Plan(const scheme::ResolvedScheme& r, const std::string& name) {
  for (const auto& p : r.params) {
    if (p.name == name) return p;
  }
  static const scheme::ParamPlan none;
  ADD_FAILURE() << "no " << name;
  return none;
}

// Rows [0, rows) changed, rows [rows, dim0) did not.
void ExpectOnlyFirstRowsChanged(const Tensor& before, const Tensor& after, int64_t rows) {
  const int64_t per_row = before.num_elements() / before.shape()[0];
  EXPECT_NE(std::memcmp(before.f32(), after.f32(), rows * per_row * sizeof(float)), 0);
  EXPECT_EQ(std::memcmp(before.f32() + rows * per_row, after.f32() + rows * per_row,
                        (before.num_elements() - rows * per_row) * sizeof(float)),
            0);
}

TEST(SchemeTraining, MobileNetV2PockEngineTrainsPartialChannelsAndSavesMemory) {
  models::MobileNetV2Config c;
  c.width_mult = 0.35;
  // 64×64 inputs leave features.16 a 2×2 map: with batch 2, each BatchNorm
  // channel sees 8 values (at 1×1 it would see 2, which BatchNorm maps to ±1
  // whatever the input, so the gradient below it vanishes).
  c.resolution = 64;
  c.num_classes = 10;
  c.batch = 2;
  c.dropout = 0.0f;
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMobileNetV2(c, models::Mode::kTrain));
  runtime::ParameterStore params;
  RandomParams(m, &params);
  const std::string partial = "features.16.conv.0.0.weight";
  const std::string frozen = "features.3.conv.0.0.weight";
  const Tensor partial_before = *params.Find(partial);
  const Tensor frozen_before = *params.Find(frozen);

  Compiled pe = Compile(m, "pockengine", &params);
  ASSERT_NE(pe.exe, nullptr);
  std::mt19937_64 rng(4);
  const Tensor x = testing::RandomTensor(m.graph.type(m.input), rng);
  const Tensor labels = testing::RandomTensor(m.graph.type(m.labels), rng, 10);
  // Inputs live in the arena, which the plan may reuse: set them every step.
  for (int step = 0; step < 2; ++step) {
    ASSERT_OK(pe.exe->SetInput("x", x));
    ASSERT_OK(pe.exe->SetInput("labels", labels));
    ASSERT_OK(pe.exe->Run());
  }
  const scheme::ParamPlan& plan = Plan(pe.resolved, partial);
  ASSERT_EQ(plan.mode, scheme::UpdateMode::kChannels);
  ExpectOnlyFirstRowsChanged(partial_before, *params.Find(partial), plan.rows);
  EXPECT_EQ(std::memcmp(frozen_before.raw(), params.Find(frozen)->raw(), frozen_before.bytes()), 0);
  EXPECT_EQ(params.Find(partial + ".momentum_buffer")->shape()[0], plan.rows);

  runtime::ParameterStore dense_params;
  RandomParams(m, &dense_params);
  Compiled full = Compile(m, "full", &dense_params);
  Compiled sparse = Compile(m, "sparse", &dense_params);
  ASSERT_NE(full.exe, nullptr);
  ASSERT_NE(sparse.exe, nullptr);
  EXPECT_LT(pe.exe->memory().optimizer_state_bytes, full.exe->memory().optimizer_state_bytes);
  EXPECT_LT(sparse.exe->memory().optimizer_state_bytes, full.exe->memory().optimizer_state_bytes);
  EXPECT_LT(pe.exe->memory().arena_bytes, full.exe->memory().arena_bytes);
  EXPECT_LT(pe.resolved.TrainableElements(), full.resolved.TrainableElements());
}

TEST(SchemeTraining, BertPockEngineTrainsPartialChannelsOfRank3Linears) {
  models::BertConfig c;
  c.vocab = 40;
  c.hidden = 16;
  c.layers = 4;
  c.heads = 2;
  c.ffn = 32;
  c.max_positions = 8;
  c.seq_len = 8;
  c.batch = 2;
  c.num_labels = 3;
  c.dropout = 0.0f;
  ASSERT_OK_AND_ASSIGN(models::BertModel bert, models::BuildBert(c, models::Mode::kTrain));
  const models::Model& m = bert.model;
  runtime::ParameterStore params;
  ASSERT_OK(models::InitializeBert(c, 1, &params));
  const std::string partial = "bert.encoder.layer.2.intermediate.dense.weight";
  const Tensor before = *params.Find(partial);
  Compiled pe = Compile(m, "pockengine", &params);
  ASSERT_NE(pe.exe, nullptr);
  std::mt19937_64 rng(4);
  Tensor ids = testing::RandomTensor(m.graph.type(bert.input_ids), rng, 40);
  Tensor types = testing::RandomTensor(m.graph.type(bert.token_type_ids), rng, 2);
  Tensor positions(DType::kI32, {c.seq_len});
  models::FillBertPositions(positions.i32(), c.seq_len);
  const Tensor labels = testing::RandomTensor(m.graph.type(m.labels), rng, 3);
  for (int step = 0; step < 2; ++step) {
    ASSERT_OK(pe.exe->SetInput("input_ids", ids));
    ASSERT_OK(pe.exe->SetInput("token_type_ids", types));
    ASSERT_OK(pe.exe->SetInput(models::kBertPositionsInput, positions));
    ASSERT_OK(pe.exe->SetInput("labels", labels));
    ASSERT_OK(pe.exe->Run());
  }
  const scheme::ParamPlan& plan = Plan(pe.resolved, partial);
  ASSERT_EQ(plan.mode, scheme::UpdateMode::kChannels);
  EXPECT_EQ(plan.rows, 16);  // ½ of 32
  ExpectOnlyFirstRowsChanged(before, *params.Find(partial), plan.rows);
}

}  // namespace
}  // namespace fleettune::engine::train
