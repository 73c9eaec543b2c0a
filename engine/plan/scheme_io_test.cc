#include "engine/plan/scheme_io.h"

#include "engine/base/status_matchers.h"
#include "engine/models/mlp.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::plan {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(SchemeIo, ParsesTextFormatAndResolves) {
  ASSERT_OK_AND_ASSIGN(
      scheme::UpdateScheme s, ParseSchemeText(R"pb(
        name: "mine"
        rules { pattern: "*.bias" mode: UPDATE_MODE_FULL }
        rules { pattern: "fc2.weight" mode: UPDATE_MODE_CHANNELS channel_fraction: 0.25 }
      )pb"));
  EXPECT_EQ(s.name, "mine");
  ASSERT_EQ(s.rules.size(), 2u);
  EXPECT_EQ(s.rules[1].mode, scheme::UpdateMode::kChannels);
  EXPECT_EQ(s.rules[1].channel_fraction, 0.25);
  models::MlpConfig c;
  c.sizes = {4, 8, 8, 2};
  ASSERT_OK_AND_ASSIGN(models::Model m, models::BuildMlp(c));
  ASSERT_OK_AND_ASSIGN(scheme::ResolvedScheme r, scheme::ResolveScheme(m, s));
  EXPECT_THAT(r.TrainableNames(), ElementsAre("fc1.bias", "fc2.weight", "fc2.bias", "fc3.bias"));
  EXPECT_EQ(r.params[2].rows, 2);
}

TEST(SchemeIo, RoundTripsThroughText) {
  scheme::UpdateScheme s{"x",
                         {{"a.*", scheme::UpdateMode::kFull, 0.0},
                          {"b", scheme::UpdateMode::kChannels, 0.125},
                          {"c", scheme::UpdateMode::kFrozen, 0.0}}};
  ASSERT_OK_AND_ASSIGN(scheme::UpdateScheme back, ParseSchemeText(SchemeToText(s)));
  EXPECT_EQ(back, s);
}

TEST(SchemeIo, RejectsBadTextAndUnsetModes) {
  EXPECT_THAT(ParseSchemeText("rules { pattern: \"x\" mode: UPDATE_MODE_SOMETIMES }"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 1, column")));
  EXPECT_THAT(ParseSchemeText("rules { pattern: \"fc1.weight\" }"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor pattern 'fc1.weight'): mode is unset")));
  v1::UpdateScheme p;
  p.add_rules()->set_pattern("y");
  p.mutable_rules(0)->set_mode(static_cast<v1::UpdateMode>(42));
  EXPECT_THAT(SchemeFromProto(p),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mode 42 is unknown")));
  EXPECT_THAT(ParseSchemeText(std::string(kMaxSchemeTextBytes + 1, ' ')),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("more than")));
  EXPECT_THAT(ParseSchemeText("\xff\xfe garbage {"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("scheme text")));
}

}  // namespace
}  // namespace fleettune::engine::plan
