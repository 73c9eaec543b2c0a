#include "engine/search/verify.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/status_macros.h"
#include "engine/scheme/scheme.h"

namespace fleettune::engine::search {
namespace {

// A set's identity: its candidate ids, sorted.
std::string SetKey(std::vector<std::string> ids) {
  std::sort(ids.begin(), ids.end());
  return absl::StrJoin(ids, ",");
}

std::string SetKey(const std::vector<Candidate>& set) {
  std::vector<std::string> ids;
  for (const Candidate& c : set) ids.push_back(c.Id());
  return SetKey(std::move(ids));
}

bool Fits(const SchemeCost& cost, const Budget& budget) {
  return cost.memory_bytes <= budget.memory_bytes &&
         (budget.step_seconds <= 0 || cost.step_seconds <= budget.step_seconds);
}

std::string FractionLabel(double f) {
  if (f == 1.0) return "";
  if (f > 0 && f < 1 && 1.0 / f == static_cast<int>(1.0 / f)) {
    return absl::StrCat("@1/", static_cast<int>(1.0 / f));
  }
  return absl::StrCat("@", f);
}

}  // namespace

absl::StatusOr<std::vector<Candidate>> PresetCandidates(const models::Model& model,
                                                        absl::string_view preset) {
  ASSIGN_OR_RETURN(scheme::UpdateScheme s, scheme::PresetScheme(model, preset));
  ASSIGN_OR_RETURN(scheme::ResolvedScheme resolved, scheme::ResolveScheme(model, s));
  ASSIGN_OR_RETURN(std::vector<Candidate> all, ListCandidates(model));
  std::vector<Candidate> set;
  for (const scheme::ParamPlan& p : resolved.params) {
    if (p.mode == scheme::UpdateMode::kFrozen) continue;
    auto it = std::find_if(all.begin(), all.end(), [&](const Candidate& c) {
      return c.tensor == p.name && c.fraction == 1.0 && p.rows == p.dim0;
    });
    if (it == all.end()) {
      return absl::NotFoundError(
          absl::StrCat("preset ", preset, " trains ", p.name, ", which no candidate expresses"));
    }
    set.push_back(*it);
  }
  if (set.empty()) return absl::NotFoundError(absl::StrCat("preset ", preset, " trains nothing"));
  return set;
}

absl::StatusOr<std::vector<ShortlistEntry>> Shortlist(const models::Model& model,
                                                      const ContributionProfile& profile,
                                                      CostModel& costs, const Budget& budget,
                                                      const VerifyOptions& options) {
  ASSIGN_OR_RETURN(const int64_t inference, costs.InferenceBytes());
  std::vector<ShortlistEntry> out;
  std::set<std::string> seen;
  auto add = [&](std::string origin, std::vector<Candidate> set) {
    if (seen.insert(SetKey(set)).second) out.push_back({std::move(origin), std::move(set)});
  };
  auto select = [&](GainMetric metric, double fraction, std::string origin) -> absl::Status {
    ASSIGN_OR_RETURN(std::vector<ScoredCandidate> scored, ScoreCandidates(model, profile, metric));
    // A fraction of what training may add to inference (the forward pass is
    // paid by every scheme).
    Budget b = budget;
    b.memory_bytes =
        inference +
        static_cast<int64_t>(static_cast<double>(budget.memory_bytes - inference) * fraction);
    if (b.memory_bytes <= inference) return absl::OkStatus();
    absl::StatusOr<Selection> s = SelectScheme(model, scored, costs, b, options.select);
    // A smaller budget that fits nothing, or a metric with no positive gain,
    // only loses its entry.
    if (!s.ok() && (fraction < 1.0 || metric == GainMetric::kLoss) &&
        (s.status().code() == absl::StatusCode::kResourceExhausted ||
         s.status().code() == absl::StatusCode::kInvalidArgument)) {
      return absl::OkStatus();
    }
    if (!s.ok()) return s.status();
    std::vector<Candidate> set;
    for (const ScoredCandidate& c : s->chosen) set.push_back(c.candidate);
    add(std::move(origin), std::move(set));
    return absl::OkStatus();
  };
  for (double f : options.budget_fractions) {
    if (!(f > 0 && f <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("verify: budget fraction ", f, " outside (0, 1]"));
    }
    RETURN_IF_ERROR(select(GainMetric::kAccuracy, f, absl::StrCat("selection", FractionLabel(f))));
  }
  if (options.loss_selection) {
    RETURN_IF_ERROR(select(GainMetric::kLoss, 1.0, "selection-loss"));
  }
  if (options.presets) {
    // Adds the preset when candidates express it and it fits.
    auto try_preset = [&](const std::string& name) -> absl::Status {
      absl::StatusOr<std::vector<Candidate>> set = PresetCandidates(model, name);
      if (absl::IsNotFound(set.status())) return absl::OkStatus();
      if (!set.ok()) return set.status();
      ASSIGN_OR_RETURN(SchemeCost cost, costs.Cost(*set));
      if (Fits(cost, budget)) add(name, std::move(*set));
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(try_preset("full"));
    RETURN_IF_ERROR(try_preset("bias-only"));
    // last-k: the deepest K that fits, and K/2, K/4 and 1 (head only), so the
    // shortlist stays short for deep models.
    int deepest = 0;
    for (size_t k = 1; k < model.layers.size(); ++k) {
      const std::string name = absl::StrCat("last-k:", k);
      if (!scheme::PresetScheme(model, name).ok()) break;
      absl::StatusOr<std::vector<Candidate>> set = PresetCandidates(model, name);
      if (absl::IsNotFound(set.status())) continue;
      if (!set.ok()) return set.status();
      ASSIGN_OR_RETURN(SchemeCost cost, costs.Cost(*set));
      if (!Fits(cost, budget)) break;  // deeper ones only cost more
      deepest = static_cast<int>(k);
    }
    std::set<int> ks;
    for (int k : {1, deepest / 4, deepest / 2, deepest}) {
      if (k >= 1 && k <= deepest) ks.insert(k);
    }
    for (int k : ks) RETURN_IF_ERROR(try_preset(absl::StrCat("last-k:", k)));
  }
  if (out.empty()) {
    return absl::ResourceExhaustedError("verify: budget too small for any shortlisted scheme");
  }
  return out;
}

absl::StatusOr<Selection> SelectVerified(const models::Model& model,
                                         const ContributionProfile& profile, CostModel& costs,
                                         const Budget& budget,
                                         const std::vector<Candidate>& incumbent, int64_t steps,
                                         double standard_errors) {
  const std::string incumbent_key = SetKey(incumbent);
  if (steps <= 0) {
    // The incumbent's longest measurement, and the others' at that length.
    for (const JointContribution& j : profile.joint) {
      if (SetKey(j.ids) == incumbent_key) steps = std::max(steps, j.steps);
    }
  }
  struct Measured {
    const JointContribution* joint;
    std::vector<Candidate> set;
    SchemeCost cost;
  };
  std::vector<Measured> fitting;
  const Measured* current = nullptr;
  for (const JointContribution& j : profile.joint) {
    if (j.steps != steps) continue;
    std::vector<Candidate> set;
    for (const std::string& id : j.ids) {
      absl::StatusOr<Candidate> c = ParseCandidateId(model, id);
      if (!c.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("verify: joint set '", j.origin, "': ", c.status().message()));
      }
      set.push_back(*std::move(c));
    }
    absl::StatusOr<SchemeCost> cost = costs.Cost(set);
    if (!cost.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("verify: joint set '", j.origin, "': ", cost.status().message()));
    }
    if (Fits(*cost, budget)) fitting.push_back({&j, std::move(set), *cost});
  }
  for (const Measured& m : fitting) {
    if (current == nullptr && SetKey(m.joint->ids) == incumbent_key) current = &m;
  }
  if (current == nullptr) {
    return absl::NotFoundError("verify: the selection was not measured jointly within the budget");
  }
  // The best measured set: accuracy, then loss, then memory.
  auto rank = [](const Measured& m) {
    return std::make_tuple(-m.joint->accuracy, m.joint->loss, m.cost.memory_bytes);
  };
  const Measured* best = current;
  for (const Measured& m : fitting) {
    if (rank(m) < rank(*best)) best = &m;
  }
  // It replaces the selection only by more than the calibration set's noise.
  const double a = current->joint->accuracy;
  const double n = static_cast<double>(profile.heldout_samples);
  const double margin = n > 0 ? std::max(0.0, standard_errors) * std::sqrt(a * (1.0 - a) / n) : 0.0;
  const Measured* pick = best->joint->accuracy > a + margin ? best : current;

