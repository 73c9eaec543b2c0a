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
#include "engine/search/verify.h"
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

std::string Millis(double seconds) { return absl::StrFormat("%.1f ms", seconds * 1e3); }

std::string Gain(double g, search::GainMetric metric) {
  return metric == search::GainMetric::kAccuracy ? absl::StrFormat("%+.2f pt", 100 * g)
                                                 : absl::StrFormat("%+.4f", g);
}

// Everything the flags say, checked.
struct SearchInputs {
  std::string model_name;
  int64_t batch = 32;                 // plans are costed at this training batch
  engine::models::Model model;        // at `batch`
  engine::models::Model probe;        // at batch 1: candidates and scores
  engine::train::ModelBuilder build;  // frozen BatchNorm statistics
  engine::runtime::ParameterStore base;
  std::string task;
  search::CalibrationData data;
  search::ContributionOptions options;
  int64_t verify_steps = 120;  // 0: the additive selection alone
  search::GainMetric metric = search::GainMetric::kAccuracy;
  std::vector<v1::DeviceClass> classes;  // at least one
  double overhead_fraction = 0.0;        // 0: each class's own budget
  double step_budget_seconds = 0.0;      // 0: none
  std::string cache_dir;                 // empty: no profile cache
  std::string plot_path, out_dir;        // empty: not written
};

absl::StatusOr<SearchInputs> ParseInputs(const Flags& flags) {
  SearchInputs in;
  in.model_name = Flag(flags, "model", "");
  if (in.model_name.empty()) return FlagError("model", "required (a zoo model, e.g. mlp)");
  ASSIGN_OR_RETURN(const engine::models::ZooEntry* zoo,
                   engine::models::FindZooModel(in.model_name));
  ASSIGN_OR_RETURN(in.batch, Integer(flags, "batch", "32", 1, 65536));
  ASSIGN_OR_RETURN(in.model, zoo->build(in.batch, engine::models::Mode::kEval));
  ASSIGN_OR_RETURN(in.probe, zoo->build(1, engine::models::Mode::kEval));
  // BatchNorm statistics stay frozen while a candidate fine-tunes, as in every compiled plan.
  in.build = [zoo](int64_t b, engine::models::Mode) {
    return zoo->build(b, engine::models::Mode::kEval);
  };

  const std::string base_path = Flag(flags, "base", "");
  if (base_path.empty()) return FlagError("base", "required (base weights, safetensors)");
  auto base_tensors = engine::io::ReadSafetensors(base_path);
  if (!base_tensors.ok()) return FlagError("base", base_tensors.status());
  for (auto& [name, tensor] : *base_tensors) RETURN_IF_ERROR(in.base.Set(name, tensor));

  in.task = Flag(flags, "task", "");
  if (in.task.empty()) {
    const std::string spec = Flag(flags, "calibration", "");
    in.task = spec.substr(spec.find_last_of("/:") + 1);
  }
  ASSIGN_OR_RETURN(in.data, LoadCalibration(flags, in.task));

  search::ContributionOptions& o = in.options;
  o.model_name = in.model_name;
  o.task = in.task;
  ASSIGN_OR_RETURN(o.steps, Integer(flags, "steps", "60", 1, 100000));
  ASSIGN_OR_RETURN(o.batch, Integer(flags, "calibration-batch", "32", 1, 65536));
  ASSIGN_OR_RETURN(in.verify_steps, Integer(flags, "verify-steps", "120", 0, 100000));
  ASSIGN_OR_RETURN(int64_t seed, Integer(flags, "seed", "0", 0, INT64_MAX));
  o.seed = static_cast<uint64_t>(seed);
  ASSIGN_OR_RETURN(int64_t threads, Integer(flags, "threads", "2", 1, 256));
  o.threads = static_cast<int>(threads);
  ASSIGN_OR_RETURN(double lr, Number(flags, "lr", "0.05", 0.0, 1e3, false));
  ASSIGN_OR_RETURN(double momentum, Number(flags, "momentum", "0.9", 0.0, 0.999999, true));
  o.optimizer = engine::autodiff::OptimizerConfig::Sgd(
      {static_cast<float>(lr), static_cast<float>(momentum), 0.0f});
  const std::string gain = Flag(flags, "gain", "accuracy");
  if (gain != "accuracy" && gain != "loss") return FlagError("gain", "must be accuracy or loss");
  in.metric = gain == "accuracy" ? search::GainMetric::kAccuracy : search::GainMetric::kLoss;

  server::DeviceClassRegistry registry = server::DeviceClassRegistry::Defaults();
  if (auto it = flags.find("device-classes"); it != flags.end()) {
    auto loaded = server::DeviceClassRegistry::FromFile(it->second);
    if (!loaded.ok()) return FlagError("device-classes", loaded.status());
    registry = *std::move(loaded);
  }
  if (auto it = flags.find("classes"); it != flags.end()) {
    for (absl::string_view name : absl::StrSplit(it->second, ',', absl::SkipEmpty())) {
      auto found = registry.Find(name);
      if (!found.ok()) return FlagError("classes", found.status());
      in.classes.push_back(**found);
    }
    if (in.classes.empty()) return FlagError("classes", "names no class");
  } else {
    in.classes = registry.classes();
  }
  const std::string budget = Flag(flags, "budget", "class");
  if (absl::StartsWith(budget, "overhead:")) {
    if (!absl::SimpleAtod(budget.substr(9), &in.overhead_fraction) ||
        !(in.overhead_fraction > 0 && in.overhead_fraction <= 1)) {
      return FlagError("budget", "overhead:F needs F in (0, 1]");
    }
  } else if (budget != "class") {
    return FlagError("budget", "must be class or overhead:F");
  }
  if (flags.count("step-budget-ms")) {
    ASSIGN_OR_RETURN(double ms, Number(flags, "step-budget-ms", "", 0.0, 1e9, false));
    in.step_budget_seconds = ms / 1e3;
    for (const v1::DeviceClass& c : in.classes) {
      if (!(c.training_flops_per_second() > 0)) {
        return FlagError("step-budget-ms",
                         absl::StrCat("class ", c.name(), " has no training_flops_per_second"));
      }
    }
  }
  in.cache_dir = Flag(flags, "profile-cache", DefaultCacheDir());
  if (in.cache_dir == "none") in.cache_dir.clear();
  in.plot_path = Flag(flags, "plot", "");
  in.out_dir = Flag(flags, "out-dir", "");
  return in;
}

