#include "engine/search/candidates.h"

#include "engine/base/status_matchers.h"
#include "engine/models/zoo.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::search {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

models::Model Zoo(const std::string& name) {
  // .value(): a zoo model that fails to build fails the test loudly.
  return models::FindZooModel(name).value()->build(1, models::Mode::kTrain).value();
}

std::vector<std::string> Ids(const std::vector<Candidate>& c) {
  std::vector<std::string> out;
  for (const Candidate& x : c) out.push_back(x.Id());
  return out;
}

TEST(ListCandidates, MlpHasABiasAndFourRatiosPerLayer) {
  models::Model model = Zoo("mlp");
  ASSERT_OK_AND_ASSIGN(std::vector<Candidate> c, ListCandidates(model));
  EXPECT_THAT(Ids(c), ::testing::ElementsAre("fc1.bias", "fc1.weight@1/8", "fc1.weight@1/4",
                                             "fc1.weight@1/2", "fc1.weight@1", "fc2.bias",
                                             "fc2.weight@1/8", "fc2.weight@1/4", "fc2.weight@1/2",
                                             "fc2.weight@1", "fc3.bias", "fc3.weight@1/8",
                                             "fc3.weight@1/4", "fc3.weight@1/2", "fc3.weight@1"));
  EXPECT_EQ(c[0].layer, "fc1");
}

TEST(ListCandidates, CnnAndMobileNetV2CoverConvsAndBatchNormBiases) {
  for (const std::string name : {"cnn", "mobilenet_v2"}) {
    models::Model model = Zoo(name);
    ASSERT_OK_AND_ASSIGN(std::vector<Candidate> c, ListCandidates(model));
    int biases = 0, scales = 0, channels = 0;
    for (const Candidate& x : c) {
      (x.kind == CandidateKind::kBias    ? biases
       : x.kind == CandidateKind::kScale ? scales
                                         : channels)++;
      // Every candidate resolves on its own.
      ASSERT_OK_AND_ASSIGN(scheme::UpdateScheme s, ToScheme(model, {x}, "one"));
      EXPECT_OK(scheme::ResolveScheme(model, s).status()) << x.Id();
    }
    EXPECT_GT(biases, 0) << name;
    EXPECT_EQ(scales, biases - 1) << name;  // every BatchNorm's scale; the classifier has none
    EXPECT_EQ(channels % 4, 0) << name;
    if (name == "mobilenet_v2") {
      // 52 convs + the classifier; BatchNorm biases of conv layers included.
      EXPECT_EQ(channels / 4, 53);
      EXPECT_THAT(Ids(c), ::testing::Contains("features.0.1.bias"));
      EXPECT_THAT(Ids(c), ::testing::Contains("features.0.1.weight"));  // BatchNorm's scale
      EXPECT_THAT(Ids(c), ::testing::Contains("classifier.1.weight@1/4"));
    }
  }
}

TEST(ToScheme, BuildsExactRulesAndRejectsBadSets) {
  models::Model model = Zoo("mlp");
  ASSERT_OK_AND_ASSIGN(Candidate a, ParseCandidateId(model, "fc2.weight@1/4"));
  ASSERT_OK_AND_ASSIGN(Candidate b, ParseCandidateId(model, "fc3.bias"));
  ASSERT_OK_AND_ASSIGN(scheme::UpdateScheme s, ToScheme(model, {a, b}, "searched"));
  EXPECT_EQ(s.name, "searched");
  ASSERT_EQ(s.rules.size(), 2u);
  EXPECT_EQ(scheme::RuleToString(s.rules[0]), "fc2.weight CHANNELS 1/4");
  EXPECT_THAT(ToScheme(model, {}, "x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  ASSERT_OK_AND_ASSIGN(Candidate a2, ParseCandidateId(model, "fc2.weight@1"));
  EXPECT_THAT(ToScheme(model, {a, a2}, "x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fc2.weight")));
  Candidate ghost{CandidateKind::kBias, "fc9.bias", "fc9", 1.0};
  EXPECT_THAT(ToScheme(model, {ghost}, "x"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fc9.bias")));
  EXPECT_THAT(ParseCandidateId(model, "fc1.weight@1/3"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("fc1.weight@1/3")));
}

}  // namespace
}  // namespace fleettune::engine::search
