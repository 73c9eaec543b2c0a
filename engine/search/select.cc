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
  const int64_t memory = budget.memory_bytes - floor_memory;
  const double seconds = budget.step_seconds > 0 ? budget.step_seconds - floor_seconds : 0.0;
  Selection out;
  Choice choice;
  if (!options.force_evolutionary && budget.step_seconds <= 0 && groups.size() <= kMaxDpGroups) {
    out.method = SearchMethod::kDynamicProgramming;
    choice = SolveDp(groups, memory);
  } else {
    out.method = SearchMethod::kEvolutionary;
    choice = SolveEvolutionary(groups, memory, seconds, options);
  }
  // Re-cost exactly and repair.
  for (;;) {
    std::vector<Candidate> set;
    for (size_t g = 0; g < groups.size(); ++g) {
      if (choice[g] >= 0) set.push_back(candidates[groups[g][choice[g]].index].candidate);
    }
    if (set.empty()) {
      // Nothing survived: fall back to the best single candidate that fits.
      int best = -1;
      for (size_t g = 0; g < groups.size(); ++g) {
        for (size_t i = 0; i < groups[g].size(); ++i) {
          const Item& it = groups[g][i];
          if (best < 0 || it.gain > candidates[best].gain) best = static_cast<int>(it.index);
        }
      }
      set.push_back(candidates[best].candidate);
      for (size_t g = 0; g < groups.size(); ++g) {
        for (size_t i = 0; i < groups[g].size(); ++i) {
          if (static_cast<int>(groups[g][i].index) == best) choice[g] = static_cast<int>(i);
        }
      }
    }
    ASSIGN_OR_RETURN(SchemeCost cost, costs.Cost(set));
    const bool fits = cost.memory_bytes <= budget.memory_bytes &&
                      (budget.step_seconds <= 0 || cost.step_seconds <= budget.step_seconds);
    size_t chosen = 0;
    for (int c : choice) chosen += c >= 0;
    if (fits || chosen <= 1) {
      out.cost = cost;
      break;
    }
    int worst = -1;
    for (size_t g = 0; g < groups.size(); ++g) {
      if (choice[g] < 0) continue;
      if (worst < 0 || Ratio(groups[g][choice[g]]) < Ratio(groups[worst][choice[worst]])) {
        worst = static_cast<int>(g);
      }
    }
    choice[worst] = -1;
    ++out.repaired;
  }
  // Memory is sub-additive (the arena and backward are shared), so the
  // estimate leaves room: add or upgrade candidates, best gain first, while
  // the exact cost still fits.
  if (out.repaired == 0) {
    std::vector<std::pair<size_t, size_t>> upgrades;  // (group, item)
    for (size_t g = 0; g < groups.size(); ++g) {
      for (size_t i = 0; i < groups[g].size(); ++i) {
        if (choice[g] < 0 || groups[g][i].gain > groups[g][choice[g]].gain)
          upgrades.push_back({g, i});
      }
    }
    std::stable_sort(upgrades.begin(), upgrades.end(), [&](const auto& a, const auto& b) {
      const Item& x = groups[a.first][a.second];
      const Item& y = groups[b.first][b.second];
      const double gx = x.gain - (choice[a.first] < 0 ? 0 : groups[a.first][choice[a.first]].gain);
      const double gy = y.gain - (choice[b.first] < 0 ? 0 : groups[b.first][choice[b.first]].gain);
      return gx > gy;
    });
    int tries = 0;
    for (const auto& [g, i] : upgrades) {
      if (tries >= options.max_fill_compiles) break;
      if (choice[g] >= 0 && groups[g][i].gain <= groups[g][choice[g]].gain) continue;
      Choice trial = choice;
      trial[g] = static_cast<int>(i);
      std::vector<Candidate> set;
      for (size_t h = 0; h < groups.size(); ++h) {
        if (trial[h] >= 0) set.push_back(candidates[groups[h][trial[h]].index].candidate);
      }
      ++tries;
      ASSIGN_OR_RETURN(SchemeCost cost, costs.Cost(set));
      if (cost.memory_bytes <= budget.memory_bytes &&
          (budget.step_seconds <= 0 || cost.step_seconds <= budget.step_seconds)) {
        choice = trial;
        out.cost = cost;
        ++out.filled;
      }
    }
  }
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
