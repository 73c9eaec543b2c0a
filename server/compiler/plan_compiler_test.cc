#include "server/compiler/plan_compiler.h"

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_matchers.h"
#include "engine/io/safetensors.h"
#include "engine/ir/tensor.h"
#include "engine/models/mlp.h"
#include "engine/plan/plan_io.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/fleettune/v1/plan.pb.h"
#include "server/base/sha256.h"
#include "server/compiler/byte_size.h"
#include "server/compiler/device_classes.h"

namespace fleettune::server {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The reference workload the default budgets are sized for (device_classes.cc).
v1::JobSpec ReferenceSpec() {
  v1::JobSpec spec;
  spec.set_name("mnist-personalize");
  spec.set_task("classification");
  spec.set_dataset("mnist");
  v1::ModelSpec* model = spec.mutable_base_model();
  model->set_architecture("mlp");
  for (int64_t s : {784, 256, 128, 10}) model->add_layer_sizes(s);
  v1::HyperParameters* h = spec.mutable_hyper_parameters();
  h->set_optimizer(v1::OPTIMIZER_KIND_SGD);
  h->set_learning_rate(0.01f);
  h->set_momentum(0.9f);
  h->set_epochs(1);
  h->set_batch_size(64);
  spec.mutable_scheme()->set_fit_class_budget(true);
  return spec;
}

const v1::DeviceClass& DefaultClass(const std::string& name) {
  static const DeviceClassRegistry* registry =
      new DeviceClassRegistry(DeviceClassRegistry::Defaults());
  return **registry->Find(name);
}

v1::DeviceClass ClassWithBudget(int64_t budget) {
  v1::DeviceClass c;
  c.set_name("tiny");
  c.set_arch("x86_64");
  c.set_training_memory_budget_bytes(budget);
  c.set_threads(1);
  return c;
}

// Seeded weights for the reference MLP, by state_dict name.
std::map<std::string, engine::Tensor> ReferenceWeights() {
  engine::models::MlpConfig config;
  config.sizes = {784, 256, 128, 10};
  engine::runtime::ParameterStore params;
  EXPECT_OK(engine::models::InitializeMlp(config, /*seed=*/7, &params));
  return params.tensors();
}

std::string Safetensors(const std::map<std::string, engine::Tensor>& tensors) {
  absl::StatusOr<std::string> bytes = engine::io::SerializeSafetensors(tensors);
  EXPECT_OK(bytes.status());
  return bytes.ok() ? *bytes : std::string();
}

TEST(PlanCompiler, FitsEveryDefaultClassRpi4GetsASparserScheme) {
  PlanCompiler compiler;
  const v1::JobSpec spec = ReferenceSpec();
  std::map<std::string, v1::PlanSummary> summaries;
  const DeviceClassRegistry registry = DeviceClassRegistry::Defaults();
  for (const v1::DeviceClass& c : registry.classes()) {
    ASSERT_OK_AND_ASSIGN(CompiledClassPlan plan, compiler.Compile(spec, c));
    const v1::PlanSummary& s = plan.summary;
    EXPECT_LE(s.total_bytes(), s.budget_bytes()) << c.name();
    EXPECT_EQ(s.budget_bytes(), static_cast<uint64_t>(c.training_memory_budget_bytes()));
    EXPECT_EQ(s.plan_digest(), Sha256Hex(plan.plan_bytes));

    // The plan is what devices accept, and its metadata agrees with the summary.
    ASSERT_OK_AND_ASSIGN(v1::CompiledPlan parsed, engine::plan::ParsePlan(plan.plan_bytes));
    // The total counts the kernels' workspace too (the loss kernel's per-row scratch).
    EXPECT_EQ(s.total_bytes(), s.arena_bytes() + s.weight_bytes() + s.optimizer_state_bytes() +
                                   parsed.metadata().scratch_bytes() +
                                   parsed.metadata().constant_bytes());
    EXPECT_EQ(parsed.format_version(), engine::plan::kPlanFormatVersion);
    EXPECT_OK(engine::plan::GraphFromProto(parsed.graph()).status());
    EXPECT_EQ(parsed.metadata().model_name(), "mlp-784-256-128-10");
    EXPECT_EQ(parsed.metadata().device_class(), c.name());
    EXPECT_EQ(parsed.metadata().scheme(), s.scheme());
    EXPECT_EQ(parsed.metadata().arena_bytes(), s.arena_bytes());
    EXPECT_EQ(parsed.metadata().weight_bytes(), s.weight_bytes());
    EXPECT_EQ(parsed.metadata().optimizer_state_bytes(), s.optimizer_state_bytes());
    EXPECT_GT(parsed.metadata().flops_per_step(), 0u);
    // Kernels at the width the class guarantees: x86-avx2 requires AVX2 and FMA, x86-avx512
    // AVX-512F too; the Arm classes get the generic (NEON) level.
    const std::string want_isa =
        c.name() == "x86-avx512" ? "avx512" : (c.name() == "x86-avx2" ? "avx2" : "generic");
    EXPECT_EQ(parsed.metadata().kernel_isa(), want_isa) << c.name();
    summaries[c.name()] = s;
  }
  ASSERT_EQ(summaries.size(), 5u);
  // The budgets documented in device_classes.cc: rpi4 is too small for full fine-tuning.
  EXPECT_EQ(summaries["rpi4"].scheme(), "last-k:2");
  EXPECT_EQ(summaries["rpi5"].scheme(), "full");
  EXPECT_EQ(summaries["jetson-orin-nano"].scheme(), "full");
  EXPECT_EQ(summaries["x86-avx2"].scheme(), "full");
  EXPECT_EQ(summaries["x86-avx512"].scheme(), "full");
  EXPECT_GT(summaries["rpi4"].dense_total_bytes(), summaries["rpi4"].budget_bytes());
  EXPECT_LT(summaries["rpi4"].trainable_parameters(), summaries["x86-avx2"].trainable_parameters());
  EXPECT_LT(summaries["rpi4"].total_bytes(), summaries["x86-avx2"].total_bytes());
  // 784·256 + 256 + 256·128 + 128 + 128·10 + 10 weights in all; fc2 and fc3 in last-k:2.
  EXPECT_EQ(summaries["x86-avx2"].trainable_parameters(), 235146);
  EXPECT_EQ(summaries["rpi4"].trainable_parameters(), 256 * 128 + 128 + 128 * 10 + 10);
  EXPECT_EQ(summaries["x86-avx2"].weight_bytes(), 235146u * 4);
  // SGD with momentum keeps one buffer per trainable weight.
  EXPECT_EQ(summaries["x86-avx2"].optimizer_state_bytes(), 235146u * 4);
  for (const auto& [name, s] : summaries) {
    EXPECT_EQ(s.dense_total_bytes(), summaries["x86-avx2"].total_bytes()) << name;
  }
}

TEST(PlanCompiler, DocumentedBudgetOutcomesPerOptimizer) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  // Plain SGD: with each update reordered next to its gradient, full fine-tuning fits rpi4's
  // 2 MiB (1.92 MiB; 2.05 MiB without the passes).
  spec.mutable_hyper_parameters()->set_momentum(0.0f);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan sgd, compiler.Compile(spec, DefaultClass("rpi4")));
  EXPECT_EQ(sgd.summary.scheme(), "full");
  EXPECT_LT(sgd.summary.total_bytes(), sgd.summary.budget_bytes());
  EXPECT_EQ(sgd.summary.optimizer_state_bytes(), 0u);
  // AdamW: full fits the Jetson but not the Pi 5.
  spec.mutable_hyper_parameters()->set_optimizer(v1::OPTIMIZER_KIND_ADAMW);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan rpi5, compiler.Compile(spec, DefaultClass("rpi5")));
  EXPECT_EQ(rpi5.summary.scheme(), "last-k:2");
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan jetson,
                       compiler.Compile(spec, DefaultClass("jetson-orin-nano")));
  EXPECT_EQ(jetson.summary.scheme(), "full");
  // Two moments per trainable weight.
  EXPECT_EQ(jetson.summary.optimizer_state_bytes(), 2 * jetson.summary.weight_bytes());
}

