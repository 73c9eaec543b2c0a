#include "engine/models/mobilenet_v2.h"

#include <string>

#include "absl/status/status.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/graph.h"
#include "gtest/gtest.h"

namespace fleettune::engine::models {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::HasSubstr;

struct Counts {
  int weights = 0, buffers = 0, dropouts = 0;
  int64_t weight_elements = 0;
};

Counts Count(const Graph& g) {
  Counts c;
  for (const Node& n : g.nodes()) {
    if (n.op == OpKind::kDropout) ++c.dropouts;
    if (n.op != OpKind::kParameter) continue;
    if (std::get<ParameterAttrs>(n.attrs).role == ParamRole::kBuffer) {
      ++c.buffers;
    } else {
      ++c.weights;
      c.weight_elements += n.type.num_elements();
    }
  }
  return c;
}

TEST(MobileNetV2, FullWidthMatchesTorchvisionParameterCountAndStateDictSize) {
  MobileNetV2Config config;  // torchvision's mobilenet_v2(): 1.0, 1000 classes
  config.resolution = 64;
  ASSERT_OK_AND_ASSIGN(Model m, BuildMobileNetV2(config, Mode::kTrain));
  const Counts c = Count(m.graph);
  // sum(p.numel() for p in mobilenet_v2().parameters()), len(parameters()),
  // len(state_dict()) from torchvision 0.14.
  EXPECT_EQ(c.weight_elements, 3504872);
  EXPECT_EQ(c.weights, 158);
  EXPECT_EQ(c.weights + c.buffers, 314);
  EXPECT_EQ(m.buffers.size(), 156u);
  EXPECT_EQ(m.graph.type(m.logits).shape, (Shape{1, 1000}));
  EXPECT_TRUE(m.graph.FindByName("features.18.1.running_var").has_value());
  EXPECT_TRUE(m.graph.FindByName("features.1.conv.2.num_batches_tracked").has_value());
}

TEST(MobileNetV2, NarrowWidthRoundsChannelsLikeTorchvision) {
  MobileNetV2Config config;
  config.width_mult = 0.35;
  config.resolution = 32;
  config.num_classes = 10;
  config.batch = 2;
  ASSERT_OK_AND_ASSIGN(Model m, BuildMobileNetV2(config, Mode::kTrain));
  EXPECT_EQ(Count(m.graph).weight_elements, 408938);  // torchvision, width 0.35, 10 classes
  EXPECT_EQ(m.graph.type(m.logits).shape, (Shape{2, 10}));
}

TEST(MobileNetV2, TrainingGraphHasDropoutAndEvaluationGraphHasNone) {
  MobileNetV2Config config;
  config.width_mult = 0.25;
  config.resolution = 64;
  config.batch = 2;  // batch statistics need more than one value per channel
  ASSERT_OK_AND_ASSIGN(Model train, BuildMobileNetV2(config, Mode::kTrain));
  ASSERT_OK_AND_ASSIGN(Model eval, BuildMobileNetV2(config, Mode::kEval));
  EXPECT_EQ(Count(train.graph).dropouts, 1);
  EXPECT_EQ(Count(eval.graph).dropouts, 0);
  // Evaluation reads no num_batches_tracked, but still lists it as a buffer.
  EXPECT_EQ(Count(eval.graph).weights, Count(train.graph).weights);
  EXPECT_EQ(eval.buffers, train.buffers);
  EXPECT_FALSE(eval.graph.FindByName("features.0.1.num_batches_tracked").has_value());

  config.dropout = 0.0f;
  ASSERT_OK_AND_ASSIGN(Model no_dropout, BuildMobileNetV2(config, Mode::kTrain));
  EXPECT_EQ(Count(no_dropout.graph).dropouts, 0);
}

TEST(MobileNetV2, RejectsInvalidConfig) {
  MobileNetV2Config config;
  config.width_mult = 0.0;
  EXPECT_THAT(BuildMobileNetV2(config, Mode::kTrain).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("width_mult")));
  config = MobileNetV2Config{};
  config.batch = 0;
  EXPECT_THAT(BuildMobileNetV2(config, Mode::kEval).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("batch 0")));
  config = MobileNetV2Config{};
  config.dropout = 1.0f;
  EXPECT_THAT(BuildMobileNetV2(config, Mode::kTrain).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("dropout")));
}

}  // namespace
}  // namespace fleettune::engine::models
