#include "engine/runtime/executable.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/base/status_macros.h"
#include "engine/ir/verifier.h"
#include "engine/kernels/gemm.h"

namespace fleettune::engine::runtime {

Tensor* ParameterStore::Find(const std::string& name) {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const Tensor* ParameterStore::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::Status ParameterStore::Set(const std::string& name, const Tensor& tensor) {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    tensors_.emplace(name, tensor);
    return absl::OkStatus();
  }
  if (it->second.type() != tensor.type()) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter '", name, "' is ", TypeToString(it->second.type()),
                     ", cannot assign ", TypeToString(tensor.type())));
  }
  std::memcpy(it->second.raw(), tensor.raw(), tensor.bytes());
  return absl::OkStatus();
}

size_t ParameterStore::bytes() const {
  size_t total = 0;
  for (const auto& [name, t] : tensors_) total += t.bytes();
  return total;
}

absl::StatusOr<ArenaLayout> PlanArena(const Graph& graph) {
  const int n = graph.num_nodes();
  ArenaLayout layout;
  layout.alias_of.resize(n);
  std::vector<int> last_use(n, -1);
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    layout.alias_of[id] = id;
    // A reshape of an arena value shares its buffer.
    if (node.op == OpKind::kReshape && graph.node(node.inputs[0]).op != OpKind::kParameter) {
      layout.alias_of[id] = layout.alias_of[node.inputs[0]];
    }
    last_use[id] = id;
    for (ValueId in : node.inputs) {
      last_use[layout.alias_of[in]] = std::max(last_use[layout.alias_of[in]], id);
    }
  }
  for (ValueId out : graph.outputs()) last_use[layout.alias_of[out]] = n;
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (!node.has_output || node.op == OpKind::kParameter || layout.alias_of[id] != id) continue;
    memory::BufferRequest req;
    req.bytes = node.type.bytes();
    // Inputs are written by the caller before the step starts.
    req.first_use = node.op == OpKind::kInput ? -1 : id;
    req.last_use = node.op == OpKind::kInput ? std::max(last_use[id], n) : last_use[id];
    layout.values.push_back(id);
    layout.requests.push_back(req);
  }
  ASSIGN_OR_RETURN(layout.plan, memory::PlanMemory(layout.requests));
  RETURN_IF_ERROR(memory::CheckPlan(layout.requests, layout.plan));
  return layout;
}

absl::StatusOr<std::unique_ptr<Executable>> Executable::Compile(const Graph& graph,
                                                                ParameterStore* params,
                                                                const CompileOptions& options) {
  RETURN_IF_ERROR(VerifyGraph(graph));
  std::unique_ptr<Executable> exe(new Executable());
  exe->graph_ = graph;
  const Graph& g = exe->graph_;
  const int n = g.num_nodes();
  ASSIGN_OR_RETURN(ArenaLayout layout, PlanArena(g));

  // Bind parameters.
  exe->views_.resize(n);
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = g.node(id);
    if (node.op != OpKind::kParameter) continue;
    // Weights and buffers (BatchNorm statistics) are model state the caller
    // provides; optimizer state starts at zero.
    const ParamRole role = std::get<ParameterAttrs>(node.attrs).role;
    const bool weight = role != ParamRole::kOptimizerState;
    Tensor* t = params->Find(node.name);
    if (t == nullptr) {
      if (weight) {
        return absl::InvalidArgumentError(
            absl::StrCat(role == ParamRole::kBuffer ? "buffer '" : "weight '", node.name, "' (",
                         TypeToString(node.type), ") is not in the parameter store"));
      }
      RETURN_IF_ERROR(params->Set(node.name, Tensor(node.type.dtype, node.type.shape)));
      t = params->Find(node.name);
    }
    if (t->type() != node.type) {
      return absl::InvalidArgumentError(absl::StrCat("parameter '", node.name, "' is ",
                                                     TypeToString(t->type()), " in the store but ",
                                                     TypeToString(node.type), " in the graph"));
    }
    exe->views_[id] = t->view();
    (weight ? exe->memory_.weight_bytes : exe->memory_.optimizer_state_bytes) += t->bytes();
  }

  // Arena.
  exe->memory_.arena_bytes = layout.plan.arena_bytes;
  exe->arena_ = AlignedAllocZeroed(layout.plan.arena_bytes);
  std::vector<size_t> offset(n, 0);
  for (size_t i = 0; i < layout.values.size(); ++i)
    offset[layout.values[i]] = layout.plan.offsets[i];
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = g.node(id);
    if (!node.has_output || node.op == OpKind::kParameter) continue;
    exe->views_[id] =
        TensorView{exe->arena_ + offset[layout.alias_of[id]], &node.type.shape, node.type.dtype};
    if (node.op == OpKind::kInput) exe->inputs_[node.name] = id;
  }

  // Kernel workspace: ops run one at a time, so one buffer of the largest
  // request serves them all.
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = g.node(id);
    const ops::OpDef& def = ops::GetOpDef(node.op);
    if (def.scratch_bytes == nullptr) continue;
    std::vector<const TensorType*> types;
    for (ValueId in : node.inputs) types.push_back(&g.type(in));
    exe->memory_.scratch_bytes =
        std::max(exe->memory_.scratch_bytes, def.scratch_bytes(node, types));
  }
  if (exe->memory_.scratch_bytes > 0)
    exe->scratch_ = AlignedAllocZeroed(exe->memory_.scratch_bytes);

  // Program.
  size_t total_operands = 0;
  for (const Node& node : g.nodes()) total_operands += node.inputs.size();
  exe->operands_.reserve(total_operands);  // never reallocates below
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = g.node(id);
    if (node.op == OpKind::kInput || node.op == OpKind::kParameter) continue;
    const ops::OpDef& def = ops::GetOpDef(node.op);
    ops::KernelFn fn =
        options.use_reference_kernels || def.fast == nullptr ? def.reference : def.fast;
    if (fn == nullptr) {
      return absl::UnimplementedError(absl::StrCat("node ", id, " (", def.name, ") has no kernel"));
    }
    Instr instr;
    instr.fn = fn;
    instr.args.node = &node;
    instr.args.inputs = exe->operands_.data() + exe->operands_.size();
    instr.args.num_inputs = static_cast<int>(node.inputs.size());
    for (ValueId in : node.inputs) exe->operands_.push_back(exe->views_[in]);
    if (node.has_output) instr.args.output = exe->views_[id];
    instr.args.step = &exe->step_;
    if (def.scratch_bytes != nullptr) instr.args.scratch = reinterpret_cast<float*>(exe->scratch_);
    exe->program_.push_back(instr);
    // The step counter counts optimizer steps (AdamW bias correction, dropout
    // masks); a BatchNorm statistics update alone does not advance it.
    if (IsUpdateOp(node.op) && node.op != OpKind::kBatchNormStatsUpdate) exe->updates_ = true;
  }
  kernels::SetGemmThreads(options.threads);
  exe->profile_ = options.profile;
  if (exe->profile_) exe->instr_seconds_.assign(exe->program_.size(), 0.0);
  return exe;
}

