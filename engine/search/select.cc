#include "engine/search/select.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::search {
namespace {

struct Item {
  size_t index;  // into the input list
  double gain;
  int64_t memory;  // additive estimate
  double seconds;
};

// Items grouped by tensor: at most one item per group is chosen.
using Groups = std::vector<std::vector<Item>>;

// How far a cost is over the budget, as the larger fraction of its memory
// and step-time limits (<= 0 when it fits).
double Excess(const SchemeCost& c, const Budget& budget) {
  double excess = static_cast<double>(c.memory_bytes - budget.memory_bytes) /
                  static_cast<double>(std::max<int64_t>(budget.memory_bytes, 1));
  if (budget.step_seconds > 0) {
    excess = std::max(excess, (c.step_seconds - budget.step_seconds) / budget.step_seconds);
  }
  return excess;
}

double Ratio(const Item& it) {
  return it.gain / static_cast<double>(std::max<int64_t>(it.memory, 1));
}

// choice[g] = item index within group g, or -1.
using Choice = std::vector<int>;

struct Totals {
  double gain = 0;
  int64_t memory = 0;
  double seconds = 0;
};

Totals Sum(const Groups& groups, const Choice& c) {
  Totals t;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (c[g] < 0) continue;
    const Item& it = groups[g][c[g]];
    t.gain += it.gain;
    t.memory += it.memory;
    t.seconds += it.seconds;
  }
  return t;
}

// Drops the lowest gain/cost items until the additive estimate fits.
void RepairEstimate(const Groups& groups, int64_t memory, double seconds, Choice& c) {
  for (;;) {
    Totals t = Sum(groups, c);
    if (t.memory <= memory && (seconds <= 0 || t.seconds <= seconds)) return;
    int worst = -1;
    for (size_t g = 0; g < groups.size(); ++g) {
      if (c[g] < 0) continue;
      if (worst < 0 || Ratio(groups[g][c[g]]) < Ratio(groups[worst][c[worst]])) worst = g;
    }
    if (worst < 0) return;
    c[worst] = -1;
  }
}

Choice SolveDp(const Groups& groups, int64_t memory) {
  const int64_t unit = std::max<int64_t>(1, (memory + kMemoryBuckets - 1) / kMemoryBuckets);
  const int cap = static_cast<int>(memory / unit);
  // best[g][m]: best gain using groups < g within m buckets; pick[g][m] the choice.
  std::vector<std::vector<double>> best(groups.size() + 1, std::vector<double>(cap + 1, 0.0));
  std::vector<std::vector<int>> pick(groups.size(), std::vector<int>(cap + 1, -1));
  for (size_t g = 0; g < groups.size(); ++g) {
    for (int m = 0; m <= cap; ++m) {
      best[g + 1][m] = best[g][m];
      for (size_t i = 0; i < groups[g].size(); ++i) {
        const int64_t w = (groups[g][i].memory + unit - 1) / unit;  // round up: never over-commit
        if (w > m) continue;
        const double v = best[g][m - w] + groups[g][i].gain;
        if (v > best[g + 1][m]) {
          best[g + 1][m] = v;
          pick[g][m] = static_cast<int>(i);
        }
      }
    }
  }
  Choice c(groups.size(), -1);
  int m = cap;
  for (size_t g = groups.size(); g-- > 0;) {
    c[g] = pick[g][m];
    if (c[g] >= 0) m -= static_cast<int>((groups[g][c[g]].memory + unit - 1) / unit);
  }
  return c;
}

