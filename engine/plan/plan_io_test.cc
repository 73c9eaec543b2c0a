#include "engine/plan/plan_io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/autodiff/autodiff.h"
#include "engine/base/status_matchers.h"
#include "engine/ir/graph.h"
#include "engine/ir/printer.h"
#include "engine/ir/verifier.h"
#include "engine/models/mlp.h"
#include "engine/models/transformer.h"
#include "engine/ops/op_registry.h"
#include "engine/scheme/scheme.h"
#include "engine/train/trainer.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/stubs/logging.h"
#include "gtest/gtest.h"

namespace fleettune::engine::plan {
namespace {

namespace v1 = ::fleettune::v1;
using ::fleettune::testing::StatusIs;
using ::testing::AnyOf;
using ::testing::HasSubstr;

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

models::MlpConfig SmallMlp() {
  models::MlpConfig config;
  config.sizes = {20, 16, 12, 4};
  config.batch = 8;
  return config;
}

autodiff::OptimizerConfig SgdMomentum() {
  return autodiff::OptimizerConfig::Sgd(SgdAttrs{0.1f, 0.9f, 1e-4f});
}

autodiff::OptimizerConfig AdamW() {
  return autodiff::OptimizerConfig::AdamW(AdamWAttrs{3e-4f, 0.9f, 0.999f, 1e-8f, 0.01f});
}

absl::StatusOr<Graph> MlpTrainingGraph(const autodiff::OptimizerConfig& optimizer,
                                       absl::string_view scheme = "full") {
  ASSIGN_OR_RETURN(models::Model model, models::BuildMlp(SmallMlp()));
  ASSIGN_OR_RETURN(std::vector<std::string> trainable, train::SelectTrainable(model, scheme));
  return train::BuildTrainingGraph(model, trainable, optimizer);
}

// A plan as the coordinator would fill it (arena_bytes and flops_per_step
// stay 0 until the compiler computes them).
absl::StatusOr<v1::CompiledPlan> MakePlan(const Graph& graph, absl::string_view scheme) {
  v1::CompiledPlan plan;
  plan.set_format_version(kPlanFormatVersion);
  ASSIGN_OR_RETURN(*plan.mutable_graph(), GraphToProto(graph));
  v1::PlanMetadata* meta = plan.mutable_metadata();
  meta->set_model_name("mlp-20-16-12-4");
  meta->set_scheme(std::string(scheme));
  meta->set_device_class("x86-avx2");
  uint64_t weight_bytes = 0, state_bytes = 0;
  for (const Node& node : graph.nodes()) {
    if (node.op == OpKind::kSgdUpdate || node.op == OpKind::kAdamWUpdate) {
      meta->add_trainable_parameters(graph.node(node.inputs[0]).name);
    }
    if (const auto* p = std::get_if<ParameterAttrs>(&node.attrs)) {
      (p->role == ParamRole::kWeight ? weight_bytes : state_bytes) += node.type.bytes();
    }
  }
  meta->set_weight_bytes(weight_bytes);
  meta->set_optimizer_state_bytes(state_bytes);
  return plan;
}

// Stronger than comparing PrintGraph: attributes compare bit for bit.
void ExpectSameGraph(const Graph& a, const Graph& b) {
  EXPECT_EQ(PrintGraph(a), PrintGraph(b));
  ASSERT_EQ(a.num_nodes(), b.num_nodes());
  for (ValueId id = 0; id < a.num_nodes(); ++id) {
    const Node& x = a.node(id);
    const Node& y = b.node(id);
    EXPECT_EQ(x.op, y.op) << "node " << id;
    EXPECT_EQ(x.inputs, y.inputs) << "node " << id;
    EXPECT_TRUE(x.attrs == y.attrs) << "node " << id;
    EXPECT_EQ(x.type, y.type) << "node " << id;
    EXPECT_EQ(x.has_output, y.has_output) << "node " << id;
    EXPECT_EQ(x.name, y.name) << "node " << id;
  }
  EXPECT_EQ(a.outputs(), b.outputs());
}

// The id of the first node with this op; -1 if none.
int FindOp(const v1::Graph& graph, v1::OpKind op) {
  for (int i = 0; i < graph.nodes_size(); ++i) {
    if (graph.nodes(i).op() == op) return i;
  }
  return -1;
}

TEST(PlanIo, OpKindsMirrorTheEngineOneToOne) {
  EXPECT_EQ(v1::OpKind_descriptor()->value_count(), kNumOpKinds + 1);  // + UNSPECIFIED
  for (int k = 0; k < kNumOpKinds; ++k) {
    const auto op = static_cast<OpKind>(k);
    ASSERT_OK_AND_ASSIGN(v1::OpKind wire, OpKindToProto(op));
    EXPECT_EQ(v1::OpKind_Name(wire),
              absl::StrCat("OP_KIND_", absl::AsciiStrToUpper(ops::GetOpDef(op).name)));
    ASSERT_OK_AND_ASSIGN(OpKind back, OpKindFromProto(wire));
    EXPECT_EQ(back, op);
  }
  EXPECT_THAT(OpKindToProto(OpKind::kCount),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown engine op")));
  EXPECT_THAT(OpKindFromProto(v1::OP_KIND_UNSPECIFIED),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unspecified")));
  EXPECT_THAT(OpKindFromProto(static_cast<v1::OpKind>(1000)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown op 1000")));
}

struct RoundTripCase {
  std::string name;
  autodiff::OptimizerConfig optimizer;
  std::string scheme;
  std::string update_op;
};

class MlpTrainingGraphRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(MlpTrainingGraphRoundTrip, PrintsIdenticallyAfterProtoRoundTrip) {
  ASSERT_OK_AND_ASSIGN(Graph graph, MlpTrainingGraph(GetParam().optimizer, GetParam().scheme));
  ASSERT_THAT(PrintGraph(graph), HasSubstr(GetParam().update_op));
  ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(graph));
  ASSERT_OK_AND_ASSIGN(Graph back, GraphFromProto(proto));
  ExpectSameGraph(graph, back);
  // Serializing again gives the same bytes.
  ASSERT_OK_AND_ASSIGN(v1::Graph again, GraphToProto(back));
  EXPECT_EQ(again.SerializeAsString(), proto.SerializeAsString());
}

TEST_P(MlpTrainingGraphRoundTrip, WriteThenReadGivesTheSamePlan) {
  ASSERT_OK_AND_ASSIGN(Graph graph, MlpTrainingGraph(GetParam().optimizer, GetParam().scheme));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan plan, MakePlan(graph, GetParam().scheme));
  const std::string path = TempPath(GetParam().name + ".plan");
  ASSERT_OK(WritePlan(path, plan));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan read, ReadPlan(path));
  EXPECT_EQ(read.SerializeAsString(), plan.SerializeAsString());
  EXPECT_EQ(read.metadata().model_name(), "mlp-20-16-12-4");
  EXPECT_GT(read.metadata().weight_bytes(), 0u);
  EXPECT_EQ(read.metadata().flops_per_step(), 0u);
  ASSERT_OK_AND_ASSIGN(Graph back, GraphFromProto(read.graph()));
  ExpectSameGraph(graph, back);
}

INSTANTIATE_TEST_SUITE_P(
    Optimizers, MlpTrainingGraphRoundTrip,
    ::testing::Values(RoundTripCase{"SgdMomentumFull", SgdMomentum(), "full", "sgd_update("},
                      RoundTripCase{"AdamWFull", AdamW(), "full", "adamw_update("},
                      RoundTripCase{"SgdPlainBiasOnly",
                                    autodiff::OptimizerConfig::Sgd(SgdAttrs{0.05f, 0.0f, 0.0f}),
                                    "bias-only", "sgd_update("},
                      RoundTripCase{"AdamWLastLayer", AdamW(), "last-k:1", "adamw_update("}),
    [](const ::testing::TestParamInfo<RoundTripCase>& info) { return info.param.name; });

// A graph that holds every attribute kind the MLP does not.
absl::StatusOr<Graph> EveryAttrsGraph() {
  Graph g;
  ASSIGN_OR_RETURN(ValueId x, g.AddInput("x", {DType::kF32, {2, 3}}));
  ASSIGN_OR_RETURN(ValueId w, g.AddParameter("w", {DType::kF32, {4, 3}}));
  ASSIGN_OR_RETURN(ValueId mm, g.AddNode(OpKind::kMatMul, {x, w}, MatMulAttrs{false, true}));
  ASSIGN_OR_RETURN(ValueId s, g.AddNode(OpKind::kScale, {mm}, ScalarAttrs{-0.3f}));
  ASSIGN_OR_RETURN(ValueId flat, g.AddNode(OpKind::kReshape, {s}, ShapeAttrs{{8}}));
  ASSIGN_OR_RETURN(ValueId r, g.AddNode(OpKind::kReshape, {flat}, ShapeAttrs{{2, 4}}, "back"));
  ASSIGN_OR_RETURN(ValueId mean, g.AddNode(OpKind::kReduceMean, {r}, ReduceAttrs{{1}, true}));
  ASSIGN_OR_RETURN(ValueId bc, g.AddNode(OpKind::kBroadcastTo, {mean}, ShapeAttrs{{2, 4}}));
  ASSIGN_OR_RETURN(ValueId f, g.AddNode(OpKind::kFill, {}, FillAttrs{1.5f, {2, 4}}));
  ASSIGN_OR_RETURN(ValueId m, g.AddNode(OpKind::kMul, {bc, f}));
  ASSIGN_OR_RETURN(ValueId a, g.AddNode(OpKind::kAdd, {m, r}));
  ASSIGN_OR_RETURN(ValueId relu, g.AddNode(OpKind::kRelu, {a}));
  ASSIGN_OR_RETURN(ValueId sum, g.AddNode(OpKind::kReduceSum, {relu}, ReduceAttrs{{0, 1}, false}));
  g.MarkOutput(sum);
  g.MarkOutput(mm);
  return g;
}

TEST(PlanIo, EveryAttributeKindRoundTrips) {
  ASSERT_OK_AND_ASSIGN(Graph graph, EveryAttrsGraph());
  ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(graph));
  EXPECT_EQ(proto.nodes(0).attrs_case(), v1::Node::ATTRS_NOT_SET);  // input: NoAttrs
  ASSERT_OK_AND_ASSIGN(Graph back, GraphFromProto(proto));
  ExpectSameGraph(graph, back);
}

// The AdamW training graph of a tiny Llama-style LM (embedding, one decoder
// layer, RMSNorm, head, sequence cross-entropy), plus layer_norm, split
// (slices), concat, sub and div, which the layer does not use: every
// transformer op and every backward op they emit.
absl::StatusOr<Graph> TransformerTrainingGraph() {
  Graph g;
  ASSIGN_OR_RETURN(ValueId ids, g.AddInput("ids", {DType::kI32, {2, 5}}));
  ASSIGN_OR_RETURN(ValueId targets, g.AddInput("targets", {DType::kI32, {2, 5}}));
  ASSIGN_OR_RETURN(ValueId positions, g.AddInput("positions", {DType::kI32, {2, 1, 5}}));
  ASSIGN_OR_RETURN(ValueId embed,
                   g.AddParameter("model.embed_tokens.weight", {DType::kF32, {11, 8}}));
  ASSIGN_OR_RETURN(ValueId x, g.AddNode(OpKind::kEmbedding, {ids, embed}));
  models::DecoderLayerConfig config;
  config.hidden = 8;
  config.heads = 2;
  config.kv_heads = 1;
  config.intermediate = 16;
  ASSIGN_OR_RETURN(ValueId h,
                   models::AddLlamaDecoderLayer(g, "model.layers.0.", config, x, positions));
  ASSIGN_OR_RETURN(ValueId ln_w, g.AddParameter("ln.weight", {DType::kF32, {8}}));
  ASSIGN_OR_RETURN(ValueId ln_b, g.AddParameter("ln.bias", {DType::kF32, {8}}));
  ASSIGN_OR_RETURN(ValueId ln, g.AddNode(OpKind::kLayerNorm, {h, ln_w, ln_b}, NormAttrs{1e-5f}));
  ASSIGN_OR_RETURN(std::vector<ValueId> halves, models::Split(g, ln, 2, {3, 5}));
  ASSIGN_OR_RETURN(ValueId swapped,
                   g.AddNode(OpKind::kConcat, {halves[1], halves[0]}, AxisAttrs{2}));
  ASSIGN_OR_RETURN(ValueId diff, g.AddNode(OpKind::kSub, {swapped, ln}));
  ASSIGN_OR_RETURN(ValueId two, g.AddNode(OpKind::kFill, {}, FillAttrs{2.0f, {8}}));
  ASSIGN_OR_RETURN(ValueId halved, g.AddNode(OpKind::kDiv, {diff, two}));
  ASSIGN_OR_RETURN(ValueId norm_w, g.AddParameter("model.norm.weight", {DType::kF32, {8}}));
  ASSIGN_OR_RETURN(ValueId n, g.AddNode(OpKind::kRmsNorm, {halved, norm_w}, NormAttrs{1e-6f}));
  ASSIGN_OR_RETURN(ValueId head, g.AddParameter("lm_head.weight", {DType::kF32, {11, 8}}));
  ASSIGN_OR_RETURN(ValueId logits, g.AddNode(OpKind::kLinear, {n, head}));
  ASSIGN_OR_RETURN(ValueId loss, models::SequenceCrossEntropy(g, logits, targets));
  g.MarkOutput(loss);
  std::vector<ValueId> trainable;
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    if (g.node(id).op == OpKind::kParameter) trainable.push_back(id);
  }
  ASSIGN_OR_RETURN(autodiff::GradientMap grads, autodiff::BuildBackward(g, loss, trainable));
  RETURN_IF_ERROR(autodiff::AddOptimizerUpdates(g, grads, AdamW()));
  return g;
}

TEST(PlanIo, TransformerTrainingGraphRoundTrips) {
  ASSERT_OK_AND_ASSIGN(Graph graph, TransformerTrainingGraph());
  for (OpKind op :
       {OpKind::kSub, OpKind::kDiv, OpKind::kLayerNorm, OpKind::kLayerNormGrad, OpKind::kRmsNorm,
        OpKind::kRmsNormGrad, OpKind::kEmbedding, OpKind::kEmbeddingGrad, OpKind::kSoftmax,
        OpKind::kSoftmaxGrad, OpKind::kTranspose, OpKind::kConcat, OpKind::kSlice,
        OpKind::kSliceGrad, OpKind::kRope, OpKind::kMatMul}) {
    EXPECT_THAT(PrintGraph(graph), HasSubstr(absl::StrCat(" = ", ops::GetOpDef(op).name, "(")))
        << ops::GetOpDef(op).name << " is missing from the graph";
  }
  EXPECT_THAT(PrintGraph(graph), HasSubstr("{base=10000, inverse=true}"));
  EXPECT_THAT(PrintGraph(graph), HasSubstr("{causal=true}"));
  ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(graph));
  ASSERT_OK_AND_ASSIGN(Graph back, GraphFromProto(proto));
  ExpectSameGraph(graph, back);
  ASSERT_OK_AND_ASSIGN(v1::Graph again, GraphToProto(back));
  EXPECT_EQ(again.SerializeAsString(), proto.SerializeAsString());