TEST(PlanCompiler, OverBudgetPresetReportsTheFigures) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  spec.mutable_scheme()->set_preset("full");
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan x86, compiler.Compile(spec, DefaultClass("x86-avx2")));
  const uint64_t needs = x86.summary.total_bytes();
  const uint64_t budget = 2 << 20;
  ASSERT_GT(needs, budget);
  EXPECT_THAT(
      compiler.Compile(spec, DefaultClass("rpi4")),
      StatusIs(absl::StatusCode::kFailedPrecondition,
               AllOf(HasSubstr(absl::StrCat("scheme 'full' needs ", FormatBytes(needs), " (", needs,
                                            " bytes) on class rpi4, ")),
                     HasSubstr(absl::StrCat(FormatBytes(needs - budget), " (", needs - budget,
                                            " bytes) over its 2 MiB (2097152 bytes) budget")),
                     HasSubstr("arena "), HasSubstr("optimizer state"))));
}

TEST(PlanCompiler, NoSchemeFitsATinyBudget) {
  PlanCompiler compiler;
  EXPECT_THAT(compiler.Compile(ReferenceSpec(), ClassWithBudget(1 << 20)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("no update scheme fits class tiny's 1 MiB (1048576 bytes) "
                                       "budget: the smallest, 'last-k:1', needs"),
                             HasSubstr("full, last-k:2, last-k:1, bias-only tried"))));
}

TEST(PlanCompiler, PresetsCompileAndTrainWhatTheyName) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  spec.mutable_scheme()->set_preset("freeze:fc1");
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan plan, compiler.Compile(spec, DefaultClass("rpi4")));
  EXPECT_EQ(plan.summary.scheme(), "freeze:fc1");
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan parsed, engine::plan::ParsePlan(plan.plan_bytes));
  EXPECT_THAT(parsed.metadata().trainable_parameters(),
              ElementsAre("fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"));

  spec.mutable_scheme()->set_preset("top-3");
  EXPECT_THAT(compiler.Compile(spec, DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("scheme.preset: unknown scheme 'top-3'")));
}

