#include "engine/passes/test_util.h"

#include <cmath>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"
#include "engine/models/bert.h"
#include "engine/models/llama.h"
#include "engine/models/mlp.h"
#include "engine/models/mobilenet_v2.h"
#include "engine/models/resnet.h"
#include "engine/train/trainer.h"
#include "gtest/gtest.h"

namespace fleettune::engine::passes::testing {

absl::Status InitializeParams(const Graph& graph, uint64_t seed, runtime::ParameterStore* params) {
  std::mt19937_64 rng(seed);
  for (const Node& n : graph.nodes()) {
    if (n.op != OpKind::kParameter) continue;
    if (std::get<ParameterAttrs>(n.attrs).role == ParamRole::kOptimizerState) continue;
    Tensor t(n.type.dtype, n.type.shape);
    if (n.type.dtype == DType::kF32) {
      const Shape& shape = n.type.shape;
      if (shape.size() >= 2) {
        int64_t fan_in = 1;
        for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
        const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
        std::uniform_real_distribution<float> dist(-bound, bound);
        for (float& v : t.f32_span()) v = dist(rng);
      } else {
        const bool one =
            absl::EndsWith(n.name, ".running_var") || absl::EndsWith(n.name, ".weight");
        std::uniform_real_distribution<float> dist(one ? 0.5f : -0.3f, one ? 1.5f : 0.3f);
        for (float& v : t.f32_span()) v = dist(rng);
      }
    }
    RETURN_IF_ERROR(params->Set(n.name, t));
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<TestModel> Finish(models::Model model, const std::string& scheme,
                                 const autodiff::OptimizerConfig& opt) {
  TestModel m;
  m.model = std::move(model);
  ASSIGN_OR_RETURN(std::vector<std::string> trainable, train::SelectTrainable(m.model, scheme));
  ASSIGN_OR_RETURN(m.graph, train::BuildTrainingGraph(m.model, trainable, opt));
  RETURN_IF_ERROR(InitializeParams(m.model.graph, 7, &m.params));
  m.int_bounds["labels"] = static_cast<int32_t>(m.model.graph.type(m.model.logits).shape.back());
  return m;
}

}  // namespace

absl::StatusOr<TestModel> SmallMobileNetV2(models::Mode mode, const std::string& scheme,
                                           int64_t resolution) {
  models::MobileNetV2Config config;
  config.width_mult = 0.35;
  config.resolution = resolution;
  config.num_classes = 4;
  // Training-mode BatchNorm over 2 samples of the last 1×1 planes normalizes
  // every channel to ±1 whatever its input, so the gradient below it would be
  // rounding noise; 4 samples keep it a gradient.
  config.batch = mode == models::Mode::kTrain ? 4 : 2;
  config.dropout = 0.0f;
  ASSIGN_OR_RETURN(models::Model model, models::BuildMobileNetV2(config, mode));
  return Finish(std::move(model), scheme, autodiff::OptimizerConfig::Sgd({0.05f, 0.9f, 0.0f}));
}

absl::StatusOr<TestModel> SmallResNet(models::Mode mode, const std::string& scheme) {
  models::ResNetConfig config;
  config.blocks = {1, 1};
  config.base_width = 8;
  config.resolution = 16;
  config.num_classes = 4;
  config.batch = 2;
  ASSIGN_OR_RETURN(models::Model model, models::BuildResNet(config, mode));
  return Finish(std::move(model), scheme, autodiff::OptimizerConfig::Sgd({0.05f, 0.9f, 0.0f}));
}

absl::StatusOr<TestModel> SmallBert(const std::string& scheme) {
  models::BertConfig config;
  config.vocab = 50;
  config.hidden = 32;
  config.layers = 2;
  config.heads = 2;
  config.ffn = 64;
  config.max_positions = 16;
  config.seq_len = 8;
  config.batch = 2;
  config.num_labels = 3;
  config.dropout = 0.0f;
  ASSIGN_OR_RETURN(models::BertModel bert, models::BuildBert(config, models::Mode::kEval));
  AdamWAttrs adamw;
  adamw.lr = 1e-2f;
  ASSIGN_OR_RETURN(TestModel m,
                   Finish(std::move(bert.model), scheme, autodiff::OptimizerConfig::AdamW(adamw)));
  m.int_bounds["input_ids"] = 50;
  m.int_bounds["token_type_ids"] = 2;
  return m;
}

absl::StatusOr<TestModel> SmallLlama(const std::string& scheme) {
  models::LlamaConfig config;
  config.vocab = 40;
  config.dim = 64;  // heads of 16: attention scales by 1/4, which fold_matmul folds
  config.layers = 2;
  config.heads = 4;
  config.kv_heads = 2;
  config.ffn_dim = 48;
  config.seq_len = 8;
  config.batch = 2;
  ASSIGN_OR_RETURN(models::LlamaModel llama, models::BuildLlama(config));
  AdamWAttrs adamw;
  adamw.lr = 1e-2f;
  ASSIGN_OR_RETURN(TestModel m,
                   Finish(std::move(llama.model), scheme, autodiff::OptimizerConfig::AdamW(adamw)));
  m.int_bounds["tokens"] = 40;
  m.int_bounds["targets"] = 40;
  m.int_bounds[models::kLlamaPositionsInput] = 8;
  return m;
}

absl::StatusOr<TestModel> SmallMlp() {
  models::MlpConfig config{{12, 16, 8, 3}, 4};
  ASSIGN_OR_RETURN(models::Model model, models::BuildMlp(config));
  return Finish(std::move(model), "full", autodiff::OptimizerConfig::Sgd({0.1f, 0.9f, 1e-3f}));
}

absl::StatusOr<TrainResult> TrainSteps(const Graph& graph, ValueId loss, const TestModel& m,
                                       int steps, const runtime::CompileOptions& options) {
  TrainResult result;
  result.params = m.params;
  ASSIGN_OR_RETURN(auto exe, runtime::Executable::Compile(graph, &result.params, options));
  result.memory = exe->memory();
  std::mt19937_64 rng(11);
  for (int step = 0; step < steps; ++step) {
    for (const Node& n : graph.nodes()) {
      if (n.op != OpKind::kInput) continue;
      ASSIGN_OR_RETURN(TensorView v, exe->Input(n.name));
      if (n.type.dtype == DType::kF32) {
        std::uniform_real_distribution<float> u(0.0f, 1.0f);
        for (int64_t i = 0; i < v.num_elements(); ++i) v.f32()[i] = u(rng);
      } else if (n.name == "position_ids") {
        models::FillBertPositions(v.i32(), v.num_elements());
      } else {
        auto it = m.int_bounds.find(n.name);
        const int32_t bound = it == m.int_bounds.end() ? 1 : it->second;
        for (int64_t i = 0; i < v.num_elements(); ++i) {
          v.i32()[i] = static_cast<int32_t>(rng() % static_cast<uint64_t>(bound));
        }
      }
    }
    RETURN_IF_ERROR(exe->Run());
    ASSIGN_OR_RETURN(TensorView l, exe->Output(loss));
    result.losses.push_back(l.f32()[0]);
    if (step == 0) {
      for (ValueId out : graph.outputs()) {
        ASSIGN_OR_RETURN(TensorView o, exe->Output(out));
        if (o.dtype != DType::kF32) continue;
        result.first.emplace_back(o.f32(), o.f32() + o.num_elements());
      }
    }
  }
  return result;
}

int CountOps(const Graph& graph, OpKind op) {
  int n = 0;
  for (const Node& node : graph.nodes()) n += node.op == op;
  return n;
}

size_t ArenaBytes(const Graph& graph) {
  runtime::ArenaOptions options;
  options.in_place = false;
  absl::StatusOr<runtime::ArenaLayout> layout = runtime::PlanArena(graph, options);
  EXPECT_TRUE(layout.ok()) << layout.status();
  return layout.ok() ? layout->plan.arena_bytes : 0;
}

double RelativeDifference(const float* a, const float* b, int64_t n, double floor) {
  double diff = 0.0, scale = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(a[i])));
  }
  return diff == 0.0 ? 0.0 : diff / std::max(scale, floor);
}

void ExpectSameTraining(const TrainResult& want, const TrainResult& got, double tolerance,
                        double floor) {
  ASSERT_EQ(want.losses.size(), got.losses.size());
  for (size_t i = 0; i < want.losses.size(); ++i) {
    EXPECT_NEAR(got.losses[i], want.losses[i],
                tolerance * std::max(1.0f, std::fabs(want.losses[i])))
        << "step " << i;
  }
  for (const auto& [name, t] : want.params.tensors()) {
    const Tensor* other = got.params.Find(name);
    ASSERT_NE(other, nullptr) << name;
    ASSERT_EQ(other->type(), t.type()) << name;
    if (t.dtype() != DType::kF32) continue;
    EXPECT_LE(RelativeDifference(t.f32(), other->f32(), t.num_elements(), floor), tolerance)
        << name;
  }
}

}  // namespace fleettune::engine::passes::testing