  v1::CompiledPlan plan;
  plan.set_format_version(kPlanFormatVersion);
  *plan.mutable_graph() = proto;
  const std::string path = TempPath("transformer.plan");
  ASSERT_OK(WritePlan(path, plan));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan read, ReadPlan(path));
  ASSERT_OK_AND_ASSIGN(Graph from_file, GraphFromProto(read.graph()));
  ExpectSameGraph(graph, from_file);
}

TEST(PlanIo, RejectsTransformerAttrsOutOfRange) {
  ASSERT_OK_AND_ASSIGN(Graph graph, TransformerTrainingGraph());
  ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(graph));
  {
    v1::Graph bad = proto;
    v1::Node* slice = bad.mutable_nodes(FindOp(bad, v1::OP_KIND_SLICE));
    slice->mutable_slice()->set_end(2, 9);  // the axis has 8
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("need 0 <= begin <= end <= 8")));
  }
  {
    v1::Graph bad = proto;
    v1::Node* t = bad.mutable_nodes(FindOp(bad, v1::OP_KIND_TRANSPOSE));
    t->mutable_permute()->set_perm(0, 2);  // {2, 2, 1, 3}
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("perm must be a permutation")));
  }
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_ROPE))->mutable_rope()->set_base(0.5f);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("base must be finite and > 1")));
  }
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_CONCAT))->mutable_axis()->set_axis(-1);
    EXPECT_THAT(GraphFromProto(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("axis -1 out of range")));
  }
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_RMS_NORM))->mutable_norm()->set_eps(-1.0f);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("eps must be finite and >= 0")));
  }
}