// An explicit UpdateScheme with partial channels: it compiles, trains only the named rows (the
// update ops carry rows, the momentum buffer has that many rows), and is cached by content.
TEST(PlanCompiler, ExplicitSchemeWithPartialChannels) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  v1::UpdateScheme* scheme = spec.mutable_scheme()->mutable_scheme();
  scheme->set_name("half-fc2");
  v1::UpdateRule* biases = scheme->add_rules();
  biases->set_pattern("*.bias");
  biases->set_mode(v1::UPDATE_MODE_FULL);
  v1::UpdateRule* fc2 = scheme->add_rules();
  fc2->set_pattern("fc2.weight");
  fc2->set_mode(v1::UPDATE_MODE_CHANNELS);
  fc2->set_channel_fraction(0.5);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan plan, compiler.Compile(spec, DefaultClass("rpi4")));
  EXPECT_EQ(plan.summary.scheme(), "half-fc2");
  EXPECT_EQ(plan.summary.trainable_parameters(), 256 + 128 + 10 + 64 * 256);
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan parsed, engine::plan::ParsePlan(plan.plan_bytes));
  EXPECT_THAT(parsed.metadata().trainable_parameters(),
              ElementsAre("fc1.bias", "fc2.weight", "fc2.bias", "fc3.bias"));
  // Momentum buffers: 64 rows of fc2.weight plus the three biases.
  EXPECT_EQ(plan.summary.optimizer_state_bytes(), (64 * 256 + 256 + 128 + 10) * sizeof(float));
  int partial_updates = 0;
  for (const v1::Node& node : parsed.graph().nodes()) {
    // fc2.weight's update takes its gradient's GEMM (fuse_updates).
    const v1::SgdAttrs& sgd = node.has_fused_sgd() ? node.fused_sgd().sgd() : node.sgd();
    if ((node.has_sgd() || node.has_fused_sgd()) && sgd.rows() != 0) {
      EXPECT_EQ(sgd.rows(), 64);
      EXPECT_TRUE(node.has_fused_sgd());
      ++partial_updates;
    }
  }
  EXPECT_EQ(partial_updates, 1);
  // Same request: cached. Another fraction: another plan.
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan again, compiler.Compile(spec, DefaultClass("rpi4")));
  EXPECT_EQ(again.summary.plan_digest(), plan.summary.plan_digest());
  EXPECT_EQ(compiler.compilations(), 1);
  fc2->set_channel_fraction(0.25);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan quarter, compiler.Compile(spec, DefaultClass("rpi4")));
  EXPECT_NE(quarter.summary.plan_digest(), plan.summary.plan_digest());
  EXPECT_LT(quarter.summary.optimizer_state_bytes(), plan.summary.optimizer_state_bytes());
}

TEST(PlanCompiler, RejectsInvalidExplicitSchemesNamingTheTensor) {
  PlanCompiler compiler;
  auto with_rule = [](const std::string& pattern, v1::UpdateMode mode, double fraction) {
    v1::JobSpec spec = ReferenceSpec();
    v1::UpdateRule* r = spec.mutable_scheme()->mutable_scheme()->add_rules();
    r->set_pattern(pattern);
    r->set_mode(mode);
    r->set_channel_fraction(fraction);
    return spec;
  };
  EXPECT_THAT(
      compiler.Compile(with_rule("fc9.weight", v1::UPDATE_MODE_FULL, 0), DefaultClass("x86-avx2")),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("scheme.scheme: "),
                     HasSubstr("'fc9.weight' is not a weight of the model"))));
  EXPECT_THAT(compiler.Compile(with_rule("fc1.bias", v1::UPDATE_MODE_CHANNELS, 0.5),
                               DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor 'fc1.bias' f32[256] cannot train a fraction")));
  EXPECT_THAT(compiler.Compile(with_rule("fc1.weight", v1::UPDATE_MODE_CHANNELS, 0.3),
                               DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("channel fraction 0.3 is not one of 1/8, 1/4, 1/2, 1")));
  EXPECT_THAT(compiler.Compile(with_rule("fc1.weight", v1::UPDATE_MODE_UNSPECIFIED, 0),
                               DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("scheme.scheme: scheme rule 0 (tensor pattern 'fc1.weight'): "
                                 "mode is unset")));
  EXPECT_THAT(compiler.Compile(with_rule("*", v1::UPDATE_MODE_FROZEN, 0), DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("trains nothing")));
  v1::JobSpec empty = ReferenceSpec();
  empty.mutable_scheme()->mutable_scheme();
  EXPECT_THAT(
      compiler.Compile(empty, DefaultClass("x86-avx2")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("scheme.scheme has no rules")));
  // Over budget: the figures name the scheme.
  v1::JobSpec full = with_rule("*", v1::UPDATE_MODE_FULL, 0);
  full.mutable_scheme()->mutable_scheme()->set_name("everything");
  EXPECT_THAT(
      compiler.Compile(full, DefaultClass("rpi4")),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("scheme 'everything' needs")));
}

TEST(PlanCompiler, CountsFlops) {
  PlanCompiler compiler;
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan full,
                       compiler.Compile(ReferenceSpec(), DefaultClass("x86-avx2")));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan parsed, engine::plan::ParsePlan(full.plan_bytes));
  // Forward 2·64·(784·256 + 256·128 + 128·10); backward the same again for the weight
  // gradients, plus input gradients of fc2 and fc3 (none for fc1: the data needs none). The
  // elementwise ops, bias additions and updates (engine/compile/cost.h) add about 1%.
  const uint64_t forward = 2ull * 64 * (784 * 256 + 256 * 128 + 128 * 10);
  const uint64_t input_grads = 2ull * 64 * (256 * 128 + 128 * 10);
  const uint64_t gemm = 2 * forward + input_grads;
  EXPECT_GT(parsed.metadata().flops_per_step(), gemm);
  EXPECT_LT(parsed.metadata().flops_per_step(), gemm + gemm / 50);

  ASSERT_OK_AND_ASSIGN(CompiledClassPlan sparse,
                       compiler.Compile(ReferenceSpec(), DefaultClass("rpi4")));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan sparse_parsed, engine::plan::ParsePlan(sparse.plan_bytes));
  EXPECT_LT(sparse_parsed.metadata().flops_per_step(), parsed.metadata().flops_per_step());
}

