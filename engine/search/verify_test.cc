#include "engine/search/verify.h"

#include <cmath>
#include <set>

#include "engine/base/status_matchers.h"
#include "engine/models/mlp.h"
#include "engine/models/zoo.h"
#include "engine/search/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::search {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

std::vector<std::string> Ids(const std::vector<Candidate>& set) {
  std::vector<std::string> ids;
  for (const Candidate& c : set) ids.push_back(c.Id());
  return ids;
}

class VerifyOnMlp : public ::testing::Test {
 protected:
  void SetUp() override {
    MakeArgmaxData(512, 1, &data_.train_images, &data_.train_labels);
    MakeArgmaxData(400, 2, &data_.heldout_images, &data_.heldout_labels);
    ASSERT_OK(models::InitializeMlp(kArgmaxMlp, 3, &base_));
    model_ = ArgmaxMlpBuilder()(32, models::Mode::kTrain).value();
    options_.steps = 30;
    options_.seed = 4;
  }

  CalibrationData data_;
  runtime::ParameterStore base_;
  models::Model model_;
  ContributionOptions options_;
};

TEST(PresetCandidates, ExpressesPresetsAsCandidateSets) {
  const models::Model mlp = ArgmaxMlpBuilder()(1, models::Mode::kTrain).value();
  ASSERT_OK_AND_ASSIGN(std::vector<Candidate> head, PresetCandidates(mlp, "last-k:1"));
  EXPECT_THAT(Ids(head), UnorderedElementsAre("fc2.weight@1", "fc2.bias"));
  ASSERT_OK_AND_ASSIGN(std::vector<Candidate> biases, PresetCandidates(mlp, "bias-only"));
  EXPECT_THAT(Ids(biases), UnorderedElementsAre("fc1.bias", "fc2.bias"));
  // An embedding is not a candidate, so BERT's full fine-tuning is not a set.
  const models::Model bert =
      models::FindZooModel("bert_mini").value()->build(1, models::Mode::kTrain).value();
  EXPECT_THAT(PresetCandidates(bert, "full"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(PresetCandidates(mlp, "last-k:zero"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(VerifyOnMlp, AJointSetOfOneCandidateMatchesItsContribution) {
  const Candidate head = ParseCandidateId(model_, "fc2.weight@1").value();
  ASSERT_OK_AND_ASSIGN(ContributionProfile p,
                       AnalyzeContributions(ArgmaxMlpBuilder(), base_, {head}, data_, options_));
  ASSERT_OK_AND_ASSIGN(
      std::vector<JointContribution> j,
      AnalyzeJoint(ArgmaxMlpBuilder(), base_, {{head}}, {"head"}, data_, options_));
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0].accuracy, p.entries[0].accuracy);
  EXPECT_EQ(j[0].loss, p.entries[0].loss);
  EXPECT_EQ(j[0].steps, 30);
  EXPECT_THAT(j[0].ids, UnorderedElementsAre("fc2.weight@1"));

  EXPECT_THAT(AnalyzeJoint(ArgmaxMlpBuilder(), base_, {{head}}, {"two words"}, data_, options_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("whitespace")));
  EXPECT_THAT(AnalyzeJoint(ArgmaxMlpBuilder(), base_, {{}}, {"empty"}, data_, options_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  const Candidate quarter = ParseCandidateId(model_, "fc2.weight@1/4").value();
  EXPECT_THAT(
      AnalyzeJoint(ArgmaxMlpBuilder(), base_, {{head, quarter}}, {"twice"}, data_, options_),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fc2.weight")));
}

TEST_F(VerifyOnMlp, PicksTheBestMeasuredSetThatFitsAndRecordsIt) {
  ASSERT_OK_AND_ASSIGN(std::vector<Candidate> all, ListCandidates(model_));
  ASSERT_OK_AND_ASSIGN(ContributionProfile profile,
                       AnalyzeContributions(ArgmaxMlpBuilder(), base_, all, data_, options_));
  CostModel costs(model_, {});
  ASSERT_OK_AND_ASSIGN(int64_t budget, OverheadFractionBudget(costs, model_, 0.5));

  VerifyOptions v;
  v.steps = 60;
  ASSERT_OK_AND_ASSIGN(std::vector<ShortlistEntry> shortlist,
                       Shortlist(model_, profile, costs, {budget}, v));
  // Every entry fits and is a distinct set; the head alone (last-k:1) always
  // fits here, so it is among them under its own name or an earlier one.
  std::set<std::set<std::string>> sets;
  for (const ShortlistEntry& e : shortlist) {
    const std::vector<std::string> ids = Ids(e.set);
    EXPECT_TRUE(sets.insert({ids.begin(), ids.end()}).second) << e.origin;
    ASSERT_OK_AND_ASSIGN(SchemeCost c, costs.Cost(e.set));
    EXPECT_LE(c.memory_bytes, budget) << e.origin;
  }
  EXPECT_EQ(shortlist.front().origin, "selection");
  EXPECT_TRUE(sets.count({"fc2.weight@1", "fc2.bias"}));

  ASSERT_OK_AND_ASSIGN(Selection s, SearchVerified(ArgmaxMlpBuilder(), base_, data_, model_, costs,
                                                   {budget}, options_, v, &profile));
  EXPECT_TRUE(s.verified);
  EXPECT_EQ(s.scheme.name, "searched");
  EXPECT_LE(s.cost.memory_bytes, budget);
  ASSERT_EQ(profile.joint.size(), shortlist.size());
  // The selection stands unless a set beat it by more than a standard error.
  ASSERT_EQ(profile.heldout_samples, 400);
  ASSERT_EQ(profile.joint.front().origin, "selection");
  const double a = profile.joint.front().accuracy;
  const double margin = std::sqrt(a * (1 - a) / 400);
  for (const JointContribution& j : profile.joint) {
    EXPECT_EQ(j.steps, 60);
    if (!s.replaced) {
      EXPECT_LE(j.accuracy, a + margin) << j.origin;
    } else {
      EXPECT_GE(s.verified_accuracy, j.accuracy) << j.origin;
    }
  }
  EXPECT_EQ(s.replaced, s.origin != "selection");
  if (s.replaced) {
    EXPECT_GT(s.verified_accuracy, a + margin);
  }
  EXPECT_GT(s.verified_accuracy, profile.base_accuracy + 0.2);

  // Measured sets are not measured again, and the text format keeps them.
  ASSERT_OK_AND_ASSIGN(ContributionProfile reread, ParseProfileText(ProfileToText(profile)));
  ASSERT_OK_AND_ASSIGN(Selection again, SearchVerified(ArgmaxMlpBuilder(), base_, data_, model_,
                                                       costs, {budget}, options_, v, &reread));
  EXPECT_EQ(reread.joint.size(), profile.joint.size());
  EXPECT_EQ(again.origin, s.origin);
  EXPECT_EQ(again.scheme, s.scheme);
  EXPECT_EQ(ProfileToText(reread), ProfileToText(profile));
}

TEST_F(VerifyOnMlp, AMeasuredSetReplacesTheSelectionOnlyBeyondNoise) {
  auto set = [&](const std::vector<std::string>& ids) {
    std::vector<Candidate> out;
    for (const std::string& id : ids) out.push_back(ParseCandidateId(model_, id).value());
    return out;
  };
  ContributionProfile p;
  p.entries = {{"fc1.bias", 0.3, 1.0, 0.05, 0.1}, {"fc2.weight@1", 0.6, 0.9, 0.35, 0.2}};
  p.joint = {{"selection", {"fc2.weight@1", "fc2.bias"}, 60, 0.80, 0.8},
             {"dear", {"fc1.weight@1", "fc2.weight@1"}, 60, 0.90, 0.5},
             {"cheap", {"fc2.bias", "fc1.bias"}, 60, 0.85, 0.7},
             {"other-steps", {"fc2.weight@1", "fc2.bias"}, 30, 0.99, 0.1}};
  const std::vector<Candidate> incumbent = set(p.joint[0].ids);
  CostModel costs(model_, {});
  const int64_t dear = costs.Cost(set(p.joint[1].ids)).value().memory_bytes;
  const int64_t selection = costs.Cost(incumbent).value().memory_bytes;
  const int64_t cheap = costs.Cost(set(p.joint[2].ids)).value().memory_bytes;
  ASSERT_LT(std::max(selection, cheap), dear);

  // Without a held-out size any margin counts: the best set that fits wins.
  ASSERT_OK_AND_ASSIGN(Selection roomy, SelectVerified(model_, p, costs, {dear}, incumbent, 60));
  EXPECT_EQ(roomy.origin, "dear");
  EXPECT_DOUBLE_EQ(roomy.verified_accuracy, 0.9);
  EXPECT_TRUE(roomy.verified);
  ASSERT_OK_AND_ASSIGN(Selection tight,
                       SelectVerified(model_, p, costs, {dear - 1}, incumbent, 60));
  EXPECT_EQ(tight.origin, "cheap") << "'dear' does not fit";
  EXPECT_DOUBLE_EQ(tight.total_gain, 0.05);  // fc1.bias's own gain; fc2.bias has no entry

  // One standard error of 80% on 400 samples is 2 points: 85% and 90% beat it,
  // 81% does not, and the selection stays.
  p.heldout_samples = 400;
  ASSERT_OK_AND_ASSIGN(Selection clear, SelectVerified(model_, p, costs, {dear}, incumbent, 60));
  EXPECT_EQ(clear.origin, "dear");
  EXPECT_TRUE(clear.replaced);
  p.joint[1].accuracy = p.joint[2].accuracy = 0.81;
  ASSERT_OK_AND_ASSIGN(Selection noise, SelectVerified(model_, p, costs, {dear}, incumbent, 60));
  EXPECT_EQ(noise.origin, "selection");
  EXPECT_FALSE(noise.replaced);
  EXPECT_DOUBLE_EQ(noise.verified_accuracy, 0.80);
  ASSERT_OK_AND_ASSIGN(Selection zero_margin,
                       SelectVerified(model_, p, costs, {dear}, incumbent, 60, 0.0));
  EXPECT_EQ(zero_margin.origin, "dear") << "equal accuracy: the lower loss";

  // Steps 0: the incumbent's longest measurement, and the others' at its length.
  ASSERT_OK_AND_ASSIGN(Selection longest, SelectVerified(model_, p, costs, {dear}, incumbent));
  EXPECT_EQ(longest.origin, "selection");
  // An unmeasured selection, or one that does not fit: nothing to compare with.
  EXPECT_THAT(SelectVerified(model_, p, costs, {dear}, set({"fc1.bias"}), 60),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(SelectVerified(model_, p, costs, {selection - 1}, incumbent, 60),
              StatusIs(absl::StatusCode::kNotFound));
  p.joint.push_back({"foreign", {"conv1.weight@1"}, 60, 1.0, 0.0});
  EXPECT_THAT(SelectVerified(model_, p, costs, {dear}, incumbent, 60),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("foreign")));
}

TEST(JointProfileText, RoundTripsAndRejectsMalformedLines) {
  ContributionProfile p;
  p.base_accuracy = 0.25;
  p.base_loss = 1.5;
  p.entries = {{"fc1.bias", 0.3, 1.0, 0.05, 0.5}};
  p.joint = {{"last-k:1", {"fc2.weight@1", "fc2.bias"}, 60, 0.7, 0.8}};
  ASSERT_OK_AND_ASSIGN(ContributionProfile q, ParseProfileText(ProfileToText(p)));
  ASSERT_EQ(q.joint.size(), 1u);
  EXPECT_EQ(q.joint[0].origin, "last-k:1");
  EXPECT_THAT(q.joint[0].ids, ::testing::ElementsAre("fc2.weight@1", "fc2.bias"));
  EXPECT_EQ(q.joint[0].steps, 60);
  EXPECT_DOUBLE_EQ(q.joint[0].accuracy, 0.7);
  const std::string head = "# fleettune contribution profile v1\nbase 0.5 1\n";
  EXPECT_THAT(ParseProfileText(head + "joint x 0 0.5 1 fc1.bias\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("joint steps")));
  EXPECT_THAT(ParseProfileText(head + "joint x 5 high 1 fc1.bias\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 3")));
  EXPECT_THAT(ParseProfileText("# fleettune contribution profile v1\njoint x 5 0.5 1 a\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("joint before base")));
}

}  // namespace
}  // namespace fleettune::engine::search