// The SGD training graph of a small CNN that uses every CNN op: convolution
// (plain and depthwise), BatchNorm in training mode with its statistics update
// and with frozen statistics (buffer parameters), max and average pooling,
// activations, dropout and the MSE loss, plus every backward op they emit.
absl::StatusOr<Graph> CnnTrainingGraph() {
  Graph g;
  ASSIGN_OR_RETURN(ValueId x, g.AddInput("x", {DType::kF32, {2, 3, 8, 8}}));
  ASSIGN_OR_RETURN(ValueId target, g.AddInput("target", {DType::kF32, {2, 4}}));
  const TensorType per_channel{DType::kF32, {4}};
  ASSIGN_OR_RETURN(ValueId w1, g.AddParameter("conv1.weight", {DType::kF32, {4, 3, 3, 3}}));
  ASSIGN_OR_RETURN(ValueId b1, g.AddParameter("conv1.bias", per_channel));
  ASSIGN_OR_RETURN(ValueId h,
                   g.AddNode(OpKind::kConv2d, {x, w1, b1}, Conv2dAttrs{1, 1, 1, 1, 1, 1, 1}));
  ASSIGN_OR_RETURN(ValueId gamma1, g.AddParameter("bn1.weight", per_channel));
  ASSIGN_OR_RETURN(ValueId beta1, g.AddParameter("bn1.bias", per_channel));
  ASSIGN_OR_RETURN(ValueId mean1,
                   g.AddParameter("bn1.running_mean", per_channel, ParamRole::kBuffer));
  ASSIGN_OR_RETURN(ValueId var1,
                   g.AddParameter("bn1.running_var", per_channel, ParamRole::kBuffer));
  ASSIGN_OR_RETURN(ValueId count1, g.AddParameter("bn1.num_batches_tracked", {DType::kI32, {}},
                                                  ParamRole::kBuffer));
  RETURN_IF_ERROR(g.AddNode(OpKind::kBatchNormStatsUpdate, {h, mean1, var1, count1},
                            BatchNormAttrs{1e-5f, 0.1f})
                      .status());
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kBatchNorm, {h, gamma1, beta1}, BatchNormAttrs{}));
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kActivation, {h}, ActivationAttrs{ActivationFn::kSilu}));
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kMaxPool2d, {h}, Pool2dAttrs{2, 2, 2, 2, 0, 0, true}));
  ASSIGN_OR_RETURN(ValueId w2, g.AddParameter("conv2.weight", {DType::kF32, {4, 1, 3, 3}}));
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kConv2d, {h, w2}, Conv2dAttrs{1, 1, 2, 2, 2, 2, 4}));
  ASSIGN_OR_RETURN(ValueId gamma2, g.AddParameter("bn2.weight", per_channel));
  ASSIGN_OR_RETURN(ValueId beta2, g.AddParameter("bn2.bias", per_channel));
  ASSIGN_OR_RETURN(ValueId mean2,
                   g.AddParameter("bn2.running_mean", per_channel, ParamRole::kBuffer));
  ASSIGN_OR_RETURN(ValueId var2,
                   g.AddParameter("bn2.running_var", per_channel, ParamRole::kBuffer));
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kBatchNormInference, {h, mean2, var2, gamma2, beta2},
                                BatchNormAttrs{1e-3f, 0.01f}));
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kActivation, {h}, ActivationAttrs{ActivationFn::kGeluErf}));
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kAvgPool2d, {h}, Pool2dAttrs{3, 3, 1, 1, 1, 1, false}));
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kDropout, {h}, DropoutAttrs{0.25f, 1234567890123ULL}));
  ASSIGN_OR_RETURN(h, g.AddNode(OpKind::kReduceMean, {h}, ReduceAttrs{{2, 3}, false}));
  ASSIGN_OR_RETURN(ValueId loss, g.AddNode(OpKind::kMseLoss, {h, target}));
  g.MarkOutput(loss);
  std::vector<ValueId> trainable;
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const auto* p = std::get_if<ParameterAttrs>(&g.node(id).attrs);
    if (p != nullptr && p->role == ParamRole::kWeight) trainable.push_back(id);
  }
  ASSIGN_OR_RETURN(autodiff::GradientMap grads, autodiff::BuildBackward(g, loss, trainable));
  RETURN_IF_ERROR(autodiff::AddOptimizerUpdates(g, grads, SgdMomentum()));
  return g;
}