TEST(PlanCompiler, CachesIdenticalRequests) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan first, compiler.Compile(spec, DefaultClass("rpi4")));
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan second, compiler.Compile(spec, DefaultClass("rpi4")));
  EXPECT_EQ(compiler.compilations(), 1);
  EXPECT_EQ(first.plan_bytes, second.plan_bytes);

  // Fields that do not shape the plan share the entry.
  spec.set_name("another-job");
  spec.set_dataset("fashion-mnist");
  spec.mutable_hyper_parameters()->set_epochs(5);
  spec.mutable_hyper_parameters()->set_seed(42);
  spec.mutable_base_model()->set_init_seed(3);
  ASSERT_OK(compiler.Compile(spec, DefaultClass("rpi4")).status());
  EXPECT_EQ(compiler.compilations(), 1);

  spec.mutable_hyper_parameters()->set_learning_rate(0.02f);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan changed, compiler.Compile(spec, DefaultClass("rpi4")));
  EXPECT_EQ(compiler.compilations(), 2);
  EXPECT_NE(changed.summary.plan_digest(), first.summary.plan_digest());

  // Another class is another plan.
  ASSERT_OK(compiler.Compile(spec, DefaultClass("rpi5")).status());
  EXPECT_EQ(compiler.compilations(), 3);
}

TEST(PlanCompiler, ConcurrentIdenticalRequestsCompileOnce) {
  PlanCompiler compiler;
  const v1::JobSpec spec = ReferenceSpec();
  std::vector<std::string> digests(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<CompiledClassPlan> plan = compiler.Compile(spec, DefaultClass("rpi4"));
      if (plan.ok()) digests[i] = plan->summary.plan_digest();
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(compiler.compilations(), 1);
  for (const std::string& d : digests) EXPECT_EQ(d, digests[0]);
  EXPECT_FALSE(digests[0].empty());
}

TEST(PlanCompiler, FailuresAreNotCachedAndOldPlansAreEvicted) {
  PlanCompiler::Options options;
  options.max_cached_plans = 1;
  PlanCompiler compiler(options);
  v1::JobSpec spec = ReferenceSpec();
  spec.mutable_scheme()->set_preset("full");
  EXPECT_THAT(compiler.Compile(spec, DefaultClass("rpi4")),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("over its")));
  EXPECT_THAT(compiler.Compile(spec, DefaultClass("rpi4")),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("over its")));
  EXPECT_EQ(compiler.compilations(), 2);

  ASSERT_OK(compiler.Compile(spec, DefaultClass("x86-avx2")).status());          // 3
  ASSERT_OK(compiler.Compile(spec, DefaultClass("jetson-orin-nano")).status());  // 4, evicts x86
  ASSERT_OK(compiler.Compile(spec, DefaultClass("x86-avx2")).status());          // 5
  EXPECT_EQ(compiler.compilations(), 5);
}

TEST(PlanCompiler, PlansAreDeterministic) {
  PlanCompiler a, b;
  for (const char* name : {"rpi4", "x86-avx2"}) {
    ASSERT_OK_AND_ASSIGN(CompiledClassPlan pa, a.Compile(ReferenceSpec(), DefaultClass(name)));
    ASSERT_OK_AND_ASSIGN(CompiledClassPlan pb, b.Compile(ReferenceSpec(), DefaultClass(name)));
    EXPECT_EQ(pa.plan_bytes, pb.plan_bytes) << name;
    EXPECT_EQ(pa.summary.SerializeAsString(), pb.summary.SerializeAsString()) << name;
  }
}

TEST(PlanCompiler, ValidWeightsCompileAndStayOutOfThePlan) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan seeded, compiler.Compile(spec, DefaultClass("rpi4")));
  spec.mutable_base_model()->set_safetensors_weights(Safetensors(ReferenceWeights()));
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan uploaded, compiler.Compile(spec, DefaultClass("rpi4")));
  // The weights are part of the cache key (they were validated) but not of the plan.
  EXPECT_EQ(compiler.compilations(), 2);
  EXPECT_EQ(uploaded.summary.plan_digest(), seeded.summary.plan_digest());
}

struct BadWeightsCase {
  const char* what;
  std::function<void(std::map<std::string, engine::Tensor>&)> mutate;
  const char* message;
};

TEST(PlanCompiler, RejectsWeightsThatDoNotFitTheModel) {
  const std::vector<BadWeightsCase> cases = {
      {"wrong shape",
       [](auto& w) {
         w["fc1.weight"] = engine::Tensor(engine::DType::kF32, {256, 780});
       },
       "tensor 'fc1.weight' is f32[256, 780], expected f32[256, 784]"},
      {"missing", [](auto& w) { w.erase("fc2.bias"); },
       "tensor 'fc2.bias' is missing (expected f32[128])"},
      {"unexpected",
       [](auto& w) {
         w["fc4.weight"] = engine::Tensor(engine::DType::kF32, {10, 10});
       },
       "unexpected tensor 'fc4.weight'"},
      {"wrong dtype", [](auto& w) { w["fc3.bias"] = engine::Tensor(engine::DType::kI32, {10}); },
       "tensor 'fc3.bias' is i32[10], expected f32[10]"},
      {"not finite",
       [](auto& w) { w["fc2.weight"].f32()[5] = std::numeric_limits<float>::quiet_NaN(); },
       "tensor 'fc2.weight' element 5 is nan"},
  };
  for (const BadWeightsCase& c : cases) {
    PlanCompiler compiler;
    v1::JobSpec spec = ReferenceSpec();
    std::map<std::string, engine::Tensor> weights = ReferenceWeights();
    c.mutate(weights);
    spec.mutable_base_model()->set_safetensors_weights(Safetensors(weights));
    EXPECT_THAT(
        compiler.Compile(spec, DefaultClass("x86-avx2")),
        StatusIs(absl::StatusCode::kInvalidArgument,
                 AllOf(HasSubstr("base_model.safetensors_weights: "), HasSubstr(c.message))))
        << c.what;
  }
}