search::DeviceClass ForCostModel(const v1::DeviceClass& c) {
  // Without a throughput, step times are not modelled (and not printed); 1e9
  // only keeps the cost model's arithmetic defined.
  return {c.name(), c.threads(),
          c.training_flops_per_second() > 0 ? c.training_flops_per_second() : 1e9};
}

struct ClassResult {
  const v1::DeviceClass* device_class = nullptr;
  int64_t budget_bytes = 0;
  absl::StatusOr<search::Selection> selection = absl::UnknownError("not run");
  int64_t inference_bytes = 0;
  double seconds = 0.0;  // selection wall time
  int64_t compiles = 0;
};

// Each candidate alone, costed for the first class: what the table and the plot show.
struct AloneCosts {
  int64_t inference_bytes = 0;
  std::vector<search::SchemeCost> costs;  // per scored candidate
};

struct Selections {
  std::vector<ClassResult> classes;  // in the order of SearchInputs::classes
  AloneCosts alone;
};

// Each class's selection under its budget, verified unless in.verify_steps
// is 0 (the joint measurements are added to `profile`). A class whose budget
// fits nothing keeps its error in `selection`; other errors end the search.
absl::StatusOr<Selections> SelectPerClass(const SearchInputs& in,
                                          const std::vector<search::ScoredCandidate>& scored,
                                          search::ContributionProfile* profile) {
  Selections out;
  for (const v1::DeviceClass& c : in.classes) {
    ClassResult r;
    r.device_class = &c;
    search::CostModel costs(in.model, ForCostModel(c), in.options.optimizer);
    ASSIGN_OR_RETURN(r.inference_bytes, costs.InferenceBytes());
    if (in.overhead_fraction > 0) {
      ASSIGN_OR_RETURN(r.budget_bytes,
                       search::OverheadFractionBudget(costs, in.model, in.overhead_fraction));
    } else {
      r.budget_bytes = c.training_memory_budget_bytes();
    }
    const absl::Time start = absl::Now();
    const search::Budget budget{r.budget_bytes, in.step_budget_seconds};
    if (in.verify_steps > 0) {
      search::VerifyOptions v;
      v.steps = in.verify_steps;
      v.select.seed = in.options.seed;
      v.metric = in.metric;
      r.selection = search::SearchVerified(in.build, in.base, in.data, in.model, costs, budget,
                                           in.options, v, profile);
    } else {
      r.selection =
          search::SelectScheme(in.model, scored, costs, budget, {.seed = in.options.seed});
    }
    r.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    r.compiles = costs.compiles();
    if (out.classes.empty()) {
      // The selection costed every candidate alone already: these are cache hits.
      out.alone.inference_bytes = r.inference_bytes;
      for (const search::ScoredCandidate& s : scored) {
        ASSIGN_OR_RETURN(search::SchemeCost cost, costs.Cost({s.candidate}));
        out.alone.costs.push_back(cost);
      }
    }
    out.classes.push_back(std::move(r));
  }
  return out;
}