Choice SolveEvolutionary(const Groups& groups, int64_t memory, double seconds,
                         const SelectOptions& options) {
  std::mt19937_64 rng(options.seed);
  const size_t n = groups.size();
  auto random_gene = [&](size_t g) {
    std::uniform_int_distribution<int> d(-1, static_cast<int>(groups[g].size()) - 1);
    return d(rng);
  };
  // Seed the population with the greedy gain/cost solution and random ones.
  std::vector<Choice> pop;
  Choice greedy(n, -1);
  for (size_t g = 0; g < n; ++g) {
    for (size_t i = 0; i < groups[g].size(); ++i) {
      if (greedy[g] < 0 || groups[g][i].gain > groups[g][greedy[g]].gain) greedy[g] = i;
    }
  }
  RepairEstimate(groups, memory, seconds, greedy);
  pop.push_back(greedy);
  const int size = std::max(options.population, 4);
  while (static_cast<int>(pop.size()) < size) {
    Choice c(n);
    for (size_t g = 0; g < n; ++g) c[g] = random_gene(g);
    RepairEstimate(groups, memory, seconds, c);
    pop.push_back(c);
  }
  auto fitness = [&](const Choice& c) { return Sum(groups, c).gain; };
  std::uniform_int_distribution<int> pick(0, size - 1);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const double mutation = 1.0 / std::max<size_t>(n, 1);
  for (int gen = 0; gen < options.generations; ++gen) {
    std::vector<Choice> next;
    // Elitism: the best survives unchanged.
    next.push_back(*std::max_element(pop.begin(), pop.end(), [&](const Choice& a, const Choice& b) {
      return fitness(a) < fitness(b);
    }));
    while (static_cast<int>(next.size()) < size) {
      auto tournament = [&]() -> const Choice& {
        const Choice& a = pop[pick(rng)];
        const Choice& b = pop[pick(rng)];
        return fitness(a) >= fitness(b) ? a : b;
      };
      const Choice& p1 = tournament();
      const Choice& p2 = tournament();
      Choice child(n);
      for (size_t g = 0; g < n; ++g) {
        child[g] = u(rng) < 0.5 ? p1[g] : p2[g];
        if (u(rng) < mutation) child[g] = random_gene(g);
      }
      RepairEstimate(groups, memory, seconds, child);
      next.push_back(std::move(child));
    }
    pop = std::move(next);
  }
  return *std::max_element(pop.begin(), pop.end(), [&](const Choice& a, const Choice& b) {
    return fitness(a) < fitness(b);
  });
}

}  // namespace

