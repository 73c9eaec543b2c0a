#include "engine/compile/compiler.h"

#include <algorithm>
#include <map>
#include <optional>
#include <utility>
#include <variant>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/base/status_macros.h"
#include "engine/compile/activation_cache.h"
#include "engine/compile/cost.h"
#include "engine/ir/verifier.h"
#include "engine/kernels/isa.h"
#include "engine/ops/op_registry.h"
#include "engine/plan/plan_io.h"
#include "engine/runtime/executable.h"
#include "engine/train/trainer.h"

namespace fleettune::engine::compile {
namespace {

// Optimizer updates (not BatchNorm statistics updates).
bool IsUpdate(OpKind op) { return IsUpdateOp(op) && op != OpKind::kBatchNormStatsUpdate; }

uint64_t Bytes(const TensorType& type) {
  return static_cast<uint64_t>(type.num_elements()) * DTypeSize(type.dtype);
}

std::string Mib(uint64_t bytes) {
  return absl::StrFormat("%.2f MiB (%d bytes)", bytes / 1048576.0, bytes);
}

}  // namespace

absl::StatusOr<CompiledTraining> CompileTraining(const models::Model& model,
                                                 const CompileOptions& options) {
  if (absl::Status isa = kernels::ParseIsa(options.kernel_isa).status(); !isa.ok()) return isa;
  if (options.threads < 1) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be >= 1, got ", options.threads));
  }
  if (options.micro_batches < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("micro_batches must be >= 1, got ", options.micro_batches));
  }
  if (options.scheme.TrainableElements() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheme '", options.scheme.name, "' trains nothing"));
  }
  CompiledTraining out;
  Graph& graph = out.graph;
  ASSIGN_OR_RETURN(graph,
                   train::BuildSchemeTrainingGraph(model, options.scheme, options.optimizer));
  if (options.micro_batches > 1 && model.logits != model.loss) graph.UnmarkOutput(model.logits);
  RETURN_IF_ERROR(VerifyGraph(graph));
  // Phases of the derived graph, before passes reorder it.
  const int forward_nodes = model.graph.num_nodes();
  const int derived_nodes = graph.num_nodes();
  // The activation cache is judged on the derived graph: its ops are the
  // primitive, per-example ones the cut understands.
  std::optional<PrefixCut> cut;
  if (model.input != kNoValue) {
    std::vector<ValueId> shared;
    for (const std::string& name : model.shared_inputs) {
      const std::optional<ValueId> v = graph.FindByName(name);
      if (!v.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("shared input '", name, "' not in the graph"));
      }
      shared.push_back(*v);
    }
    ASSIGN_OR_RETURN(cut, CutFrozenPrefix(graph, model.input, shared));
  }
  ASSIGN_OR_RETURN(passes::PassReport report, passes::RunPasses(graph, options.passes));
  out.loss = report.Map(model.loss);
  if (options.micro_batches == 1) out.logits = report.Map(model.logits);

  v1::PlanMetadata& meta = *out.plan.mutable_metadata();
  meta.set_model_name(options.model_name);
  meta.set_scheme(options.scheme.name);
  meta.set_device_class(options.device_class);
  meta.set_threads(options.threads);
  meta.set_kernel_isa(options.kernel_isa);
  meta.set_trainable_elements(options.scheme.TrainableElements());
  for (const std::string& name : options.scheme.TrainableNames()) {
    meta.add_trainable_parameters(name);  // in layer order
  }
  uint64_t gradient_bytes = 0, fused_gradient_bytes = 0;
  for (const Node& node : graph.nodes()) {
    if (node.op == OpKind::kSgdUpdate || node.op == OpKind::kAdamWUpdate) {
      gradient_bytes += Bytes(graph.type(node.inputs[1]));  // (parameter, gradient, state...)
    } else if (node.op == OpKind::kSgdMatMulUpdate) {
      // The gradient is never stored: as many bytes as the trained rows.
      const int64_t rows = std::get<FusedSgdAttrs>(node.attrs).sgd.rows;
      TensorType trained = graph.type(node.inputs[0]);
      if (rows > 0) trained.shape[0] = rows;
      fused_gradient_bytes += Bytes(trained);
    }
  }
  meta.set_gradient_bytes(gradient_bytes);
  meta.set_fused_gradient_bytes(fused_gradient_bytes);
  int update_nodes = 0;
  std::map<std::pair<std::string, std::string>, int> kernels;
  for (const Node& node : graph.nodes()) {
    if (IsUpdate(node.op)) ++update_nodes;
    if (node.op == OpKind::kInput || node.op == OpKind::kParameter || node.op == OpKind::kReshape) {
      continue;
    }
    const ops::OpDef& def = ops::GetOpDef(node.op);
    ++kernels[{def.name, def.fast != nullptr ? "fast" : "reference"}];
  }
  meta.set_fold_constants(options.passes.fold_constants);
  meta.set_in_place(options.passes.in_place);
  meta.set_micro_batches(options.micro_batches);
  for (const std::string& name : model.shared_inputs) meta.add_shared_inputs(name);
  ASSIGN_OR_RETURN(runtime::MemoryStats memory,
                   runtime::EstimateMemory(graph, RuntimeOptionsFor(meta)));
  meta.set_arena_bytes(memory.arena_bytes);
  meta.set_scratch_bytes(memory.scratch_bytes);
  meta.set_constant_bytes(memory.constant_bytes);
  meta.set_staging_bytes(memory.staging_bytes);
  meta.set_weight_bytes(memory.weight_bytes);
  meta.set_optimizer_state_bytes(memory.optimizer_state_bytes);
  meta.set_flops_per_step(StepFlops(graph) * options.micro_batches);  // the graph is one slice
  meta.set_forward_nodes(forward_nodes);
  meta.set_update_nodes(update_nodes);
  meta.set_backward_nodes(derived_nodes - forward_nodes - update_nodes);
  for (const passes::PassStats& p : report.passes) {
    v1::PassResult* r = meta.add_passes();
    r->set_name(p.name);
    r->set_enabled(p.enabled);
    r->set_nodes_before(p.nodes_before);
    r->set_nodes_after(p.nodes_after);
    r->set_rewrites(p.rewrites);
    r->set_arena_bytes_before(p.arena_bytes_before);
    r->set_arena_bytes_after(p.arena_bytes_after);
  }
  for (const auto& [key, nodes] : kernels) {
    v1::KernelUse* k = meta.add_kernels();
    k->set_op(key.first);
    k->set_kernel(key.second);
    k->set_nodes(nodes);
  }

  if (cut.has_value()) {
    meta.set_activation_cache_bytes_per_example(cut->bytes_per_example);
    meta.set_activation_cache_flops_saved(cut->prefix_flops * options.micro_batches);
    meta.set_activation_cache_nodes(cut->prefix_nodes);
  }

  out.plan.set_format_version(plan::kPlanFormatVersion);
  ASSIGN_OR_RETURN(*out.plan.mutable_graph(), plan::GraphToProto(graph));
  return out;
}

