#include "server/compiler/plan_compiler.h"

#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/base/casts.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/autodiff/autodiff.h"
#include "engine/base/status_macros.h"
#include "engine/compile/compiler.h"
#include "engine/io/safetensors.h"
#include "engine/ir/graph.h"
#include "engine/models/mlp.h"
#include "engine/plan/plan_io.h"
#include "engine/plan/profile_io.h"
#include "engine/plan/scheme_io.h"
#include "engine/runtime/executable.h"
#include "engine/scheme/scheme.h"
#include "engine/search/contribution.h"
#include "engine/search/cost_model.h"
#include "engine/search/select.h"
#include "engine/search/verify.h"
#include "engine/train/trainer.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "proto/fleettune/v1/plan.pb.h"
#include "server/base/sha256.h"
#include "server/compiler/byte_size.h"
#include "server/compiler/device_classes.h"

namespace fleettune::server {
namespace {

using engine::DType;
using engine::Graph;
using engine::Node;
using engine::OpKind;
using engine::Shape;
using engine::TensorType;

// Bump whenever the compiler's output for the same inputs changes (new passes, new metadata),
// so that a cache key computed by an older build never names a newer plan.
// 5: pack_masks; 6: fuse_updates; 7: masks folded into conv2d_backward_input.
constexpr int kCompilerRevision = 7;

// An MLP with more layers than this is not a model anyone fine-tunes on an edge device; the cap
// bounds the work a hostile spec can cause before the budget check.
constexpr int kMaxMlpSizes = 257;
constexpr int64_t kMaxLayerSize = int64_t{1} << 24;

// ---------------------------------------------------------------------------
// Request validation (cheap; runs before the cache lookup so a cached plan is never handed
// out for an invalid request that happens to share its key).

absl::Status ValidateModelSpec(const v1::ModelSpec& model) {
  if (model.architecture().empty()) {
    return absl::InvalidArgumentError("base_model.architecture is empty (supported: mlp)");
  }
  if (model.architecture() != "mlp") {
    return absl::InvalidArgumentError(absl::StrCat("base_model.architecture '",
                                                   absl::CEscape(model.architecture()),
                                                   "' is not supported (supported: mlp)"));
  }
  if (!model.registered_model().empty()) {
    return absl::UnimplementedError(
        "base_model.registered_model is not supported yet; upload safetensors_weights or use a "
        "seeded initialization");
  }
  const int n = model.layer_sizes_size();
  if (n < 2 || n > kMaxMlpSizes) {
    return absl::InvalidArgumentError(absl::StrCat("base_model.layer_sizes has ", n,
                                                   " entries; an mlp needs 2 to ", kMaxMlpSizes,
                                                   " (input, hidden..., classes)"));
  }
  for (int i = 0; i < n; ++i) {
    const int64_t s = model.layer_sizes(i);
    if (s < 1 || s > kMaxLayerSize) {
      return absl::InvalidArgumentError(absl::StrCat("base_model.layer_sizes[", i, "] is ", s,
                                                     ", outside [1, ", kMaxLayerSize, "]"));
    }
  }
  if (static_cast<int64_t>(model.safetensors_weights().size()) > kMaxBaseWeightsBytes) {
    // InvalidArgument rather than ResourceExhausted: the limit is fixed, so retrying the same
    // request cannot succeed.
    return absl::InvalidArgumentError(absl::StrCat(
        "base_model.safetensors_weights is ", FormatBytes(model.safetensors_weights().size()), " (",
        model.safetensors_weights().size(), " bytes), over the ", FormatBytes(kMaxBaseWeightsBytes),
        " limit"));
  }
  return absl::OkStatus();
}

bool FiniteNonNegative(float v) { return std::isfinite(v) && v >= 0.0f; }

absl::Status ValidateHyperParameters(const v1::HyperParameters& h) {
  if (h.optimizer() == v1::OPTIMIZER_KIND_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        "hyper_parameters.optimizer is unset (OPTIMIZER_KIND_SGD or OPTIMIZER_KIND_ADAMW)");
  }
  if (h.optimizer() != v1::OPTIMIZER_KIND_SGD && h.optimizer() != v1::OPTIMIZER_KIND_ADAMW) {
    return absl::InvalidArgumentError(absl::StrCat("hyper_parameters.optimizer ",
                                                   static_cast<int>(h.optimizer()),
                                                   " is not a known OptimizerKind"));
  }
  if (!std::isfinite(h.learning_rate()) || !(h.learning_rate() > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hyper_parameters.learning_rate must be finite and > 0, got ", h.learning_rate()));
  }
  if (h.optimizer() == v1::OPTIMIZER_KIND_SGD) {
    if (!FiniteNonNegative(h.momentum()) || h.momentum() >= 1.0f) {
      return absl::InvalidArgumentError(
          absl::StrCat("hyper_parameters.momentum must be in [0, 1) for SGD, got ", h.momentum()));
    }
  } else if (h.momentum() != 0.0f) {
    // AdamW's moment decay rates are its betas, not a momentum; a non-zero value here is a
    // mistake the operator should hear about rather than have ignored.
    return absl::InvalidArgumentError(absl::StrCat(
        "hyper_parameters.momentum applies to SGD only; got ", h.momentum(), " with AdamW"));
  }
  if (!FiniteNonNegative(h.weight_decay())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hyper_parameters.weight_decay must be finite and >= 0, got ", h.weight_decay()));
  }
  if (h.batch_size() < 1 || h.batch_size() > kMaxBatchSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hyper_parameters.batch_size is ", h.batch_size(), ", outside [1, ", kMaxBatchSize, "]"));
  }
  if (h.epochs() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("hyper_parameters.epochs must be >= 1, got ", h.epochs()));
  }
  if (h.micro_batches() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hyper_parameters.micro_batches must be >= 0, got ", h.micro_batches()));
  }
  if (h.micro_batches() > 1 && h.batch_size() % h.micro_batches() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hyper_parameters.micro_batches (",
                                                   h.micro_batches(), ") must divide batch_size (",
                                                   h.batch_size(), ")"));
  }
  if (h.fit_micro_batches() && h.micro_batches() > 1) {
    return absl::InvalidArgumentError(
        "hyper_parameters: give micro_batches or fit_micro_batches, not both");
  }
  const bool slices = h.fit_micro_batches() || h.micro_batches() > 1;
  if (slices && (h.optimizer() != v1::OPTIMIZER_KIND_SGD || h.momentum() == 0.0f)) {
    // The slices' gradients add up in SGD's momentum buffer; AdamW's second moment needs
    // the whole batch's gradient, and plain SGD has no buffer.
    return absl::InvalidArgumentError(
        "hyper_parameters: micro-batching needs SGD with momentum > 0 (the slices' gradients "
        "add up in its momentum buffer)");
  }
  return absl::OkStatus();
}