TEST(PlanCompiler, RejectsWeightsThatDoNotParse) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  spec.mutable_base_model()->set_safetensors_weights("this is not a safetensors file");
  EXPECT_THAT(
      compiler.Compile(spec, DefaultClass("x86-avx2")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("base_model.safetensors_weights: ")));
  // Truncated: the parser's DataLoss becomes InvalidArgument, a bad request.
  const std::string valid = Safetensors(ReferenceWeights());
  spec.mutable_base_model()->set_safetensors_weights(valid.substr(0, valid.size() - 100));
  EXPECT_THAT(
      compiler.Compile(spec, DefaultClass("x86-avx2")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("base_model.safetensors_weights: ")));
  spec.mutable_base_model()->set_safetensors_weights(
      std::string(static_cast<size_t>(kMaxBaseWeightsBytes) + 1, '\0'));
  EXPECT_THAT(compiler.Compile(spec, DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("over the 256 MiB limit")));
  EXPECT_EQ(compiler.compilations(), 2);  // the size cap is checked before any work
}

TEST(PlanCompiler, RejectsUnsupportedModels) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  spec.mutable_base_model()->set_architecture("resnet18");
  EXPECT_THAT(compiler.Compile(spec, DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("base_model.architecture 'resnet18' is not supported")));
  spec.mutable_base_model()->clear_architecture();
  EXPECT_THAT(
      compiler.Compile(spec, DefaultClass("x86-avx2")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("base_model.architecture is empty")));

  spec = ReferenceSpec();
  spec.mutable_base_model()->set_registered_model("mnist-mlp");
  EXPECT_THAT(compiler.Compile(spec, DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("registered_model")));

  spec = ReferenceSpec();
  spec.mutable_base_model()->clear_layer_sizes();
  spec.mutable_base_model()->add_layer_sizes(784);
  EXPECT_THAT(compiler.Compile(spec, DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("base_model.layer_sizes has 1 entries")));
  spec.mutable_base_model()->add_layer_sizes(0);
  EXPECT_THAT(
      compiler.Compile(spec, DefaultClass("x86-avx2")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("base_model.layer_sizes[1] is 0")));
  EXPECT_EQ(compiler.compilations(), 0);
}

TEST(PlanCompiler, OneLayerModelFallsBackToBiasOnly) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  spec.mutable_base_model()->clear_layer_sizes();
  spec.mutable_base_model()->add_layer_sizes(784);
  spec.mutable_base_model()->add_layer_sizes(10);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan full, compiler.Compile(spec, DefaultClass("rpi4")));
  EXPECT_EQ(full.summary.scheme(), "full");
  // A budget between the bias-only and the full plan: nothing to try in between.
  spec.mutable_scheme()->set_preset("bias-only");
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan bias, compiler.Compile(spec, DefaultClass("rpi4")));
  spec.mutable_scheme()->set_fit_class_budget(true);
  ASSERT_OK_AND_ASSIGN(
      CompiledClassPlan fitted,
      compiler.Compile(spec, ClassWithBudget(static_cast<int64_t>(bias.summary.total_bytes()))));
  EXPECT_EQ(fitted.summary.scheme(), "bias-only");
  EXPECT_EQ(fitted.summary.trainable_parameters(), 10);
}

// A profile for the reference MLP: every candidate helps, more channels help more.
v1::ContributionProfile ReferenceProfile() {
  v1::ContributionProfile p;
  p.set_model("mlp");
  p.set_task("digits");
  p.set_steps(60);
  p.set_base_accuracy(0.5);
  p.set_base_loss(1.5);
  const std::map<std::string, std::vector<double>> gains = {{"fc1", {0.05, 0.10, 0.15, 0.20}},
                                                            {"fc2", {0.02, 0.04, 0.06, 0.08}},
                                                            {"fc3", {0.01, 0.02, 0.03, 0.10}}};
  const char* ratios[] = {"1/8", "1/4", "1/2", "1"};
  for (const auto& [layer, g] : gains) {
    v1::ContributionProfile::Entry* bias = p.add_entries();
    bias->set_candidate(layer + ".bias");
    bias->set_accuracy(0.6);
    bias->set_loss(1.2);
    for (int i = 0; i < 4; ++i) {
      v1::ContributionProfile::Entry* e = p.add_entries();
      e->set_candidate(absl::StrCat(layer, ".weight@", ratios[i]));
      e->set_accuracy(0.5 + g[i]);
      e->set_loss(1.5 - g[i]);
    }
  }
  return p;
}

