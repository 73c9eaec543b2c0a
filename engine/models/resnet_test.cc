#include "engine/models/resnet.h"

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
  int weights = 0, buffers = 0;
  int64_t weight_elements = 0;
};

Counts Count(const Graph& g) {
  Counts c;
  for (const Node& n : g.nodes()) {
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

TEST(ResNet, Resnet18MatchesTorchvisionParameterCountAndStateDictSize) {
  ResNetConfig config;  // torchvision's resnet18(): {2, 2, 2, 2}, width 64, 1000 classes
  config.resolution = 64;
  ASSERT_OK_AND_ASSIGN(Model m, BuildResNet(config, Mode::kTrain));
  const Counts c = Count(m.graph);
  // sum(p.numel() for p in resnet18().parameters()), len(parameters()),
  // len(state_dict()) from torchvision 0.14.
  EXPECT_EQ(c.weight_elements, 11689512);
  EXPECT_EQ(c.weights, 62);
  EXPECT_EQ(c.weights + c.buffers, 122);
  EXPECT_EQ(m.graph.type(m.logits).shape, (Shape{1, 1000}));
  for (const char* name :
       {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
        "layer4.1.bn2.num_batches_tracked", "fc.weight"}) {
    EXPECT_TRUE(m.graph.FindByName(name).has_value()) << name;
  }
  EXPECT_FALSE(m.graph.FindByName("layer1.0.downsample.0.weight").has_value());
}

TEST(ResNet, EvaluationGraphUsesFrozenStatistics) {
  ResNetConfig config;
  config.blocks = {1, 1};
  config.base_width = 8;
  config.resolution = 32;
  ASSERT_OK_AND_ASSIGN(Model m, BuildResNet(config, Mode::kEval));
  int frozen = 0, batch_stats = 0;
  for (const Node& n : m.graph.nodes()) {
    frozen += n.op == OpKind::kBatchNormInference;
    batch_stats += n.op == OpKind::kBatchNorm || n.op == OpKind::kBatchNormStatsUpdate;
  }
  EXPECT_EQ(frozen, 6);  // bn1; two per block; one downsample
  EXPECT_EQ(batch_stats, 0);
  EXPECT_EQ(m.buffers.size(), 18u);
}

TEST(ResNet, RejectsInvalidConfig) {
  ResNetConfig config;
  config.blocks = {};
  EXPECT_THAT(BuildResNet(config, Mode::kTrain).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at least one stage")));
  config.blocks = {2, 0};
  EXPECT_THAT(BuildResNet(config, Mode::kTrain).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("stage 2 has 0 blocks")));
  config = ResNetConfig{};
  config.resolution = -1;
  EXPECT_THAT(BuildResNet(config, Mode::kEval).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("resolution -1")));
}

}  // namespace
}  // namespace fleettune::engine::models