TEST(PlanIo, CnnTrainingGraphRoundTrips) {
  ASSERT_OK_AND_ASSIGN(Graph graph, CnnTrainingGraph());
  const std::string text = PrintGraph(graph);
  for (OpKind op :
       {OpKind::kConv2d, OpKind::kConv2dBackwardInput, OpKind::kConv2dBackwardWeight,
        OpKind::kBatchNorm, OpKind::kBatchNormInference, OpKind::kBatchNormGrad,
        OpKind::kBatchNormInferenceGrad, OpKind::kBatchNormWeightGrad,
        OpKind::kBatchNormStatsUpdate, OpKind::kMaxPool2d, OpKind::kMaxPool2dGrad,
        OpKind::kAvgPool2d, OpKind::kAvgPool2dGrad, OpKind::kActivation, OpKind::kActivationGrad,
        OpKind::kDropout, OpKind::kMseLoss, OpKind::kMseLossGrad}) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat(ops::GetOpDef(op).name, "(")))
        << ops::GetOpDef(op).name << " is missing from the graph";
  }
  EXPECT_THAT(text, HasSubstr("parameter \"bn2.running_var\" {role=buffer}"));
  EXPECT_THAT(text, HasSubstr("{stride=[1, 1], padding=[2, 2], dilation=[2, 2], groups=4}"));
  EXPECT_THAT(text, HasSubstr("{fn=gelu_erf}"));
  EXPECT_THAT(text, HasSubstr("{p=0.25, seed=1234567890123}"));
  ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(graph));
  ASSERT_OK_AND_ASSIGN(Graph back, GraphFromProto(proto));
  ExpectSameGraph(graph, back);
  ASSERT_OK_AND_ASSIGN(v1::Graph again, GraphToProto(back));
  EXPECT_EQ(again.SerializeAsString(), proto.SerializeAsString());

  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan plan, MakePlan(graph, "full"));
  const std::string path = TempPath("cnn.plan");
  ASSERT_OK(WritePlan(path, plan));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan read, ReadPlan(path));
  ASSERT_OK_AND_ASSIGN(Graph from_file, GraphFromProto(read.graph()));
  ExpectSameGraph(graph, from_file);
}

TEST(PlanIo, PartialChannelUpdatesRoundTripWithTheirRows) {
  ASSERT_OK_AND_ASSIGN(models::Model model, models::BuildMlp(SmallMlp()));
  scheme::UpdateScheme s{"partial",
                         {{"fc1.weight", scheme::UpdateMode::kChannels, 0.25},
                          {"fc3.*", scheme::UpdateMode::kFull, 0.0}}};
  ASSERT_OK_AND_ASSIGN(scheme::ResolvedScheme resolved, scheme::ResolveScheme(model, s));
  for (const auto& optimizer : {SgdMomentum(), AdamW()}) {
    ASSERT_OK_AND_ASSIGN(Graph graph, train::BuildSchemeTrainingGraph(model, resolved, optimizer));
    EXPECT_THAT(PrintGraph(graph), HasSubstr(", rows=4}"));
    ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(graph));
    ASSERT_OK_AND_ASSIGN(Graph back, GraphFromProto(proto));
    ExpectSameGraph(graph, back);
    // A plan claiming more rows than the parameter has is rejected on read.
    for (v1::Node& node : *proto.mutable_nodes()) {
      if (node.has_sgd() && node.sgd().rows() != 0) node.mutable_sgd()->set_rows(99);
      if (node.has_adamw() && node.adamw().rows() != 0) node.mutable_adamw()->set_rows(-3);
    }
    EXPECT_THAT(GraphFromProto(proto),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("must be in [1, dim 0]")));
  }
}

