#include "engine/scheme/scheme.h"

#include <map>

#include "engine/base/status_matchers.h"
#include "engine/models/bert.h"
#include "engine/models/mlp.h"
#include "engine/models/mobilenet_v2.h"
#include "engine/models/resnet.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::engine::scheme {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

models::Model Mlp() {
  models::MlpConfig c;
  c.sizes = {12, 16, 8, 4};
  c.batch = 2;
  return *models::BuildMlp(c);
}

models::Model MobileNet() {
  models::MobileNetV2Config c;
  c.width_mult = 0.35;
  c.resolution = 32;
  c.num_classes = 10;
  c.batch = 2;
  return *models::BuildMobileNetV2(c, models::Mode::kTrain);
}

// Name → plan of a resolved preset.
std::map<std::string, ParamPlan> Resolve(const models::Model& m, const std::string& preset) {
  absl::StatusOr<UpdateScheme> s = PresetScheme(m, preset);
  EXPECT_OK(s.status());
  absl::StatusOr<ResolvedScheme> r = ResolveScheme(m, *s);
  EXPECT_OK(r.status());
  std::map<std::string, ParamPlan> out;
  for (const ParamPlan& p : r->params) out[p.name] = p;
  return out;
}

std::vector<std::string> Trainable(const models::Model& m, const UpdateScheme& s) {
  absl::StatusOr<ResolvedScheme> r = ResolveScheme(m, s);
  EXPECT_OK(r.status());
  return r.ok() ? r->TrainableNames() : std::vector<std::string>{};
}

TEST(MatchPattern, ExactGlobAndPrefix) {
  EXPECT_TRUE(MatchPattern("fc1.weight", "fc1.weight"));
  EXPECT_FALSE(MatchPattern("fc1.weight", "fc1.weight2"));
  EXPECT_TRUE(MatchPattern("features.16.*", "features.16.conv.0.0.weight"));
  EXPECT_FALSE(MatchPattern("features.16.*", "features.1.conv.0.0.weight"));
  EXPECT_TRUE(MatchPattern("*.bias", "a.b.bias"));
  EXPECT_TRUE(MatchPattern("fc?.weight", "fc3.weight"));
  EXPECT_TRUE(MatchPattern("*", "x"));
  EXPECT_FALSE(MatchPattern("*.bias", "a.weight"));
}