absl::Status ValidateScheme(const v1::SchemeSpec& scheme) {
  if (scheme.has_contribution_profile() && scheme.kind_case() != v1::SchemeSpec::kFitClassBudget) {
    return absl::InvalidArgumentError(
        "scheme.contribution_profile applies to scheme.fit_class_budget only");
  }
  switch (scheme.kind_case()) {
    case v1::SchemeSpec::kPreset:
      if (scheme.preset().empty()) {
        return absl::InvalidArgumentError(
            "scheme.preset is empty (full, bias-only, last-k:N, freeze:LAYER[,LAYER...], sparse "
            "or pockengine)");
      }
      return absl::OkStatus();
    case v1::SchemeSpec::kScheme: {
      // Syntax only; the rules are checked against the model in CompileUncached.
      absl::StatusOr<engine::scheme::UpdateScheme> parsed =
          engine::plan::SchemeFromProto(scheme.scheme());
      if (!parsed.ok()) {
        return absl::Status(parsed.status().code(),
                            absl::StrCat("scheme.scheme: ", parsed.status().message()));
      }
      if (parsed->rules.empty()) {
        return absl::InvalidArgumentError("scheme.scheme has no rules, so it trains nothing");
      }
      return absl::OkStatus();
    }
    case v1::SchemeSpec::kFitClassBudget:
      if (!scheme.fit_class_budget()) {
        return absl::InvalidArgumentError(
            "scheme.fit_class_budget is false; set it to true or give scheme.preset");
      }
      if (scheme.has_contribution_profile()) {
        // Syntax and ranges only; its candidates are checked against the model later.
        absl::Status parsed =
            engine::plan::ProfileFromProto(scheme.contribution_profile()).status();
        if (!parsed.ok()) {
          return absl::Status(parsed.code(),
                              absl::StrCat("scheme.contribution_profile: ", parsed.message()));
        }
      }
      return absl::OkStatus();
    case v1::SchemeSpec::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      "scheme is unset: give scheme.preset, scheme.fit_class_budget or scheme.scheme");
}

