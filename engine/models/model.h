// A model: its forward graph with the loss, and the ids callers need.
//
// Builders (mlp.h, ...) return a Model for a fixed batch size; the training
// graph is derived from it (engine/train). Weights live in a ParameterStore
// under PyTorch's state_dict names.
#ifndef FLEETTUNE_ENGINE_MODELS_MODEL_H_
#define FLEETTUNE_ENGINE_MODELS_MODEL_H_

#include <string>
#include <vector>

#include "engine/ir/graph.h"

namespace fleettune::engine::models {

// Which graph a builder makes. Training graphs normalize with batch
// statistics (and update the running ones) and apply dropout; evaluation graphs
// use the running statistics and skip dropout, like torch's train() / eval().
// Models without such layers build the same graph in both modes.
enum class Mode { kTrain, kEval };

struct Layer {
  std::string name;                  // "fc1"
  std::vector<std::string> weights;  // "fc1.weight", "fc1.bias"
};

struct Model {
  Graph graph;                // forward + loss; logits and loss are marked outputs
  ValueId input = kNoValue;   // "x"
  ValueId labels = kNoValue;  // "labels", i32 [batch]
  ValueId logits = kNoValue;  // [batch, classes]
  ValueId loss = kNoValue;    // f32 scalar
  std::vector<Layer> layers;  // input to output order
  // Persistent state saved with the weights but never trained (BatchNorm
  // running statistics), in layer order: the names of kBuffer parameters. An
  // evaluation graph need not read all of them (num_batches_tracked).
  std::vector<std::string> buffers;
  // Inputs that are the same for every example (token positions): a
  // micro-batched plan feeds them whole to every slice of the batch
  // (runtime::CompileOptions::shared_inputs).
  std::vector<std::string> shared_inputs;
};

}  // namespace fleettune::engine::models

#endif  // FLEETTUNE_ENGINE_MODELS_MODEL_H_