uint64_t TrainingBytes(const v1::PlanMetadata& m) {
  return m.arena_bytes() + m.scratch_bytes() + m.constant_bytes() + m.staging_bytes() +
         m.weight_bytes() + m.optimizer_state_bytes();
}

runtime::CompileOptions RuntimeOptionsFor(const v1::PlanMetadata& metadata) {
  runtime::CompileOptions options;
  options.threads = std::max(1, metadata.threads());
  options.fold_constants = metadata.fold_constants();
  options.in_place = metadata.in_place();
  options.kernel_isa = metadata.kernel_isa();
  options.micro_batches = std::max(1, metadata.micro_batches());
  options.shared_inputs.assign(metadata.shared_inputs().begin(), metadata.shared_inputs().end());
  return options;
}

std::string FormatPlanSummary(const v1::PlanMetadata& m) {
  std::string s;
  absl::StrAppendFormat(&s, "model            %s\n", m.model_name());
  absl::StrAppendFormat(&s, "scheme           %s (%d tensors, %d elements trained)\n", m.scheme(),
                        m.trainable_parameters_size(), m.trainable_elements());
  absl::StrAppendFormat(&s, "device class     %s (%d threads, %s kernels)\n", m.device_class(),
                        m.threads(),
                        m.kernel_isa().empty() ? "the device's widest" : m.kernel_isa());
  absl::StrAppendFormat(&s, "FLOPs per step   %.3f GFLOP\n", m.flops_per_step() / 1e9);
  if (m.micro_batches() > 1) {
    absl::StrAppendFormat(&s, "micro-batches    %d a step (the arena holds one slice)\n",
                          m.micro_batches());
  }
  absl::StrAppendFormat(&s, "nodes            %d forward, %d backward, %d updates\n",
                        m.forward_nodes(), m.backward_nodes(), m.update_nodes());
  absl::StrAppendFormat(&s, "arena            %s\n", Mib(m.arena_bytes()));
  absl::StrAppendFormat(&s, "  of it gradients %s", Mib(m.gradient_bytes()));
  if (m.fused_gradient_bytes() > 0) {
    absl::StrAppendFormat(&s, " (%s more accumulated into optimizer state, never stored)",
                          Mib(m.fused_gradient_bytes()));
  }
  s += "\n";
  absl::StrAppendFormat(&s, "kernel scratch   %s\n", Mib(m.scratch_bytes()));
  if (m.fold_constants()) {
    absl::StrAppendFormat(&s, "folded constants %s\n", Mib(m.constant_bytes()));
  }
  if (m.micro_batches() > 1) {
    absl::StrAppendFormat(&s, "staged batch     %s\n", Mib(m.staging_bytes()));
  }
  absl::StrAppendFormat(&s, "weights          %s\n", Mib(m.weight_bytes()));
  absl::StrAppendFormat(&s, "optimizer state  %s\n", Mib(m.optimizer_state_bytes()));
  absl::StrAppendFormat(
      &s,
      "training memory  %s (arena + scratch + constants + staging + weights + optimizer state)\n",
      Mib(TrainingBytes(m)));
  if (m.activation_cache_nodes() > 0) {
    absl::StrAppendFormat(
        &s, "activation cache %.1f KiB per example; skips %d nodes, %.3f GFLOP (%.0f%%) per step\n",
        m.activation_cache_bytes_per_example() / 1024.0, m.activation_cache_nodes(),
        m.activation_cache_flops_saved() / 1e9,
        100.0 * m.activation_cache_flops_saved() / std::max<uint64_t>(1, m.flops_per_step()));
  } else {
    s += "activation cache none (a layer on the input trains)\n";
  }
  s += "passes           ";
  bool first = true;
  for (const v1::PassResult& p : m.passes()) {
    if (!p.enabled()) continue;
    absl::StrAppendFormat(&s, "%s%s %d", first ? "" : ", ", p.name(), p.rewrites());
    first = false;
  }
  s += first ? "none\n" : " (rewrites each)\n";
  // Kernels, wrapped at 100 columns under their heading.
  std::string line = "kernels         ";
  for (const v1::KernelUse& k : m.kernels()) {
    const std::string item = absl::StrFormat(" %s/%s×%d", k.op(), k.kernel(), k.nodes());
    if (line.size() + item.size() > 100) {
      absl::StrAppend(&s, line, "\n");
      line = std::string(16, ' ');
    }
    line += item;
  }
  absl::StrAppend(&s, line, "\n");
  return s;
}

}  // namespace fleettune::engine::compile
