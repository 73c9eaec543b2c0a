// The model zoo: the named architectures fleettune compiles plans for and
// benchmarks, each with a fixed configuration, deterministic initial weights
// and a synthetic batch (for benchmarks and compile-time measurements; real
// training reads real data).
//
//   ASSIGN_OR_RETURN(const ZooEntry* entry, FindZooModel("mobilenet_v2"));
//   ASSIGN_OR_RETURN(Model model, entry->build(/*batch=*/8, Mode::kEval));
//   RETURN_IF_ERROR(entry->initialize(model, /*seed=*/0, &params));
//   ...compile...
//   RETURN_IF_ERROR(entry->fill_batch(*exe, /*seed=*/0));
//
// Entries (shapes are the benchmarks' of issue #6):
//   mlp           784-256-128-10 on 28×28 images
//   cnn           the Fashion-MNIST CNN of engine/models/cnn.h
//   mobilenet_v2  torchvision's mobilenet_v2, width 1.0, 128×128, 10 classes
//   resnet18      torchvision's resnet18 layout, 128×128, 10 classes
//   bert_mini     BERT 4 layers, hidden 256, 4 heads, FFN 1024, vocab 30522,
//                 sequence 128, 2 labels, no dropout
//   llama_mini    Llama-style decoder, 4 layers, dim 256, 4 heads / 2 KV
//                 heads, FFN 704, vocab 8192, sequence 128
// Thread-safe: the table is immutable.
#ifndef FLEETTUNE_ENGINE_MODELS_ZOO_H_
#define FLEETTUNE_ENGINE_MODELS_ZOO_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/models/model.h"
#include "engine/runtime/executable.h"

namespace fleettune::engine::models {

struct ZooEntry {
  std::string name;
  std::string description;
  // The forward graph with the loss for `batch` examples (sequences).
  std::function<absl::StatusOr<Model>(int64_t batch, Mode mode)> build;
  // Every parameter and buffer `model` reads, deterministic per seed.
  std::function<absl::Status(const Model& model, uint64_t seed, runtime::ParameterStore* params)>
      initialize;
  // Writes a random but valid batch (labels and ids in range, positions
  // 0..T-1) into every input of `exe`.
  std::function<absl::Status(runtime::Executable& exe, uint64_t seed)> fill_batch;
};

// Every entry, in the order listed above.
const std::vector<ZooEntry>& ZooModels();

// NotFound naming the known models for an unknown name.
absl::StatusOr<const ZooEntry*> FindZooModel(absl::string_view name);

}  // namespace fleettune::engine::models

#endif  // FLEETTUNE_ENGINE_MODELS_ZOO_H_
