#include "cli/search.h"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <set>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/data/readers.h"
#include "cli/format.h"
#include "cli/plot.h"
#include "engine/base/file.h"
#include "engine/base/status_macros.h"
#include "engine/io/safetensors.h"
#include "engine/models/zoo.h"
#include "engine/plan/scheme_io.h"
#include "engine/search/candidates.h"
#include "engine/search/contribution.h"
#include "engine/search/cost_model.h"
#include "engine/search/profile_cache.h"
#include "engine/search/select.h"
#include "nlohmann/json.hpp"
#include "server/compiler/device_classes.h"

namespace fleettune::cli {
namespace {

namespace search = engine::search;

using Flags = std::map<std::string, std::string>;

std::string Flag(const Flags& flags, const std::string& name, const std::string& fallback) {
  auto it = flags.find(name);
  return it == flags.end() ? fallback : it->second;
}

absl::Status FlagError(const std::string& flag, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
}

// A flag's error, prefixed with the flag (the file's or parser's message follows).
absl::Status FlagError(const std::string& flag, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("--", flag, ": ", status.message()));
}

absl::StatusOr<double> Number(const Flags& flags, const std::string& name,
                              const std::string& fallback, double lo, double hi,
                              bool lo_inclusive) {
  double v = 0;
  const std::string text = Flag(flags, name, fallback);
  if (!absl::SimpleAtod(text, &v) || !(lo_inclusive ? v >= lo : v > lo) || !(v <= hi)) {
    return FlagError(name, absl::StrCat("'", text, "' is not a number in ",
                                        lo_inclusive ? "[" : "(", lo, ", ", hi, "]"));
  }
  return v;
}

absl::StatusOr<int64_t> Integer(const Flags& flags, const std::string& name,
                                const std::string& fallback, int64_t lo, int64_t hi) {
  int64_t v = 0;
  const std::string text = Flag(flags, name, fallback);
  if (!absl::SimpleAtoi(text, &v) || v < lo || v > hi) {
    return FlagError(name, absl::StrCat("'", text, "' is not an integer in [", lo, ", ", hi, "]"));
  }
  return v;
}

// The operator's calibration data, split into the samples each candidate
// fine-tunes on and those its gain is measured on.
absl::StatusOr<search::CalibrationData> LoadCalibration(const Flags& flags,
                                                        const std::string& task) {
  const std::string spec = Flag(flags, "calibration", "");
  const size_t colon = spec.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size()) {
    return FlagError("calibration", "expected FORMAT:PATH, e.g. opencv-digits-png:digits.png");
  }
  auto all = agent::ReadDataset(spec.substr(0, colon), spec.substr(colon + 1));
  if (!all.ok()) return FlagError("calibration", all.status());
  agent::SplitOptions split;
  split.name = task;
  if (auto it = flags.find("calibration-shard"); it != flags.end()) {
    std::vector<std::string> parts = absl::StrSplit(it->second, '/');
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &split.shard_index) ||
        !absl::SimpleAtoi(parts[1], &split.shard_count) || split.shard_count < 1) {
      return FlagError("calibration-shard", absl::StrCat("'", it->second, "' is not I/N"));
    }
  }
  ASSIGN_OR_RETURN(split.holdout_fraction,
                   Number(flags, "calibration-holdout", "0.5", 0.0, 0.95, false));
  auto data = agent::ShardAndSplit(*all, split);
  if (!data.ok()) return FlagError("calibration-shard", data.status());
  if (data->train.size() == 0 || data->holdout.size() == 0) {
    return FlagError("calibration", "too few samples to split into train and held-out sets");
  }
  return search::CalibrationData{data->train.images, data->train.labels, data->holdout.images,
                                 data->holdout.labels};
}

std::string DefaultCacheDir() {
  const char* home = std::getenv("HOME");
  return absl::StrCat(home != nullptr && *home != '\0' ? home : "/tmp",
                      "/.cache/fleettune/profiles");
}