TEST(PlanIo, CnnAttributesAreValidatedWhenRead) {
  ASSERT_OK_AND_ASSIGN(Graph graph, CnnTrainingGraph());
  ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(graph));
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_CONV2D))->mutable_conv2d()->set_groups(0);
    EXPECT_THAT(GraphFromProto(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("groups >= 1")));
  }
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_CONV2D))->mutable_conv2d()->set_groups(2);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("groups 2 must divide the 3 input")));
  }
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_MAX_POOL2D))->mutable_pool2d()->set_pad_h(2);
    EXPECT_THAT(GraphFromProto(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exceeds half the kernel")));
  }
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_ACTIVATION))
        ->mutable_activation()
        ->set_fn(v1::ACTIVATION_FN_UNSPECIFIED);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("activation fn is unspecified")));
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_ACTIVATION))
        ->mutable_activation()
        ->set_fn(static_cast<v1::ActivationFn>(99));
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("unknown activation fn 99")));
  }
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_DROPOUT))->mutable_dropout()->set_p(1.5f);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("p must be in [0, 1], got 1.5")));
  }
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(FindOp(bad, v1::OP_KIND_BATCH_NORM))->mutable_batch_norm()->set_eps(0.0f);
    EXPECT_THAT(GraphFromProto(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("needs eps > 0")));
  }
  {
    // The statistics update may only write buffers, not weights.
    v1::Graph bad = proto;
    const int update = FindOp(bad, v1::OP_KIND_BATCH_NORM_STATS_UPDATE);
    const int mean = bad.nodes(update).inputs(1);
    bad.mutable_nodes(mean)->mutable_parameter()->set_role(v1::PARAM_ROLE_WEIGHT);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("must be a buffer parameter")));
  }
}

// The fused ops of the fusion passes: norm + activation and an elementwise
// chain using every step kind, activation functions and a scale value.
absl::StatusOr<Graph> FusedOpsGraph() {
  Graph g;
  const TensorType t{DType::kF32, {2, 3, 8}};
  ASSIGN_OR_RETURN(ValueId x, g.AddInput("x", t));
  ASSIGN_OR_RETURN(ValueId y, g.AddInput("y", t));
  ASSIGN_OR_RETURN(ValueId w, g.AddParameter("w", {DType::kF32, {8}}));
  ASSIGN_OR_RETURN(ValueId ln, g.AddNode(OpKind::kLayerNormActivation, {x, w, w},
                                         FusedNormAttrs{{1e-5f}, FusedActivationFn::kGeluTanh}));
  ASSIGN_OR_RETURN(ValueId rms, g.AddNode(OpKind::kRmsNormActivation, {y, w},
                                          FusedNormAttrs{{1e-6f}, FusedActivationFn::kRelu}));
  constexpr int32_t kPrev = ElementwiseStep::kPrevious;
  ElementwiseChainAttrs chain;
  chain.steps = {{OpKind::kAdd, 0, 1},
                 {OpKind::kScale, kPrev, kPrev, ActivationFn::kRelu6, -0.25f},
                 {OpKind::kActivation, kPrev, kPrev, ActivationFn::kSilu},
                 {OpKind::kDiv, 2, kPrev},
                 {OpKind::kReluGrad, kPrev, 0},
                 {OpKind::kActivationGrad, 1, kPrev, ActivationFn::kGeluErf}};
  ASSIGN_OR_RETURN(ValueId c, g.AddNode(OpKind::kElementwiseChain, {ln, rms, x}, chain, "chain"));
  g.MarkOutput(c);
  return g;
}

// A matmul with attention's transposes and scale folded in, and an SGD
// update that takes its gradient's GEMM (fold_matmul.h, fuse_updates.h).
TEST(PlanIo, FoldedMatMulsAndFusedUpdatesRoundTrip) {
  Graph g;
  const ValueId q = *g.AddInput("q", {DType::kF32, {2, 5, 3, 4}});
  const ValueId dy = *g.AddInput("dy", {DType::kF32, {6, 2}});
  const ValueId x = *g.AddInput("x", {DType::kF32, {6, 3}});
  const ValueId w = *g.AddParameter("w", {DType::kF32, {2, 3}});
  const ValueId buf =
      *g.AddParameter("w.momentum_buffer", {DType::kF32, {2, 3}}, ParamRole::kOptimizerState);
  MatMulAttrs folded{false, true};
  folded.alpha = 0.125f;
  folded.interleaved_a = folded.interleaved_b = folded.interleaved_y = 1;
  ASSERT_OK_AND_ASSIGN(ValueId scores, g.AddNode(OpKind::kMatMul, {q, q}, folded));
  EXPECT_EQ(g.type(scores).shape, (Shape{2, 5, 3, 5}));
  // Grouped-query heads over two head dims: q [B, T, Hkv, G, D] against
  // k [B, T, Hkv, 1, D].
  const ValueId gq = *g.AddInput("gq", {DType::kF32, {2, 5, 2, 3, 4}});
  const ValueId gk = *g.AddInput("gk", {DType::kF32, {2, 5, 2, 1, 4}});
  MatMulAttrs grouped{false, true};
  grouped.interleaved_a = grouped.interleaved_b = 2;
  ASSERT_OK_AND_ASSIGN(ValueId grouped_scores, g.AddNode(OpKind::kMatMul, {gq, gk}, grouped));
  EXPECT_EQ(g.type(grouped_scores).shape, (Shape{2, 2, 3, 5, 5}));
  g.MarkOutput(grouped_scores);
  ASSERT_OK(g.AddNode(OpKind::kSgdMatMulUpdate, {w, dy, x, buf},
                      FusedSgdAttrs{SgdAttrs{0.1f, 0.9f, 1e-4f}, MatMulAttrs{true, false}})
                .status());
  g.MarkOutput(scores);
  ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(g));
  ASSERT_OK_AND_ASSIGN(Graph back, GraphFromProto(proto));
  ExpectSameGraph(g, back);
  // Plans written before alpha existed read as alpha 1.
  const int mm = FindOp(proto, v1::OP_KIND_MATMUL);
  proto.mutable_nodes(mm)->mutable_matmul()->clear_alpha();
  ASSERT_OK_AND_ASSIGN(Graph old, GraphFromProto(proto));
  EXPECT_EQ(std::get<MatMulAttrs>(old.node(scores).attrs).alpha, 1.0f);
  // An interleaving over more head dims than the operand has is refused,
  // however large the wire value.
  for (uint32_t heads : {4u, 0xffffffffu}) {
    v1::Graph bad = proto;
    bad.mutable_nodes(mm)->mutable_matmul()->set_interleaved_b(heads);
    EXPECT_THAT(GraphFromProto(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("head dims needs rank >=")));
  }
  // The fused update's product takes no folded layout.
  const int update = FindOp(proto, v1::OP_KIND_SGD_MATMUL_UPDATE);
  proto.mutable_nodes(update)->mutable_fused_sgd()->mutable_product()->set_alpha(2.0f);
  EXPECT_THAT(GraphFromProto(proto), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("the product takes transposes only")));
}