// PyTorch's defaults for what HyperParameters does not carry (AdamW betas and eps).
engine::autodiff::OptimizerConfig ToOptimizer(const v1::HyperParameters& h) {
  if (h.optimizer() == v1::OPTIMIZER_KIND_ADAMW) {
    engine::AdamWAttrs a;
    a.lr = h.learning_rate();
    a.weight_decay = h.weight_decay();
    return engine::autodiff::OptimizerConfig::AdamW(a);
  }
  engine::SgdAttrs s;
  s.lr = h.learning_rate();
  s.momentum = h.momentum();
  s.weight_decay = h.weight_decay();
  return engine::autodiff::OptimizerConfig::Sgd(s);
}

// ---------------------------------------------------------------------------
// Cache key: every field length-prefixed under a fixed tag, so that no two different requests
// encode to the same bytes. Floats are keyed by their bit patterns.

class KeyBuilder {
 public:
  void Add(absl::string_view tag, absl::string_view value) {
    absl::StrAppend(&text_, tag, "=", value.size(), ":", value, "\n");
  }
  void Add(absl::string_view tag, int64_t value) { Add(tag, absl::StrCat(value)); }
  void AddFloat(absl::string_view tag, float value) {
    Add(tag, absl::StrCat(absl::bit_cast<uint32_t>(value)));
  }
  std::string Digest() const { return Sha256Hex(text_); }

 private:
  std::string text_;
};

std::string CacheKey(const v1::JobSpec& spec, const v1::DeviceClass& device_class,
                     const std::string& weights_digest) {
  KeyBuilder key;
  key.Add("key", "fleettune.plan-cache-key");
  key.Add("compiler_revision", kCompilerRevision);
  key.Add("plan_format_version", engine::plan::kPlanFormatVersion);
  const v1::ModelSpec& model = spec.base_model();
  key.Add("model.architecture", model.architecture());
  key.Add("model.layer_sizes", model.layer_sizes_size());
  for (int64_t s : model.layer_sizes()) key.Add("model.layer_size", s);
  key.Add("model.weights_sha256", weights_digest);
  const v1::HyperParameters& h = spec.hyper_parameters();
  key.Add("hyper.optimizer", h.optimizer());
  key.AddFloat("hyper.learning_rate", h.learning_rate());
  key.AddFloat("hyper.momentum", h.momentum());
  key.AddFloat("hyper.weight_decay", h.weight_decay());
  key.Add("hyper.batch_size", h.batch_size());
  key.Add("hyper.micro_batches", std::max(1, h.micro_batches()));
  key.Add("hyper.fit_micro_batches", h.fit_micro_batches() ? 1 : 0);
  if (spec.scheme().kind_case() == v1::SchemeSpec::kPreset) {
    key.Add("scheme.preset", spec.scheme().preset());
  } else if (spec.scheme().kind_case() == v1::SchemeSpec::kScheme) {
    const v1::UpdateScheme& s = spec.scheme().scheme();
    key.Add("scheme.scheme.name", s.name());
    key.Add("scheme.scheme.rules", s.rules_size());
    for (const v1::UpdateRule& r : s.rules()) {
      key.Add("scheme.rule.pattern", r.pattern());
      key.Add("scheme.rule.mode", r.mode());
      key.Add("scheme.rule.channel_fraction",
              absl::StrCat(absl::bit_cast<uint64_t>(r.channel_fraction())));
    }
  } else {
    key.Add("scheme.fit_class_budget", 1);
    if (spec.scheme().has_contribution_profile()) {
      // Deterministic serialization: equal profiles give equal bytes.
      std::string bytes;
      {
        google::protobuf::io::StringOutputStream stream(&bytes);
        google::protobuf::io::CodedOutputStream coded(&stream);
        coded.SetSerializationDeterministic(true);
        spec.scheme().contribution_profile().SerializeToCodedStream(&coded);
      }
      key.Add("scheme.contribution_profile_sha256", Sha256Hex(bytes));
    }
  }
  key.AddFloat("class.training_flops_per_second",
               static_cast<float>(device_class.training_flops_per_second()));
  key.Add("class.name", device_class.name());
  key.Add("class.arch", device_class.arch());
  key.Add("class.required_isa", device_class.required_isa_size());
  for (const std::string& isa : device_class.required_isa()) key.Add("class.isa", isa);
  key.Add("class.accelerator", device_class.accelerator());
  key.Add("class.threads", device_class.threads());
  key.Add("class.training_memory_budget_bytes", device_class.training_memory_budget_bytes());
  return key.Digest();
}