// A candidate's series in the plot: biases, scales, then one per channel ratio.
int SeriesOf(const search::Candidate& c) {
  if (c.kind == search::CandidateKind::kBias) return 0;
  if (c.kind == search::CandidateKind::kScale) return 1;
  for (int i = 0; i < 4; ++i) {
    if (c.fraction == search::kChannelFractions[i]) return i + 2;
  }
  return 5;
}

struct ClassResult {
  const v1::DeviceClass* device_class = nullptr;
  int64_t budget_bytes = 0;
  absl::StatusOr<search::Selection> selection = absl::UnknownError("not run");
  int64_t inference_bytes = 0;
  double seconds = 0.0;  // selection wall time
  int64_t compiles = 0;
};

std::string Millis(double seconds) { return absl::StrFormat("%.1f ms", seconds * 1e3); }

std::string Gain(double g, search::GainMetric metric) {
  return metric == search::GainMetric::kAccuracy ? absl::StrFormat("%+.2f pt", 100 * g)
                                                 : absl::StrFormat("%+.4f", g);
}

}  // namespace

absl::Status RunSearch(const Flags& flags, bool json, std::ostream* out) {
  // --- The model, its base weights and the options.
  const std::string model_name = Flag(flags, "model", "");
  if (model_name.empty()) return FlagError("model", "required (a zoo model, e.g. mlp)");
  ASSIGN_OR_RETURN(const engine::models::ZooEntry* zoo, engine::models::FindZooModel(model_name));
  ASSIGN_OR_RETURN(int64_t batch, Integer(flags, "batch", "32", 1, 65536));
  ASSIGN_OR_RETURN(engine::models::Model model, zoo->build(batch, engine::models::Mode::kEval));
  ASSIGN_OR_RETURN(engine::models::Model probe, zoo->build(1, engine::models::Mode::kEval));
  // BatchNorm statistics stay frozen while a candidate fine-tunes, as in every compiled plan.
  const engine::train::ModelBuilder build = [zoo](int64_t b, engine::models::Mode) {
    return zoo->build(b, engine::models::Mode::kEval);
  };

  const std::string base_path = Flag(flags, "base", "");
  if (base_path.empty()) return FlagError("base", "required (base weights, safetensors)");
  auto base_tensors = engine::io::ReadSafetensors(base_path);
  if (!base_tensors.ok()) return FlagError("base", base_tensors.status());
  engine::runtime::ParameterStore base;
  for (auto& [name, tensor] : *base_tensors) RETURN_IF_ERROR(base.Set(name, tensor));

  std::string task = Flag(flags, "task", "");
  if (task.empty()) {
    const std::string spec = Flag(flags, "calibration", "");
    task = spec.substr(spec.find_last_of("/:") + 1);
  }
  ASSIGN_OR_RETURN(search::CalibrationData data, LoadCalibration(flags, task));

  search::ContributionOptions options;
  options.model_name = model_name;
  options.task = task;
  ASSIGN_OR_RETURN(options.steps, Integer(flags, "steps", "60", 1, 100000));
  ASSIGN_OR_RETURN(options.batch, Integer(flags, "calibration-batch", "32", 1, 65536));
  ASSIGN_OR_RETURN(int64_t seed, Integer(flags, "seed", "0", 0, INT64_MAX));
  options.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(int64_t threads, Integer(flags, "threads", "2", 1, 256));
  options.threads = static_cast<int>(threads);
  ASSIGN_OR_RETURN(double lr, Number(flags, "lr", "0.05", 0.0, 1e3, false));
  ASSIGN_OR_RETURN(double momentum, Number(flags, "momentum", "0.9", 0.0, 0.999999, true));
  options.optimizer = engine::autodiff::OptimizerConfig::Sgd(
      {static_cast<float>(lr), static_cast<float>(momentum), 0.0f});
  const std::string gain_name = Flag(flags, "gain", "accuracy");
  if (gain_name != "accuracy" && gain_name != "loss") {
    return FlagError("gain", "must be accuracy or loss");
  }
  const search::GainMetric metric =
      gain_name == "accuracy" ? search::GainMetric::kAccuracy : search::GainMetric::kLoss;

  // --- Classes and budgets.
  server::DeviceClassRegistry registry = server::DeviceClassRegistry::Defaults();
  if (auto it = flags.find("device-classes"); it != flags.end()) {
    auto loaded = server::DeviceClassRegistry::FromFile(it->second);
    if (!loaded.ok()) return FlagError("device-classes", loaded.status());
    registry = *std::move(loaded);
  }
  std::vector<const v1::DeviceClass*> classes;
  if (auto it = flags.find("classes"); it != flags.end()) {
    for (absl::string_view name : absl::StrSplit(it->second, ',', absl::SkipEmpty())) {
      auto found = registry.Find(name);
      if (!found.ok()) return FlagError("classes", found.status());
      classes.push_back(*found);
    }
    if (classes.empty()) return FlagError("classes", "names no class");
  } else {
    for (const v1::DeviceClass& c : registry.classes()) classes.push_back(&c);
  }
  const std::string budget_spec = Flag(flags, "budget", "class");
  double overhead_fraction = 0.0;
  if (absl::StartsWith(budget_spec, "overhead:")) {
    if (!absl::SimpleAtod(budget_spec.substr(9), &overhead_fraction) ||
        !(overhead_fraction > 0 && overhead_fraction <= 1)) {
      return FlagError("budget", "overhead:F needs F in (0, 1]");
    }
  } else if (budget_spec != "class") {
    return FlagError("budget", "must be class or overhead:F");
  }
  double step_budget_seconds = 0.0;
  if (flags.count("step-budget-ms")) {
    ASSIGN_OR_RETURN(double ms, Number(flags, "step-budget-ms", "", 0.0, 1e9, false));
    step_budget_seconds = ms / 1e3;
    for (const v1::DeviceClass* c : classes) {
      if (!(c->training_flops_per_second() > 0)) {
        return FlagError("step-budget-ms",
                         absl::StrCat("class ", c->name(), " has no training_flops_per_second"));
      }
    }
  }

  // --- The profile: cached per model, weights, data and options.
  std::string cache_dir = Flag(flags, "profile-cache", DefaultCacheDir());
  if (cache_dir == "none") cache_dir.clear();
  ASSIGN_OR_RETURN(std::vector<search::Candidate> candidates, search::ListCandidates(probe));
  const absl::Time profile_start = absl::Now();
  ASSIGN_OR_RETURN(
      search::CachedProfile cached,
      search::AnalyzeContributionsCached(build, base, candidates, data, options, cache_dir));
  const double profile_seconds = absl::ToDoubleSeconds(absl::Now() - profile_start);
  ASSIGN_OR_RETURN(std::vector<search::ScoredCandidate> scored,
                   search::ScoreCandidates(probe, cached.profile, metric));

  // --- Selection per class.
  std::vector<ClassResult> results;
  absl::Status first_error;
  for (const v1::DeviceClass* c : classes) {
    ClassResult r;
    r.device_class = c;
    search::DeviceClass device{
        c->name(), c->threads(),
        c->training_flops_per_second() > 0 ? c->training_flops_per_second() : 1e9};
    search::CostModel costs(model, device, options.optimizer);
    ASSIGN_OR_RETURN(r.inference_bytes, costs.InferenceBytes());
    if (overhead_fraction > 0) {
      ASSIGN_OR_RETURN(r.budget_bytes,
                       search::OverheadFractionBudget(costs, model, overhead_fraction));
    } else {
      r.budget_bytes = c->training_memory_budget_bytes();
    }
    const absl::Time start = absl::Now();
    r.selection = search::SelectScheme(model, scored, costs, {r.budget_bytes, step_budget_seconds},
                                       {.seed = options.seed});
    r.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    r.compiles = costs.compiles();
    if (!r.selection.ok() && first_error.ok()) {
      first_error =
          absl::Status(r.selection.status().code(),
                       absl::StrCat("class ", c->name(), ": ", r.selection.status().message()));
    }
    results.push_back(std::move(r));
  }

  // --- Each candidate alone, costed for the first class (what the table and plot show).
  const v1::DeviceClass& first = *classes.front();
  search::CostModel alone_costs(
      model,
      {first.name(), first.threads(),
       first.training_flops_per_second() > 0 ? first.training_flops_per_second() : 1e9},
      options.optimizer);
  ASSIGN_OR_RETURN(int64_t inference, alone_costs.InferenceBytes());
  std::vector<search::SchemeCost> alone;
  for (const search::ScoredCandidate& s : scored) {
    ASSIGN_OR_RETURN(search::SchemeCost cost, alone_costs.Cost({s.candidate}));
    alone.push_back(cost);
  }
  std::map<std::string, std::vector<std::string>> chosen_by;  // candidate id -> classes
  for (const ClassResult& r : results) {
    if (!r.selection.ok()) continue;
    for (const search::ScoredCandidate& s : r.selection->chosen) {
      chosen_by[s.candidate.Id()].push_back(r.device_class->name());
    }
  }

  // --- Files.
  if (auto it = flags.find("out-dir"); it != flags.end()) {
    std::error_code ec;
    std::filesystem::create_directories(it->second, ec);
    if (ec) return FlagError("out-dir", absl::StrCat(it->second, ": ", ec.message()));
    for (const ClassResult& r : results) {
      if (!r.selection.ok()) continue;
      engine::scheme::UpdateScheme s = r.selection->scheme;
      s.name = absl::StrCat("searched-", r.device_class->name());
      const std::string path = absl::StrCat(it->second, "/", r.device_class->name(), ".scheme");
      absl::Status written = engine::WriteFileAtomically(path, engine::plan::SchemeToText(s));
      if (!written.ok()) return FlagError("out-dir", written);
    }
  }
  if (auto it = flags.find("plot"); it != flags.end()) {
    ScatterPlot plot;
    plot.title = absl::StrCat(model_name, " on ", task, ": each update candidate alone (",
                              options.steps, " steps); outlined = chosen for ", first.name());
    plot.x_label = absl::StrCat("extra training memory over inference, bytes (", first.name(),
                                ", batch ", batch, ")");
    plot.y_label = metric == search::GainMetric::kAccuracy ? "held-out accuracy gain"
                                                           : "held-out loss reduction";
    plot.series_names = {"bias",
                         "normalization scale",
                         "weight, 1/8 channels",
                         "weight, 1/4 channels",
                         "weight, 1/2 channels",
                         "weight, all channels"};
    plot.log_x = true;
    const ClassResult& r0 = results.front();
    for (size_t i = 0; i < scored.size(); ++i) {
      ScatterPoint p;
      // At least one byte so that the log axis can show a candidate that costs
      // nothing beyond inference.
      p.x = std::max<double>(1.0, static_cast<double>(alone[i].memory_bytes - inference));
      p.y = scored[i].gain;
      p.series = SeriesOf(scored[i].candidate);
      p.label = scored[i].candidate.Id();
      if (r0.selection.ok()) {
        for (const search::ScoredCandidate& s : r0.selection->chosen) {
          p.highlighted |= s.candidate == scored[i].candidate;
        }
      }
      plot.points.push_back(std::move(p));
    }
    absl::Status written = WriteScatterPng(plot, it->second);
    if (!written.ok()) return FlagError("plot", written);
  }

  // --- Report.
  if (json) {
    for (const ClassResult& r : results) {
      nlohmann::json j;
      j["class"] = r.device_class->name();
      j["model"] = model_name;
      j["task"] = task;
      j["profile_key"] = cached.profile.key;
      j["profile_path"] = cached.path;
      j["profile_cached"] = cached.hit;
      j["budget_bytes"] = r.budget_bytes;
      j["inference_bytes"] = r.inference_bytes;
      if (r.selection.ok()) {
        const search::Selection& s = *r.selection;
        j["predicted_memory_bytes"] = s.cost.memory_bytes;
        j["predicted_flops_per_step"] = s.cost.flops_per_step;
        if (r.device_class->training_flops_per_second() > 0) {
          j["predicted_step_seconds"] = s.cost.step_seconds;
        }
        j["predicted_gain"] = s.total_gain;
        j["chosen"] = nlohmann::json::array();
        for (const search::ScoredCandidate& c : s.chosen) j["chosen"].push_back(c.candidate.Id());
        j["scheme"] = engine::plan::SchemeToText(s.scheme);
      } else {
        j["error"] = std::string(r.selection.status().message());
      }
      *out << j.dump() << "\n";
    }
    return first_error;
  }

  *out << absl::StrFormat(
      "profile    %s on %s: %d candidates, %d steps each; base held-out accuracy %s, loss %.4f\n",
      model_name, task, scored.size(), options.steps, FormatPercent(cached.profile.base_accuracy),
      cached.profile.base_loss);
  *out << absl::StrFormat("           %s in %.1f s%s\n",
                          cached.hit ? "read from the cache" : "measured", profile_seconds,
                          cached.path.empty() ? "" : absl::StrCat(": ", cached.path));
  std::vector<Column> columns = {{"CANDIDATE"},
                                 {"EXTRA MEMORY", Align::kRight},
                                 {"GFLOP/STEP", Align::kRight},
                                 {"ACCURACY GAIN", Align::kRight},
                                 {"LOSS GAIN", Align::kRight},
                                 {"CHOSEN FOR"}};
  std::vector<std::vector<std::string>> rows;
  for (size_t i = 0; i < scored.size(); ++i) {
    const search::Contribution& e = cached.profile.entries[i];
    auto it = chosen_by.find(scored[i].candidate.Id());
    rows.push_back({scored[i].candidate.Id(), FormatBytes(alone[i].memory_bytes - inference),
                    absl::StrFormat("%.3f", alone[i].flops_per_step / 1e9),
                    absl::StrFormat("%+.2f pt", 100 * e.accuracy_gain),
                    absl::StrFormat("%+.4f", e.loss_gain),
                    it == chosen_by.end() ? "" : absl::StrJoin(it->second, ",")});
  }
  *out << "\n" << RenderTable(columns, rows);
  *out << absl::StrFormat(
      "\n(extra memory: what training the candidate alone adds to inference, "
      "%s for %s at batch %d)\n",
      FormatBytes(inference), first.name(), batch);
  for (const ClassResult& r : results) {
    const v1::DeviceClass& c = *r.device_class;
    *out << absl::StrFormat(
        "\nclass %s: budget %s (%s), %d threads\n", c.name(), FormatBytes(r.budget_bytes),
        overhead_fraction > 0
            ? absl::StrFormat("inference + %.3g of full fine-tuning's overhead", overhead_fraction)
            : "the class's training-memory budget",
        c.threads());
    if (!r.selection.ok()) {
      *out << "  no scheme: " << r.selection.status().message() << "\n";
      continue;
    }
    const search::Selection& s = *r.selection;
    *out << absl::StrFormat("  predicted  %s training memory (%s over inference), %.3f GFLOP/step",
                            FormatBytes(s.cost.memory_bytes),
                            FormatBytes(s.cost.memory_bytes - r.inference_bytes),
                            s.cost.flops_per_step / 1e9);
    if (c.training_flops_per_second() > 0) *out << ", " << Millis(s.cost.step_seconds) << "/step";
    *out << absl::StrFormat("\n  gain       %s (sum of the chosen candidates' own gains)\n",
                            Gain(s.total_gain, metric));
    *out << absl::StrFormat("  search     %s, %d rounds, %d compiles, %.2f s\n",
                            s.method == search::SearchMethod::kDynamicProgramming
                                ? "dynamic programming"
                                : "evolutionary",
                            s.rounds, r.compiles, r.seconds);
    std::vector<std::string> ids;
    for (const search::ScoredCandidate& x : s.chosen) ids.push_back(x.candidate.Id());
    *out << "  trains     " << absl::StrJoin(ids, " ") << "\n";
    if (auto it = flags.find("out-dir"); it != flags.end()) {
      *out << "  scheme     " << it->second << "/" << c.name() << ".scheme\n";
    }
  }
  if (auto it = flags.find("plot"); it != flags.end())
    *out << "\nplot written to " << it->second << "\n";
  return first_error;
}

}  // namespace fleettune::cli