absl::Status WriteSchemes(const std::string& dir, const std::vector<ClassResult>& results) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return FlagError("out-dir", absl::StrCat(dir, ": ", ec.message()));
  for (const ClassResult& r : results) {
    if (!r.selection.ok()) continue;
    engine::scheme::UpdateScheme s = r.selection->scheme;
    s.name = absl::StrCat("searched-", r.device_class->name());
    const std::string path = absl::StrCat(dir, "/", r.device_class->name(), ".scheme");
    absl::Status written = engine::WriteFileAtomically(path, engine::plan::SchemeToText(s));
    if (!written.ok()) return FlagError("out-dir", written);
  }
  return absl::OkStatus();
}

absl::Status WritePlot(const SearchInputs& in, const std::vector<search::ScoredCandidate>& scored,
                       const AloneCosts& alone, const ClassResult& first) {
  const std::string& class_name = first.device_class->name();
  ScatterPlot plot;
  plot.title = absl::StrCat(in.model_name, " on ", in.task, ": each update candidate alone (",
                            in.options.steps, " steps); outlined = chosen for ", class_name);
  plot.x_label = absl::StrCat("extra training memory over inference, bytes (", class_name,
                              ", batch ", in.batch, ")");
  plot.y_label = in.metric == search::GainMetric::kAccuracy ? "held-out accuracy gain"
                                                            : "held-out loss reduction";
  plot.series_names = {"bias",
                       "normalization scale",
                       "weight, 1/8 channels",
                       "weight, 1/4 channels",
                       "weight, 1/2 channels",
                       "weight, all channels"};
  plot.log_x = true;
  for (size_t i = 0; i < scored.size(); ++i) {
    ScatterPoint p;
    // At least one byte, so that the log axis can show a candidate that costs
    // nothing beyond inference.
    p.x = std::max<double>(
        1.0, static_cast<double>(alone.costs[i].memory_bytes - alone.inference_bytes));
    p.y = scored[i].gain;
    p.series = SeriesOf(scored[i].candidate);
    p.label = scored[i].candidate.Id();
    if (first.selection.ok()) {
      for (const search::ScoredCandidate& s : first.selection->chosen) {
        p.highlighted |= s.candidate == scored[i].candidate;
      }
    }
    plot.points.push_back(std::move(p));
  }
  absl::Status written = WriteScatterPng(plot, in.plot_path);
  return written.ok() ? written : FlagError("plot", written);
}

void PrintJson(const SearchInputs& in, const search::CachedProfile& cached,
               const std::vector<ClassResult>& results, std::ostream* out) {
  for (const ClassResult& r : results) {
    nlohmann::json j;
    j["class"] = r.device_class->name();
    j["model"] = in.model_name;
    j["task"] = in.task;
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
      j["verified"] = s.verified;
      if (s.verified) {
        j["origin"] = s.origin;
        j["verified_accuracy"] = s.verified_accuracy;
        j["verified_loss"] = s.verified_loss;
      }
      j["chosen"] = nlohmann::json::array();
      for (const search::ScoredCandidate& c : s.chosen) j["chosen"].push_back(c.candidate.Id());
      j["scheme"] = engine::plan::SchemeToText(s.scheme);
    } else {
      j["error"] = std::string(r.selection.status().message());
    }
    *out << j.dump() << "\n";
  }
}