TEST(PlanIo, FusedOpsRoundTripAndAreValidatedWhenRead) {
  ASSERT_OK_AND_ASSIGN(Graph graph, FusedOpsGraph());
  ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(graph));
  ASSERT_OK_AND_ASSIGN(Graph back, GraphFromProto(proto));
  ExpectSameGraph(graph, back);
  const int chain = FindOp(proto, v1::OP_KIND_ELEMENTWISE_CHAIN);
  ASSERT_GT(chain, 0);
  EXPECT_EQ(proto.nodes(chain).elementwise_chain().steps(0).fn(), v1::ACTIVATION_FN_UNSPECIFIED);
  EXPECT_EQ(proto.nodes(chain).elementwise_chain().steps(2).fn(), v1::ACTIVATION_FN_SILU);
  auto steps = [&](v1::Graph& g) {
    return g.mutable_nodes(chain)->mutable_elementwise_chain()->mutable_steps();
  };
  {
    v1::Graph bad = proto;
    (*steps(bad))[0].set_op(v1::OP_KIND_CONV2D);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("conv2d is not an elementwise step")));
  }
  {
    v1::Graph bad = proto;
    (*steps(bad))[0].set_fn(v1::ACTIVATION_FN_TANH);
    EXPECT_THAT(GraphFromProto(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("add takes no fn")));
  }
  {
    v1::Graph bad = proto;
    (*steps(bad))[2].set_fn(v1::ACTIVATION_FN_UNSPECIFIED);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("activation fn is unspecified")));
  }
  {
    v1::Graph bad = proto;
    (*steps(bad))[3].set_a(7);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("step 3 reads input 7 of 3")));
  }
  {
    v1::Graph bad = proto;
    (*steps(bad))[0].set_a(-1);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("step 0 reads the previous step")));
  }
  {
    v1::Graph bad = proto;
    for (int i = 0; i < 3; ++i) *steps(bad)->Add() = (*steps(bad))[1];
    EXPECT_THAT(GraphFromProto(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("9 steps, more than 8")));
  }
  {
    v1::Graph bad = proto;
    bad.mutable_nodes(chain)->add_inputs(0);  // read by no step
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("input 3 is not read by any step")));
  }
  {
    v1::Graph bad = proto;
    const int ln = FindOp(bad, v1::OP_KIND_LAYER_NORM_ACTIVATION);
    bad.mutable_nodes(ln)->mutable_fused_norm()->set_act(v1::FUSED_ACTIVATION_FN_UNSPECIFIED);
    EXPECT_THAT(GraphFromProto(bad), StatusIs(absl::StatusCode::kInvalidArgument,
                                              HasSubstr("fused activation fn is unspecified")));
  }
}

// --- GraphFromProto on bad input -------------------------------------------

class GraphFromProtoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(Graph graph, MlpTrainingGraph(SgdMomentum()));
    ASSERT_OK_AND_ASSIGN(proto_, GraphToProto(graph));
    linear_ = FindOp(proto_, v1::OP_KIND_LINEAR);
    parameter_ = FindOp(proto_, v1::OP_KIND_PARAMETER);
    sgd_ = FindOp(proto_, v1::OP_KIND_SGD_UPDATE);
    ASSERT_GT(linear_, 0);
    ASSERT_GE(parameter_, 0);
    ASSERT_GT(sgd_, 0);
  }

  v1::Graph proto_;
  int linear_ = -1, parameter_ = -1, sgd_ = -1;
};

TEST_F(GraphFromProtoTest, RejectsInputIdPointingForward) {
  proto_.mutable_nodes(linear_)->set_inputs(0, linear_ + 1);
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat("node ", linear_, " (linear): input %", linear_ + 1,
                                              " is not an earlier node"))));
}

TEST_F(GraphFromProtoTest, RejectsSelfAndNegativeInputIds) {
  v1::Graph self = proto_;
  self.mutable_nodes(linear_)->set_inputs(0, linear_);
  EXPECT_THAT(GraphFromProto(self),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is not an earlier node")));
  proto_.mutable_nodes(linear_)->set_inputs(0, -1);
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("input %-1 is not")));
}

TEST_F(GraphFromProtoTest, RejectsUnknownOpEnumValue) {
  proto_.mutable_nodes(linear_)->set_op(static_cast<v1::OpKind>(99));
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat("node ", linear_, ": unknown op 99"))));
}

TEST_F(GraphFromProtoTest, RejectsUnspecifiedOp) {
  proto_.mutable_nodes(0)->set_op(v1::OP_KIND_UNSPECIFIED);
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("node 0: op is unspecified")));
}

TEST_F(GraphFromProtoTest, RejectsMissingAttrs) {
  v1::Graph no_role = proto_;
  no_role.mutable_nodes(parameter_)->clear_attrs();
  EXPECT_THAT(GraphFromProto(no_role),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat("node ", parameter_,
                                              " (parameter): missing parameter attributes"))));
  proto_.mutable_nodes(sgd_)->clear_attrs();
  EXPECT_THAT(GraphFromProto(proto_), StatusIs(absl::StatusCode::kInvalidArgument,
                                               HasSubstr("(sgd_update): missing sgd attributes")));
}

TEST_F(GraphFromProtoTest, RejectsAttrsOfAnotherOp) {
  v1::Graph on_linear = proto_;
  on_linear.mutable_nodes(linear_)->mutable_matmul();
  EXPECT_THAT(GraphFromProto(on_linear),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("(linear): takes no attributes, got matmul")));
  proto_.mutable_nodes(sgd_)->mutable_adamw();
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("(sgd_update): takes sgd attributes, got adamw")));
}