// ---------------------------------------------------------------------------
// Base weights: exactly the tensors the model binds, with its shapes, f32 and finite.

absl::Status CheckWeights(absl::string_view bytes, const engine::models::Model& model) {
  constexpr absl::string_view kField = "base_model.safetensors_weights";
  absl::StatusOr<std::map<std::string, engine::Tensor>> parsed =
      engine::io::ParseSafetensors(bytes);
  if (!parsed.ok()) {
    // DataLoss (truncation) included: to the caller it is a malformed request.
    return absl::InvalidArgumentError(absl::StrCat(kField, ": ", parsed.status().message()));
  }
  std::set<std::string> expected;
  for (const engine::models::Layer& layer : model.layers) {
    for (const std::string& name : layer.weights) {
      expected.insert(name);
      const std::optional<engine::ValueId> id = model.graph.FindByName(name);
      if (!id.has_value()) {
        return absl::InternalError(absl::StrCat("model has no parameter '", name, "'"));
      }
      const TensorType& want = model.graph.type(*id);
      auto it = parsed->find(name);
      if (it == parsed->end()) {
        return absl::InvalidArgumentError(absl::StrCat(kField, ": tensor '", name,
                                                       "' is missing (expected ",
                                                       engine::TypeToString(want), ")"));
      }
      const engine::Tensor& t = it->second;
      if (t.type() != want) {
        return absl::InvalidArgumentError(absl::StrCat(kField, ": tensor '", name, "' is ",
                                                       engine::TypeToString(t.type()),
                                                       ", expected ", engine::TypeToString(want)));
      }
      const float* v = t.f32();
      for (int64_t i = 0; i < t.num_elements(); ++i) {
        if (!std::isfinite(v[i])) {
          return absl::InvalidArgumentError(
              absl::StrCat(kField, ": tensor '", name, "' element ", i, " is ", v[i]));
        }
      }
    }
  }
  for (const auto& [name, tensor] : *parsed) {
    if (!expected.count(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(kField, ": unexpected tensor '", absl::CEscape(name),
                       "' (the model's tensors are ", absl::StrJoin(expected, ", "), ")"));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// One candidate plan and its memory.

struct Candidate {
  std::string scheme;
  engine::scheme::ResolvedScheme resolved;
  engine::compile::CompiledTraining compiled;  // the plan, its graph and metadata
  uint64_t arena_bytes = 0;
  uint64_t workspace_bytes = 0;  // kernel scratch + folded constants
  uint64_t staging_bytes = 0;    // a micro-batched plan's whole-batch inputs
  uint64_t weight_bytes = 0;
  uint64_t optimizer_state_bytes = 0;
  uint64_t total_bytes() const {
    return arena_bytes + workspace_bytes + staging_bytes + weight_bytes + optimizer_state_bytes;
  }
};

// The compiled plan of `resolved` for `device_class` (engine/compile, the same
// compiler as `fleettune compile`) and the memory it needs; with
// micro_batches > 1, `model` is built for one slice of the batch.
absl::StatusOr<Candidate> BuildCandidate(const engine::models::Model& model,
                                         const std::string& model_name,
                                         engine::scheme::ResolvedScheme resolved,
                                         const engine::autodiff::OptimizerConfig& optimizer,
                                         const v1::DeviceClass& device_class,
                                         int micro_batches = 1) {
  Candidate c;
  c.scheme = resolved.name;
  engine::compile::CompileOptions options;
  options.micro_batches = micro_batches;
  options.model_name = model_name;
  options.scheme = resolved;
  options.optimizer = optimizer;
  options.device_class = device_class.name();
  options.threads = std::max(1, device_class.threads());
  options.kernel_isa = KernelIsaFor(device_class);
  c.resolved = std::move(resolved);
  ASSIGN_OR_RETURN(c.compiled, engine::compile::CompileTraining(model, options));
  const v1::PlanMetadata& meta = c.compiled.plan.metadata();
  c.arena_bytes = meta.arena_bytes();
  c.workspace_bytes = meta.scratch_bytes() + meta.constant_bytes();
  c.staging_bytes = meta.staging_bytes();
  c.weight_bytes = meta.weight_bytes();
  c.optimizer_state_bytes = meta.optimizer_state_bytes();
  return c;
}

// The slices of the batch that candidates are compiled in: a count, or the
// fewest that fit the class's budget. A micro-batched plan's graph is one
// slice's, so its model is built for batch / slices.
struct Slicing {
  int micro_batches = 1;
  bool fit = false;
  engine::models::MlpConfig config;  // the whole batch's

  static Slicing Of(const v1::HyperParameters& h, const engine::models::MlpConfig& config) {
    return {std::max(1, h.micro_batches()), h.fit_micro_batches(), config};
  }

  bool WholeBatch() const { return micro_batches == 1 && !fit; }

  absl::StatusOr<engine::models::Model> SliceModel(int slices) const {
    engine::models::MlpConfig slice = config;
    slice.batch = config.batch / slices;
    return engine::models::BuildMlp(slice);
  }
};

// `resolved` compiled for `device_class` in the slices `slicing` asks for:
// under fit, the whole batch if it fits the class's budget, else the fewest
// slices (divisors of the batch, ascending) that fit, else the plan needing
// the least memory, for the caller to report over budget.
absl::StatusOr<Candidate> BuildCandidate(const engine::models::Model& model,
                                         const std::string& model_name,
                                         engine::scheme::ResolvedScheme resolved,
                                         const engine::autodiff::OptimizerConfig& optimizer,
                                         const v1::DeviceClass& device_class,
                                         const Slicing& slicing) {
  if (!slicing.fit) {
    if (slicing.WholeBatch()) {
      return BuildCandidate(model, model_name, std::move(resolved), optimizer, device_class);
    }
    ASSIGN_OR_RETURN(engine::models::Model slice, slicing.SliceModel(slicing.micro_batches));
    return BuildCandidate(slice, model_name, std::move(resolved), optimizer, device_class,
                          slicing.micro_batches);
  }
  const uint64_t budget = static_cast<uint64_t>(device_class.training_memory_budget_bytes());
  const int batch = static_cast<int>(slicing.config.batch);
  // A batch of 55440 has 120 divisors; each count tried is a compilation, so
  // a spec gets its 12 smallest (the saving shrinks as the slices do).
  constexpr int kMaxCounts = 12;
  std::optional<Candidate> smallest;
  for (int k = 1, tried = 0; k <= batch && tried < kMaxCounts; ++k) {
    if (batch % k != 0) continue;
    ++tried;
    std::optional<engine::models::Model> slice;
    if (k > 1) {
      ASSIGN_OR_RETURN(slice, slicing.SliceModel(k));
    }
    ASSIGN_OR_RETURN(Candidate c, BuildCandidate(k > 1 ? *slice : model, model_name, resolved,
                                                 optimizer, device_class, k));
    if (c.total_bytes() <= budget) return c;
    if (!smallest.has_value() || c.total_bytes() < smallest->total_bytes()) {
      smallest = std::move(c);
    }
  }
  return *std::move(smallest);
}

absl::StatusOr<Candidate> BuildCandidate(const engine::models::Model& model,
                                         const std::string& model_name, const std::string& preset,
                                         const engine::autodiff::OptimizerConfig& optimizer,
                                         const v1::DeviceClass& device_class,
                                         const Slicing& slicing = {}) {
  ASSIGN_OR_RETURN(engine::scheme::ResolvedScheme resolved,
                   engine::train::ResolvePreset(model, preset));
  return BuildCandidate(model, model_name, std::move(resolved), optimizer, device_class, slicing);
}

std::string Bytes(uint64_t bytes) {
  return absl::StrCat(FormatBytes(bytes), " (", bytes, " bytes)");
}

std::string Breakdown(const Candidate& c) {
  return absl::StrCat(
      "arena ", FormatBytes(c.arena_bytes),
      c.workspace_bytes > 0 ? absl::StrCat(" + kernel workspace ", FormatBytes(c.workspace_bytes))
                            : "",
      c.staging_bytes > 0 ? absl::StrCat(" + staged batch ", FormatBytes(c.staging_bytes)) : "",
      " + weights ", FormatBytes(c.weight_bytes), " + optimizer state ",
      FormatBytes(c.optimizer_state_bytes));
}

// Floating-point operations of the GEMMs (matmul and linear nodes, forward and backward):
// 2·M·N·K each. Elementwise ops, reductions and the optimizer are O(size) and left out.
std::string ModelName(const v1::ModelSpec& model) {
  return absl::StrCat(model.architecture(), "-", absl::StrJoin(model.layer_sizes(), "-"));
}

absl::StatusOr<std::string> SerializeDeterministic(const v1::CompiledPlan& plan) {
  const size_t size = plan.ByteSizeLong();
  if (size > static_cast<size_t>(engine::plan::kMaxPlanBytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the compiled plan would be ", Bytes(size), ", over the ",
                     FormatBytes(engine::plan::kMaxPlanBytes), " devices accept"));
  }
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    if (!plan.SerializeToCodedStream(&coded) || coded.HadError()) {
      return absl::InternalError("serializing the compiled plan failed");
    }
  }
  return bytes;
}

// fit_class_budget with a contribution profile: the scheme search (engine/search) picks the
// candidate set with the largest summed gain within the class's budget, replaced by a jointly
// measured set that fits when that one measured better beyond noise, costing each set with
// the same compiler that builds the plan.
absl::StatusOr<Candidate> SearchCandidate(const engine::models::Model& model,
                                          const std::string& model_name,
                                          const v1::SchemeSpec& scheme,
                                          const engine::autodiff::OptimizerConfig& optimizer,
                                          const v1::DeviceClass& device_class) {
  ASSIGN_OR_RETURN(engine::search::ContributionProfile profile,
                   engine::plan::ProfileFromProto(scheme.contribution_profile()));
  ASSIGN_OR_RETURN(std::vector<engine::search::ScoredCandidate> scored,
                   engine::search::ScoreCandidates(model, profile));
  engine::search::DeviceClass device;
  device.name = device_class.name();
  device.threads = std::max(1, device_class.threads());
  // Only memory is budgeted here; the throughput only labels predicted step times.
  device.flops_per_second =
      device_class.training_flops_per_second() > 0 ? device_class.training_flops_per_second() : 1e9;
  engine::search::CostModel costs(model, device, optimizer);
  const engine::search::Budget budget{device_class.training_memory_budget_bytes(), 0.0};
  absl::StatusOr<engine::search::Selection> selection =
      engine::search::SelectScheme(model, scored, costs, budget);
  // Sets the operator's search fine-tuned jointly are measurements, not sums of
  // gains: one that beat this selection by more than noise replaces it.
  if (selection.ok() && !profile.joint.empty()) {
    std::vector<engine::search::Candidate> incumbent;
    for (const auto& c : selection->chosen) incumbent.push_back(c.candidate);
    absl::StatusOr<engine::search::Selection> verified =
        engine::search::SelectVerified(model, profile, costs, budget, incumbent);
    if (verified.ok() || !absl::IsNotFound(verified.status())) selection = std::move(verified);
  }
  if (!selection.ok()) {
    const absl::StatusCode code = selection.status().code() == absl::StatusCode::kResourceExhausted
                                      ? absl::StatusCode::kFailedPrecondition
                                      : selection.status().code();
    return absl::Status(code,
                        absl::StrCat("no searched scheme for class ", device_class.name(), "'s ",
                                     Bytes(device_class.training_memory_budget_bytes()),
                                     " budget: ", selection.status().message()));
  }
  ASSIGN_OR_RETURN(engine::scheme::ResolvedScheme resolved,
                   engine::scheme::ResolveScheme(model, selection->scheme));
  return BuildCandidate(model, model_name, std::move(resolved), optimizer, device_class);
}

absl::StatusOr<CompiledClassPlan> CompileUncached(const v1::JobSpec& spec,
                                                  const v1::DeviceClass& device_class) {
  const v1::ModelSpec& model_spec = spec.base_model();
  engine::models::MlpConfig config;
  config.sizes.assign(model_spec.layer_sizes().begin(), model_spec.layer_sizes().end());
  config.batch = spec.hyper_parameters().batch_size();
  ASSIGN_OR_RETURN(engine::models::Model model, engine::models::BuildMlp(config));
  if (!model_spec.safetensors_weights().empty()) {
    RETURN_IF_ERROR(CheckWeights(model_spec.safetensors_weights(), model));
  }
  const engine::autodiff::OptimizerConfig optimizer = ToOptimizer(spec.hyper_parameters());
  const std::string model_name = ModelName(model_spec);
  const uint64_t budget = static_cast<uint64_t>(device_class.training_memory_budget_bytes());

  // The dense plan comes first in every case: it is the baseline the summary reports, and the
  // first choice of fit_class_budget.
  // It is the whole batch's: the memory saving figure counts what slicing saves too.
  ASSIGN_OR_RETURN(Candidate dense,
                   BuildCandidate(model, model_name, "full", optimizer, device_class));
  const uint64_t dense_total = dense.total_bytes();
  const Slicing slicing = Slicing::Of(spec.hyper_parameters(), config);
  std::optional<Candidate> chosen;
  if (spec.scheme().kind_case() == v1::SchemeSpec::kPreset) {
    const std::string& preset = spec.scheme().preset();
    if (preset == "full" && slicing.WholeBatch()) {
      chosen = std::move(dense);
    } else {
      absl::StatusOr<Candidate> c =
          BuildCandidate(model, model_name, preset, optimizer, device_class, slicing);
      if (!c.ok()) {
        return absl::Status(c.status().code(),
                            absl::StrCat("scheme.preset: ", c.status().message()));
      }
      chosen = *std::move(c);
    }
  } else if (spec.scheme().kind_case() == v1::SchemeSpec::kScheme) {
    // An explicit scheme: validated against the model here (unknown tensors, CHANNELS on a
    // bias, ...); its name labels the plan.
    absl::StatusOr<Candidate> c = [&]() -> absl::StatusOr<Candidate> {
      ASSIGN_OR_RETURN(engine::scheme::UpdateScheme s,
                       engine::plan::SchemeFromProto(spec.scheme().scheme()));
      if (s.name.empty()) s.name = "custom";
      ASSIGN_OR_RETURN(engine::scheme::ResolvedScheme r, engine::scheme::ResolveScheme(model, s));
      return BuildCandidate(model, model_name, std::move(r), optimizer, device_class, slicing);
    }();
    if (!c.ok()) {
      return absl::Status(c.status().code(), absl::StrCat("scheme.scheme: ", c.status().message()));
    }
    chosen = *std::move(c);
  }
  if (chosen.has_value()) {
    if (chosen->total_bytes() > budget) {
      return absl::FailedPreconditionError(absl::StrCat(
          "scheme '", chosen->scheme, "' needs ", Bytes(chosen->total_bytes()), " on class ",
          device_class.name(), ", ", Bytes(chosen->total_bytes() - budget), " over its ",
          Bytes(budget), " budget (", Breakdown(*chosen), ")",
          chosen->compiled.plan.metadata().micro_batches() > 1
              ? absl::StrCat(" in ", chosen->compiled.plan.metadata().micro_batches(),
                             " micro-batches")
              : "",
          "; choose a sparser scheme, scheme.fit_class_budget or, with SGD and momentum, "
          "hyper_parameters.fit_micro_batches"));
    }
  } else if (spec.scheme().has_contribution_profile()) {
    absl::StatusOr<Candidate> c =
        SearchCandidate(model, model_name, spec.scheme(), optimizer, device_class);
    if (!c.ok()) {
      return absl::Status(c.status().code(),
                          absl::StrCat("scheme.contribution_profile: ", c.status().message()));
    }
    chosen = *std::move(c);
    if (slicing.micro_batches > 1) {
      // Slices only shrink the plan the search fitted on the whole batch.
      ASSIGN_OR_RETURN(chosen, BuildCandidate(model, model_name, chosen->resolved, optimizer,
                                              device_class, slicing));
    }
    if (chosen->total_bytes() > budget) {
      // The search costs every set with this compiler, so this is a bug, not bad input.
      return absl::InternalError(
          absl::StrCat("the searched scheme needs ", Bytes(chosen->total_bytes()), " on class ",
                       device_class.name(), ", over its ", Bytes(budget), " budget"));
    }
  } else {
    std::vector<std::string> order = {"full"};
    for (size_t k = model.layers.size() - 1; k >= 1; --k) {
      order.push_back(absl::StrCat("last-k:", k));
    }
    order.push_back("bias-only");
    std::optional<Candidate> smallest;
    for (const std::string& scheme : order) {
      Candidate c;
      if (scheme == "full" && slicing.WholeBatch()) {
        c = std::move(dense);
      } else {
        ASSIGN_OR_RETURN(
            c, BuildCandidate(model, model_name, scheme, optimizer, device_class, slicing));
      }
      if (c.total_bytes() <= budget) {
        chosen = std::move(c);
        break;
      }
      if (!smallest.has_value() || c.total_bytes() < smallest->total_bytes()) {
        smallest = std::move(c);
      }
    }
    if (!chosen.has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no update scheme fits class ", device_class.name(), "'s ", Bytes(budget),
          " budget: the smallest, '", smallest->scheme, "', needs ", Bytes(smallest->total_bytes()),
          " (", Breakdown(*smallest), ") with ", absl::StrJoin(order, ", "), " tried"));
    }
  }

  const v1::CompiledPlan& plan = chosen->compiled.plan;
  // Partial-channel tensors count only their trained rows.
  const int64_t trainable_elements = chosen->resolved.TrainableElements();

  CompiledClassPlan out;
  ASSIGN_OR_RETURN(out.plan_bytes, SerializeDeterministic(plan));
  v1::PlanSummary& s = out.summary;
  s.set_plan_digest(Sha256Hex(out.plan_bytes));
  s.set_scheme(chosen->scheme);
  s.set_trainable_parameters(trainable_elements);
  s.set_arena_bytes(chosen->arena_bytes);
  s.set_weight_bytes(chosen->weight_bytes);
  s.set_optimizer_state_bytes(chosen->optimizer_state_bytes);
  s.set_total_bytes(chosen->total_bytes());
  s.set_budget_bytes(budget);
  s.set_dense_total_bytes(dense_total);
  s.set_micro_batches(std::max(1, plan.metadata().micro_batches()));
  return out;
}

}  // namespace

