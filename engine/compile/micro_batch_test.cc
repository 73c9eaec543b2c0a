// Micro-batched plans (CompileOptions::micro_batches): a step that runs its
// batch in slices, accumulating the gradients in SGD's momentum buffers, must
// train exactly as the whole batch does, while its arena holds one slice.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/status_matchers.h"
#include "engine/compile/compiler.h"
#include "engine/models/llama.h"
#include "engine/models/zoo.h"
#include "engine/plan/plan_io.h"
#include "engine/runtime/executable.h"
#include "engine/train/trainer.h"
#include "gtest/gtest.h"

namespace fleettune::engine::compile {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

struct Run {
  std::vector<float> losses;
  runtime::ParameterStore params;
  runtime::MemoryStats memory;
  v1::PlanMetadata metadata;
};

CompileOptions Options(const models::Model& model, const std::string& scheme, int micro_batches) {
  CompileOptions o;
  o.model_name = "test";
  o.scheme = *train::ResolvePreset(model, scheme);
  o.optimizer = autodiff::OptimizerConfig::Sgd({0.05f, 0.9f, 1e-3f});
  o.device_class = "x86-avx2";
  o.threads = 2;
  o.micro_batches = micro_batches;
  return o;
}

// Trains `steps` steps of the zoo model on batch `batch`, in `micro_batches`
// slices, after `edit` (if any) changed the batch's inputs.
absl::StatusOr<std::unique_ptr<Run>> Train(
    const std::string& name, const std::string& scheme, int64_t batch, int micro_batches, int steps,
    const std::function<absl::Status(runtime::Executable&)>& edit = nullptr) {
  ASSIGN_OR_RETURN(const models::ZooEntry* zoo, models::FindZooModel(name));
  ASSIGN_OR_RETURN(models::Model model, zoo->build(batch / micro_batches, models::Mode::kEval));
  ASSIGN_OR_RETURN(CompiledTraining compiled,
                   CompileTraining(model, Options(model, scheme, micro_batches)));
  auto run = std::make_unique<Run>();
  run->metadata = compiled.plan.metadata();
  RETURN_IF_ERROR(zoo->initialize(model, 0, &run->params));
  ASSIGN_OR_RETURN(auto exe, runtime::Executable::Compile(compiled.graph, &run->params,
                                                          RuntimeOptionsFor(run->metadata)));
  run->memory = exe->memory();
  RETURN_IF_ERROR(zoo->fill_batch(*exe, 0));
  if (edit) RETURN_IF_ERROR(edit(*exe));
  for (int step = 0; step < steps; ++step) {
    RETURN_IF_ERROR(exe->Run());
    ASSIGN_OR_RETURN(TensorView loss, exe->Output(compiled.loss));
    run->losses.push_back(loss.f32()[0]);
  }
  return run;
}

// Largest |a − b| over the trained tensors, and the largest change training
// made to them (so that agreement means something).
struct Agreement {
  double max_diff = 0.0;
  double max_update = 0.0;
};

Agreement CompareTrained(const Run& a, const Run& b, const runtime::ParameterStore& initial) {
  Agreement out;
  for (const std::string& name : a.metadata.trainable_parameters()) {
    const Tensor* ta = a.params.Find(name);
    const Tensor* tb = b.params.Find(name);
    const Tensor* t0 = initial.Find(name);
    EXPECT_TRUE(ta != nullptr && tb != nullptr && t0 != nullptr) << name;
    if (ta == nullptr || tb == nullptr || t0 == nullptr) continue;
    for (int64_t i = 0; i < ta->num_elements(); ++i) {
      out.max_diff = std::max(out.max_diff, std::fabs(double{ta->f32()[i]} - tb->f32()[i]));
      out.max_update = std::max(out.max_update, std::fabs(double{ta->f32()[i]} - t0->f32()[i]));
    }
  }
  return out;
}

struct Case {
  std::string model;
  std::string scheme;
  int64_t batch;
  int micro_batches;
  // Bound on the sliced arena over the whole batch's: the gradients and
  // what does not scale with the batch stay.
  double arena_ratio;
};

class MicroBatchTest : public ::testing::TestWithParam<Case> {};

TEST_P(MicroBatchTest, TrainsAsTheWholeBatchInASmallerArena) {
  const Case& c = GetParam();
  constexpr int kSteps = 3;
  ASSERT_OK_AND_ASSIGN(auto whole, Train(c.model, c.scheme, c.batch, 1, kSteps));
  ASSERT_OK_AND_ASSIGN(auto sliced, Train(c.model, c.scheme, c.batch, c.micro_batches, kSteps));
  for (int step = 0; step < kSteps; ++step) {
    EXPECT_NEAR(sliced->losses[step], whole->losses[step], 1e-5 * std::fabs(whole->losses[step]))
        << "step " << step;
  }
  runtime::ParameterStore initial;
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel(c.model));
  ASSERT_OK_AND_ASSIGN(models::Model model, zoo->build(c.batch, models::Mode::kEval));
  ASSERT_OK(zoo->initialize(model, 0, &initial));
  const Agreement agreement = CompareTrained(*whole, *sliced, initial);
  EXPECT_LT(agreement.max_diff, 1e-5);
  EXPECT_GT(agreement.max_update, 1000 * agreement.max_diff + 1e-4);
  // One slice's activations, the whole batch staged: less memory in all.
  EXPECT_LT(sliced->memory.arena_bytes, c.arena_ratio * whole->memory.arena_bytes);
  EXPECT_GT(sliced->memory.staging_bytes, 0u);
  EXPECT_EQ(sliced->memory.staging_bytes, sliced->metadata.staging_bytes());
  EXPECT_EQ(sliced->memory.arena_bytes, sliced->metadata.arena_bytes());
  EXPECT_LT(TrainingBytes(sliced->metadata), TrainingBytes(whole->metadata));
  // The same work, but each slice runs the updates (accumulating).
  EXPECT_GE(sliced->metadata.flops_per_step(), whole->metadata.flops_per_step());
  EXPECT_LT(sliced->metadata.flops_per_step(), whole->metadata.flops_per_step() * 1.15);
}

