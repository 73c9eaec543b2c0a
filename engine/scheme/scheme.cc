#include "engine/scheme/scheme.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/base/status_macros.h"

namespace fleettune::engine::scheme {
namespace {

bool IsGlob(absl::string_view pattern) {
  return pattern.find_first_of("*?") != absl::string_view::npos;
}

// What a scheme needs to know about one weight tensor.
struct WeightInfo {
  std::string name;
  TensorType type;
  bool found = false;  // the graph has a kWeight parameter of this name
  bool bias = false;
  // Only ever the weight input (1) of kLinear / kConv2d, so partial channels
  // have a gradient rule (engine/autodiff).
  bool channel_weight = false;
  bool linear_weight = false;  // the weight of a kLinear
};

std::vector<WeightInfo> Weights(const models::Model& model) {
  const Graph& g = model.graph;
  // Per parameter id: consumed as a linear/conv weight, consumed otherwise.
  std::map<ValueId, std::pair<int, int>> uses;
  std::set<ValueId> linear;
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const Node& n = g.node(id);
    for (size_t i = 0; i < n.inputs.size(); ++i) {
      const bool weight_slot = (n.op == OpKind::kLinear || n.op == OpKind::kConv2d) && i == 1;
      auto& u = uses[n.inputs[i]];
      (weight_slot ? u.first : u.second)++;
      if (weight_slot && n.op == OpKind::kLinear) linear.insert(n.inputs[i]);
    }
  }
  std::vector<WeightInfo> out;
  for (const models::Layer& layer : model.layers) {
    for (const std::string& name : layer.weights) {
      WeightInfo w;
      w.name = name;
      std::optional<ValueId> id = g.FindByName(name);
      const auto* attrs =
          id.has_value() ? std::get_if<ParameterAttrs>(&g.node(*id).attrs) : nullptr;
      if (attrs != nullptr && attrs->role == ParamRole::kWeight) {
        w.found = true;
        w.type = g.type(*id);
        const auto& u = uses[*id];
        w.channel_weight = u.first > 0 && u.second == 0 && w.type.shape.size() >= 2;
        w.linear_weight = w.channel_weight && linear.count(*id) > 0;
      }
      w.bias = w.type.shape.size() == 1 && absl::EndsWith(name, ".bias");
      out.push_back(std::move(w));
    }
  }
  return out;
}

bool ValidFraction(double f) { return f == 0.125 || f == 0.25 || f == 0.5 || f == 1.0; }

std::string FractionString(double f) {
  if (f == 0.125) return "1/8";
  if (f == 0.25) return "1/4";
  if (f == 0.5) return "1/2";
  if (f == 1.0) return "1";
  return absl::StrCat(f);
}

// The first all-digit dot-separated component ends the block prefix.
std::optional<std::string> BlockPrefix(absl::string_view layer) {
  std::vector<absl::string_view> parts = absl::StrSplit(layer, '.');
  std::string prefix;
  for (absl::string_view p : parts) {
    if (!prefix.empty()) prefix += '.';
    prefix += std::string(p);
    if (!p.empty() &&
        std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return prefix;
    }
  }
  return std::nullopt;
}

Rule Exact(const std::string& name, UpdateMode mode, double fraction = 0.0) {
  return Rule{name, mode, mode == UpdateMode::kChannels ? fraction : 0.0};
}

}  // namespace

std::vector<std::string> ResolvedScheme::TrainableNames() const {
  std::vector<std::string> out;
  for (const ParamPlan& p : params) {
    if (p.mode != UpdateMode::kFrozen) out.push_back(p.name);
  }
  return out;
}

int64_t ResolvedScheme::TrainableElements() const {
  int64_t total = 0;
  for (const ParamPlan& p : params) total += p.elements;
  return total;
}

