#include "engine/search/candidates.h"

#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::search {
namespace {

std::string FractionText(double f) {
  if (f == 1.0) return "1";
  if (f == 0.5) return "1/2";
  if (f == 0.25) return "1/4";
  return "1/8";
}

// Whether a CHANNELS rule on `tensor` resolves: the scheme resolver is the
// one authority on which weights are linear/conv weights.
bool AcceptsChannels(const models::Model& model, const std::string& tensor) {
  scheme::UpdateScheme probe{"probe", {{tensor, scheme::UpdateMode::kChannels, 0.125}}};
  return scheme::ResolveScheme(model, probe).ok();
}

}  // namespace

std::string Candidate::Id() const {
  if (kind != CandidateKind::kChannels) return tensor;
  return absl::StrCat(tensor, "@", FractionText(fraction));
}

scheme::Rule Candidate::ToRule() const {
  if (kind != CandidateKind::kChannels) return {tensor, scheme::UpdateMode::kFull, 0.0};
  return {tensor, scheme::UpdateMode::kChannels, fraction};
}

absl::StatusOr<std::vector<Candidate>> ListCandidates(const models::Model& model) {
  // Shapes come from resolving "everything FULL": dim0 == elements is 1-D.
  scheme::UpdateScheme all{"all", {{"*", scheme::UpdateMode::kFull, 0.0}}};
  ASSIGN_OR_RETURN(scheme::ResolvedScheme resolved, scheme::ResolveScheme(model, all));
  std::map<std::string, const scheme::ParamPlan*> plans;
  for (const scheme::ParamPlan& p : resolved.params) plans[p.name] = &p;
  std::vector<Candidate> out;
  for (const models::Layer& layer : model.layers) {
    for (const std::string& w : layer.weights) {
      auto it = plans.find(w);
      if (it == plans.end()) continue;
      if (absl::EndsWith(w, ".bias") && it->second->dim0 == it->second->elements) {
        out.push_back({CandidateKind::kBias, w, layer.name, 1.0});
      }
    }
    for (const std::string& w : layer.weights) {
      auto it = plans.find(w);
      // A 1-D weight that is not a bias: a normalization layer's scale.
      if (it != plans.end() && !absl::EndsWith(w, ".bias") &&
          it->second->dim0 == it->second->elements) {
        out.push_back({CandidateKind::kScale, w, layer.name, 1.0});
      }
    }
    for (const std::string& w : layer.weights) {
      auto it = plans.find(w);
      if (absl::EndsWith(w, ".bias") || it == plans.end() ||
          it->second->dim0 == it->second->elements || !AcceptsChannels(model, w)) {
        continue;
      }
      for (double f : kChannelFractions)
        out.push_back({CandidateKind::kChannels, w, layer.name, f});
    }
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        "search: the model has no bias, normalization scale or linear/conv weight");
  }
  return out;
}

absl::StatusOr<Candidate> ParseCandidateId(const models::Model& model, absl::string_view id) {
  // Resolving every candidate is cheap next to what callers do with one.
  ASSIGN_OR_RETURN(std::vector<Candidate> all, ListCandidates(model));
  for (const Candidate& c : all) {
    if (c.Id() == id) return c;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("search: candidate '", id, "' is not a candidate of the model"));
}

absl::StatusOr<scheme::UpdateScheme> ToScheme(const models::Model& model,
                                              const std::vector<Candidate>& set,
                                              absl::string_view name) {
  if (set.empty()) return absl::InvalidArgumentError("search: empty candidate set");
  scheme::UpdateScheme out{std::string(name), {}};
  std::set<std::string> seen;
  for (const Candidate& c : set) {
    if (!seen.insert(c.tensor).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("search: two candidates on tensor '", c.tensor, "'"));
    }
    out.rules.push_back(c.ToRule());
  }
  auto resolved = scheme::ResolveScheme(model, out);
  if (!resolved.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("search: candidate set does not fit the model: ",
                                                   resolved.status().message()));
  }
  return out;
}

}  // namespace fleettune::engine::search
