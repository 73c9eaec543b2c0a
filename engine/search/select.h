// Choosing an update scheme under a device class's budgets (issue #7).
//
// Given each candidate's gain (contribution.h measures it) and the cost model,
// SelectScheme picks the set that maximizes the summed gain with at most one
// channel ratio per weight, within the memory budget and an optional
// step-time budget. Costs are first made additive: a candidate costs
// Cost({c}) − the cheapest single-candidate plan (the frozen model's memory is
// in every plan). A multiple-choice knapsack DP over the memory budget (costs
// rounded up to kMemoryBuckets buckets, so it never over-commits) solves it
// exactly up to that rounding when there is no time budget; otherwise, or
// past kMaxDpGroups weights, a seeded evolutionary search does. Memory is not
// exactly additive (the arena is shared), so the chosen set is re-costed by
// compiling it and repaired by dropping, one at a time, the candidate whose
// removal (costed exactly) makes it fit with the most gain left, or else gives
// up the least gain per unit of excess removed, until it fits; if it fit at
// once, candidates are added or upgraded (best gain
// first) into the room the over-estimate left, each checked exactly. Later
// rounds re-estimate each candidate's cost as its marginal cost against the
// last selection (cost(S + c) − cost(S without c's tensor)) and solve again;
// the best selection that fits wins.
//
//   ASSIGN_OR_RETURN(Selection s, SelectScheme(model, scored, costs, {.memory_bytes = 8 << 20}));
//   // s.scheme.name == "searched"
//
// Deterministic for a seed. Not thread-safe (it uses the CostModel).
#ifndef FLEETTUNE_ENGINE_SEARCH_SELECT_H_
#define FLEETTUNE_ENGINE_SEARCH_SELECT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/models/model.h"
#include "engine/scheme/scheme.h"
#include "engine/search/candidates.h"
#include "engine/search/cost_model.h"

namespace fleettune::engine::search {

struct ScoredCandidate {
  Candidate candidate;
  double gain = 0.0;  // e.g. held-out accuracy gain; non-positive gains are never chosen
};

struct Budget {
  int64_t memory_bytes = 0;   // TrainingBytes limit (> 0)
  double step_seconds = 0.0;  // 0: no time limit
};

enum class SearchMethod { kDynamicProgramming, kEvolutionary };

struct SelectOptions {
  uint64_t seed = 0;
  // Force the evolutionary search (tests); it is used anyway when needed.
  bool force_evolutionary = false;
  int population = 48;
  int generations = 120;
  // Exact re-costs spent adding or upgrading candidates into the room the
  // additive estimate leaves (memory is sub-additive).
  int max_fill_compiles = 64;
  // Exact re-costs per candidate dropped from a set over its budget: the
  // lowest-gain members are tried, this many at most.
  int max_repair_compiles = 16;
  // Estimate-solve-recost rounds (see SelectScheme); each after the first
  // compiles about two plans per candidate.
  int rounds = 3;
};

inline constexpr int kMemoryBuckets = 4096;
inline constexpr size_t kMaxDpGroups = 512;

struct Selection {
  std::vector<ScoredCandidate> chosen;  // in the input's order
  scheme::UpdateScheme scheme;          // named "searched"
  SchemeCost cost;                      // compiled (exact memory) cost of `scheme`
  double total_gain = 0.0;
  SearchMethod method = SearchMethod::kDynamicProgramming;
  int repaired = 0;  // candidates dropped after re-costing
  int filled = 0;    // candidates added or upgraded after re-costing
  int rounds = 0;    // estimate-solve-recost rounds run
  // Set by SelectVerified (verify.h): the set was fine-tuned jointly on the
  // calibration data and reached this held-out accuracy and loss; `origin`
  // names the shortlist entry ("selection", "last-k:2", …), and `replaced`
  // says whether it replaced the additive selection.
  bool verified = false;
  bool replaced = false;  // a measured set replaced the additive selection
  std::string origin;
  double verified_accuracy = 0.0;
  double verified_loss = 0.0;
};

// Errors: InvalidArgument for an empty candidate list, a non-positive memory
// budget, a candidate the model lacks, or no candidate with a positive gain;
// ResourceExhausted ("budget too small for any candidate") when no candidate
// with a positive gain fits alone.
absl::StatusOr<Selection> SelectScheme(const models::Model& model,
                                       const std::vector<ScoredCandidate>& candidates,
                                       CostModel& costs, const Budget& budget,
                                       const SelectOptions& options = {});

}  // namespace fleettune::engine::search

#endif  // FLEETTUNE_ENGINE_SEARCH_SELECT_H_
