#include "engine/search/select.h"

#include <cmath>
#include <iostream>
#include <map>
#include <set>

#include "engine/base/status_matchers.h"
#include "engine/models/zoo.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::search {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

models::Model Zoo(const std::string& name) {
  // .value(): a zoo model that fails to build fails the test loudly.
  return models::FindZooModel(name).value()->build(8, models::Mode::kTrain).value();
}

// A synthetic profile: later layers help more, more channels help with
// diminishing returns, biases help a little.
std::vector<ScoredCandidate> Profile(const std::vector<Candidate>& all) {
  std::vector<ScoredCandidate> out;
  std::map<std::string, int> layer_index;
  for (const Candidate& c : all) layer_index.emplace(c.layer, layer_index.size());
  for (const Candidate& c : all) {
    const double depth = 1.0 + layer_index[c.layer];
    const double gain =
        c.kind == CandidateKind::kBias ? 0.01 * depth : 0.05 * depth * std::sqrt(c.fraction);
    out.push_back({c, gain});
  }
  return out;
}

double GainIfFits(CostModel& costs, const std::vector<ScoredCandidate>& set, int64_t budget) {
  std::vector<Candidate> cs;
  double gain = 0;
  for (const auto& s : set) {
    cs.push_back(s.candidate);
    gain += s.gain;
  }
  auto cost = costs.Cost(cs);
  return cost.ok() && cost->memory_bytes <= budget ? gain : -1.0;
}

void ExpectValid(const Selection& s, int64_t budget) {
  EXPECT_EQ(s.scheme.name, "searched");
  EXPECT_LE(s.cost.memory_bytes, budget);
  std::set<std::string> tensors;
  for (const auto& c : s.chosen) EXPECT_TRUE(tensors.insert(c.candidate.tensor).second);
}

class SelectOnMlp : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = Zoo("mlp");
    all_ = ListCandidates(model_).value();
    profile_ = Profile(all_);
    CostModel probe(model_, {});
    // Budgets between "one bias" and "everything full".
    min_ = INT64_MAX;
    for (const Candidate& c : all_) {
      min_ = std::min(min_, probe.Cost(std::vector<Candidate>{c}).value().memory_bytes);
    }
    std::vector<Candidate> full;
    for (const Candidate& c : all_) {
      if (c.kind == CandidateKind::kBias || c.fraction == 1.0) full.push_back(c);
    }
    max_ = probe.Cost(full).value().memory_bytes;
  }
  models::Model model_;
  std::vector<Candidate> all_;
  std::vector<ScoredCandidate> profile_;
  int64_t min_ = 0, max_ = 0;
};

TEST_F(SelectOnMlp, RespectsTheMemoryBudgetAndBeatsBaselines) {
  for (double t : {0.1, 0.3, 0.6, 1.0}) {
    const int64_t budget = min_ + static_cast<int64_t>(t * (max_ - min_));
    CostModel costs(model_, {});
    ASSERT_OK_AND_ASSIGN(Selection s, SelectScheme(model_, profile_, costs, {budget}));
    ExpectValid(s, budget);
    EXPECT_EQ(s.method, SearchMethod::kDynamicProgramming);
    // Baseline 1: every bias. Baseline 2: greedy by gain per estimated byte.
    std::vector<ScoredCandidate> biases;
    for (const auto& c : profile_) {
      if (c.candidate.kind == CandidateKind::kBias) biases.push_back(c);
    }
    EXPECT_GE(s.total_gain + 1e-12, GainIfFits(costs, biases, budget)) << t;
    // The last layer fully (the "fine-tune the head" baseline).
    std::vector<ScoredCandidate> head = {profile_[10], profile_[14]};
    EXPECT_GE(s.total_gain + 1e-12, GainIfFits(costs, head, budget)) << t;
    if (t == 1.0) {
      EXPECT_NEAR(s.total_gain, 0.06 + 0.05 * 6, 1e-9);  // everything at ratio 1
    }
  }
}