absl::StatusOr<Selection> SelectScheme(const models::Model& model,
                                       const std::vector<ScoredCandidate>& candidates,
                                       CostModel& costs, const Budget& budget,
                                       const SelectOptions& options) {
  if (candidates.empty()) return absl::InvalidArgumentError("select: empty candidate list");
  if (budget.memory_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("select: memory budget must be positive, got ", budget.memory_bytes));
  }
  if (std::none_of(candidates.begin(), candidates.end(),
                   [](const ScoredCandidate& c) { return c.gain > 0; })) {
    return absl::InvalidArgumentError("select: no candidate has a positive gain");
  }
  // Single-candidate costs; the cheapest is the floor every plan pays.
  std::vector<SchemeCost> alone(candidates.size());
  int64_t floor_memory = INT64_MAX;
  double floor_seconds = 1e300;
  for (size_t i = 0; i < candidates.size(); ++i) {
    ASSIGN_OR_RETURN(alone[i], costs.Cost(std::vector<Candidate>{candidates[i].candidate}));
    floor_memory = std::min(floor_memory, alone[i].memory_bytes);
    floor_seconds = std::min(floor_seconds, alone[i].step_seconds);
  }
  std::map<std::string, size_t> group_of;
  Groups groups;
  bool any_fits = false;
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (!(candidates[i].gain > 0)) continue;
    const bool fits = alone[i].memory_bytes <= budget.memory_bytes &&
                      (budget.step_seconds <= 0 || alone[i].step_seconds <= budget.step_seconds);
    if (!fits) continue;
    any_fits = true;
    auto [it, added] = group_of.emplace(candidates[i].candidate.tensor, groups.size());
    if (added) groups.emplace_back();
    groups[it->second].push_back({i, candidates[i].gain, alone[i].memory_bytes - floor_memory,
                                  alone[i].step_seconds - floor_seconds});
  }
  if (!any_fits) {
    return absl::ResourceExhaustedError(
        absl::StrCat("select: budget too small for any candidate (memory ", budget.memory_bytes,
                     " bytes; the cheapest candidate alone needs ", floor_memory, ")"));
  }
  auto set_of = [&](const Choice& c) {
    std::vector<Candidate> set;
    for (size_t g = 0; g < groups.size(); ++g) {
      if (c[g] >= 0) set.push_back(candidates[groups[g][c[g]].index].candidate);
    }
    return set;
  };
  auto fits = [&](const SchemeCost& c) {
    return c.memory_bytes <= budget.memory_bytes &&
           (budget.step_seconds <= 0 || c.step_seconds <= budget.step_seconds);
  };
  // Exact cost; an empty set (which CompileTraining rejects) costs the floor.
  auto cost_of = [&](const Choice& c) -> absl::StatusOr<SchemeCost> {
    std::vector<Candidate> set = set_of(c);
    if (set.empty()) return SchemeCost{floor_memory, 0, floor_seconds};
    return costs.Cost(set);
  };
  // Re-costs `choice` exactly; drops the lowest gain/cost candidate until it
  // fits (repaired), or, if it fit at once, adds or upgrades candidates (best
  // gain first) into the room the estimate left (filled).
  struct Finalized {
    Choice choice;
    SchemeCost cost;
    int repaired = 0, filled = 0;
  };
  auto finalize = [&](Choice choice) -> absl::StatusOr<Finalized> {
    Finalized f;
    for (;;) {
      if (set_of(choice).empty()) {
        // Nothing survived: the best single candidate that fits alone.
        size_t bg = 0, bi = 0;
        for (size_t g = 0; g < groups.size(); ++g) {
          for (size_t i = 0; i < groups[g].size(); ++i) {
            if (groups[g][i].gain > groups[bg][bi].gain) bg = g, bi = i;
          }
        }
        choice[bg] = static_cast<int>(bi);
      }
      ASSIGN_OR_RETURN(f.cost, cost_of(choice));
      size_t chosen = 0;
      for (int c : choice) chosen += c >= 0;
      if (fits(f.cost) || chosen <= 1) break;
      // Drop one candidate, judged by exact costs: estimates can put a
      // candidate at no cost (its backward is shared), which would make it
      // look best to keep and the set's most valuable member best to drop.
      // A drop that makes the set fit wins, keeping the most gain; else the
      // one giving up the least gain per unit of excess it removes. Only the
      // max_repair_compiles lowest-gain members are tried (one compile each).
      std::vector<size_t> members;
      for (size_t g = 0; g < groups.size(); ++g) {
        if (choice[g] >= 0) members.push_back(g);
      }
      std::stable_sort(members.begin(), members.end(), [&](size_t a, size_t b) {
        return groups[a][choice[a]].gain < groups[b][choice[b]].gain;
      });
      members.resize(
          std::min(members.size(), static_cast<size_t>(std::max(1, options.max_repair_compiles))));
      int worst = -1;
      bool worst_fits = false;
      double worst_score = 0.0;
      const double excess = Excess(f.cost, budget);
      for (size_t g : members) {
        Choice trial = choice;
        trial[g] = -1;
        ASSIGN_OR_RETURN(SchemeCost cost, cost_of(trial));
        const bool trial_fits = fits(cost);
        const double lost = groups[g][choice[g]].gain;
        const double score =
            trial_fits ? lost : lost / std::max(excess - Excess(cost, budget), 1e-12);
        if (worst < 0 || (trial_fits && !worst_fits) ||
            (trial_fits == worst_fits && score < worst_score)) {
          worst = static_cast<int>(g);
          worst_fits = trial_fits;
          worst_score = score;
        }
      }
      choice[worst] = -1;
      ++f.repaired;
    }
    if (f.repaired == 0) {
      std::vector<std::pair<size_t, size_t>> upgrades;  // (group, item)
      auto delta = [&](const std::pair<size_t, size_t>& u) {
        const int cur = choice[u.first];
        return groups[u.first][u.second].gain - (cur < 0 ? 0.0 : groups[u.first][cur].gain);
      };
      for (size_t g = 0; g < groups.size(); ++g) {
        for (size_t i = 0; i < groups[g].size(); ++i) {
          if (delta({g, i}) > 0) upgrades.push_back({g, i});
        }
      }
      std::stable_sort(upgrades.begin(), upgrades.end(),
                       [&](const auto& a, const auto& b) { return delta(a) > delta(b); });
      int tries = 0;
      for (const auto& u : upgrades) {
        if (tries >= options.max_fill_compiles) break;
        if (delta(u) <= 0) continue;  // an earlier upgrade of this tensor went further
        Choice trial = choice;
        trial[u.first] = static_cast<int>(u.second);
        ++tries;
        ASSIGN_OR_RETURN(SchemeCost cost, cost_of(trial));
        if (fits(cost)) {
          choice = trial;
          f.cost = cost;
          ++f.filled;
        }
      }
    }
    f.choice = std::move(choice);
    return f;
  };

  Selection out;
  out.method =
      !options.force_evolutionary && budget.step_seconds <= 0 && groups.size() <= kMaxDpGroups
          ? SearchMethod::kDynamicProgramming
          : SearchMethod::kEvolutionary;
  // Round 0 estimates each candidate against the floor, which over-charges
  // deep layers (their backward is shared once several train). Later rounds
  // re-linearize around the last selection S: a candidate costs
  // cost(S with it) − cost(S without its tensor), and S's own cost anchors
  // the constant. The best fitting selection of all rounds wins.
  Groups est = groups;
  int64_t anchor_memory = floor_memory;
  double anchor_seconds = floor_seconds;
  Finalized best;
  double best_gain = -1.0;
  for (int round = 0; round < std::max(1, options.rounds); ++round) {
    const int64_t memory = budget.memory_bytes - anchor_memory;
    const double seconds =
        budget.step_seconds > 0 ? std::max(0.0, budget.step_seconds - anchor_seconds) : 0.0;
    if (memory < 0) break;
    Choice choice = out.method == SearchMethod::kDynamicProgramming
                        ? SolveDp(est, memory)
                        : SolveEvolutionary(est, memory, seconds, options);
    ASSIGN_OR_RETURN(Finalized f, finalize(std::move(choice)));
    const double gain = Sum(groups, f.choice).gain;
    ++out.rounds;
    const bool improved = fits(f.cost) && gain > best_gain + 1e-12;
    if (improved || best_gain < 0) {
      best_gain = gain;
      best = f;
    }
    if (!improved && round > 0) break;
    if (round + 1 == options.rounds) break;
    // Re-linearize around f.choice.
    est = groups;
    anchor_memory = f.cost.memory_bytes;
    anchor_seconds = f.cost.step_seconds;
    for (size_t g = 0; g < groups.size(); ++g) {
      Choice without = f.choice;
      without[g] = -1;
      ASSIGN_OR_RETURN(SchemeCost base, cost_of(without));
      for (size_t i = 0; i < groups[g].size(); ++i) {
        Choice with = without;
        with[g] = static_cast<int>(i);
        ASSIGN_OR_RETURN(SchemeCost c, cost_of(with));
        est[g][i].memory = std::max<int64_t>(0, c.memory_bytes - base.memory_bytes);
        est[g][i].seconds = std::max(0.0, c.step_seconds - base.step_seconds);
      }
      if (f.choice[g] >= 0) {
        anchor_memory -= est[g][f.choice[g]].memory;
        anchor_seconds -= est[g][f.choice[g]].seconds;
      }
    }
  }
  out.cost = best.cost;
  out.repaired = best.repaired;
  out.filled = best.filled;
  const Choice& choice = best.choice;
  std::vector<size_t> indices;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (choice[g] >= 0) indices.push_back(groups[g][choice[g]].index);
  }
  std::sort(indices.begin(), indices.end());
  std::vector<Candidate> set;
  for (size_t i : indices) {
    out.chosen.push_back(candidates[i]);
    out.total_gain += candidates[i].gain;
    set.push_back(candidates[i].candidate);
  }
  ASSIGN_OR_RETURN(out.scheme, ToScheme(model, set, "searched"));
  return out;
}

}  // namespace fleettune::engine::search