INSTANTIATE_TEST_SUITE_P(Zoo, MicroBatchTest,
                         ::testing::Values(Case{"mlp", "full", 256, 4, 0.6},
                                           Case{"bert_mini", "sparse", 4, 2, 0.6},
                                           Case{"llama_mini", "sparse", 4, 4, 0.4},
                                           Case{"mobilenet_v2", "bias-only", 4, 2, 0.6}),
                         [](const auto& info) {
                           std::string name = info.param.model + "_" + info.param.scheme;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// A softmax cross-entropy averages over the labels it counts: slices with
// more ignored labels weigh less, as they do in the whole batch's mean.
TEST(MicroBatch, SlicesWeighTheLabelsTheLossCounts) {
  // The second half of the batch keeps 10 of its 256 targets.
  const auto ignore_most_of_the_second_half = [](runtime::Executable& exe) -> absl::Status {
    ASSIGN_OR_RETURN(TensorView targets, exe.Input("targets"));
    const int64_t n = targets.num_elements();
    for (int64_t i = n / 2 + 10; i < n; ++i) targets.i32()[i] = CrossEntropyAttrs{}.ignore_index;
    return absl::OkStatus();
  };
  ASSERT_OK_AND_ASSIGN(auto whole,
                       Train("llama_mini", "sparse", 4, 1, 2, ignore_most_of_the_second_half));
  ASSERT_OK_AND_ASSIGN(auto sliced,
                       Train("llama_mini", "sparse", 4, 2, 2, ignore_most_of_the_second_half));
  ASSERT_OK_AND_ASSIGN(auto equal_shares, Train("llama_mini", "sparse", 4, 2, 2));
  for (int step = 0; step < 2; ++step) {
    EXPECT_NEAR(sliced->losses[step], whole->losses[step], 1e-5 * std::fabs(whole->losses[step]));
  }
  runtime::ParameterStore initial;
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel("llama_mini"));
  ASSERT_OK_AND_ASSIGN(models::Model model, zoo->build(4, models::Mode::kEval));
  ASSERT_OK(zoo->initialize(model, 0, &initial));
  const Agreement agreement = CompareTrained(*whole, *sliced, initial);
  EXPECT_LT(agreement.max_diff, 1e-5);
  EXPECT_GT(agreement.max_update, 1000 * agreement.max_diff + 1e-5);
  // Without the ignored labels the loss differs: the test can tell.
  EXPECT_GT(std::fabs(equal_shares->losses[1] - whole->losses[1]), 1e-3);
}

TEST(MicroBatch, PlanFromFileRunsInSlicesWithTheWholeBatchAsItsInputs) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel("llama_mini"));
  ASSERT_OK_AND_ASSIGN(models::Model model, zoo->build(2, models::Mode::kEval));
  ASSERT_OK_AND_ASSIGN(CompiledTraining compiled,
                       CompileTraining(model, Options(model, "sparse", 4)));
  EXPECT_EQ(compiled.logits, kNoValue);
  EXPECT_EQ(compiled.graph.outputs(), std::vector<ValueId>{compiled.loss});
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/llama.plan";
  ASSERT_OK(plan::WritePlan(path, compiled.plan));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan read, plan::ReadPlan(path));
  EXPECT_EQ(read.metadata().micro_batches(), 4);
  ASSERT_EQ(read.metadata().shared_inputs_size(), 1);
  EXPECT_EQ(read.metadata().shared_inputs(0), models::kLlamaPositionsInput);
  EXPECT_THAT(FormatPlanSummary(read.metadata()), HasSubstr("micro-batches    4 a step"));
  ASSERT_OK_AND_ASSIGN(Graph loaded, plan::GraphFromProto(read.graph()));
  runtime::ParameterStore params;
  ASSERT_OK(zoo->initialize(model, 0, &params));
  ASSERT_OK_AND_ASSIGN(
      auto exe, runtime::Executable::Compile(loaded, &params, RuntimeOptionsFor(read.metadata())));
  EXPECT_EQ(exe->memory().arena_bytes, read.metadata().arena_bytes());
  EXPECT_EQ(exe->memory().staging_bytes, read.metadata().staging_bytes());
  ASSERT_OK_AND_ASSIGN(TensorView tokens, exe->Input("tokens"));
  EXPECT_EQ(*tokens.shape, (Shape{8, 128}));  // 4 slices of 2 sequences
  ASSERT_OK_AND_ASSIGN(TensorView positions, exe->Input(models::kLlamaPositionsInput));
  EXPECT_EQ(*positions.shape, (Shape{128}));  // shared by every slice
  EXPECT_THAT(exe->SetInput("tokens", Tensor(DType::kI32, {2, 128})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("i32[8, 128]")));
}

