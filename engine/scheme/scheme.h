// Update schemes as data: which parameter tensors of a model train, and how.
//
// A scheme is an ordered list of rules. Each rule names weight tensors (an
// exact name or a glob) and says how they train: FROZEN, FULL, or CHANNELS
// with a fraction f in {1/8, 1/4, 1/2, 1} of the output channels, which trains
// only the first ⌈f · C_out⌉ rows (dim 0) of a linear or conv2d weight. For
// each tensor the LAST rule that matches it decides; tensors no rule matches
// stay frozen. The wire/text form is fleettune.v1.UpdateScheme
// (proto/fleettune/v1/scheme.proto; engine/plan/scheme_io.h converts it, since
// only engine/plan/ uses protobuf).
//
//   ASSIGN_OR_RETURN(UpdateScheme s, PresetScheme(model, "pockengine"));
//   ASSIGN_OR_RETURN(ResolvedScheme r, ResolveScheme(model, s));
//   // r.params: every weight tensor in layer order with its mode and rows.
//
// Patterns: a pattern without '*' or '?' is an exact tensor name; otherwise
// '*' matches any run of characters (dots included) and '?' one character, so
// "features.16.*" is a prefix match. Globs only ever match weight tensors
// (kWeight parameters listed in Model::layers), never buffers.
//
// Validation (ResolveScheme, InvalidArgument, the message names the rule and
// tensor): a rule whose pattern matches no weight tensor; an exact name that is
// a buffer (BatchNorm running statistics); CHANNELS on an exact name that is
// 1-D, a bias, or not the weight of a linear/conv2d layer (a glob CHANNELS rule
// skips such tensors, keeping what earlier rules decided, and must apply to at
// least one tensor); a fraction outside {1/8, 1/4, 1/2, 1}; a fraction on a
// non-CHANNELS rule; an empty pattern or one over kMaxPatternBytes; more than
// kMaxGlobRules glob rules; a scheme that trains nothing.
//
// Presets (PresetScheme) build exact-name rules from a model's layers; see
// PresetScheme for each one's rule. Functions only; thread-safe.
#ifndef FLEETTUNE_ENGINE_SCHEME_SCHEME_H_
#define FLEETTUNE_ENGINE_SCHEME_SCHEME_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/models/model.h"

namespace fleettune::engine::scheme {

// Bounds that keep resolving an untrusted scheme cheap: exact names are
// looked up in a hash map, and glob matching costs at most
// kMaxGlobRules · weights · kMaxPatternBytes · name length steps.
inline constexpr size_t kMaxPatternBytes = 256;
inline constexpr size_t kMaxGlobRules = 256;

enum class UpdateMode { kFrozen, kFull, kChannels };

struct Rule {
  std::string pattern;  // exact tensor name or glob (see the file comment)
  UpdateMode mode = UpdateMode::kFrozen;
  double channel_fraction = 0.0;  // kChannels only: 0.125, 0.25, 0.5 or 1
  bool operator==(const Rule& o) const {
    return pattern == o.pattern && mode == o.mode && channel_fraction == o.channel_fraction;
  }
};

struct UpdateScheme {
  std::string name;  // a label ("sparse", "my-scheme"); not interpreted
  std::vector<Rule> rules;
  bool operator==(const UpdateScheme& o) const { return name == o.name && rules == o.rules; }
};

// How one weight tensor trains after resolution.
struct ParamPlan {
  std::string name;  // "features.16.conv.0.0.weight"
  UpdateMode mode = UpdateMode::kFrozen;
  // Rows (dim 0) that train: 0 when frozen, dim 0 when full, ⌈f · dim 0⌉ for
  // channels (dim 0 for f = 1, which then counts as kFull).
  int64_t rows = 0;
  int64_t dim0 = 0;      // the tensor's dim 0 (1 for scalars)
  int64_t elements = 0;  // trained elements: rows · (elements per row)
};

struct ResolvedScheme {
  std::string name;
  // Every weight tensor of Model::layers, in layer order.
  std::vector<ParamPlan> params;

  // Tensors that train (full or partial), in order.
  std::vector<std::string> TrainableNames() const;
  // Sum of ParamPlan::elements.
  int64_t TrainableElements() const;
};

// The rule's text as in a scheme file: "features.16.* FULL", "x CHANNELS 1/4".
std::string RuleToString(const Rule& rule);

// Resolves `scheme` against the model's weights. Errors: InvalidArgument as
// listed in the file comment.
absl::StatusOr<ResolvedScheme> ResolveScheme(const models::Model& model,
                                             const UpdateScheme& scheme);

// Presets. "Bias" means a 1-D weight named "*.bias" (for convolutions without
// a bias, their BatchNorm's bias). Blocks are found by FindBlocks.
//   "full"        every weight
//   "bias-only"   every bias
//   "last-k:N"    every weight of the last N layers
//   "freeze:A,B"  every weight except those of layers A, B
//   "sparse"      every bias + all weights of the last two blocks + the head
//   "pockengine"  every bias + the head + in the later half of the blocks:
//                 the last block fully, the one before it with 1/2 of the
//                 output channels of each linear/conv weight, the others with
//                 1/4 (their 1-D weights, e.g. BatchNorm γ, fully)
// The head is the layers after the last block whose weight is a linear's
// (BERT's pooler and classifier, MobileNetV2's classifier.1, ResNet's fc), and
// always the model's last layer. A model with fewer than two blocks (MLP, the
// small CNN) uses each layer holding a linear/conv weight, except the last
// layer (the head), as a block.
// InvalidArgument for an unknown preset, a bad N, an unknown layer name.
absl::StatusOr<UpdateScheme> PresetScheme(const models::Model& model, absl::string_view preset);

// A block: consecutive layers whose names share the prefix up to and including
// their first all-digit component ("features.16", "layer4.1",
// "bert.encoder.layer.3", "model.layers.7") and that hold at least two
// linear/conv weights. So MobileNetV2's blocks are its inverted residuals
// features.1 … features.17 (features.18 is a single 1×1 conv stage and
// classifier.1 a single linear, so neither is a block), ResNet's are its
// BasicBlocks/Bottlenecks, BERT's and Llama's their encoder/decoder layers.
struct Block {
  std::string prefix;      // "features.16"
  size_t first_layer = 0;  // index into Model::layers
  size_t end_layer = 0;    // one past the last layer
};
std::vector<Block> FindBlocks(const models::Model& model);

// Whether `name` matches `pattern` ('*' any run, '?' one character; a pattern
// without either is compared exactly).
bool MatchPattern(absl::string_view pattern, absl::string_view name);

}  // namespace fleettune::engine::scheme

#endif  // FLEETTUNE_ENGINE_SCHEME_SCHEME_H_
