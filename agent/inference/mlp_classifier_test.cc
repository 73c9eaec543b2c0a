#include "agent/inference/mlp_classifier.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/inference/inference_server.h"
#include "engine/base/status_matchers.h"
#include "engine/io/safetensors.h"
#include "engine/ir/tensor.h"
#include "engine/models/mlp.h"
#include "engine/runtime/executable.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleettune::agent {
namespace {

using ::fleettune::testing::StatusIs;
using ::testing::FloatNear;
using ::testing::HasSubstr;
using ::testing::Pointwise;
namespace models = engine::models;
using engine::Tensor;
using engine::TensorView;
using engine::runtime::Executable;
using engine::runtime::ParameterStore;

constexpr int kBatch = 8;
const std::vector<int64_t> kSizes = {20, 16, 8, 4};

std::string TempPath(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  return absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/", name, "-", getpid());
}

// A socket path short enough for sun_path.
std::string SocketPath(const std::string& name) {
  std::string path = TempPath(name) + ".sock";
  if (path.size() > kMaxSocketPathBytes) path = absl::StrCat("/tmp/ft-", name, "-", getpid());
  return path;
}

struct SavedMlp {
  std::string path;
  ParameterStore params;
};

// An MLP with seeded random weights, saved as "personalized" safetensors.
void SaveMlp(const std::string& name, SavedMlp* saved) {
  saved->path = TempPath(name + ".safetensors");
  ASSERT_OK(models::InitializeMlp({kSizes, kBatch}, /*seed=*/42, &saved->params));
  ASSERT_OK(engine::io::WriteSafetensors(saved->path, saved->params.tensors()));
}

std::vector<std::vector<float>> Samples() {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<std::vector<float>> samples(kBatch, std::vector<float>(kSizes.front()));
  for (auto& s : samples) {
    for (float& v : s) v = dist(rng);
  }
  return samples;
}

// The engine run directly, on the whole batch at once: logits [batch, classes].
void DirectLogits(ParameterStore* params, const std::vector<std::vector<float>>& samples,
                  std::vector<std::vector<float>>* logits) {
  ASSERT_OK_AND_ASSIGN(models::Model model, models::BuildMlp({kSizes, kBatch}));
  ASSERT_OK_AND_ASSIGN(auto exe, Executable::Compile(model.graph, params));
  ASSERT_OK_AND_ASSIGN(TensorView x, exe->Input("x"));
  for (int b = 0; b < kBatch; ++b) {
    std::copy(samples[b].begin(), samples[b].end(), x.f32() + b * kSizes.front());
  }
  ASSERT_OK(exe->Run());
  ASSERT_OK_AND_ASSIGN(TensorView out, exe->Output(model.logits));
  const int64_t classes = kSizes.back();
  for (int b = 0; b < kBatch; ++b) {
    logits->emplace_back(out.f32() + b * classes, out.f32() + (b + 1) * classes);
  }
}

size_t Argmax(const std::vector<float>& v) {
  return std::max_element(v.begin(), v.end()) - v.begin();
}

TEST(MlpClassifier, MatchesTheEngineRunDirectly) {
  SavedMlp saved;
  ASSERT_NO_FATAL_FAILURE(SaveMlp("direct", &saved));
  const auto samples = Samples();
  std::vector<std::vector<float>> logits;
  ASSERT_NO_FATAL_FAILURE(DirectLogits(&saved.params, samples, &logits));

  ASSERT_OK_AND_ASSIGN(Classifier classify, MakeMlpClassifier(saved.path, kSizes));
  std::set<size_t> classes_seen;
  for (int b = 0; b < kBatch; ++b) {
    ASSERT_OK_AND_ASSIGN(std::vector<float> probs, classify(samples[b]));
    ASSERT_EQ(probs.size(), static_cast<size_t>(kSizes.back()));
    EXPECT_EQ(Argmax(probs), Argmax(logits[b])) << "sample " << b;
    EXPECT_THAT(probs, Pointwise(FloatNear(1e-5), Softmax(logits[b]))) << "sample " << b;
    float sum = 0;
    for (float p : probs) sum += p;
    EXPECT_NEAR(sum, 1.0f, 1e-5);
    classes_seen.insert(Argmax(probs));
  }
  EXPECT_GT(classes_seen.size(), 1u) << "samples should not all land in one class";
}

TEST(MlpClassifier, ServesOverTheSocketWithTheSameAnswers) {
  SavedMlp saved;
  ASSERT_NO_FATAL_FAILURE(SaveMlp("served", &saved));
  const auto samples = Samples();
  std::vector<std::vector<float>> logits;
  ASSERT_NO_FATAL_FAILURE(DirectLogits(&saved.params, samples, &logits));

  InferenceServer::Options options;
  options.socket_path = SocketPath("mlp");
  ASSERT_OK_AND_ASSIGN(options.classifier, MakeMlpClassifier(saved.path, kSizes));
  InferenceServer server(options);
  ASSERT_OK(server.Start());
  for (int b = 0; b < kBatch; ++b) {
    ASSERT_OK_AND_ASSIGN(std::vector<float> probs, Classify(options.socket_path, samples[b]));
    EXPECT_EQ(Argmax(probs), Argmax(logits[b])) << "sample " << b;
  }
  EXPECT_THAT(Classify(options.socket_path, std::vector<float>(3)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("the model takes 20")));
}

TEST(MlpClassifier, ConcurrentCallsGiveTheSameAnswers) {
  SavedMlp saved;
  ASSERT_NO_FATAL_FAILURE(SaveMlp("concurrent", &saved));
  const auto samples = Samples();
  ASSERT_OK_AND_ASSIGN(Classifier classify, MakeMlpClassifier(saved.path, kSizes));
  std::vector<std::vector<float>> expected;
  for (const auto& s : samples) {
    ASSERT_OK_AND_ASSIGN(std::vector<float> probs, classify(s));
    expected.push_back(probs);
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        const int b = (t + i) % kBatch;
        absl::StatusOr<std::vector<float>> probs = classify(samples[b]);
        if (!probs.ok() || *probs != expected[b]) ++mismatches;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(MlpClassifier, RejectsBadSamples) {
  SavedMlp saved;
  ASSERT_NO_FATAL_FAILURE(SaveMlp("badsample", &saved));
  ASSERT_OK_AND_ASSIGN(Classifier classify, MakeMlpClassifier(saved.path, kSizes));
  EXPECT_THAT(classify(std::vector<float>(21)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("21 values")));
  std::vector<float> nan(20);
  nan[7] = std::nanf("");
  EXPECT_THAT(classify(nan), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("value 7")));
}

TEST(MlpClassifier, IgnoresTensorsTheModelDoesNotUse) {
  SavedMlp saved;
  ASSERT_OK(models::InitializeMlp({kSizes, kBatch}, 1, &saved.params));
  std::map<std::string, Tensor> tensors = saved.params.tensors();
  tensors["fc1.weight.momentum"] = Tensor::Zeros(engine::DType::kF32, {16, 20});
  const std::string path = TempPath("extra.safetensors");
  ASSERT_OK(engine::io::WriteSafetensors(path, tensors));
  EXPECT_OK(MakeMlpClassifier(path, kSizes).status());
}

TEST(MlpClassifier, ReportsFilesThatDoNotFitTheModel) {
  EXPECT_THAT(MakeMlpClassifier(TempPath("missing.safetensors"), kSizes),
              StatusIs(absl::StatusCode::kNotFound));

  SavedMlp saved;
  ASSERT_OK(models::InitializeMlp({kSizes, kBatch}, 1, &saved.params));
  std::map<std::string, Tensor> tensors = saved.params.tensors();
  tensors.erase("fc2.bias");
  const std::string missing = TempPath("nobias.safetensors");
  ASSERT_OK(engine::io::WriteSafetensors(missing, tensors));
  EXPECT_THAT(MakeMlpClassifier(missing, kSizes),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no tensor fc2.bias")));

  tensors = saved.params.tensors();
  tensors["fc1.weight"] = Tensor::Zeros(engine::DType::kF32, {16, 21});
  const std::string wrong = TempPath("wrongshape.safetensors");
  ASSERT_OK(engine::io::WriteSafetensors(wrong, tensors));
  EXPECT_THAT(MakeMlpClassifier(wrong, kSizes),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("fc1.weight is f32[16, 21]; the model needs f32[16, 20]")));

  const std::string garbage = TempPath("garbage.safetensors");
  ASSERT_OK(engine::io::WriteSafetensors(garbage, {}));
  {
    FILE* f = std::fopen(garbage.c_str(), "wb");
    std::fputs("not a safetensors file at all", f);
    std::fclose(f);
  }
  EXPECT_THAT(MakeMlpClassifier(garbage, kSizes), StatusIs(absl::StatusCode::kInvalidArgument));

  EXPECT_THAT(MakeMlpClassifier(missing, {20}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Softmax, IsStableForLargeLogits) {
  EXPECT_THAT(Softmax(std::vector<float>{1000.0f, 1000.0f}),
              Pointwise(FloatNear(1e-6), std::vector<float>{0.5f, 0.5f}));
  EXPECT_TRUE(Softmax({}).empty());
}

}  // namespace
}  // namespace fleettune::agent