absl::StatusOr<CompiledClassPlan> PlanCompiler::Compile(const v1::JobSpec& spec,
                                                        const v1::DeviceClass& device_class) {
  RETURN_IF_ERROR(ValidateModelSpec(spec.base_model()));
  RETURN_IF_ERROR(ValidateHyperParameters(spec.hyper_parameters()));
  RETURN_IF_ERROR(ValidateScheme(spec.scheme()));
  if (spec.hyper_parameters().fit_micro_batches() && spec.scheme().has_contribution_profile()) {
    return absl::InvalidArgumentError(
        "hyper_parameters.fit_micro_batches does not apply to scheme.contribution_profile, "
        "whose search fits whole-batch plans; give hyper_parameters.micro_batches instead");
  }
  RETURN_IF_ERROR(ValidateDeviceClass(device_class));
  const std::string& weights = spec.base_model().safetensors_weights();
  const std::string key =
      CacheKey(spec, device_class, weights.empty() ? std::string() : Sha256Hex(weights));

  std::shared_ptr<Entry> entry;
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      // Cached, or being compiled by another thread: wait for that result.
      std::shared_ptr<Entry> found = it->second;
      mu_.Await(absl::Condition(&found->done));
      return found->result;
    }
    entry = std::make_shared<Entry>();
    cache_.emplace(key, entry);
    ++compilations_;
  }

  absl::StatusOr<CompiledClassPlan> result = CompileUncached(spec, device_class);

  absl::MutexLock lock(&mu_);
  entry->result = result;
  entry->done = true;
  if (!result.ok() || options_.max_cached_plans == 0) {
    cache_.erase(key);
  } else {
    order_.push_back(key);
    while (order_.size() > options_.max_cached_plans) {
      cache_.erase(order_.front());
      order_.pop_front();
    }
  }
  return result;
}

int PlanCompiler::compilations() const {
  absl::MutexLock lock(&mu_);
  return compilations_;
}

}  // namespace fleettune::server