void PrintReport(const SearchInputs& in, const search::CachedProfile& cached,
                 double profile_seconds, const std::vector<search::ScoredCandidate>& scored,
                 const AloneCosts& alone, const std::vector<ClassResult>& results,
                 std::ostream* out) {
  *out << absl::StrFormat(
      "profile    %s on %s: %d candidates, %d steps each; base held-out accuracy %s, loss %.4f\n",
      in.model_name, in.task, scored.size(), in.options.steps,
      FormatPercent(cached.profile.base_accuracy), cached.profile.base_loss);
  *out << absl::StrFormat("           %s in %.1f s%s\n",
                          cached.hit ? "read from the cache" : "measured", profile_seconds,
                          cached.path.empty() ? "" : absl::StrCat(": ", cached.path));

  std::map<std::string, std::vector<std::string>> chosen_by;  // candidate id -> classes
  for (const ClassResult& r : results) {
    if (!r.selection.ok()) continue;
    for (const search::ScoredCandidate& s : r.selection->chosen) {
      chosen_by[s.candidate.Id()].push_back(r.device_class->name());
    }
  }
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
    rows.push_back(
        {scored[i].candidate.Id(), FormatBytes(alone.costs[i].memory_bytes - alone.inference_bytes),
         absl::StrFormat("%.3f", alone.costs[i].flops_per_step / 1e9),
         absl::StrFormat("%+.2f pt", 100 * e.accuracy_gain), absl::StrFormat("%+.4f", e.loss_gain),
         it == chosen_by.end() ? "" : absl::StrJoin(it->second, ",")});
  }
  *out << "\n" << RenderTable(columns, rows);
  *out << absl::StrFormat(
      "\n(extra memory: what training the candidate alone adds to inference, "
      "%s for %s at batch %d)\n",
      FormatBytes(alone.inference_bytes), in.classes.front().name(), in.batch);

  if (in.verify_steps > 0 && !cached.profile.joint.empty()) {
    std::vector<std::vector<std::string>> joint_rows;
    for (const search::JointContribution& j : cached.profile.joint) {
      if (j.steps != in.verify_steps) continue;
      joint_rows.push_back({j.origin, absl::StrCat(j.ids.size()), FormatPercent(j.accuracy),
                            absl::StrFormat("%.4f", j.loss)});
    }
    *out << absl::StrFormat("\nshortlisted sets fine-tuned jointly (%d steps each):\n",
                            in.verify_steps)
         << RenderTable({{"PROPOSED BY"},
                         {"CANDIDATES", Align::kRight},
                         {"HELD-OUT ACCURACY", Align::kRight},
                         {"LOSS", Align::kRight}},
                        joint_rows);
  }

  for (const ClassResult& r : results) {
    const v1::DeviceClass& c = *r.device_class;
    *out << absl::StrFormat("\nclass %s: budget %s (%s), %d threads\n", c.name(),
                            FormatBytes(r.budget_bytes),
                            in.overhead_fraction > 0
                                ? absl::StrFormat("inference + %.3g of full fine-tuning's overhead",
                                                  in.overhead_fraction)
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
                            Gain(s.total_gain, in.metric));
    if (s.verified) {
      *out << absl::StrFormat("  verified   %s: %s held-out accuracy after %d joint steps (%s)\n",
                              s.origin, FormatPercent(s.verified_accuracy), in.verify_steps,
                              s.replaced ? "it beat the selection beyond noise"
                                         : "no shortlisted set beat the selection beyond noise");
    }
    *out << absl::StrFormat("  search     %s, %d rounds, %d compiles, %.2f s\n",
                            s.method == search::SearchMethod::kDynamicProgramming
                                ? "dynamic programming"
                                : "evolutionary",
                            s.rounds, r.compiles, r.seconds);
    std::vector<std::string> ids;
    for (const search::ScoredCandidate& x : s.chosen) ids.push_back(x.candidate.Id());
    *out << "  trains     " << absl::StrJoin(ids, " ") << "\n";
    if (!in.out_dir.empty())
      *out << "  scheme     " << in.out_dir << "/" << c.name() << ".scheme\n";
  }
  if (!in.plot_path.empty()) *out << "\nplot written to " << in.plot_path << "\n";
}

}  // namespace

absl::Status RunSearch(const Flags& flags, bool json, std::ostream* out) {
  ASSIGN_OR_RETURN(SearchInputs in, ParseInputs(flags));

  // The profile: measured once per model, weights, data and options.
  ASSIGN_OR_RETURN(std::vector<search::Candidate> candidates, search::ListCandidates(in.probe));
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(search::CachedProfile cached,
                   search::AnalyzeContributionsCached(in.build, in.base, candidates, in.data,
                                                      in.options, in.cache_dir));
  const double profile_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  ASSIGN_OR_RETURN(std::vector<search::ScoredCandidate> scored,
                   search::ScoreCandidates(in.probe, cached.profile, in.metric));

  const size_t joint_before = cached.profile.joint.size();
  ASSIGN_OR_RETURN(Selections selections, SelectPerClass(in, scored, &cached.profile));
  if (cached.profile.joint.size() != joint_before && !cached.path.empty()) {
    // The joint measurements join the cached profile: `submit --profile` sends them.
    RETURN_IF_ERROR(search::WriteProfile(cached.path, cached.profile));
  }
  const std::vector<ClassResult>& results = selections.classes;
  const AloneCosts& alone = selections.alone;
  if (!in.out_dir.empty()) RETURN_IF_ERROR(WriteSchemes(in.out_dir, results));
  if (!in.plot_path.empty()) RETURN_IF_ERROR(WritePlot(in, scored, alone, results.front()));
  if (json) {
    PrintJson(in, cached, results, out);
  } else {
    PrintReport(in, cached, profile_seconds, scored, alone, results, out);
  }
  // Every class was searched and printed; the first one without a scheme is the error.
  for (const ClassResult& r : results) {
    if (!r.selection.ok()) {
      return absl::Status(
          r.selection.status().code(),
          absl::StrCat("class ", r.device_class->name(), ": ", r.selection.status().message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace fleettune::cli