TEST_F(GraphFromProtoTest, RejectsUnspecifiedOrUnknownParameterRole) {
  v1::Graph unspecified = proto_;
  unspecified.mutable_nodes(parameter_)->mutable_parameter()->set_role(v1::PARAM_ROLE_UNSPECIFIED);
  EXPECT_THAT(GraphFromProto(unspecified),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("parameter attributes: parameter role is unspecified")));
  proto_.mutable_nodes(parameter_)->mutable_parameter()->set_role(static_cast<v1::ParamRole>(7));
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown parameter role 7")));
}

TEST_F(GraphFromProtoTest, RejectsNegativeDimension) {
  proto_.mutable_nodes(0)->mutable_type()->set_dims(0, -1);
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("node 0 (input): type: negative dimension in shape [-1, 20]")));
}

TEST_F(GraphFromProtoTest, RejectsOverflowingShape) {
  v1::TensorType* type = proto_.mutable_nodes(0)->mutable_type();
  type->set_dims(0, int64_t{1} << 40);
  type->set_dims(1, int64_t{1} << 40);
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("elements")));
}

TEST_F(GraphFromProtoTest, RejectsUnknownAndMissingDType) {
  v1::Graph unknown = proto_;
  unknown.mutable_nodes(0)->mutable_type()->set_dtype(static_cast<v1::DType>(7));
  EXPECT_THAT(GraphFromProto(unknown),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("type: unknown dtype 7")));
  proto_.mutable_nodes(0)->clear_type();
  EXPECT_THAT(GraphFromProto(proto_), StatusIs(absl::StatusCode::kInvalidArgument,
                                               HasSubstr("type: dtype is unspecified")));
}

TEST_F(GraphFromProtoTest, RejectsNegativeDimensionInShapeAttrs) {
  ASSERT_OK_AND_ASSIGN(Graph graph, EveryAttrsGraph());
  ASSERT_OK_AND_ASSIGN(v1::Graph proto, GraphToProto(graph));
  const int fill = FindOp(proto, v1::OP_KIND_FILL);
  ASSERT_GT(fill, 0);
  proto.mutable_nodes(fill)->mutable_fill()->set_shape(1, -4);
  EXPECT_THAT(GraphFromProto(proto),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("(fill): fill attributes: negative dimension in shape [2, -4]")));
}

TEST_F(GraphFromProtoTest, ReturnsTheVerifierErrorForAWrongType) {
  proto_.mutable_nodes(linear_)->mutable_type()->set_dims(1, 17);
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat("node ", linear_,
                                              " (linear): type is f32[8, 17] "
                                              "but inference gives f32[8, 16]"))));
}

TEST_F(GraphFromProtoTest, ReturnsTheVerifierErrorForWrongArityAndHasOutput) {
  v1::Graph arity = proto_;
  arity.mutable_nodes(linear_)->add_inputs(0);
  EXPECT_THAT(GraphFromProto(arity),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expects 2 to 3 inputs")));
  proto_.mutable_nodes(sgd_)->set_has_output(true);
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("has_output disagrees")));
}

TEST_F(GraphFromProtoTest, ReturnsTheVerifierErrorForDuplicateNames) {
  proto_.mutable_nodes(1)->set_name(proto_.nodes(0).name());
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("duplicate name 'x'")));
}

TEST_F(GraphFromProtoTest, RejectsBadOutputs) {
  v1::Graph missing = proto_;
  missing.add_outputs(100000);
  EXPECT_THAT(GraphFromProto(missing), StatusIs(absl::StatusCode::kInvalidArgument,
                                                HasSubstr("output %100000 is not a node")));
  v1::Graph twice = proto_;
  twice.add_outputs(proto_.outputs(0));
  EXPECT_THAT(GraphFromProto(twice),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is listed twice")));
  proto_.add_outputs(sgd_);
  EXPECT_THAT(GraphFromProto(proto_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is not a value")));
}

// --- GraphToProto on graphs that would not read back ------------------------

TEST(GraphToProto, RejectsAGraphTheVerifierRejects) {
  Graph g;
  ASSERT_OK(g.AddInput("x", {DType::kF32, {2}}).status());
  Node bad;
  bad.op = OpKind::kRelu;
  bad.inputs = {5};
  g.AddUncheckedNode(bad);
  EXPECT_THAT(GraphToProto(g), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("node 1 (relu): input %5 is not an earlier")));
}

TEST(GraphToProto, RejectsAttrsOnAnAttributelessOp) {
  Graph g;
  ASSERT_OK_AND_ASSIGN(ValueId x, g.AddInput("x", {DType::kF32, {2}}));
  // AddNode refuses this; an unchecked node must still not reach the wire.
  EXPECT_THAT(g.AddNode(OpKind::kAdd, {x, x}, MatMulAttrs{}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("add: takes no attributes, got MatMulAttrs")));
  Node bad;
  bad.op = OpKind::kAdd;
  bad.inputs = {x, x};
  bad.attrs = MatMulAttrs{};
  bad.type = {DType::kF32, {2}};
  g.AddUncheckedNode(bad);
  EXPECT_THAT(GraphToProto(g),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("node 1 (add): add: takes no attributes, got MatMulAttrs")));
}

TEST(GraphToProto, RejectsANameThatIsNotUtf8) {
  Graph g;
  ASSERT_OK(g.AddInput("x\xff", {DType::kF32, {2}}).status());
  EXPECT_THAT(GraphToProto(g),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is not valid UTF-8")));
}

// --- Plan files -------------------------------------------------------------

class PlanFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(Graph graph, MlpTrainingGraph(AdamW()));
    ASSERT_OK_AND_ASSIGN(plan_, MakePlan(graph, "full"));
  }
  v1::CompiledPlan plan_;
};

TEST_F(PlanFileTest, OverwritesAtomicallyAndLeavesNoTemporaryFile) {
  const std::string dir = TempPath("overwrite");
  ASSERT_EQ(mkdir(dir.c_str(), 0755), 0);
  const std::string path = dir + "/mlp.plan";
  v1::CompiledPlan first = plan_;
  first.mutable_metadata()->set_device_class("rpi4");
  ASSERT_OK(WritePlan(path, first));
  ASSERT_OK(WritePlan(path, plan_));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan read, ReadPlan(path));
  EXPECT_EQ(read.metadata().device_class(), "x86-avx2");
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  // Only the plan remains in the directory.
  ASSERT_EQ(rmdir(dir.c_str()), -1);  // not empty
  ASSERT_EQ(unlink(path.c_str()), 0);
  EXPECT_EQ(rmdir(dir.c_str()), 0) << "a temporary file was left behind";
}