TEST(PlanCompiler, FitClassBudgetWithAProfileSearchesEachClasssScheme) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  *spec.mutable_scheme()->mutable_contribution_profile() = ReferenceProfile();
  std::map<std::string, v1::PlanSummary> summaries;
  for (const char* name : {"rpi4", "x86-avx2"}) {
    ASSERT_OK_AND_ASSIGN(CompiledClassPlan plan, compiler.Compile(spec, DefaultClass(name)));
    EXPECT_EQ(plan.summary.scheme(), "searched") << name;
    EXPECT_LE(plan.summary.total_bytes(), plan.summary.budget_bytes()) << name;
    summaries[name] = plan.summary;
  }
  // 64 MiB: every candidate at its best ratio, which is all of every weight.
  EXPECT_EQ(summaries["x86-avx2"].trainable_parameters(), 235146);
  // 2 MiB cannot hold full fine-tuning with momentum (2.15 MiB): the search trains less, and
  // more than the preset ladder's last-k:2 would (it fills the budget with fc1 channels).
  EXPECT_LT(summaries["rpi4"].trainable_parameters(), 235146);
  EXPECT_GT(summaries["rpi4"].trainable_parameters(), 256 * 128 + 128 + 128 * 10 + 10);
  // Filled up to the granularity of fc1's channel fractions (an eighth of fc1 is 10% of 2 MiB).
  EXPECT_GT(summaries["rpi4"].total_bytes(), summaries["rpi4"].budget_bytes() * 85 / 100);

  // The profile is part of the cache key: another profile, another plan.
  v1::JobSpec other = spec;
  other.mutable_scheme()->mutable_contribution_profile()->mutable_entries(1)->set_accuracy(0.99);
  const int64_t before = compiler.compilations();
  ASSERT_OK(compiler.Compile(other, DefaultClass("rpi4")).status());
  EXPECT_EQ(compiler.compilations(), before + 1);
  ASSERT_OK(compiler.Compile(spec, DefaultClass("rpi4")).status());
  EXPECT_EQ(compiler.compilations(), before + 1);  // cached
}

TEST(PlanCompiler, AProfilesJointSetsReplaceTheSelectionWhenClearlyBetter) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  v1::ContributionProfile* profile = spec.mutable_scheme()->mutable_contribution_profile();
  *profile = ReferenceProfile();
  profile->set_heldout_samples(500);
  auto add_joint = [&](const std::string& origin, std::vector<std::string> ids, double accuracy) {
    v1::ContributionProfile::Joint* j = profile->add_joint();
    j->set_origin(origin);
    for (const std::string& id : ids) j->add_candidates(id);
    j->set_steps(120);
    j->set_accuracy(accuracy);
    j->set_loss(1.0 - accuracy);
  };
  // What the additive search picks per class, as the coordinator sees it.
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan rpi4_additive,
                       compiler.Compile(spec, DefaultClass("rpi4")));
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan x86_additive,
                       compiler.Compile(spec, DefaultClass("x86-avx2")));
  ASSERT_EQ(x86_additive.summary.trainable_parameters(), 235146);
  const std::vector<std::string> everything = {"fc1.weight@1", "fc1.bias",     "fc2.weight@1",
                                               "fc2.bias",     "fc3.weight@1", "fc3.bias"};
  // x86-avx2's selection (every weight) measured 80%; the head alone 81%, within one
  // standard error (1.8 points at 500 samples): the selection stays.
  add_joint("selection", everything, 0.80);
  add_joint("last-k:1", {"fc3.weight@1", "fc3.bias"}, 0.81);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan x86, compiler.Compile(spec, DefaultClass("x86-avx2")));
  EXPECT_EQ(x86.summary.trainable_parameters(), 235146);
  // 5 points better is beyond noise: the head alone replaces it.
  profile->mutable_joint(1)->set_accuracy(0.85);
  ASSERT_OK_AND_ASSIGN(x86, compiler.Compile(spec, DefaultClass("x86-avx2")));
  EXPECT_EQ(x86.summary.scheme(), "searched");
  EXPECT_EQ(x86.summary.trainable_parameters(), 128 * 10 + 10);
  // rpi4's own selection was never measured: nothing to compare with, so it keeps it.
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan rpi4, compiler.Compile(spec, DefaultClass("rpi4")));
  EXPECT_EQ(rpi4.summary.trainable_parameters(), rpi4_additive.summary.trainable_parameters());

  // A joint set naming something the model lacks is bad input, named.
  add_joint("typo", {"fc9.weight@1"}, 0.99);
  EXPECT_THAT(compiler.Compile(spec, DefaultClass("x86-avx2")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("scheme.contribution_profile"), HasSubstr("typo"),
                             HasSubstr("fc9.weight"))));
}

TEST(PlanCompiler, RejectsBadProfiles) {
  PlanCompiler compiler;
  auto with = [](const std::function<void(v1::JobSpec&)>& edit) {
    v1::JobSpec spec = ReferenceSpec();
    *spec.mutable_scheme()->mutable_contribution_profile() = ReferenceProfile();
    edit(spec);
    return spec;
  };
  EXPECT_THAT(
      compiler.Compile(
          with([](v1::JobSpec& s) {
            s.mutable_scheme()->mutable_contribution_profile()->mutable_entries(0)->set_candidate(
                "fc9.bias");
          }),
          DefaultClass("rpi4")),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("scheme.contribution_profile"), HasSubstr("fc9.bias"))));
  EXPECT_THAT(
      compiler.Compile(
          with([](v1::JobSpec& s) {
            s.mutable_scheme()->mutable_contribution_profile()->mutable_entries(2)->set_accuracy(7);
          }),
          DefaultClass("rpi4")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("entry 2")));
  EXPECT_THAT(compiler.Compile(with([](v1::JobSpec& s) { s.mutable_scheme()->set_preset("full"); }),
                               DefaultClass("rpi4")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("contribution_profile applies to scheme.fit_class_budget only")));
  // Nothing helped: nothing to choose.
  EXPECT_THAT(
      compiler.Compile(
          with([](v1::JobSpec& s) {
            for (auto& e : *s.mutable_scheme()->mutable_contribution_profile()->mutable_entries()) {
              e.set_accuracy(0.4);
            }
          }),
          DefaultClass("rpi4")),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("positive gain")));
  // A budget below every candidate: FailedPrecondition, like the preset ladder's.
  EXPECT_THAT(compiler.Compile(with([](v1::JobSpec&) {}), ClassWithBudget(1 << 20)),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("tiny")));
}

