// Update candidates for automatic sparse-update scheme search (issue #7).
//
// A candidate is one thing a scheme may train: a layer's bias (a 1-D
// "*.bias" weight, BatchNorm's included) fully, a normalization layer's 1-D
// scale (BatchNorm's, LayerNorm's or RMSNorm's weight) fully, or the first
// 1/8, 1/4, 1/2 or all output channels of a linear/conv2d weight. A candidate set becomes an
// UpdateScheme of exact-name rules (ToScheme); at most one ratio per weight.
//
//   ASSIGN_OR_RETURN(std::vector<Candidate> c, ListCandidates(model));
//   ASSIGN_OR_RETURN(scheme::UpdateScheme s, ToScheme(model, {c[0], c[3]}, "searched"));
//
// Functions only; thread-safe.
#ifndef FLEETTUNE_ENGINE_SEARCH_CANDIDATES_H_
#define FLEETTUNE_ENGINE_SEARCH_CANDIDATES_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/models/model.h"
#include "engine/scheme/scheme.h"

namespace fleettune::engine::search {

enum class CandidateKind { kBias, kScale, kChannels };

struct Candidate {
  CandidateKind kind = CandidateKind::kBias;
  std::string tensor;     // "fc1.bias", "features.3.conv.0.0.weight"
  std::string layer;      // the Model::layers entry holding it
  double fraction = 1.0;  // kChannels: 0.125, 0.25, 0.5 or 1; kBias and kScale: 1
  // Stable text id: "fc1.bias", "bn1.weight" (a scale) or "fc1.weight@1/4".
  std::string Id() const;
  // The scheme rule that trains it.
  scheme::Rule ToRule() const;
  bool operator==(const Candidate& o) const {
    return kind == o.kind && tensor == o.tensor && fraction == o.fraction;
  }
};

inline constexpr double kChannelFractions[] = {0.125, 0.25, 0.5, 1.0};

// Every candidate of `model` in layer order: per layer, its biases, its
// normalization scales, then each linear/conv weight at the four ratios
// (ascending). InvalidArgument for a
// model with no candidate.
absl::StatusOr<std::vector<Candidate>> ListCandidates(const models::Model& model);

// Parses a Candidate::Id back against `model`. InvalidArgument naming the id
// for an unknown tensor, a bad ratio, or a tensor that is not a candidate.
absl::StatusOr<Candidate> ParseCandidateId(const models::Model& model, absl::string_view id);

// The scheme (one exact-name rule per candidate, in the given order) named
// `name`. InvalidArgument for an empty set, a tensor the model lacks, or two
// candidates on one tensor.
absl::StatusOr<scheme::UpdateScheme> ToScheme(const models::Model& model,
                                              const std::vector<Candidate>& set,
                                              absl::string_view name);

}  // namespace fleettune::engine::search

#endif  // FLEETTUNE_ENGINE_SEARCH_CANDIDATES_H_
