#include "cli/compile.h"

#include <cstdint>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/format.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/compile/compiler.h"
#include "engine/models/zoo.h"
#include "engine/plan/plan_io.h"
#include "engine/plan/scheme_io.h"
#include "engine/scheme/scheme.h"
#include "engine/train/trainer.h"
#include "server/compiler/device_classes.h"

namespace fleettune::cli {
namespace {

// Scheme files are a few rules; the cap bounds what a bad path can make us read.
constexpr int64_t kMaxSchemeFileBytes = int64_t{1} << 20;

std::string Flag(const std::map<std::string, std::string>& flags, const std::string& name,
                 const std::string& fallback) {
  auto it = flags.find(name);
  return it == flags.end() ? fallback : it->second;
}

absl::Status FlagError(const std::string& flag, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
}

absl::StatusOr<double> PositiveNumber(const std::map<std::string, std::string>& flags,
                                      const std::string& name, const std::string& fallback,
                                      bool zero_ok) {
  double v = 0;
  const std::string text = Flag(flags, name, fallback);
  if (!absl::SimpleAtod(text, &v) || !(zero_ok ? v >= 0 : v > 0) || v > 1e9) {
    return FlagError(name, absl::StrCat("'", text, "' is not a number ", zero_ok ? ">= 0" : "> 0"));
  }
  return v;
}

}  // namespace

absl::Status RunCompile(const std::map<std::string, std::string>& flags, bool json,
                        std::ostream* out) {
  const std::string model_name = Flag(flags, "model", "");
  if (model_name.empty()) return FlagError("model", "required (a zoo model, e.g. mobilenet_v2)");
  ASSIGN_OR_RETURN(const engine::models::ZooEntry* zoo, engine::models::FindZooModel(model_name));

  ASSIGN_OR_RETURN(double batch, PositiveNumber(flags, "batch", "8", false));
  if (batch != static_cast<int64_t>(batch) || batch > 65536) {
    return FlagError("batch", "must be an integer in [1, 65536]");
  }
  // Micro-batch counts to compile: the flag's, or under "fit" every divisor of
  // the batch, fewest first, until a plan fits the class's budget.
  const std::string slices = Flag(flags, "micro-batches", "1");
  const bool fit = slices == "fit";
  std::vector<int64_t> counts;
  if (fit) {
    for (int64_t k = 1; k <= static_cast<int64_t>(batch); ++k) {
      if (static_cast<int64_t>(batch) % k == 0) counts.push_back(k);
    }
  } else {
    ASSIGN_OR_RETURN(double k, PositiveNumber(flags, "micro-batches", "1", false));
    if (k != static_cast<int64_t>(k) ||
        static_cast<int64_t>(batch) % static_cast<int64_t>(k) != 0) {
      return FlagError("micro-batches", absl::StrCat("must be fit or an integer that divides "
                                                     "--batch ",
                                                     static_cast<int64_t>(batch)));
    }
    counts.push_back(static_cast<int64_t>(k));
  }
  const std::string bn = Flag(flags, "batchnorm", "frozen");
  if (bn != "frozen" && bn != "train") return FlagError("batchnorm", "must be frozen or train");
  const engine::models::Mode mode =
      bn == "train" ? engine::models::Mode::kTrain : engine::models::Mode::kEval;
  // A micro-batched plan's graph is one slice of the batch.
  ASSIGN_OR_RETURN(engine::models::Model model,
                   zoo->build(static_cast<int64_t>(batch) / counts.front(), mode));

  engine::compile::CompileOptions options;
  options.model_name = model_name;
  if (auto it = flags.find("scheme-file"); it != flags.end()) {
    if (flags.count("scheme")) return FlagError("scheme-file", "give --scheme or --scheme-file");
    auto text = engine::ReadFileToString(it->second, kMaxSchemeFileBytes);
    if (!text.ok()) return FlagError("scheme-file", std::string(text.status().message()));
    auto parsed = engine::plan::ParseSchemeText(*text);
    if (!parsed.ok()) return FlagError("scheme-file", std::string(parsed.status().message()));
    auto resolved = engine::scheme::ResolveScheme(model, *parsed);
    if (!resolved.ok()) return FlagError("scheme-file", std::string(resolved.status().message()));
    options.scheme = *std::move(resolved);
  } else {
    auto resolved = engine::train::ResolvePreset(model, Flag(flags, "scheme", "full"));
    if (!resolved.ok()) return FlagError("scheme", std::string(resolved.status().message()));
    options.scheme = *std::move(resolved);
  }

  ASSIGN_OR_RETURN(double lr, PositiveNumber(flags, "lr", "0.01", false));
  const std::string optimizer = Flag(flags, "optimizer", "sgd");
  if (optimizer == "sgd") {
    ASSIGN_OR_RETURN(double momentum, PositiveNumber(flags, "momentum", "0.9", true));
    if (momentum >= 1) return FlagError("momentum", "must be in [0, 1)");
    options.optimizer = engine::autodiff::OptimizerConfig::Sgd(
        {static_cast<float>(lr), static_cast<float>(momentum), 0.0f});
  } else if (optimizer == "adamw") {
    engine::AdamWAttrs adamw;
    adamw.lr = static_cast<float>(lr);
    options.optimizer = engine::autodiff::OptimizerConfig::AdamW(adamw);
  } else {
    return FlagError("optimizer", "must be sgd or adamw");
  }

  server::DeviceClassRegistry registry = server::DeviceClassRegistry::Defaults();
  if (auto it = flags.find("device-classes"); it != flags.end()) {
    auto loaded = server::DeviceClassRegistry::FromFile(it->second);
    if (!loaded.ok()) return FlagError("device-classes", std::string(loaded.status().message()));
    registry = *std::move(loaded);
  }
  ASSIGN_OR_RETURN(const v1::DeviceClass* device_class,
                   registry.Find(Flag(flags, "device-class", "x86-avx2")));
  options.device_class = device_class->name();
  options.threads = std::max(1, device_class->threads());
  options.kernel_isa = server::KernelIsaFor(*device_class);

  const int64_t budget = device_class->training_memory_budget_bytes();
  engine::compile::CompiledTraining compiled;
  for (const int64_t k : counts) {
    if (k != counts.front()) {
      ASSIGN_OR_RETURN(model, zoo->build(static_cast<int64_t>(batch) / k, mode));
    }
    options.micro_batches = static_cast<int>(k);
    auto attempt = engine::compile::CompileTraining(model, options);
    // A graph that cannot run in slices stops the search.
    if (!attempt.ok() && k != counts.front()) break;
    RETURN_IF_ERROR(attempt.status());
    const uint64_t bytes = engine::compile::TrainingBytes(attempt->plan.metadata());
    // Fewer slices run faster, so the first that fits wins; if none fits,
    // the smallest plan is the one reported.
    const bool fits = bytes <= static_cast<uint64_t>(budget);
    if (fits || k == counts.front() ||
        bytes < engine::compile::TrainingBytes(compiled.plan.metadata())) {
      compiled = *std::move(attempt);
    }
    if (fits) break;
  }
  const v1::PlanMetadata& meta = compiled.plan.metadata();
  if (auto it = flags.find("out"); it != flags.end()) {
    RETURN_IF_ERROR(engine::plan::WritePlan(it->second, compiled.plan));
  }
  if (json) {
    ASSIGN_OR_RETURN(std::string line, FormatJson(meta));
    *out << line << "\n";
    return absl::OkStatus();
  }
  *out << engine::compile::FormatPlanSummary(meta);
  const uint64_t need = engine::compile::TrainingBytes(meta);
  *out << absl::StrFormat("class budget     %.2f MiB: %s\n", budget / 1048576.0,
                          static_cast<int64_t>(need) <= budget ? "fits" : "DOES NOT FIT");
  if (fit) {
    *out << absl::StrFormat(
        "micro-batches    %d chosen: %s\n", std::max(1, meta.micro_batches()),
        static_cast<int64_t>(need) <= budget
            ? absl::StrCat("the fewest slices of the batch of ", static_cast<int64_t>(batch),
                           " that fit the budget")
            : std::string("no count of slices fits; this one needs the least memory"));
  }
  if (auto it = flags.find("out"); it != flags.end())
    *out << "plan written to  " << it->second << "\n";
  return absl::OkStatus();
}

}  // namespace fleettune::cli