struct BadHyperCase {
  std::function<void(v1::JobSpec&)> mutate;
  const char* message;
};

TEST(PlanCompiler, RejectsBadHyperParametersAndSchemes) {
  auto h = [](v1::JobSpec& s) { return s.mutable_hyper_parameters(); };
  const std::vector<BadHyperCase> cases = {
      {[&](auto& s) { h(s)->clear_optimizer(); }, "hyper_parameters.optimizer is unset"},
      {[&](auto& s) { h(s)->set_optimizer(static_cast<v1::OptimizerKind>(7)); },
       "hyper_parameters.optimizer 7 is not a known"},
      {[&](auto& s) { h(s)->set_learning_rate(0.0f); }, "learning_rate must be finite and > 0"},
      {[&](auto& s) { h(s)->set_learning_rate(std::nanf("")); }, "learning_rate must be"},
      {[&](auto& s) { h(s)->set_momentum(1.0f); }, "momentum must be in [0, 1) for SGD"},
      {[&](auto& s) { h(s)->set_optimizer(v1::OPTIMIZER_KIND_ADAMW); },
       "momentum applies to SGD only"},
      {[&](auto& s) { h(s)->set_weight_decay(-0.1f); }, "weight_decay must be finite and >= 0"},
      {[&](auto& s) { h(s)->set_batch_size(0); }, "batch_size is 0, outside [1, 65536]"},
      {[&](auto& s) { h(s)->set_batch_size(65537); }, "batch_size is 65537"},
      {[&](auto& s) { h(s)->set_epochs(0); }, "epochs must be >= 1"},
      {[&](auto& s) { s.clear_scheme(); }, "scheme is unset"},
      {[&](auto& s) { s.mutable_scheme()->set_fit_class_budget(false); },
       "scheme.fit_class_budget is false"},
      {[&](auto& s) { s.mutable_scheme()->set_preset(""); }, "scheme.preset is empty"},
      {[&](auto& s) { h(s)->set_micro_batches(-2); }, "micro_batches must be >= 0, got -2"},
      {[&](auto& s) { h(s)->set_micro_batches(3); },
       "micro_batches (3) must divide batch_size (64)"},
      {[&](auto& s) {
         h(s)->set_micro_batches(2);
         h(s)->set_fit_micro_batches(true);
       },
       "give micro_batches or fit_micro_batches, not both"},
      {[&](auto& s) {
         h(s)->set_momentum(0.0f);
         h(s)->set_micro_batches(2);
       },
       "micro-batching needs SGD with momentum > 0"},
      {[&](auto& s) {
         h(s)->set_optimizer(v1::OPTIMIZER_KIND_ADAMW);
         h(s)->set_momentum(0.0f);
         h(s)->set_fit_micro_batches(true);
       },
       "micro-batching needs SGD with momentum > 0"},
      {[&](auto& s) {
         h(s)->set_fit_micro_batches(true);
         *s.mutable_scheme()->mutable_contribution_profile() = ReferenceProfile();
       },
       "fit_micro_batches does not apply to scheme.contribution_profile"},
  };
  PlanCompiler compiler;
  for (const BadHyperCase& c : cases) {
    v1::JobSpec spec = ReferenceSpec();
    c.mutate(spec);
    EXPECT_THAT(compiler.Compile(spec, DefaultClass("x86-avx2")),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.message)));
  }
  v1::DeviceClass bad = DefaultClass("rpi4");
  bad.set_training_memory_budget_bytes(0);
  EXPECT_THAT(compiler.Compile(ReferenceSpec(), bad),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("device class 'rpi4': training_memory_budget_bytes")));
  EXPECT_EQ(compiler.compilations(), 0);
}

TEST(PlanCompiler, LargerBatchNeedsALargerArena) {
  PlanCompiler compiler;
  v1::JobSpec spec = ReferenceSpec();
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan b64, compiler.Compile(spec, DefaultClass("x86-avx2")));
  spec.mutable_hyper_parameters()->set_batch_size(128);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan b128, compiler.Compile(spec, DefaultClass("x86-avx2")));
  EXPECT_GT(b128.summary.arena_bytes(), b64.summary.arena_bytes());
  EXPECT_EQ(b128.summary.weight_bytes(), b64.summary.weight_bytes());
}

// The reference workload on a batch large enough for its activations to
// outweigh its weights, gradients and momentum, which slices do not shrink.
v1::JobSpec LargeBatchSpec() {
  v1::JobSpec spec = ReferenceSpec();
  spec.mutable_hyper_parameters()->set_batch_size(1024);
  return spec;
}