bool MatchPattern(absl::string_view pattern, absl::string_view name) {
  // Iterative glob match with single-star backtracking: O(|pattern|·|name|).
  size_t p = 0, n = 0, star = absl::string_view::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != absl::string_view::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

std::string RuleToString(const Rule& rule) {
  switch (rule.mode) {
    case UpdateMode::kFrozen:
      return absl::StrCat(rule.pattern, " FROZEN");
    case UpdateMode::kFull:
      return absl::StrCat(rule.pattern, " FULL");
    case UpdateMode::kChannels:
      return absl::StrCat(rule.pattern, " CHANNELS ", FractionString(rule.channel_fraction));
  }
  return rule.pattern;
}

absl::StatusOr<ResolvedScheme> ResolveScheme(const models::Model& model,
                                             const UpdateScheme& scheme) {
  const std::vector<WeightInfo> weights = Weights(model);
  for (const WeightInfo& w : weights) {
    if (!w.found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the model lists weight '", w.name, "' but its graph has no weight parameter so named"));
    }
  }
  const std::set<std::string> buffers(model.buffers.begin(), model.buffers.end());
  const std::string label = scheme.name.empty() ? "scheme" : "scheme '" + scheme.name + "'";
  // Per weight: the deciding rule's mode and fraction.
  std::vector<UpdateMode> mode(weights.size(), UpdateMode::kFrozen);
  std::vector<double> fraction(weights.size(), 0.0);
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < weights.size(); ++i) index[weights[i].name] = i;
  size_t globs = 0;
  for (const Rule& rule : scheme.rules) globs += IsGlob(rule.pattern);
  if (globs > kMaxGlobRules) {
    return absl::InvalidArgumentError(
        absl::StrCat(label, " has ", globs, " glob rules, more than ", kMaxGlobRules));
  }
  for (size_t r = 0; r < scheme.rules.size(); ++r) {
    const Rule& rule = scheme.rules[r];
    if (rule.pattern.size() > kMaxPatternBytes) {
      return absl::InvalidArgumentError(absl::StrCat(label, ", rule ", r, ": pattern of ",
                                                     rule.pattern.size(), " bytes, more than ",
                                                     kMaxPatternBytes));
    }
    const std::string where = absl::StrCat(label, ", rule ", r, " (", RuleToString(rule), ")");
    if (rule.pattern.empty()) return absl::InvalidArgumentError(where + ": empty pattern");
    if (rule.mode == UpdateMode::kChannels && !ValidFraction(rule.channel_fraction)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": tensor pattern '", rule.pattern,
                                                     "': channel fraction ", rule.channel_fraction,
                                                     " is not one of 1/8, 1/4, 1/2, 1"));
    }
    if (rule.mode != UpdateMode::kChannels && rule.channel_fraction != 0.0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": a channel fraction is only valid with CHANNELS (tensor pattern '",
                       rule.pattern, "')"));
    }
    const bool glob = IsGlob(rule.pattern);
    if (!glob && buffers.count(rule.pattern) > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensor '", rule.pattern,
                       "' is a buffer (running statistics), which is never trained"));
    }
    int matched = 0, applied = 0;
    std::vector<size_t> candidates;
    if (glob) {
      for (size_t i = 0; i < weights.size(); ++i) {
        if (MatchPattern(rule.pattern, weights[i].name)) candidates.push_back(i);
      }
    } else if (auto it = index.find(rule.pattern); it != index.end()) {
      candidates.push_back(it->second);
    }
    for (size_t i : candidates) {
      const WeightInfo& w = weights[i];
      ++matched;
      if (rule.mode == UpdateMode::kChannels && (w.bias || !w.channel_weight)) {
        if (glob) continue;  // globs skip tensors that have no output channels
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": tensor '", w.name, "' ", TypeToString(w.type), " cannot train a fraction of ",
            "its channels: CHANNELS needs the weight of a linear or conv2d layer (output ",
            "channels in dim 0), not a bias or 1-D tensor"));
      }
      ++applied;
      mode[i] = rule.mode;
      fraction[i] = rule.channel_fraction;
    }
    if (matched == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensor ", glob ? "pattern '" : "'", rule.pattern, "' ",
                       glob ? "matches no weight tensor" : "is not a weight of the model"));
    }
    if (applied == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": tensor pattern '", rule.pattern,
                       "' matches no linear or conv2d weight, so CHANNELS applies to nothing"));
    }
  }
  ResolvedScheme out;
  out.name = scheme.name;
  for (size_t i = 0; i < weights.size(); ++i) {
    const WeightInfo& w = weights[i];
    ParamPlan p;
    p.name = w.name;
    p.dim0 = w.type.shape.empty() ? 1 : w.type.shape[0];
    const int64_t per_row = p.dim0 == 0 ? 0 : NumElements(w.type.shape) / p.dim0;
    p.mode = mode[i];
    if (p.mode == UpdateMode::kFull) {
      p.rows = p.dim0;
    } else if (p.mode == UpdateMode::kChannels) {
      p.rows = std::min<int64_t>(
          p.dim0, static_cast<int64_t>(std::ceil(fraction[i] * static_cast<double>(p.dim0))));
      if (p.rows == p.dim0) p.mode = UpdateMode::kFull;
    }
    p.elements = p.rows * per_row;
    out.params.push_back(std::move(p));
  }
  if (out.TrainableNames().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(label, " trains nothing"));
  }
  return out;
}

