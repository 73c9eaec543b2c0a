#include "engine/models/zoo.h"

#include <cmath>
#include <map>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/status_macros.h"
#include "engine/models/bert.h"
#include "engine/models/cnn.h"
#include "engine/models/llama.h"
#include "engine/models/mlp.h"
#include "engine/models/mobilenet_v2.h"
#include "engine/models/resnet.h"

namespace fleettune::engine::models {
namespace {

constexpr int64_t kVisionResolution = 128;
constexpr int64_t kVisionClasses = 10;

// Kaiming-uniform-style U(±1/√fan_in) for every weight of rank ≥ 2 (PyTorch's
// default for convolutions and linears); for 1-D tensors BatchNorm's
// defaults: weight and running_var 1, bias and running_mean 0. The classifier
// bias is 0 too.
absl::Status InitializeByShape(const Model& model, uint64_t seed, runtime::ParameterStore* params) {
  std::mt19937_64 rng(seed);
  for (const Node& n : model.graph.nodes()) {
    if (n.op != OpKind::kParameter) continue;
    Tensor t(n.type.dtype, n.type.shape);
    if (n.type.dtype == DType::kF32) {
      const Shape& shape = n.type.shape;
      if (shape.size() >= 2) {
        int64_t fan_in = 1;
        for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
        const float bound = 1.0f / std::sqrt(static_cast<float>(fan_in));
        std::uniform_real_distribution<float> dist(-bound, bound);
        for (float& v : t.f32_span()) v = dist(rng);
      } else {
        const bool one = absl::EndsWith(n.name, ".running_var") ||
                         (absl::EndsWith(n.name, ".weight") && !absl::StartsWith(n.name, "fc") &&
                          !absl::StartsWith(n.name, "classifier"));
        for (float& v : t.f32_span()) v = one ? 1.0f : 0.0f;
      }
    }
    RETURN_IF_ERROR(params->Set(n.name, t));
  }
  return absl::OkStatus();
}

// Fills every input of `exe`: f32 from U[0, 1); i32 inputs named in `bounds`
// uniformly from [0, bound); `positions` / `position_ids` with 0..T-1.
absl::Status FillInputs(runtime::Executable& exe, uint64_t seed,
                        const std::map<std::string, int64_t>& bounds) {
  std::mt19937_64 rng(seed);
  for (const Node& n : exe.graph().nodes()) {
    if (n.op != OpKind::kInput) continue;
    ASSIGN_OR_RETURN(TensorView v, exe.Input(n.name));
    if (n.type.dtype == DType::kF32) {
      std::uniform_real_distribution<float> u(0.0f, 1.0f);
      for (int64_t i = 0; i < v.num_elements(); ++i) v.f32()[i] = u(rng);
      continue;
    }
    if (n.name == kLlamaPositionsInput || n.name == kBertPositionsInput) {
      FillLlamaPositions(v.i32(), v.num_elements());
      continue;
    }
    auto it = bounds.find(n.name);
    if (it == bounds.end()) {
      return absl::InternalError(absl::StrCat("zoo: no value range for input '", n.name, "'"));
    }
    for (int64_t i = 0; i < v.num_elements(); ++i) {
      v.i32()[i] = static_cast<int32_t>(rng() % static_cast<uint64_t>(it->second));
    }
  }
  return absl::OkStatus();
}

MobileNetV2Config MobileNetConfig(int64_t batch) {
  MobileNetV2Config c;
  c.resolution = kVisionResolution;
  c.num_classes = kVisionClasses;
  c.batch = batch;
  return c;
}

ResNetConfig ResNet18Config(int64_t batch) {
  ResNetConfig c;
  c.resolution = kVisionResolution;
  c.num_classes = kVisionClasses;
  c.batch = batch;
  return c;
}

BertConfig BertMiniConfig(int64_t batch) {
  BertConfig c;
  c.vocab = 30522;
  c.hidden = 256;
  c.layers = 4;
  c.heads = 4;
  c.ffn = 1024;
  c.max_positions = 512;
  c.seq_len = 128;
  c.batch = batch;
  c.num_labels = 2;
  c.dropout = 0.0f;
  return c;
}

LlamaConfig LlamaMiniConfig(int64_t batch) {
  LlamaConfig c;
  c.vocab = 8192;
  c.dim = 256;
  c.layers = 4;
  c.heads = 4;
  c.kv_heads = 2;
  c.ffn_dim = 704;
  c.seq_len = 128;
  c.batch = batch;
  return c;
}

MlpConfig MlpZooConfig(int64_t batch) {
  MlpConfig c;
  c.batch = batch;
  return c;
}

CnnConfig CnnZooConfig(int64_t batch, Mode mode = Mode::kTrain) {
  CnnConfig c;
  c.batch = batch;
  c.mode = mode;
  return c;
}

std::vector<ZooEntry> MakeZoo() {
  std::vector<ZooEntry> zoo;
  zoo.push_back({"mlp", "MLP 784-256-128-10",
                 [](int64_t batch, Mode) { return BuildMlp(MlpZooConfig(batch)); },
                 [](const Model&, uint64_t seed, runtime::ParameterStore* p) {
                   return InitializeMlp(MlpZooConfig(1), seed, p);
                 },
                 [](runtime::Executable& exe, uint64_t seed) {
                   return FillInputs(exe, seed, {{"labels", 10}});
                 }});
  zoo.push_back({"cnn", "Fashion-MNIST CNN (3 conv+BN+ReLU blocks, linear head)",
                 [](int64_t batch, Mode mode) { return BuildCnn(CnnZooConfig(batch, mode)); },
                 [](const Model&, uint64_t seed, runtime::ParameterStore* p) {
                   return InitializeCnn(CnnZooConfig(1), seed, p);
                 },
                 [](runtime::Executable& exe, uint64_t seed) {
                   return FillInputs(exe, seed, {{"labels", 10}});
                 }});
  zoo.push_back(
      {"mobilenet_v2", "MobileNetV2 width 1.0, 128x128, 10 classes",
       [](int64_t batch, Mode mode) { return BuildMobileNetV2(MobileNetConfig(batch), mode); },
       InitializeByShape,
       [](runtime::Executable& exe, uint64_t seed) {
         return FillInputs(exe, seed, {{"labels", kVisionClasses}});
       }});
  zoo.push_back({"resnet18", "ResNet-18, 128x128, 10 classes",
                 [](int64_t batch, Mode mode) { return BuildResNet(ResNet18Config(batch), mode); },
                 InitializeByShape,
                 [](runtime::Executable& exe, uint64_t seed) {
                   return FillInputs(exe, seed, {{"labels", kVisionClasses}});
                 }});
  zoo.push_back(
      {"bert_mini", "BERT-mini: 4 layers, hidden 256, 4 heads, FFN 1024, sequence 128, 2 labels",
       [](int64_t batch, Mode mode) -> absl::StatusOr<Model> {
         ASSIGN_OR_RETURN(BertModel m, BuildBert(BertMiniConfig(batch), mode));
         return std::move(m.model);
       },
       [](const Model&, uint64_t seed, runtime::ParameterStore* p) {
         return InitializeBert(BertMiniConfig(1), seed, p);
       },
       [](runtime::Executable& exe, uint64_t seed) {
         const BertConfig c = BertMiniConfig(1);
         return FillInputs(
             exe, seed, {{"input_ids", c.vocab}, {"token_type_ids", 1}, {"labels", c.num_labels}});
       }});
  zoo.push_back(
      {"llama_mini",
       "Llama-style decoder: 4 layers, dim 256, 4 heads / 2 KV heads, FFN 704, vocab 8192, "
       "sequence 128",
       [](int64_t batch, Mode) -> absl::StatusOr<Model> {
         ASSIGN_OR_RETURN(LlamaModel m, BuildLlama(LlamaMiniConfig(batch)));
         return std::move(m.model);
       },
       [](const Model&, uint64_t seed, runtime::ParameterStore* p) {
         return InitializeLlama(LlamaMiniConfig(1), seed, p);
       },
       [](runtime::Executable& exe, uint64_t seed) {
         const LlamaConfig c = LlamaMiniConfig(1);
         return FillInputs(exe, seed, {{"tokens", c.vocab}, {"targets", c.vocab}});
       }});
  return zoo;
}

}  // namespace

const std::vector<ZooEntry>& ZooModels() {
  static const auto* zoo = new std::vector<ZooEntry>(MakeZoo());
  return *zoo;
}

absl::StatusOr<const ZooEntry*> FindZooModel(absl::string_view name) {
  std::vector<std::string> names;
  for (const ZooEntry& e : ZooModels()) {
    if (e.name == name) return &e;
    names.push_back(e.name);
  }
  return absl::NotFoundError(
      absl::StrCat("unknown model '", name, "' (known: ", absl::StrJoin(names, ", "), ")"));
}

}  // namespace fleettune::engine::models