// The total a preset needs on `device_class` in `slices` micro-batches.
uint64_t TotalInSlices(PlanCompiler& compiler, const std::string& preset, int slices,
                       const v1::DeviceClass& device_class) {
  v1::JobSpec spec = LargeBatchSpec();
  spec.mutable_scheme()->set_preset(preset);
  spec.mutable_hyper_parameters()->set_micro_batches(slices);
  absl::StatusOr<CompiledClassPlan> plan = compiler.Compile(spec, device_class);
  EXPECT_OK(plan.status());
  return plan.ok() ? plan->summary.total_bytes() : 0;
}

TEST(PlanCompiler, MicroBatchedPlansRunInSlicesAndNeedLessMemory) {
  PlanCompiler compiler;
  v1::JobSpec spec = LargeBatchSpec();
  spec.mutable_scheme()->set_preset("full");
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan whole, compiler.Compile(spec, DefaultClass("x86-avx2")));
  EXPECT_EQ(whole.summary.micro_batches(), 1);
  spec.mutable_hyper_parameters()->set_micro_batches(4);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan sliced, compiler.Compile(spec, DefaultClass("x86-avx2")));
  EXPECT_EQ(compiler.compilations(), 2);  // the slices are part of the cache key
  EXPECT_EQ(sliced.summary.micro_batches(), 4);
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan parsed, engine::plan::ParsePlan(sliced.plan_bytes));
  EXPECT_EQ(parsed.metadata().micro_batches(), 4);
  // The graph is one slice of 256; the whole batch of 1024 is staged, and counted.
  EXPECT_GT(parsed.metadata().staging_bytes(), 1024u * 784 * 4);
  EXPECT_EQ(sliced.summary.total_bytes(),
            sliced.summary.arena_bytes() + sliced.summary.weight_bytes() +
                sliced.summary.optimizer_state_bytes() + parsed.metadata().scratch_bytes() +
                parsed.metadata().constant_bytes() + parsed.metadata().staging_bytes());
  EXPECT_LT(sliced.summary.arena_bytes(), whole.summary.arena_bytes());
  EXPECT_LT(sliced.summary.total_bytes(), whole.summary.total_bytes());
  EXPECT_EQ(sliced.summary.trainable_parameters(), whole.summary.trainable_parameters());
  // The memory saving counts against the whole batch's dense plan.
  EXPECT_EQ(sliced.summary.dense_total_bytes(), whole.summary.total_bytes());
}

TEST(PlanCompiler, FitMicroBatchesPicksTheFewestSlicesThatFit) {
  PlanCompiler compiler;
  const v1::DeviceClass& x86 = DefaultClass("x86-avx2");
  const uint64_t whole = TotalInSlices(compiler, "full", 1, x86);
  const uint64_t two = TotalInSlices(compiler, "full", 2, x86);
  const uint64_t four = TotalInSlices(compiler, "full", 4, x86);
  ASSERT_GT(whole, two);
  ASSERT_GT(two, four);
  v1::JobSpec spec = LargeBatchSpec();
  spec.mutable_scheme()->set_preset("full");
  spec.mutable_hyper_parameters()->set_fit_micro_batches(true);
  // Room for 4 slices, not for 2: 4.
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan fitted,
                       compiler.Compile(spec, ClassWithBudget(static_cast<int64_t>(four))));
  EXPECT_EQ(fitted.summary.scheme(), "full");
  EXPECT_EQ(fitted.summary.micro_batches(), 4);
  EXPECT_EQ(fitted.summary.total_bytes(), four);
  // Room for the whole batch: no slices.
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan roomy,
                       compiler.Compile(spec, ClassWithBudget(static_cast<int64_t>(whole))));
  EXPECT_EQ(roomy.summary.micro_batches(), 1);
  // Without fit_micro_batches the whole batch is over that budget, and the error says what
  // would help.
  spec.mutable_hyper_parameters()->set_fit_micro_batches(false);
  EXPECT_THAT(compiler.Compile(spec, ClassWithBudget(static_cast<int64_t>(four))),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("hyper_parameters.fit_micro_batches")));
  // No number of slices fits a budget below the weights and momentum: the smallest plan is
  // reported with its slices.
  spec.mutable_hyper_parameters()->set_fit_micro_batches(true);
  EXPECT_THAT(compiler.Compile(spec, ClassWithBudget(1 << 20)),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("scheme 'full' needs"), HasSubstr("micro-batches;"))));
}

TEST(PlanCompiler, FitClassBudgetWithSlicesKeepsTheDenserScheme) {
  PlanCompiler compiler;
  // A budget that full fine-tuning fits only in slices: the preset ladder takes full in
  // slices before a sparser scheme on the whole batch.
  const v1::DeviceClass& x86 = DefaultClass("x86-avx2");
  const uint64_t two = TotalInSlices(compiler, "full", 2, x86);
  ASSERT_LT(two, TotalInSlices(compiler, "full", 1, x86));
  v1::JobSpec spec = LargeBatchSpec();  // fit_class_budget
  const v1::DeviceClass small = ClassWithBudget(static_cast<int64_t>(two));
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan whole, compiler.Compile(spec, small));
  EXPECT_NE(whole.summary.scheme(), "full");
  spec.mutable_hyper_parameters()->set_fit_micro_batches(true);
  ASSERT_OK_AND_ASSIGN(CompiledClassPlan sliced, compiler.Compile(spec, small));
  EXPECT_EQ(sliced.summary.scheme(), "full");
  EXPECT_EQ(sliced.summary.micro_batches(), 2);
  EXPECT_GT(sliced.summary.trainable_parameters(), whole.summary.trainable_parameters());
}

}  // namespace
}  // namespace fleettune::server