TEST(MicroBatch, RefusesWhatCannotRunInSlices) {
  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* cnn, models::FindZooModel("cnn"));
  ASSERT_OK_AND_ASSIGN(models::Model batch_stats, cnn->build(2, models::Mode::kTrain));
  EXPECT_THAT(CompileTraining(batch_stats, Options(batch_stats, "full", 2)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("whole batch's statistics")));

  ASSERT_OK_AND_ASSIGN(const models::ZooEntry* mlp, models::FindZooModel("mlp"));
  ASSERT_OK_AND_ASSIGN(models::Model model, mlp->build(4, models::Mode::kEval));
  CompileOptions adamw = Options(model, "full", 2);
  adamw.optimizer = autodiff::OptimizerConfig::AdamW({});
  EXPECT_THAT(CompileTraining(model, adamw),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no momentum buffer")));
  CompileOptions plain_sgd = Options(model, "full", 2);
  plain_sgd.optimizer = autodiff::OptimizerConfig::Sgd({0.1f, 0.0f, 0.0f});
  EXPECT_THAT(CompileTraining(model, plain_sgd),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no momentum buffer")));
  EXPECT_THAT(CompileTraining(model, Options(model, "full", 0)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("micro_batches must be")));

  ASSERT_OK_AND_ASSIGN(CompiledTraining compiled,
                       CompileTraining(model, Options(model, "full", 2)));
  runtime::ParameterStore params;
  ASSERT_OK(mlp->initialize(model, 0, &params));
  runtime::CompileOptions options = RuntimeOptionsFor(compiled.plan.metadata());
  options.shared_inputs = {"no_such_input"};
  EXPECT_THAT(runtime::Executable::Compile(compiled.graph, &params, options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'no_such_input'")));
}

}  // namespace
}  // namespace fleettune::engine::compile