std::vector<Block> FindBlocks(const models::Model& model) {
  const std::vector<WeightInfo> weights = Weights(model);
  std::map<std::string, const WeightInfo*> by_name;
  for (const WeightInfo& w : weights) by_name[w.name] = &w;
  std::vector<Block> blocks;
  std::vector<int> channel_weights;
  for (size_t l = 0; l < model.layers.size(); ++l) {
    std::optional<std::string> prefix = BlockPrefix(model.layers[l].name);
    int count = 0;
    for (const std::string& w : model.layers[l].weights) count += by_name[w]->channel_weight;
    if (!prefix.has_value()) continue;
    if (!blocks.empty() && blocks.back().prefix == *prefix && blocks.back().end_layer == l) {
      blocks.back().end_layer = l + 1;
      channel_weights.back() += count;
    } else {
      blocks.push_back({*prefix, l, l + 1});
      channel_weights.push_back(count);
    }
  }
  std::vector<Block> out;
  for (size_t b = 0; b < blocks.size(); ++b) {
    if (channel_weights[b] >= 2) out.push_back(blocks[b]);
  }
  return out;
}

absl::StatusOr<UpdateScheme> PresetScheme(const models::Model& model, absl::string_view preset) {
  const auto& layers = model.layers;
  const std::vector<WeightInfo> weights = Weights(model);
  std::map<std::string, const WeightInfo*> info;
  for (const WeightInfo& w : weights) info[w.name] = &w;
  UpdateScheme s;
  s.name = std::string(preset);
  auto layer_full = [&](const models::Layer& l) {
    for (const std::string& w : l.weights) s.rules.push_back(Exact(w, UpdateMode::kFull));
  };
  auto all_biases = [&] {
    for (const WeightInfo& w : weights) {
      if (w.bias) s.rules.push_back(Exact(w.name, UpdateMode::kFull));
    }
  };
  if (preset == "full") {
    for (const auto& l : layers) layer_full(l);
  } else if (preset == "bias-only") {
    all_biases();
  } else if (absl::StartsWith(preset, "last-k:")) {
    int k = 0;
    if (!absl::SimpleAtoi(preset.substr(7), &k) || k <= 0 || k > static_cast<int>(layers.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("scheme '", preset, "': k must be in [1, ", layers.size(), "]"));
    }
    for (size_t i = layers.size() - k; i < layers.size(); ++i) layer_full(layers[i]);
  } else if (absl::StartsWith(preset, "freeze:")) {
    std::set<std::string> frozen;
    for (absl::string_view name : absl::StrSplit(preset.substr(7), ',', absl::SkipEmpty())) {
      const bool known = std::any_of(layers.begin(), layers.end(),
                                     [&](const models::Layer& l) { return l.name == name; });
      if (!known) {
        return absl::InvalidArgumentError(
            absl::StrCat("scheme '", preset, "': the model has no layer '", name, "'"));
      }
      frozen.insert(std::string(name));
    }
    for (const auto& l : layers) {
      if (!frozen.count(l.name)) layer_full(l);
    }
  } else if (preset == "sparse" || preset == "pockengine") {
    if (layers.empty()) return absl::InvalidArgumentError("the model has no layers");
    // Units: blocks, or single layers with a linear/conv weight when the model
    // has fewer than two blocks. Head: see the header.
    std::vector<Block> units = FindBlocks(model);
    std::vector<size_t> head;
    if (units.size() >= 2) {
      for (size_t l = units.back().end_layer; l < layers.size(); ++l) {
        const bool linear =
            std::any_of(layers[l].weights.begin(), layers[l].weights.end(),
                        [&](const std::string& w) { return info[w]->linear_weight; });
        if (linear || l + 1 == layers.size()) head.push_back(l);
      }
    } else {
      units.clear();
      for (size_t l = 0; l + 1 < layers.size(); ++l) {
        const bool channel =
            std::any_of(layers[l].weights.begin(), layers[l].weights.end(),
                        [&](const std::string& w) { return info[w]->channel_weight; });
        if (channel) units.push_back({layers[l].name, l, l + 1});
      }
      head.push_back(layers.size() - 1);
    }
    all_biases();
    auto unit_rules = [&](const Block& u, double f) {
      for (size_t l = u.first_layer; l < u.end_layer; ++l) {
        for (const std::string& w : layers[l].weights) {
          if (f < 1.0 && info[w]->channel_weight) {
            s.rules.push_back(Exact(w, UpdateMode::kChannels, f));
          } else if (f == 1.0 || info[w]->type.shape.size() == 1) {
            s.rules.push_back(Exact(w, UpdateMode::kFull));
          }
        }
      }
    };
    const size_t n = units.size();
    if (preset == "sparse") {
      for (size_t u = n >= 2 ? n - 2 : 0; u < n; ++u) unit_rules(units[u], 1.0);
    } else {
      for (size_t u = n / 2; u < n; ++u) {
        unit_rules(units[u], u + 1 == n ? 1.0 : u + 2 == n ? 0.5 : 0.25);
      }
    }
    for (size_t l : head) layer_full(layers[l]);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown scheme '", preset,
        "' (expected full, bias-only, last-k:N, freeze:LAYER[,LAYER...], sparse or pockengine)"));
  }
  return s;
}

}  // namespace fleettune::engine::scheme