TEST_F(SelectOnMlp, EvolutionaryRespectsBudgetsAndIsDeterministic) {
  const int64_t budget = min_ + (max_ - min_) / 3;
  CostModel costs(model_, {"slow", 1, 1e9});
  ASSERT_OK_AND_ASSIGN(Selection dp, SelectScheme(model_, profile_, costs, {budget}));
  SelectOptions options;
  options.seed = 7;
  options.force_evolutionary = true;
  ASSERT_OK_AND_ASSIGN(Selection a, SelectScheme(model_, profile_, costs, {budget}, options));
  ASSERT_OK_AND_ASSIGN(Selection b, SelectScheme(model_, profile_, costs, {budget}, options));
  EXPECT_EQ(a.method, SearchMethod::kEvolutionary);
  ExpectValid(a, budget);
  EXPECT_EQ(a.scheme, b.scheme);
  EXPECT_GE(a.total_gain, 0.8 * dp.total_gain);
  ASSERT_OK_AND_ASSIGN(Selection dp2, SelectScheme(model_, profile_, costs, {budget}));
  EXPECT_EQ(dp.scheme, dp2.scheme);

  // A time budget: half the full scheme's step time.
  std::vector<Candidate> full;
  for (const Candidate& c : all_) {
    if (c.kind == CandidateKind::kBias || c.fraction == 1.0) full.push_back(c);
  }
  const double full_seconds = costs.Cost(full).value().step_seconds;
  Budget timed{max_, 0.5 * full_seconds};
  ASSERT_OK_AND_ASSIGN(Selection t, SelectScheme(model_, profile_, costs, timed, options));
  ExpectValid(t, max_);
  EXPECT_LE(t.cost.step_seconds, timed.step_seconds);
  EXPECT_GT(t.total_gain, 0.0);
}

// Every set with at most one ratio per weight (6 tensors: 2^3 · 5^3 sets),
// costed exactly: the search finds the optimum or comes close.
TEST_F(SelectOnMlp, IsNearTheExhaustiveOptimum) {
  std::map<std::string, std::vector<const ScoredCandidate*>> groups;
  for (const auto& c : profile_) groups[c.candidate.tensor].push_back(&c);
  std::vector<std::vector<const ScoredCandidate*>> g;
  for (auto& [name, items] : groups) g.push_back(items);
  CostModel costs(model_, {});
  for (double t : {0.15, 0.4, 0.7}) {
    const int64_t budget = min_ + static_cast<int64_t>(t * (max_ - min_));
    double best = 0;
    std::vector<int> pick(g.size(), -1);
    for (;;) {
      std::vector<ScoredCandidate> set;
      for (size_t i = 0; i < g.size(); ++i) {
        if (pick[i] >= 0) set.push_back(*g[i][pick[i]]);
      }
      if (!set.empty()) best = std::max(best, GainIfFits(costs, set, budget));
      size_t i = 0;
      while (i < g.size() && ++pick[i] == static_cast<int>(g[i].size())) pick[i++] = -1;
      if (i == g.size()) break;
    }
    ASSERT_OK_AND_ASSIGN(Selection s, SelectScheme(model_, profile_, costs, {budget}));
    EXPECT_LE(s.total_gain, best + 1e-12);
    // Later rounds only ever keep a better fitting selection.
    SelectOptions one_round;
    one_round.rounds = 1;
    ASSERT_OK_AND_ASSIGN(Selection s1, SelectScheme(model_, profile_, costs, {budget}, one_round));
    EXPECT_EQ(s1.rounds, 1);
    EXPECT_GE(s.total_gain, s1.total_gain);
    EXPECT_LE(s1.cost.memory_bytes, budget);
    EXPECT_GE(s.total_gain, 0.9 * best) << "budget fraction " << t;
    std::cerr << "budget " << t << ": searched " << s.total_gain << " exhaustive " << best
              << " (filled " << s.filled << ", repaired " << s.repaired << ")\n";
  }
}