Executable::~Executable() {
  AlignedFree(arena_);
  AlignedFree(scratch_);
}

std::string Executable::ProfileReport() const {
  if (!profile_) return "";
  std::map<std::string, std::pair<double, int>> by_op;  // seconds, instructions
  double total = 0.0;
  for (size_t i = 0; i < program_.size(); ++i) {
    auto& entry = by_op[ops::GetOpDef(program_[i].args.node->op).name];
    entry.first += instr_seconds_[i];
    entry.second += 1;
    total += instr_seconds_[i];
  }
  std::vector<std::pair<std::string, std::pair<double, int>>> rows(by_op.begin(), by_op.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  const double steps = std::max<double>(1.0, static_cast<double>(steps_run()));
  std::string out = absl::StrFormat("%-28s %6s %12s %7s\n", "op", "nodes", "ms/step", "share");
  for (const auto& [name, entry] : rows) {
    absl::StrAppendFormat(&out, "%-28s %6d %12.3f %6.1f%%\n", name, entry.second,
                          1e3 * entry.first / steps, total > 0 ? 100.0 * entry.first / total : 0.0);
  }
  return out;
}

absl::StatusOr<TensorView> Executable::Input(const std::string& name) {
  auto it = inputs_.find(name);
  if (it == inputs_.end()) {
    return absl::NotFoundError(absl::StrCat("the graph has no input '", name, "'"));
  }
  return views_[it->second];
}

absl::Status Executable::SetInput(const std::string& name, const Tensor& value) {
  ASSIGN_OR_RETURN(TensorView view, Input(name));
  const TensorType& want = graph_.type(inputs_[name]);
  if (value.type() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input '", name, "' expects ", TypeToString(want), ", got ", TypeToString(value.type())));
  }
  std::memcpy(view.data, value.raw(), value.bytes());
  return absl::OkStatus();
}

absl::StatusOr<TensorView> Executable::Output(ValueId id) const {
  const auto& outs = graph_.outputs();
  if (std::find(outs.begin(), outs.end(), id) == outs.end()) {
    return absl::InvalidArgumentError(absl::StrCat("%", id, " is not a marked output"));
  }
  return views_[id];
}

absl::Status Executable::Run() {
  if (profile_) {
    for (size_t i = 0; i < program_.size(); ++i) {
      const auto start = std::chrono::steady_clock::now();
      program_[i].fn(program_[i].args);
      instr_seconds_[i] +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    if (updates_) ++step_.step;
    return absl::OkStatus();
  }
  for (const Instr& instr : program_) instr.fn(instr.args);
  if (updates_) ++step_.step;
  return absl::OkStatus();
}

}  // namespace fleettune::engine::runtime