TEST_F(PlanFileTest, ReadOfMissingFileIsNotFound) {
  EXPECT_THAT(ReadPlan(TempPath("no_such.plan")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("no_such.plan: no such file")));
}

TEST_F(PlanFileTest, WriteIntoMissingDirectoryIsNotFound) {
  EXPECT_THAT(WritePlan(TempPath("no_such_dir/x.plan"), plan_),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("temporary file")));
}

TEST_F(PlanFileTest, TruncatedFileIsDataLoss) {
  const std::string path = TempPath("truncated.plan");
  ASSERT_OK(WritePlan(path, plan_));
  const std::string bytes = ReadBytes(path);
  ASSERT_GT(bytes.size(), 100u);
  WriteBytes(path, bytes.substr(0, bytes.size() / 2));
  EXPECT_THAT(ReadPlan(path),
              StatusIs(absl::StatusCode::kDataLoss,
                       HasSubstr("truncated.plan: the " + std::to_string(bytes.size() / 2) +
                                 " bytes do not parse")));
}

TEST_F(PlanFileTest, DirectoryIsNotAPlan) {
  EXPECT_THAT(ReadPlan(::testing::TempDir()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is a directory")));
}

TEST_F(PlanFileTest, FileOverTheSizeCapIsRejectedBeforeReading) {
  const std::string path = TempPath("huge.plan");
  WriteBytes(path, "");
  ASSERT_EQ(truncate(path.c_str(), kMaxPlanBytes + 1), 0);  // sparse: no disk used
  EXPECT_THAT(ReadPlan(path),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("over the limit")));
  unlink(path.c_str());
}

TEST_F(PlanFileTest, FormatVersionIsChecked) {
  v1::CompiledPlan unversioned = plan_;
  unversioned.clear_format_version();
  EXPECT_THAT(WritePlan(TempPath("unversioned.plan"), unversioned),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no format_version")));
  EXPECT_THAT(ParsePlan(unversioned.SerializeAsString()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no format_version")));
  v1::CompiledPlan newer = plan_;
  newer.set_format_version(kPlanFormatVersion + 1);
  EXPECT_THAT(ParsePlan(newer.SerializeAsString()),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("newer")));
}

TEST_F(PlanFileTest, WriteRefusesAPlanThatWouldNotReadBack) {
  google::protobuf::LogSilencer quiet;  // protobuf logs the bad UTF-8
  plan_.mutable_metadata()->set_model_name("mlp\xff");
  EXPECT_THAT(WritePlan(TempPath("bad_utf8.plan"), plan_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("would not read back")));
}

// --- Mutated bytes ----------------------------------------------------------

// A deterministic stand-in for a fuzzer: bit flips, byte overwrites,
// truncations and spliced slices of a real plan. Every outcome must be a
// status; a crash or sanitizer report fails the test.
TEST(PlanIoMutation, MutatedPlanBytesNeverCrash) {
  ASSERT_OK_AND_ASSIGN(Graph graph, MlpTrainingGraph(AdamW()));
  ASSERT_OK_AND_ASSIGN(v1::CompiledPlan plan, MakePlan(graph, "full"));
  const std::string original = plan.SerializeAsString();
  ASSERT_FALSE(original.empty());
  google::protobuf::LogSilencer quiet;  // mutated strings make protobuf log bad UTF-8

  std::mt19937_64 rng(20240601);
  const auto below = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  int parsed = 0, accepted = 0;
  constexpr int kIterations = 4000;
  for (int i = 0; i < kIterations; ++i) {
    std::string bytes = original;
    switch (i % 4) {
      case 0:  // flip one to four bits
        for (size_t k = 0, n = 1 + below(4); k < n; ++k) {
          bytes[below(bytes.size())] ^= static_cast<char>(1u << below(8));
        }
        break;
      case 1:  // overwrite one to three bytes
        for (size_t k = 0, n = 1 + below(3); k < n; ++k) {
          bytes[below(bytes.size())] = static_cast<char>(below(256));
        }
        break;
      case 2:  // truncate
        bytes.resize(below(bytes.size()));
        break;
      case 3: {  // splice a slice of the plan into another place
        const size_t from = below(bytes.size());
        const size_t len = 1 + below(std::min<size_t>(64, bytes.size() - from));
        const std::string slice = bytes.substr(from, len);
        bytes.insert(below(bytes.size() + 1), slice);
        break;
      }
    }
    absl::StatusOr<v1::CompiledPlan> mutated = ParsePlan(bytes);
    if (!mutated.ok()) {
      EXPECT_THAT(mutated.status().code(),
                  AnyOf(absl::StatusCode::kDataLoss, absl::StatusCode::kInvalidArgument,
                        absl::StatusCode::kFailedPrecondition))
          << "iteration " << i << ": " << mutated.status();
      continue;
    }
    ++parsed;
    absl::StatusOr<Graph> rebuilt = GraphFromProto(mutated->graph());
    if (!rebuilt.ok()) {
      EXPECT_EQ(rebuilt.status().code(), absl::StatusCode::kInvalidArgument)
          << "iteration " << i << ": " << rebuilt.status();
      EXPECT_FALSE(rebuilt.status().message().empty());
      continue;
    }
    ++accepted;
    // Whatever is accepted is a well-formed graph that serializes again.
    EXPECT_OK(VerifyGraph(*rebuilt)) << "iteration " << i;
    EXPECT_OK(GraphToProto(*rebuilt).status()) << "iteration " << i;
    EXPECT_FALSE(PrintGraph(*rebuilt).empty());
  }
  RecordProperty("parsed", parsed);
  RecordProperty("accepted", accepted);
  // The loop reached every layer: some mutations parse, some of those build a
  // graph (e.g. a flipped hyper-parameter), and most are rejected somewhere.
  EXPECT_GT(parsed, 0);
  EXPECT_GT(accepted, 0);
  EXPECT_LT(accepted, kIterations / 2);
}

}  // namespace
}  // namespace fleettune::engine::plan