TEST(SelectOnCnn, BothSearchesFitTheBudget) {
  models::Model model = Zoo("cnn");
  ASSERT_OK_AND_ASSIGN(std::vector<Candidate> all, ListCandidates(model));
  std::vector<ScoredCandidate> profile = Profile(all);
  CostModel costs(model, {"rpi4", 4, 8e9});
  std::vector<Candidate> full;
  for (const Candidate& c : all) {
    if (c.kind == CandidateKind::kBias || c.fraction == 1.0) full.push_back(c);
  }
  const int64_t budget = costs.Cost(full).value().memory_bytes * 9 / 10;
  SelectOptions evolutionary;
  evolutionary.force_evolutionary = true;
  for (const SelectOptions& options : {SelectOptions{}, evolutionary}) {
    ASSERT_OK_AND_ASSIGN(Selection s, SelectScheme(model, profile, costs, {budget}, options));
    ExpectValid(s, budget);
    EXPECT_GT(s.chosen.size(), 1u);
    ASSERT_OK_AND_ASSIGN(scheme::ResolvedScheme r, scheme::ResolveScheme(model, s.scheme));
    EXPECT_GT(r.TrainableElements(), 0);
  }
}

TEST_F(SelectOnMlp, ReportsBadInputs) {
  CostModel costs(model_, {});
  EXPECT_THAT(SelectScheme(model_, {}, costs, {max_}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty candidate list")));
  EXPECT_THAT(SelectScheme(model_, profile_, costs, {0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("memory budget")));
  EXPECT_THAT(SelectScheme(model_, profile_, costs, {min_ - 1}),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("budget too small")));
  std::vector<ScoredCandidate> useless = profile_;
  for (auto& c : useless) c.gain = -0.01;
  EXPECT_THAT(SelectScheme(model_, useless, costs, {max_}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("positive gain")));
  std::vector<ScoredCandidate> ghost = {{{CandidateKind::kBias, "fc9.bias", "fc9", 1.0}, 1.0}};
  EXPECT_THAT(SelectScheme(model_, ghost, costs, {max_}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fc9.bias")));
}

// Issue #7: the predicted memory of a chosen scheme is what the runtime
// allocates for it (within 5%; it is in fact exact, since the cost model
// compiles the plan the trainer runs).
TEST(Select, ChosenSchemesPredictMemoryTheRuntimeAllocates) {
  for (const std::string name : {"mlp", "cnn"}) {
    ASSERT_OK_AND_ASSIGN(const models::ZooEntry* zoo, models::FindZooModel(name));
    const train::ModelBuilder build = [zoo](int64_t batch, models::Mode) {
      return zoo->build(batch, models::Mode::kEval);
    };
    ASSERT_OK_AND_ASSIGN(models::Model model, build(16, models::Mode::kEval));
    ASSERT_OK_AND_ASSIGN(std::vector<Candidate> all, ListCandidates(model));
    const autodiff::OptimizerConfig sgd = autodiff::OptimizerConfig::Sgd({0.05f, 0.9f});
    CostModel costs(model, {"x", 2, 1e9}, sgd);
    for (double fraction : {0.2, 0.5}) {
      ASSERT_OK_AND_ASSIGN(int64_t budget, OverheadFractionBudget(costs, model, fraction));
      ASSERT_OK_AND_ASSIGN(Selection s, SelectScheme(model, Profile(all), costs, {budget, 0.0}));
      ExpectValid(s, budget);
      runtime::ParameterStore params;
      ASSERT_OK(zoo->initialize(model, 0, &params));
      train::TrainerOptions options;
      ASSERT_OK_AND_ASSIGN(options.scheme, scheme::ResolveScheme(model, s.scheme));
      options.batch = 16;
      options.threads = 2;
      options.optimizer = sgd;
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<train::Trainer> trainer,
                           train::Trainer::Create(build, &params, options));
      const double actual = static_cast<double>(trainer->train_executable().memory().total_bytes());
      EXPECT_NEAR(static_cast<double>(s.cost.memory_bytes), actual, 0.05 * actual)
          << name << " at " << fraction;
    }
  }
}

}  // namespace
}  // namespace fleettune::engine::search
