// fleettune half of the update-scheme benchmark (issue #6): one training step
// of MobileNetV2, BERT-mini or a Llama-style decoder (engine/models/zoo.h) under the full,
// bias-only and sparse schemes. bench/compare_schemes.sh runs it next to bench/pytorch_schemes.py,
// whose docstring defines the shared workloads and schemes, and prints the ratios.
//
//   bazel run -c opt //bench:scheme_bench -- --model=mobilenet_v2 --schemes=full,sparse --profile
//
// Each scheme is compiled as the coordinator compiles plans (engine/compile,
// with the passes of --passes) and run as a device runs them. Prints one JSON
// line per scheme: ms_per_step (median over --steps after --warmup),
// peak_bytes (static arena + kernel scratch + folded constants + staged batch + optimizer
// state: all training memory besides the weights) and trainable_elements (to check that
// both frameworks train the same parameters). --profile prints the time per op
// kind to stderr (adds two clock reads per instruction); --profile_nodes=N
// adds the N slowest nodes with their input and output types.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/base/status_macros.h"
#include "engine/compile/compiler.h"
#include "engine/kernels/isa.h"
#include "engine/models/zoo.h"
#include "engine/passes/pipeline.h"
#include "engine/train/trainer.h"

ABSL_FLAG(std::string, model, "mobilenet_v2",
          "mobilenet_v2, bert_mini or llama_mini (engine/models/zoo.h).");
ABSL_FLAG(std::string, schemes, "full,bias-only,sparse", "Update schemes to run.");
ABSL_FLAG(int, threads, 2, "Kernel threads.");
ABSL_FLAG(std::string, kernel_isa, "",
          "Kernel ISA level (engine/kernels/isa.h): generic, avx2 (the x86-avx2 class's) or "
          "avx512 (x86-avx512's). Empty: this host's widest, the level of the device class it "
          "matches, as PyTorch also runs the widest its CPU has.");
ABSL_FLAG(int, steps, 10, "Timed steps per scheme.");
ABSL_FLAG(int, warmup, 3, "Untimed steps per scheme.");
ABSL_FLAG(std::string, passes, "default",
          "Compiler passes: default (the compiler's: all but fold_constants), or as "
          "engine/passes/pipeline.h parses: all, none or a comma list.");
ABSL_FLAG(int, micro_batches, 1,
          "Run each step's batch of 8 as this many slices, the gradients accumulated (1, 2, 4 or "
          "8); the arena holds one slice's activations.");
ABSL_FLAG(bool, profile, false, "Print time per op kind to stderr (adds timer overhead).");
ABSL_FLAG(int, profile_nodes, 0, "With --profile, also the N slowest nodes with their types.");

namespace fleettune::engine {
namespace {

constexpr int64_t kBatch = 8;

absl::Status RunScheme(const std::string& model_name, const std::string& scheme) {
  ASSIGN_OR_RETURN(const models::ZooEntry* zoo, models::FindZooModel(model_name));
  const int micro_batches = absl::GetFlag(FLAGS_micro_batches);
  if (micro_batches < 1 || kBatch % micro_batches != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--micro_batches must divide the batch of ", kBatch, ", got ", micro_batches));
  }
  ASSIGN_OR_RETURN(models::Model model, zoo->build(kBatch / micro_batches, models::Mode::kEval));
  auto resolved = train::ResolvePreset(model, scheme);
  if (!resolved.ok() && absl::StrContains(resolved.status().message(), "trains nothing")) {
    std::fprintf(stderr, "%s: scheme %s trains nothing; skipped\n", model_name.c_str(),
                 scheme.c_str());
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(resolved.status());
  // The plan a device of this class would get (engine/compile), run as it would run it.
  compile::CompileOptions compile_options;
  compile_options.model_name = model_name;
  compile_options.scheme = *resolved;
  compile_options.optimizer = autodiff::OptimizerConfig::Sgd({0.01f, 0.9f, 0.0f});
  compile_options.threads = absl::GetFlag(FLAGS_threads);
  compile_options.kernel_isa = absl::GetFlag(FLAGS_kernel_isa);
  if (compile_options.kernel_isa.empty()) {
    compile_options.kernel_isa = std::string(kernels::IsaName(kernels::BestHostIsa()));
  }
  compile_options.micro_batches = micro_batches;
  if (absl::GetFlag(FLAGS_passes) != "default") {
    ASSIGN_OR_RETURN(compile_options.passes,
                     passes::PassOptions::Parse(absl::GetFlag(FLAGS_passes)));
  }
  ASSIGN_OR_RETURN(compile::CompiledTraining compiled,
                   compile::CompileTraining(model, compile_options));
  runtime::ParameterStore params;
  RETURN_IF_ERROR(zoo->initialize(model, 0, &params));
  const int64_t trainable_elements = resolved->TrainableElements();
  runtime::CompileOptions options = compile::RuntimeOptionsFor(compiled.plan.metadata());
  options.profile = absl::GetFlag(FLAGS_profile);
  ASSIGN_OR_RETURN(auto exe, runtime::Executable::Compile(compiled.graph, &params, options));
  RETURN_IF_ERROR(zoo->fill_batch(*exe, 0));
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup); ++i) RETURN_IF_ERROR(exe->Run());
  exe->ResetProfile();
  std::vector<double> ms;
  for (int i = 0; i < absl::GetFlag(FLAGS_steps); ++i) {
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(exe->Run());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  const runtime::MemoryStats& mem = exe->memory();
  const size_t peak = mem.total_bytes() - mem.weight_bytes;  // training memory beyond the weights
  std::printf(
      "{\"framework\": \"fleettune\", \"model\": \"%s\", \"mode\": \"%s\", \"ms_per_step\": %.3f, "
      "\"peak_bytes\": %zu, \"train_bytes\": %zu, \"arena_bytes\": %zu, \"scratch_bytes\": %zu, "
      "\"constant_bytes\": %zu, \"staging_bytes\": %zu, \"optim_bytes\": %zu, "
      "\"weight_bytes\": %zu, \"micro_batches\": %d, "
      "\"trainable_elements\": %lld, \"passes\": \"%s\", "
      "\"threads\": %d, \"steps\": %d, \"warmup\": %d}\n",
      model_name.c_str(), scheme.c_str(), ms[ms.size() / 2], peak, peak, mem.arena_bytes,
      mem.scratch_bytes, mem.constant_bytes, mem.staging_bytes, mem.optimizer_state_bytes,
      mem.weight_bytes, micro_batches, static_cast<long long>(trainable_elements),
      absl::GetFlag(FLAGS_passes).c_str(), options.threads, absl::GetFlag(FLAGS_steps),
      absl::GetFlag(FLAGS_warmup));
  std::fflush(stdout);
  if (options.profile) {
    std::fprintf(stderr, "%s %s:\n%s", model_name.c_str(), scheme.c_str(),
                 exe->ProfileReport(absl::GetFlag(FLAGS_profile_nodes)).c_str());
  }
  return absl::OkStatus();
}

absl::Status Main() {
  if (absl::GetFlag(FLAGS_steps) < 1) return absl::InvalidArgumentError("--steps must be >= 1");
  for (absl::string_view scheme :
       absl::StrSplit(absl::GetFlag(FLAGS_schemes), ',', absl::SkipEmpty())) {
    RETURN_IF_ERROR(RunScheme(absl::GetFlag(FLAGS_model), std::string(scheme)));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace fleettune::engine

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const absl::Status status = fleettune::engine::Main();
  if (!status.ok()) {
    std::fprintf(stderr, "scheme_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