  std::map<std::string, double> gain_of;
  for (const Contribution& e : profile.entries) gain_of[e.id] = e.accuracy_gain;
  Selection s;
  for (const Candidate& c : pick->set) {
    s.chosen.push_back({c, gain_of.count(c.Id()) ? gain_of[c.Id()] : 0.0});
    s.total_gain += s.chosen.back().gain;
  }
  ASSIGN_OR_RETURN(s.scheme, ToScheme(model, pick->set, "searched"));
  s.cost = pick->cost;
  s.verified = true;
  s.replaced = pick != current;
  s.origin = pick->joint->origin;
  s.verified_accuracy = pick->joint->accuracy;
  s.verified_loss = pick->joint->loss;
  return s;
}

absl::StatusOr<Selection> SearchVerified(const train::ModelBuilder& build,
                                         const runtime::ParameterStore& base,
                                         const CalibrationData& data, const models::Model& model,
                                         CostModel& costs, const Budget& budget,
                                         const ContributionOptions& contribution,
                                         const VerifyOptions& options,
                                         ContributionProfile* profile) {
  if (options.steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("verify: steps must be positive, got ", options.steps));
  }
  ASSIGN_OR_RETURN(std::vector<ScoredCandidate> scored,
                   ScoreCandidates(model, *profile, options.metric));
  ASSIGN_OR_RETURN(Selection additive, SelectScheme(model, scored, costs, budget, options.select));
  std::vector<Candidate> incumbent;
  for (const ScoredCandidate& c : additive.chosen) incumbent.push_back(c.candidate);
  ASSIGN_OR_RETURN(std::vector<ShortlistEntry> shortlist,
                   Shortlist(model, *profile, costs, budget, options));
  std::set<std::string> measured;
  for (const JointContribution& j : profile->joint) {
    if (j.steps == options.steps) measured.insert(SetKey(j.ids));
  }
  std::vector<std::vector<Candidate>> sets;
  std::vector<std::string> origins;
  // The selection itself first (the shortlist has it unless its options left
  // it out), then the rest.
  shortlist.insert(
      shortlist.begin(),
      ShortlistEntry{options.metric == GainMetric::kLoss ? "selection-loss" : "selection",
                     incumbent});
  for (ShortlistEntry& e : shortlist) {
    if (!measured.insert(SetKey(e.set)).second) continue;
    sets.push_back(std::move(e.set));
    origins.push_back(std::move(e.origin));
  }
  if (!sets.empty()) {
    ContributionOptions joint = contribution;
    joint.steps = options.steps;
    ASSIGN_OR_RETURN(std::vector<JointContribution> results,
                     AnalyzeJoint(build, base, sets, origins, data, joint));
    for (JointContribution& j : results) profile->joint.push_back(std::move(j));
  }
  return SelectVerified(model, *profile, costs, budget, incumbent, options.steps,
                        options.standard_errors);
}

}  // namespace fleettune::engine::search