TEST(PresetScheme, KeepsTheStringPresetsOfTheMlp) {
  const models::Model m = Mlp();
  auto trainable = [&](const std::string& preset) {
    return Trainable(m, *PresetScheme(m, preset));
  };
  EXPECT_THAT(trainable("bias-only"), ElementsAre("fc1.bias", "fc2.bias", "fc3.bias"));
  EXPECT_THAT(trainable("last-k:1"), ElementsAre("fc3.weight", "fc3.bias"));
  EXPECT_THAT(trainable("freeze:fc1,fc2"), ElementsAre("fc3.weight", "fc3.bias"));
  EXPECT_EQ(trainable("full").size(), 6u);
  // Fewer than two blocks: units are fc1 and fc2, the head fc3.
  EXPECT_EQ(trainable("sparse").size(), 6u);
  EXPECT_THAT(trainable("pockengine"),
              ElementsAre("fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"));
  EXPECT_THAT(PresetScheme(m, "freeze:fc9"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no layer 'fc9'")));
  EXPECT_THAT(PresetScheme(m, "last-k:7"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("k must be in [1, 3]")));
  EXPECT_THAT(PresetScheme(m, "dense"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown scheme 'dense'")));
  EXPECT_THAT(ResolveScheme(m, *PresetScheme(m, "freeze:fc1,fc2,fc3")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("trains nothing")));
}

TEST(FindBlocks, MobileNetV2BlocksAreTheInvertedResiduals) {
  const models::Model m = MobileNet();
  std::vector<Block> blocks = FindBlocks(m);
  ASSERT_EQ(blocks.size(), 17u);
  EXPECT_EQ(blocks.front().prefix, "features.1");
  EXPECT_EQ(blocks[15].prefix, "features.16");
  EXPECT_EQ(blocks.back().prefix, "features.17");
}

TEST(PresetScheme, SparseOnMobileNetV2TrainsBiasesLastTwoBlocksAndClassifier) {
  const models::Model m = MobileNet();
  std::map<std::string, ParamPlan> p = Resolve(m, "sparse");
  EXPECT_EQ(p["features.16.conv.0.0.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["features.17.conv.2.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["features.17.conv.3.weight"].mode, UpdateMode::kFull);  // BatchNorm γ
  EXPECT_EQ(p["classifier.1.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["features.0.1.bias"].mode, UpdateMode::kFull);  // the stem's BatchNorm β
  EXPECT_EQ(p["features.18.1.bias"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["features.15.conv.0.0.weight"].mode, UpdateMode::kFrozen);
  EXPECT_EQ(p["features.18.0.weight"].mode, UpdateMode::kFrozen);
  EXPECT_EQ(p["features.0.1.weight"].mode, UpdateMode::kFrozen);
}

TEST(PresetScheme, PockEngineOnMobileNetV2UsesPartialChannels) {
  const models::Model m = MobileNet();
  std::map<std::string, ParamPlan> p = Resolve(m, "pockengine");
  const ParamPlan& half = p["features.16.conv.0.0.weight"];
  EXPECT_EQ(half.mode, UpdateMode::kChannels);
  EXPECT_EQ(half.rows, (half.dim0 + 1) / 2);
  const ParamPlan& quarter = p["features.10.conv.2.weight"];
  EXPECT_EQ(quarter.mode, UpdateMode::kChannels);
  EXPECT_EQ(quarter.rows, (quarter.dim0 + 3) / 4);
  EXPECT_EQ(p["features.16.conv.0.1.weight"].mode, UpdateMode::kFull);  // 1-D: whole
  EXPECT_EQ(p["features.17.conv.0.0.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["features.8.conv.0.0.weight"].mode, UpdateMode::kFrozen);  // early half
  EXPECT_EQ(p["features.3.conv.1.1.bias"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["classifier.1.weight"].mode, UpdateMode::kFull);
  // Partial channels train fewer elements than sparse's full blocks would.
  EXPECT_LT(ResolveScheme(m, *PresetScheme(m, "pockengine"))->TrainableElements(),
            ResolveScheme(m, *PresetScheme(m, "full"))->TrainableElements());
}

TEST(PresetScheme, SparseOnBertTrainsLastTwoLayersPoolerAndClassifier) {
  models::BertConfig c;
  c.vocab = 30;
  c.hidden = 8;
  c.layers = 4;
  c.heads = 2;
  c.ffn = 16;
  c.max_positions = 8;
  c.seq_len = 4;
  c.batch = 2;
  c.num_labels = 3;
  const models::Model m = models::BuildBert(c, models::Mode::kTrain)->model;
  ASSERT_EQ(FindBlocks(m).size(), 4u);
  std::map<std::string, ParamPlan> p = Resolve(m, "sparse");
  EXPECT_EQ(p["bert.encoder.layer.3.attention.self.query.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["bert.encoder.layer.2.output.dense.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["bert.encoder.layer.1.output.dense.weight"].mode, UpdateMode::kFrozen);
  EXPECT_EQ(p["bert.encoder.layer.1.output.dense.bias"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["bert.pooler.dense.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["classifier.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["bert.embeddings.word_embeddings.weight"].mode, UpdateMode::kFrozen);
  std::map<std::string, ParamPlan> pe = Resolve(m, "pockengine");
  EXPECT_EQ(pe["bert.encoder.layer.2.attention.self.query.weight"].mode, UpdateMode::kChannels);
  EXPECT_EQ(pe["bert.encoder.layer.2.attention.self.query.weight"].rows, 4);
  EXPECT_EQ(pe["bert.encoder.layer.3.attention.self.query.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(pe["bert.encoder.layer.1.attention.self.query.weight"].mode, UpdateMode::kFrozen);
}

TEST(PresetScheme, SparseOnResNetTrainsLastStageBlocksAndFc) {
  models::ResNetConfig c;
  c.blocks = {1, 1, 1, 1};
  c.base_width = 8;
  c.resolution = 32;
  c.num_classes = 10;
  c.batch = 2;
  const models::Model m = *models::BuildResNet(c, models::Mode::kTrain);
  std::vector<Block> blocks = FindBlocks(m);
  ASSERT_EQ(blocks.size(), 4u);
  EXPECT_EQ(blocks.back().prefix, "layer4.0");
  std::map<std::string, ParamPlan> p = Resolve(m, "sparse");
  EXPECT_EQ(p["layer4.0.conv1.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["layer3.0.conv2.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["layer2.0.conv2.weight"].mode, UpdateMode::kFrozen);
  EXPECT_EQ(p["fc.weight"].mode, UpdateMode::kFull);
  EXPECT_EQ(p["bn1.bias"].mode, UpdateMode::kFull);
}

TEST(ResolveScheme, LastMatchingRuleWinsAndGlobChannelsSkipBiases) {
  const models::Model m = Mlp();
  UpdateScheme s;
  s.rules = {{"*", UpdateMode::kFull, 0.0},
             {"fc1.*", UpdateMode::kFrozen, 0.0},
             {"fc2.*", UpdateMode::kChannels, 0.125}};
  ASSERT_OK_AND_ASSIGN(ResolvedScheme r, ResolveScheme(m, s));
  std::map<std::string, ParamPlan> p;
  for (const ParamPlan& x : r.params) p[x.name] = x;
  EXPECT_EQ(p["fc1.weight"].mode, UpdateMode::kFrozen);
  EXPECT_EQ(p["fc2.weight"].mode, UpdateMode::kChannels);
  EXPECT_EQ(p["fc2.weight"].rows, 1);  // ⌈8 / 8⌉
  EXPECT_EQ(p["fc2.weight"].elements, 16);
  EXPECT_EQ(p["fc2.bias"].mode, UpdateMode::kFull);  // skipped by the glob CHANNELS rule
  EXPECT_EQ(p["fc3.weight"].rows, 4);
  EXPECT_EQ(r.TrainableElements(), 16 + 8 + 4 * 8 + 4);
  // CHANNELS 1 is the whole tensor.
  s.rules = {{"fc3.weight", UpdateMode::kChannels, 1.0}};
  ASSERT_OK_AND_ASSIGN(r, ResolveScheme(m, s));
  EXPECT_EQ(r.params[4].mode, UpdateMode::kFull);
}

TEST(ResolveScheme, RejectsInvalidRulesNamingTheTensor) {
  const models::Model m = MobileNet();
  auto resolve = [&](Rule rule) { return ResolveScheme(m, UpdateScheme{"x", {rule}}); };
  EXPECT_THAT(resolve({"features.99.weight", UpdateMode::kFull, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'features.99.weight' is not a weight of the model")));
  EXPECT_THAT(resolve({"nothing.*", UpdateMode::kFull, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("pattern 'nothing.*' matches no weight tensor")));
  EXPECT_THAT(resolve({"features.0.1.bias", UpdateMode::kChannels, 0.5}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor 'features.0.1.bias' f32[16] cannot train a fraction")));
  EXPECT_THAT(resolve({"features.0.1.weight", UpdateMode::kChannels, 0.5}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("tensor 'features.0.1.weight' f32[16] cannot train")));
  EXPECT_THAT(resolve({"features.0.0.weight", UpdateMode::kChannels, 0.3}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'features.0.0.weight': channel fraction 0.3 is not one of")));
  EXPECT_THAT(resolve({"features.0.0.weight", UpdateMode::kFull, 0.5}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("only valid with CHANNELS")));
  EXPECT_THAT(resolve({"features.0.1.running_mean", UpdateMode::kFull, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("'features.0.1.running_mean' is a buffer")));
  EXPECT_THAT(
      resolve({"*.bias", UpdateMode::kChannels, 0.5}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("CHANNELS applies to nothing")));
  EXPECT_THAT(resolve({"*", UpdateMode::kFrozen, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("scheme 'x' trains nothing")));
  EXPECT_THAT(resolve({"", UpdateMode::kFull, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty pattern")));
  EXPECT_THAT(resolve({std::string(kMaxPatternBytes + 1, 'a'), UpdateMode::kFull, 0}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("more than 256")));
  UpdateScheme many{"many", std::vector<Rule>(kMaxGlobRules + 1, {"*", UpdateMode::kFull, 0})};
  EXPECT_THAT(ResolveScheme(m, many),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("257 glob rules")));
  // Globs never touch buffers.
  ASSERT_OK_AND_ASSIGN(ResolvedScheme r, resolve({"features.0.*", UpdateMode::kFull, 0}));
  EXPECT_THAT(r.TrainableNames(), Not(Contains("features.0.1.running_mean")));
  EXPECT_THAT(r.TrainableNames(),
              ElementsAre("features.0.0.weight", "features.0.1.weight", "features.0.1.bias"));
}

}  // namespace
}  // namespace fleettune::engine::scheme
