#include "engine/runtime/executable.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "engine/base/status_macros.h"
#include "engine/ir/verifier.h"
#include "engine/kernels/gemm.h"
#include "engine/kernels/parallel.h"
#include "engine/ops/kernel_parts.h"

namespace fleettune::engine::runtime {
namespace {

// Kernel workspace: ops run one at a time, so one buffer of the largest
// request serves them all.
size_t ScratchBytes(const Graph& g) {
  size_t bytes = 0;
  for (const Node& node : g.nodes()) {
    const ops::OpDef& def = ops::GetOpDef(node.op);
    if (def.scratch_bytes == nullptr) continue;
    std::vector<const TensorType*> types;
    for (ValueId in : node.inputs) types.push_back(&g.type(in));
    bytes = std::max(bytes, def.scratch_bytes(node, types));
  }
  return bytes;
}

// A folded constant persists past the prologue when a step (or the caller,
// as an output) reads it; the rest are prologue temporaries.
bool PersistsAfterPrologue(const Graph& g, const std::vector<bool>& constant,
                           const std::vector<std::vector<ValueId>>& users, ValueId id) {
  if (g.IsOutput(id)) return true;
  return std::any_of(users[id].begin(), users[id].end(), [&](ValueId u) { return !constant[u]; });
}

// Bytes a persistent constant takes in the constants buffer (64-aligned slots).
// AbsorbedMasks, AbsorbedChannelSums and AbsorbedLosses under `options`:
// the fast kernels only, neither node folded, one absorbed node per writer.
std::vector<ValueId> AbsorbedNodesFor(const Graph& g, const CompileOptions& options,
                                      const std::vector<bool>& constant) {
  const int n = g.num_nodes();
  std::vector<ValueId> absorbed(n, kNoValue);
  if (options.use_reference_kernels) return absorbed;
  const std::vector<ValueId> masks = AbsorbedMasks(g), sums = AbsorbedChannelSums(g),
                             losses = AbsorbedLosses(g);
  std::vector<bool> taken(n, false);
  for (ValueId id = 0; id < n; ++id) {
    ValueId by = masks[id];
    if (by == kNoValue) by = sums[id];
    if (by == kNoValue) by = losses[id];
    if (by == kNoValue || constant[id] || constant[by] || taken[by]) continue;
    absorbed[id] = by;
    taken[by] = true;
  }
  return absorbed;
}

// The arena's view of absorbed nodes: a value an earlier node writes is live
// from that node on; one a later node writes (a loss) lives where it is.
std::vector<ValueId> WrittenEarlier(const std::vector<ValueId>& absorbed) {
  std::vector<ValueId> by(absorbed.size(), kNoValue);
  for (size_t id = 0; id < absorbed.size(); ++id) {
    if (absorbed[id] != kNoValue && absorbed[id] < static_cast<ValueId>(id)) by[id] = absorbed[id];
  }
  return by;
}

// AbsorbedProducers under `options`: the fast kernels only, neither node
// folded, and the producer's other readers absorbed by it (`absorbed`:
// AbsorbedNodesFor), whose outputs the later kernel then writes.
std::vector<ValueId> ProducersFor(const Graph& g, const CompileOptions& options,
                                  const std::vector<bool>& constant,
                                  const std::vector<ValueId>& absorbed) {
  const int n = g.num_nodes();
  std::vector<ValueId> by(n, kNoValue);
  if (options.use_reference_kernels) return by;
  const std::vector<ValueId> producers = AbsorbedProducers(g);
  const std::vector<std::vector<ValueId>> users = g.ComputeUsers();
  for (ValueId id = 0; id < n; ++id) {
    const ValueId later = producers[id];
    if (later == kNoValue || constant[id] || constant[later]) continue;
    const bool others_absorbed = std::all_of(users[id].begin(), users[id].end(), [&](ValueId u) {
      return u == later || absorbed[u] == id;
    });
    if (others_absorbed) by[id] = later;
  }
  // Three layers run together or not at all (their kernel does all three):
  // a depthwise layer computed by its block's projection must be computing
  // its expand layer, and one computing a projection's input gradient must
  // be computed by the expand layer's. Neither of those links is undone here.
  for (ValueId id = 0; id < n; ++id) {
    const ValueId later = by[id];
    if (later == kNoValue) continue;
    const Node& node = g.node(id);
    const Node& later_node = g.node(later);
    const bool block_forward =
        node.op == OpKind::kConv2dActivation && later_node.op == OpKind::kConv2d;
    const bool block_backward = node.op == OpKind::kConv2dBackwardInput &&
                                later_node.op == OpKind::kConv2dBackwardInput &&
                                std::get<Conv2dGradAttrs>(later_node.attrs).conv.groups > 1;
    if ((block_forward && by[node.inputs[0]] != id) || (block_backward && by[later] == kNoValue)) {
      by[id] = kNoValue;
    }
  }
  // Weight scalings, for convolutions not already computing (or computed by)
  // another convolution: a pair's kernels read their weights as given.
  std::vector<bool> paired(n, false);
  for (ValueId id = 0; id < n; ++id) {
    if (by[id] != kNoValue) paired[id] = paired[by[id]] = true;
  }
  const std::vector<ValueId> scalings = AbsorbedWeightScalings(g);
  for (ValueId id = 0; id < n; ++id) {
    const ValueId conv = scalings[id];
    if (conv == kNoValue || constant[id] || constant[conv] || paired[conv]) continue;
    by[id] = conv;
  }
  return by;
}

// Rope nodes whose positions are one value (through reshapes), with one
// base and head dim, rotate by one cos/sin table: the first of them in the
// program computes it each time it runs, the rest read it
// (KernelArgs::rope_table). Values are computed once per run, so the table
// cannot go stale between them. `ropes`: the rope nodes the fast kernel
// runs, in program order.
struct RopeTablePlan {
  std::vector<size_t> offset;  // per rope node, its table's, in floats
  std::vector<bool> owner;     // per rope node, whether it computes the table
  size_t floats = 0;           // 0 when no table has two readers
};

RopeTablePlan PlanRopeTables(const Graph& g, const std::vector<ValueId>& ropes) {
  struct Table {
    ValueId positions;
    float base;
    int64_t dim;
    size_t offset;
  };
  std::vector<Table> tables;
  RopeTablePlan plan;
  for (ValueId id : ropes) {
    const Node& node = g.node(id);
    ValueId positions = node.inputs[1];
    while (g.node(positions).op == OpKind::kReshape) positions = g.node(positions).inputs[0];
    const float base = std::get<RopeAttrs>(node.attrs).base;
    const int64_t dim = g.type(node.inputs[0]).shape.back();
    auto t = std::find_if(tables.begin(), tables.end(), [&](const Table& t) {
      return t.positions == positions && t.base == base && t.dim == dim;
    });
    plan.owner.push_back(t == tables.end());
    if (t == tables.end()) {
      t = tables.insert(tables.end(), Table{positions, base, dim, plan.floats});
      plan.floats += static_cast<size_t>(g.type(positions).num_elements() * dim);
    }
    plan.offset.push_back(t->offset);
  }
  if (tables.size() == ropes.size()) plan.floats = 0;
  return plan;
}

// The node that runs v's computation: v, or the end of its producer chain.
ValueId RunsAt(const std::vector<ValueId>& producers, ValueId v) {
  while (producers[v] != kNoValue) v = producers[v];
  return v;
}

// The arena's view of absorbed producers: no buffer for their output, and
// their operands live until the node that computes them (a chain's last).
void ApplyProducers(const Graph& g, const std::vector<ValueId>& producers, ArenaOptions* options) {
  options->read_until.assign(g.num_nodes(), kNoValue);
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    if (producers[id] == kNoValue) continue;
    const ValueId runs_at = RunsAt(producers, id);
    options->outside_arena[id] = true;
    for (ValueId in : g.node(id).inputs) {
      options->read_until[in] = std::max(options->read_until[in], runs_at);
    }
  }
}

// Whether node r may run right after node `at` instead of in its place:
// nothing its output feeds runs before `at`, and no node in between
// overwrites one of its operands or reads or writes what it writes (an
// update's parameter and optimizer state).
bool CanWait(const Graph& g, const std::vector<std::vector<ValueId>>& users, ValueId r,
             ValueId at) {
  const Node& node = g.node(r);
  for (ValueId u : users[r]) {
    if (u <= at) return false;
  }
  std::vector<ValueId> writes;
  for (int i = 0; i < static_cast<int>(node.inputs.size()); ++i) {
    if (WritesOperand(node.op, i)) writes.push_back(node.inputs[i]);
  }
  for (ValueId m = r + 1; m <= at; ++m) {
    const Node& between = g.node(m);
    for (int i = 0; i < static_cast<int>(between.inputs.size()); ++i) {
      const ValueId in = between.inputs[i];
      if (std::count(writes.begin(), writes.end(), in) > 0) return false;
      if (WritesOperand(between.op, i) &&
          std::count(node.inputs.begin(), node.inputs.end(), in) > 0) {
        return false;
      }
    }
  }
  return true;
}

// A producer's absorbed values (its activation mask, its bias gradient's
// sums) are written when the node at the end of its chain runs, not in the
// producer's place. A node reading one in between (reorder_updates puts a
// bias's SGD update right after its gradient) runs right after that node
// instead: per node, the node it waits for, or kNoValue. A chain with a
// reader that cannot wait (CanWait) is undone in `producers`, its nodes run
// apart.
std::vector<ValueId> DeferReaders(const Graph& g, const std::vector<ValueId>& absorbed,
                                  std::vector<ValueId>* producers) {
  const int n = g.num_nodes();
  const std::vector<std::vector<ValueId>> users = g.ComputeUsers();
  std::vector<ValueId> wait_for(n, kNoValue);
  for (bool undone = true; undone;) {
    undone = false;
    std::fill(wait_for.begin(), wait_for.end(), kNoValue);
    for (ValueId v = 0; v < n && !undone; ++v) {
      if (absorbed[v] == kNoValue) continue;
      const ValueId at = RunsAt(*producers, absorbed[v]);
      for (ValueId r : users[v]) {
        if (r >= at) continue;
        if (!CanWait(g, users, r, at)) {
          for (ValueId p = 0; p < n; ++p) {
            if ((*producers)[p] != kNoValue && RunsAt(*producers, p) == at) {
              (*producers)[p] = kNoValue;
            }
          }
          undone = true;
          break;
        }
        wait_for[r] = wait_for[r] == kNoValue ? at : std::max(wait_for[r], at);
      }
    }
  }
  return wait_for;
}

// The arena's view of deferred readers: their operands live until they run.
void ApplyDeferred(const Graph& g, const std::vector<ValueId>& wait_for, ArenaOptions* options) {
  for (ValueId r = 0; r < g.num_nodes(); ++r) {
    if (wait_for[r] == kNoValue) continue;
    for (ValueId in : g.node(r).inputs) {
      options->read_until[in] = std::max(options->read_until[in], wait_for[r]);
    }
  }
}

// How the runtime lays out a graph's arena, which Compile() does and
// EstimateMemory foresees: the nodes kernels absorb, producer chains,
// deferred readers, and the plan that keeps their operands live.
struct ArenaSchedule {
  std::vector<ValueId> absorbed, producers, wait_for;
  ArenaOptions arena;
  ArenaLayout layout;
};

absl::StatusOr<ArenaSchedule> ScheduleArena(const Graph& g, const CompileOptions& options,
                                            const std::vector<bool>& constant,
                                            const std::vector<ValueId>& staged_inputs) {
  ArenaSchedule s;
  s.arena.in_place = options.in_place;
  s.arena.outside_arena = constant;
  for (ValueId v : staged_inputs) s.arena.outside_arena[v] = true;
  s.absorbed = AbsorbedNodesFor(g, options, constant);
  s.arena.written_by = WrittenEarlier(s.absorbed);
  s.producers = ProducersFor(g, options, constant, s.absorbed);
  s.wait_for = DeferReaders(g, s.absorbed, &s.producers);
  ApplyProducers(g, s.producers, &s.arena);
  ApplyDeferred(g, s.wait_for, &s.arena);
  ASSIGN_OR_RETURN(s.layout, PlanArena(g, s.arena));
  return s;
}

// Kernel scratch: the largest any op asks for, and what the kernels
// computing a producer need.
size_t ScratchBytesWith(const Graph& g, const std::vector<ValueId>& producers) {
  size_t bytes = ScratchBytes(g);
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const ValueId later = producers[id];
    if (later == kNoValue) continue;
    const Node& node = g.node(id);
    if (node.op == OpKind::kReshape) continue;
    if (node.op == OpKind::kConv2dActivation && g.node(later).op == OpKind::kConv2d) {
      // a depthwise layer its block's projection computes
      bytes = std::max(bytes, ops::parts::InvertedResidualScratchBytes(g.type(node.inputs[0]).shape,
                                                                       g.type(id).shape));
      continue;
    }
    if (node.op == OpKind::kConv2dBackwardInput && producers[later] != kNoValue) {
      // a projection's input gradient the expand layer's computes
      const ValueId end = producers[later];
      bytes = std::max(bytes, ops::parts::InvertedResidualGradScratchBytes(
                                  g.type(end).shape, g.type(later).shape, g.type(id).shape));
      continue;
    }
    if (node.op == OpKind::kBatchNormInference) {  // a weight scaling
      const Node& conv = g.node(later);
      std::vector<const TensorType*> in;
      for (ValueId v : conv.inputs) in.push_back(&g.type(v));
      bytes = std::max(bytes, ops::parts::ScaledWeightOffset(conv, in) + node.type.bytes());
      continue;
    }
    bytes = std::max(bytes, ops::parts::FusedConvolutionScratchBytes(
                                g.node(later).op, g.type(id).shape, g.type(later).shape));
  }
  return bytes;
}

size_t ConstantSlotBytes(const Node& node) { return (node.type.bytes() + 63) / 64 * 64; }

// A value micro-batching stages: its type for the whole batch.
struct StagedType {
  ValueId value = kNoValue;
  bool input = false;
  TensorType batch;
};

// What a micro-batched executable stages (CompileOptions::micro_batches), or
// why the graph cannot run in slices.
absl::StatusOr<std::vector<StagedType>> PlanStaging(const Graph& g, const CompileOptions& options) {
  const int m = options.micro_batches;
  if (m < 1) return absl::InvalidArgumentError(absl::StrCat("micro_batches must be >= 1, got ", m));
  if (m == 1) return std::vector<StagedType>{};
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const Node& node = g.node(id);
    const auto refuse = [&](absl::string_view what, absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("node ", id, " (", ops::GetOpDef(node.op).name, what, ") ", why));
    };
    switch (node.op) {
      case OpKind::kBatchNorm:
      case OpKind::kBatchNormStatsUpdate:
        return refuse("",
                      "uses the whole batch's statistics, so the batch cannot run in "
                      "micro-batches");
      case OpKind::kDropout:
        return refuse("", "draws one mask per step, so the batch cannot run in micro-batches");
      case OpKind::kAdamWUpdate:
      case OpKind::kSgdUpdate:
      case OpKind::kSgdMatMulUpdate:
        if (node.op == OpKind::kSgdUpdate && node.inputs.size() == 3) break;
        if (node.op == OpKind::kSgdMatMulUpdate && node.inputs.size() == 4) break;
        return refuse(absl::StrCat(" of '", g.node(node.inputs[0]).name, "'"),
                      "has no momentum buffer to accumulate micro-batches in; micro-batching "
                      "needs SGD with momentum");
      default:
        break;
    }
  }
  std::vector<StagedType> staged;
  std::vector<bool> shared_found(options.shared_inputs.size(), false);
  for (ValueId id = 0; id < g.num_nodes(); ++id) {
    const Node& node = g.node(id);
    if (node.op != OpKind::kInput) continue;
    const auto it =
        std::find(options.shared_inputs.begin(), options.shared_inputs.end(), node.name);
    if (it != options.shared_inputs.end()) {
      shared_found[it - options.shared_inputs.begin()] = true;
      continue;
    }
    if (node.type.shape.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("input '", node.name, "' is a scalar, so it cannot be sliced by example; ",
                       "name it in shared_inputs"));
    }
    StagedType s{id, true, node.type};
    s.batch.shape[0] *= m;
    staged.push_back(std::move(s));
  }
  for (size_t i = 0; i < shared_found.size(); ++i) {
    if (!shared_found[i]) {
      return absl::InvalidArgumentError(absl::StrCat("shared input '", options.shared_inputs[i],
                                                     "' is not an input of the graph"));
    }
  }
  for (ValueId id : g.outputs()) {
    const TensorType& type = g.type(id);
    if (type.shape.empty() && type.dtype != DType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat("output %", id, " is a ", TypeToString(type),
                                                     " scalar; micro-batches combine f32 ones"));
    }
    StagedType s{id, false, type};
    if (!s.batch.shape.empty()) s.batch.shape[0] *= m;
    staged.push_back(std::move(s));
  }
  return staged;
}

}  // namespace

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

std::vector<int> InPlaceCandidates(const Graph& graph, ValueId id) {
  const Node& node = graph.node(id);
  std::vector<int> candidates;
  switch (node.op) {
    case OpKind::kRelu:
    case OpKind::kScale:
    case OpKind::kActivation:
    case OpKind::kBatchNormInference:
    case OpKind::kBatchNormInferenceGrad:
    case OpKind::kBatchNormInferenceActivation:
    case OpKind::kMaskedGrad:  // dx overwrites dy
    // Row-wise: each row's max and sum are read first, then the row is
    // written at the indices it is read from.
    case OpKind::kSoftmax:
    case OpKind::kSoftmaxCrossEntropyGrad:  // dlogits overwrite the logits
      candidates = {0};
      break;
    case OpKind::kSoftmaxGrad:  // the row's Σ dy·y first, then dx[j] from dy[j] and y[j]
      candidates = {0, 1};
      break;
    case OpKind::kAdd:
    case OpKind::kSub:
    case OpKind::kMul:
    case OpKind::kDiv:
    case OpKind::kReluGrad:
    case OpKind::kActivationGrad:
    case OpKind::kAddActivation:
      candidates = {0, 1};
      break;
    case OpKind::kElementwiseChain: {
      // Inputs only the first step reads: its kernel is in-place safe, and
      // later steps read only the running value and other inputs.
      const auto& steps = std::get<ElementwiseChainAttrs>(node.attrs).steps;
      for (int i = 0; i < static_cast<int>(node.inputs.size()); ++i) {
        bool later = false;
        for (size_t k = 1; k < steps.size(); ++k) later |= steps[k].a == i || steps[k].b == i;
        if (!later) candidates.push_back(i);
      }
      break;
    }
    default:
      return {};
  }
  std::vector<int> out;
  for (int i : candidates) {
    if (i < static_cast<int>(node.inputs.size()) && graph.IsValid(node.inputs[i]) &&
        graph.type(node.inputs[i]) == node.type) {
      out.push_back(i);
    }
  }
  return out;
}

std::vector<ValueId> AbsorbedMasks(const Graph& graph) {
  std::vector<ValueId> by(graph.num_nodes(), kNoValue);
  for (ValueId id = 0; id < graph.num_nodes(); ++id) {
    const Node& node = graph.node(id);
    if (node.op != OpKind::kActivationMask || node.inputs.size() != 1) continue;
    const ValueId conv = node.inputs[0];
    const Node& producer = graph.node(conv);
    if (producer.op != OpKind::kConv2dActivation) continue;
    const FusedActivationFn act = std::get<FusedConvAttrs>(producer.attrs).act;
    const float upper = std::get<ScalarAttrs>(node.attrs).value;
    const bool same_clamp = (act == FusedActivationFn::kRelu && std::isinf(upper) && upper > 0) ||
                            (act == FusedActivationFn::kRelu6 && upper == 6.0f);
    const Shape& y = producer.type.shape;
    if (!same_clamp || y.size() != 4 || (y[2] * y[3]) % 32 != 0) continue;
    by[id] = conv;
  }
  return by;
}

std::vector<ValueId> AbsorbedChannelSums(const Graph& graph) {
  std::vector<ValueId> by(graph.num_nodes(), kNoValue);
  for (ValueId id = 0; id < graph.num_nodes(); ++id) {
    const Node& node = graph.node(id);
    if (node.op != OpKind::kReduceSum || node.inputs.size() != 1) continue;
    const ValueId grad = node.inputs[0];
    if (graph.node(grad).op != OpKind::kConv2dBackwardInput) continue;
    const Shape& dx = graph.type(grad).shape;
    if (!(std::get<ReduceAttrs>(node.attrs) == ReduceAttrs{{0, 2, 3}, false})) continue;
    if (dx.size() != 4 || dx[2] * dx[3] <= 1) continue;
    by[id] = grad;
  }
  return by;
}

std::vector<ValueId> AbsorbedLosses(const Graph& graph) {
  const int n = graph.num_nodes();
  std::vector<ValueId> by(n, kNoValue);
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  for (ValueId id = 0; id < n; ++id) {
    const Node& loss = graph.node(id);
    if (loss.op != OpKind::kSoftmaxCrossEntropy || !users[id].empty()) continue;
    if (!graph.IsOutput(id)) continue;
    for (ValueId u : users[loss.inputs[0]]) {
      const Node& grad = graph.node(u);
      if (u > id && grad.op == OpKind::kSoftmaxCrossEntropyGrad &&
          grad.inputs[0] == loss.inputs[0] && grad.inputs[1] == loss.inputs[1] &&
          std::get<CrossEntropyAttrs>(grad.attrs).ignore_index ==
              std::get<CrossEntropyAttrs>(loss.attrs).ignore_index) {
        by[id] = u;
        break;
      }
    }
  }
  return by;
}

// Planes smaller than 32×32 (MobileNetV2's 16×16 to 4×4 blocks) ran slower
// computed together: their tensors fit in cache anyway, and blocks of a few
// small planes leave the kernels little work per call.
constexpr int64_t kMinProducerPlane = 1024;

std::vector<ValueId> AbsorbedProducers(const Graph& graph) {
  const int n = graph.num_nodes();
  std::vector<ValueId> by(n, kNoValue);
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  const std::vector<ValueId> masks = AbsorbedMasks(graph), sums = AbsorbedChannelSums(graph);
  auto pointwise = [&](const Conv2dAttrs& a, const Shape& w) {
    return a == Conv2dAttrs{} && w.size() == 4 && w[2] == 1 && w[3] == 1;
  };
  // The one reader of id's output besides its absorbed mask or channel sums,
  // if it reads it once, as its first operand, and fits(reader); else
  // kNoValue.
  auto sole_reader = [&](ValueId id, const auto& fits) {
    ValueId later = kNoValue;
    for (ValueId u : users[id]) {
      if (masks[u] == id || sums[u] == id) continue;
      const Node& user = graph.node(u);
      if (later != kNoValue || user.inputs[0] != id ||
          std::count(user.inputs.begin(), user.inputs.end(), id) != 1 || !fits(u)) {
        return kNoValue;
      }
      later = u;
    }
    return later;
  };
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (graph.IsOutput(id) || node.type.shape.size() != 4) continue;
    const Shape& y = node.type.shape;
    if (y[2] * y[3] < kMinProducerPlane) continue;
    if (node.op == OpKind::kConv2dActivation) {
      const auto& a = std::get<FusedConvAttrs>(node.attrs);
      const Shape& w = graph.type(node.inputs[1]).shape;
      if ((a.act != FusedActivationFn::kRelu && a.act != FusedActivationFn::kRelu6) ||
          !pointwise(a.conv, w)) {
        continue;
      }
      // the depthwise layer after an expand layer
      by[id] = sole_reader(id, [&](ValueId u) {
        const Node& user = graph.node(u);
        if (user.op != node.op || user.inputs.size() < 2) return false;
        const Shape& uw = graph.type(user.inputs[1]).shape;
        return std::get<FusedConvAttrs>(user.attrs).conv.groups == y[1] && uw[0] == y[1] &&
               uw[1] == 1;
      });
    } else if (node.op == OpKind::kConv2dBackwardInput) {
      const auto& a = std::get<Conv2dGradAttrs>(node.attrs);
      const Shape& w = graph.type(node.inputs[1]).shape;
      if (a.conv.groups != y[1] || w[0] != y[1] || w[1] != 1) continue;  // depthwise
      // the expand layer's input gradient after the depthwise layer's
      by[id] = sole_reader(id, [&](ValueId u) {
        const Node& user = graph.node(u);
        if (user.op != node.op || user.inputs.size() < 2) return false;
        const Shape& uw = graph.type(user.inputs[1]).shape;
        return pointwise(std::get<Conv2dGradAttrs>(user.attrs).conv, uw) && uw[0] == y[1];
      });
    }
  }
  // A depthwise layer computing its expand layer, whose output only the
  // block's projection reads (a plain pointwise conv2d; its weight gradient,
  // which would read the output too, not computed): the projection computes
  // both, block by block, and the depthwise output never reaches memory.
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (node.op != OpKind::kConv2dActivation || graph.IsOutput(id)) continue;
    if (by[node.inputs[0]] != id) continue;
    by[id] = sole_reader(id, [&](ValueId u) {
      const Node& user = graph.node(u);
      return user.op == OpKind::kConv2d &&
             pointwise(std::get<Conv2dAttrs>(user.attrs), graph.type(user.inputs[1]).shape);
    });
  }
  // Backward, a projection's input gradient (a pointwise
  // conv2d_backward_input) whose dx only the input gradient of a depthwise
  // layer computed by its expand layer's reads (besides its absorbed bias
  // gradient): the expand layer's input gradient computes all three.
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (node.op != OpKind::kConv2dBackwardInput || graph.IsOutput(id)) continue;
    if (!pointwise(std::get<Conv2dGradAttrs>(node.attrs).conv, graph.type(node.inputs[1]).shape)) {
      continue;
    }
    by[id] = sole_reader(id, [&](ValueId u) {
      return graph.node(u).op == OpKind::kConv2dBackwardInput && by[u] != kNoValue;
    });
  }
  return by;
}

std::vector<ValueId> AbsorbedWeightScalings(const Graph& graph) {
  const int n = graph.num_nodes();
  std::vector<ValueId> by(n, kNoValue);
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  auto zeros = [&](ValueId v) {
    const Node& node = graph.node(v);
    return node.op == OpKind::kFill && std::get<FillAttrs>(node.attrs).value == 0.0f;
  };
  auto only_reader = [&](ValueId v) {
    return graph.IsOutput(v) || users[v].size() != 1 ? kNoValue : users[v][0];
  };
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (node.op != OpKind::kBatchNormInference || node.inputs.size() != 5) continue;
    if (!zeros(node.inputs[1]) || !zeros(node.inputs[4])) continue;  // W·s alone
    const ValueId reshape = only_reader(id);
    if (reshape == kNoValue || graph.node(reshape).op != OpKind::kReshape) continue;
    const ValueId conv = only_reader(reshape);
    if (conv == kNoValue) continue;
    const Node& c = graph.node(conv);
    const Shape& w = graph.type(reshape).shape;
    if (c.inputs.size() < 2 || c.inputs[0] == reshape || c.inputs[1] != reshape) continue;
    if (w.size() != 4 || w[2] != 1 || w[3] != 1) continue;
    // The scaling's channels must be the convolution's output channels.
    if (node.type.shape != Shape{1, w[0], w[1]}) continue;
    Conv2dAttrs conv_attrs;
    if (c.op == OpKind::kConv2d) {
      conv_attrs = std::get<Conv2dAttrs>(c.attrs);
    } else if (c.op == OpKind::kConv2dActivation) {
      conv_attrs = std::get<FusedConvAttrs>(c.attrs).conv;
    } else if (c.op == OpKind::kConv2dBackwardInput) {
      conv_attrs = std::get<Conv2dGradAttrs>(c.attrs).conv;
    } else {
      continue;
    }
    if (!(conv_attrs == Conv2dAttrs{})) continue;  // pointwise, one group
    by[id] = conv;
    by[reshape] = conv;
  }
  return by;
}

std::vector<bool> FindConstants(const Graph& graph) {
  const int n = graph.num_nodes();
  std::vector<bool> written(n, false);
  for (const Node& node : graph.nodes()) {
    for (int i = 0; i < static_cast<int>(node.inputs.size()); ++i) {
      if (WritesOperand(node.op, i) && graph.IsValid(node.inputs[i])) {
        written[node.inputs[i]] = true;
      }
    }
  }
  std::vector<bool> constant(n, false);
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    switch (node.op) {
      case OpKind::kFill:
        constant[id] = true;
        continue;
      case OpKind::kParameter: {
        const auto* attrs = std::get_if<ParameterAttrs>(&node.attrs);
        constant[id] =
            attrs != nullptr && attrs->role != ParamRole::kOptimizerState && !written[id];
        continue;
      }
      case OpKind::kInput:
      case OpKind::kDropout:  // the mask depends on the step
        continue;
      default:
        break;
    }
    if (!node.has_output || IsUpdateOp(node.op) || node.inputs.empty()) continue;
    bool all = true;
    for (ValueId in : node.inputs) all = all && graph.IsValid(in) && in < id && constant[in];
    constant[id] = all;
  }
  return constant;
}

namespace {

// A per-node ArenaOptions vector is empty (unused) or has an entry per node.
template <typename T>
absl::Status CheckPerNode(const std::vector<T>& entries, const char* name, int n) {
  if (entries.empty() || static_cast<int>(entries.size()) == n) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(name, " has ", entries.size(), " entries for ", n, " nodes"));
}

}  // namespace

absl::StatusOr<ArenaLayout> PlanArena(const Graph& graph, const ArenaOptions& options) {
  const int n = graph.num_nodes();
  RETURN_IF_ERROR(CheckPerNode(options.outside_arena, "outside_arena", n));
  RETURN_IF_ERROR(CheckPerNode(options.written_by, "written_by", n));
  RETURN_IF_ERROR(CheckPerNode(options.read_until, "read_until", n));
  if (!options.written_by.empty()) {
    for (ValueId id = 0; id < n; ++id) {
      const ValueId by = options.written_by[id];
      if (by != kNoValue && (by < 0 || by >= id)) {
        return absl::InvalidArgumentError(
            absl::StrCat("value ", id, " is written by node ", by, ", which is not earlier"));
      }
    }
  }
  auto outside = [&](ValueId id) {
    return graph.node(id).op == OpKind::kParameter ||
           (!options.outside_arena.empty() && options.outside_arena[id]);
  };
  ArenaLayout layout;
  layout.alias_of.resize(n);
  layout.parameter_view.assign(n, false);
  // Parameters no update op writes: a reshape of one can read its storage
  // (BatchNorm folding reshapes every frozen conv weight twice a step).
  std::vector<bool> written(n, false);
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    for (int i = 0; i < static_cast<int>(node.inputs.size()); ++i) {
      if (WritesOperand(node.op, i)) written[node.inputs[i]] = true;
    }
  }
  std::vector<int> last_use(n, -1);
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    layout.alias_of[id] = id;
    if (node.op == OpKind::kReshape) {
      const ValueId root = layout.alias_of[node.inputs[0]];
      if (!outside(id) && !outside(node.inputs[0]) && !layout.parameter_view[node.inputs[0]]) {
        layout.alias_of[id] = root;  // a reshape of an arena value shares its buffer
      } else if (!outside(id) && graph.node(root).op == OpKind::kParameter && !written[root]) {
        layout.alias_of[id] = root;  // a view of a frozen parameter: no buffer, no copy
        layout.parameter_view[id] = true;
      }
    }
    last_use[id] = id;
    for (ValueId in : node.inputs) {
      last_use[layout.alias_of[in]] = std::max(last_use[layout.alias_of[in]], id);
    }
  }
  if (!options.read_until.empty()) {
    for (ValueId id = 0; id < n; ++id) {
      const ValueId until = options.read_until[id];
      if (until == kNoValue) continue;
      if (until <= id || until >= n) {
        return absl::InvalidArgumentError(
            absl::StrCat("value ", id, " is read until node ", until, ", which is not later"));
      }
      last_use[layout.alias_of[id]] = std::max(last_use[layout.alias_of[id]], until);
    }
  }
  for (ValueId out : graph.outputs()) last_use[layout.alias_of[out]] = n;
  // In place: the output takes over the buffer of an operand whose whole
  // buffer (reshape aliases included) is last read by this node.
  std::vector<ValueId> reuses(n, kNoValue);
  if (options.in_place) {
    for (ValueId id = 0; id < n; ++id) {
      const Node& node = graph.node(id);
      if (!node.has_output || outside(id) || layout.alias_of[id] != id) continue;
      for (int i : InPlaceCandidates(graph, id)) {
        const ValueId root = layout.alias_of[node.inputs[i]];
        if (outside(root) || graph.node(root).op == OpKind::kInput) continue;
        if (last_use[root] != id || graph.type(root).bytes() != node.type.bytes()) continue;
        reuses[id] = root;
        break;
      }
    }
  }
  std::vector<int> request_of(n, -1);
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (!node.has_output || outside(id) || layout.alias_of[id] != id) continue;
    memory::BufferRequest req;
    req.bytes = node.type.bytes();
    // Inputs are written by the caller before the step starts.
    req.first_use = node.op == OpKind::kInput ? -1 : id;
    if (!options.written_by.empty() && options.written_by[id] != kNoValue) {
      req.first_use = options.written_by[id];
    }
    req.last_use = node.op == OpKind::kInput ? std::max(last_use[id], n) : last_use[id];
    if (reuses[id] != kNoValue && request_of[reuses[id]] >= 0) {
      req.in_place_of = request_of[reuses[id]];
      ++layout.in_place_nodes;
    }
    request_of[id] = static_cast<int>(layout.values.size());
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
  exe->isa_ = kernels::BestHostIsa();
  if (!options.kernel_isa.empty()) {
    ASSIGN_OR_RETURN(exe->isa_, kernels::ParseIsa(options.kernel_isa));
    if (!kernels::HostSupports(exe->isa_)) {
      return absl::FailedPreconditionError(
          absl::StrCat("the plan's kernels need ", options.kernel_isa,
                       ", which this CPU does not support (it runs up to ",
                       kernels::IsaName(kernels::BestHostIsa()), ")"));
    }
  }
  exe->graph_ = graph;
  const Graph& g = exe->graph_;
  const int n = g.num_nodes();
  const std::vector<bool> constant =
      options.fold_constants ? FindConstants(g) : std::vector<bool>(n, false);
  {
    ASSIGN_OR_RETURN(std::vector<StagedType> staged, PlanStaging(g, options));
    std::vector<std::pair<ValueId, TensorType>> inputs, outputs;
    for (const StagedType& s : staged) (s.input ? inputs : outputs).emplace_back(s.value, s.batch);
    exe->SetUpMicroBatches(options.micro_batches, inputs, outputs);
  }
  std::vector<ValueId> staged_inputs;
  for (const Staged& s : exe->staged_inputs_) staged_inputs.push_back(s.value);
  ASSIGN_OR_RETURN(const ArenaSchedule schedule,
                   ScheduleArena(g, options, constant, staged_inputs));
  const std::vector<ValueId>& absorbed = schedule.absorbed;
  const std::vector<ValueId>& producers = schedule.producers;
  const std::vector<ValueId>& wait_for = schedule.wait_for;
  const ArenaLayout& layout = schedule.layout;
  exe->memory_.in_place_nodes = layout.in_place_nodes;

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
  for (Staged& s : exe->staged_inputs_) {  // slice 0 of the staged batch
    const Node& node = g.node(s.value);
    exe->views_[s.value] = TensorView{s.batch.raw(), &node.type.shape, node.type.dtype};
    exe->inputs_[node.name] = s.value;
  }
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = g.node(id);
    if (!node.has_output || node.op == OpKind::kParameter || constant[id]) continue;
    if (producers[id] != kNoValue) {  // no data: the later node computes it
      exe->views_[id] = TensorView{nullptr, &node.type.shape, node.type.dtype};
      continue;
    }
    if (schedule.arena.outside_arena[id]) continue;  // staged
    if (layout.parameter_view[id]) {
      exe->views_[id] =
          TensorView{exe->views_[layout.alias_of[id]].data, &node.type.shape, node.type.dtype};
      continue;
    }
    exe->views_[id] =
        TensorView{exe->arena_ + offset[layout.alias_of[id]], &node.type.shape, node.type.dtype};
    if (node.op == OpKind::kInput) exe->inputs_[node.name] = id;
  }

  // Folded constants: those a step reads (or the caller, as outputs) persist;
  // the rest are prologue temporaries.
  {
    const std::vector<std::vector<ValueId>> users = g.ComputeUsers();
    std::vector<size_t> persistent_offset(n, 0);
    std::vector<memory::BufferRequest> temps;
    for (ValueId id = 0; id < n; ++id) {
      const Node& node = g.node(id);
      if (!constant[id] || node.op == OpKind::kParameter) continue;
      exe->prologue_.push_back(id);
      if (PersistsAfterPrologue(g, constant, users, id)) {
        persistent_offset[id] = exe->memory_.constant_bytes;
        exe->memory_.constant_bytes += ConstantSlotBytes(node);
      } else {
        const int last = users[id].empty() ? id : std::max<int>(id, users[id].back());
        exe->prologue_temps_.push_back(id);
        temps.push_back(memory::BufferRequest{node.type.bytes(), id, last});
      }
    }
    exe->memory_.constant_nodes = static_cast<int>(exe->prologue_.size());
    if (exe->memory_.constant_bytes > 0) {
      exe->constants_ = AlignedAllocZeroed(exe->memory_.constant_bytes);
    }
    for (ValueId id : exe->prologue_) {
      const Node& node = g.node(id);
      exe->views_[id] =
          TensorView{exe->constants_ + persistent_offset[id], &node.type.shape, node.type.dtype};
    }
    ASSIGN_OR_RETURN(memory::MemoryPlan temp_plan, memory::PlanMemory(temps));
    RETURN_IF_ERROR(memory::CheckPlan(temps, temp_plan));
    exe->prologue_temp_offsets_ = temp_plan.offsets;
    exe->prologue_workspace_bytes_ = temp_plan.arena_bytes;
  }

  exe->memory_.scratch_bytes = ScratchBytesWith(g, producers);
  if (exe->memory_.scratch_bytes > 0)
    exe->scratch_ = AlignedAllocZeroed(exe->memory_.scratch_bytes);

  // Program.
  size_t total_operands = 0;
  for (const Node& node : g.nodes()) total_operands += node.inputs.size();
  exe->operands_.reserve(total_operands);         // never reallocates below
  std::vector<ValueId> absorbed_by(n, kNoValue);  // a producer's absorbed node
  for (ValueId id = 0; id < n; ++id) {
    if (absorbed[id] != kNoValue) absorbed_by[absorbed[id]] = id;
  }
  std::vector<std::vector<Instr>> waiting(n);  // per node, instructions to run right after it
  std::vector<int> producer_args(n, -1);       // per computing node, in producer_args_
  exe->producer_args_.reserve(
      std::count_if(producers.begin(), producers.end(), [](ValueId v) { return v != kNoValue; }));
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = g.node(id);
    if (node.op == OpKind::kInput || node.op == OpKind::kParameter || constant[id]) continue;
    if (absorbed[id] != kNoValue) continue;  // its producer writes it
    const ops::OpDef& def = ops::GetOpDef(node.op);
    ops::KernelFn fn =
        options.use_reference_kernels || def.fast == nullptr ? def.reference : def.fast;
    if (fn == nullptr) {
      return absl::UnimplementedError(absl::StrCat("node ", id, " (", def.name, ") has no kernel"));
    }
    Instr instr;
    instr.fn = fn;
    instr.node = id;
    instr.args.node = &node;
    instr.args.inputs = exe->operands_.data() + exe->operands_.size();
    instr.args.num_inputs = static_cast<int>(node.inputs.size());
    for (ValueId in : node.inputs) {
      for (Staged& s : exe->staged_inputs_) {
        if (s.value == in) s.operand_slots.push_back(exe->operands_.size());
      }
      exe->operands_.push_back(exe->views_[in]);
    }
    if (node.has_output) instr.args.output = exe->views_[id];
    if (absorbed_by[id] != kNoValue) {
      const TensorView& extra = exe->views_[absorbed_by[id]];
      if (node.op == OpKind::kConv2dActivation) instr.args.activation_mask = extra.i32();
      if (node.op == OpKind::kConv2dBackwardInput) instr.args.channel_sums = extra.f32();
      if (node.op == OpKind::kSoftmaxCrossEntropyGrad) instr.args.cross_entropy_loss = extra.f32();
    }
    instr.args.step = &exe->step_;
    if (def.scratch_bytes != nullptr) instr.args.scratch = reinterpret_cast<float*>(exe->scratch_);
    if (producer_args[id] >= 0) {  // before a producer's own arguments are stored
      instr.args.producer = &exe->producer_args_[producer_args[id]];
      instr.args.scratch = reinterpret_cast<float*>(exe->scratch_);
    }
    if (producers[id] != kNoValue) {              // the later node runs it
      if (node.op == OpKind::kReshape) continue;  // after a weight scaling: nothing to run
      instr.args.output = TensorView{};
      producer_args[producers[id]] = static_cast<int>(exe->producer_args_.size());
      exe->producer_args_.push_back(instr.args);
      continue;
    }
    // The step counter counts optimizer steps (AdamW bias correction, dropout
    // masks); a BatchNorm statistics update alone does not advance it.
    if (IsUpdateOp(node.op) && node.op != OpKind::kBatchNormStatsUpdate) exe->updates_ = true;
    if (wait_for[id] != kNoValue) {
      std::vector<Instr>& after = waiting[wait_for[id]];
      after.push_back(instr);
      after.insert(after.end(), waiting[id].begin(), waiting[id].end());
      continue;
    }
    exe->program_.push_back(instr);
    for (const Instr& later : waiting[id]) exe->program_.push_back(later);
  }
  exe->ShareRopeTables();
  kernels::SetGemmThreads(options.threads);
  exe->profile_ = options.profile;
  if (exe->profile_) exe->instr_seconds_.assign(exe->program_.size(), 0.0);
  exe->use_reference_kernels_ = options.use_reference_kernels;
  RETURN_IF_ERROR(exe->RefreshConstants());
  return exe;
}

void Executable::SetUpMicroBatches(int micro_batches,
                                   const std::vector<std::pair<ValueId, TensorType>>& inputs,
                                   const std::vector<std::pair<ValueId, TensorType>>& outputs) {
  micro_batches_ = micro_batches;
  for (const auto& [value, type] : inputs) {
    staged_inputs_.push_back(Staged{value, Tensor(type.dtype, type.shape), {}});
    memory_.staging_bytes += type.bytes();
  }
  for (const auto& [value, type] : outputs) {
    staged_outputs_.push_back(Staged{value, Tensor(type.dtype, type.shape), {}});
    memory_.staging_bytes += type.bytes();
  }
  gradient_weights_.assign(micro_batches_, 1.0f / micro_batches_);
  // A softmax cross-entropy averages over the examples its labels count, so
  // a slice's share is its count over the batch's.
  int losses = 0;
  for (const Node& node : graph_.nodes()) {
    if (node.op != OpKind::kSoftmaxCrossEntropy) continue;
    ++losses;
    ValueId labels = node.inputs[1];  // reshapes keep the examples' order
    while (graph_.node(labels).op == OpKind::kReshape) labels = graph_.node(labels).inputs[0];
    for (size_t i = 0; i < staged_inputs_.size(); ++i) {
      if (staged_inputs_[i].value != labels) continue;
      label_input_ = static_cast<int>(i);
      label_classes_ = graph_.type(node.inputs[0]).shape.back();
      ignore_index_ = std::get<CrossEntropyAttrs>(node.attrs).ignore_index;
    }
  }
  if (losses > 1) label_input_ = -1;  // no one count to weigh by: equal shares
}

void Executable::WeighMicroBatches() {
  if (label_input_ < 0) return;  // equal shares, set at Compile()
  const Tensor& labels = staged_inputs_[label_input_].batch;
  const int64_t per_slice = labels.num_elements() / micro_batches_;
  int64_t total = 0;
  for (int k = 0; k < micro_batches_; ++k) {
    int64_t counted = 0;
    for (int64_t i = k * per_slice; i < (k + 1) * per_slice; ++i) {
      const int32_t label = labels.i32()[i];
      // As the loss counts (engine/ops/cross_entropy.cc).
      counted += label != ignore_index_ && label >= 0 && label < label_classes_;
    }
    gradient_weights_[k] = static_cast<float>(counted);
    total += counted;
  }
  for (float& w : gradient_weights_) {
    w = total == 0 ? 1.0f / micro_batches_ : w / static_cast<float>(total);
  }
}

absl::Status Executable::RefreshConstants() {
  if (prologue_.empty()) return absl::OkStatus();
  // The workspace for intermediate constants exists only while this runs.
  std::unique_ptr<std::byte, void (*)(void*)> workspace(
      prologue_workspace_bytes_ > 0 ? AlignedAllocZeroed(prologue_workspace_bytes_) : nullptr,
      AlignedFree);
  for (size_t i = 0; i < prologue_temps_.size(); ++i) {
    const Node& node = graph_.node(prologue_temps_[i]);
    views_[prologue_temps_[i]] =
        TensorView{workspace.get() + prologue_temp_offsets_[i], &node.type.shape, node.type.dtype};
  }
  std::vector<TensorView> operands;
  for (ValueId id : prologue_) {
    const Node& node = graph_.node(id);
    const ops::OpDef& def = ops::GetOpDef(node.op);
    ops::KernelFn fn = use_reference_kernels_ || def.fast == nullptr ? def.reference : def.fast;
    if (fn == nullptr) {
      return absl::UnimplementedError(absl::StrCat("node ", id, " (", def.name, ") has no kernel"));
    }
    operands.clear();
    for (ValueId in : node.inputs) operands.push_back(views_[in]);
    ops::KernelArgs args;
    args.node = &node;
    args.inputs = operands.data();
    args.num_inputs = static_cast<int>(operands.size());
    args.output = views_[id];
    args.step = &step_;
    if (def.scratch_bytes != nullptr) args.scratch = reinterpret_cast<float*>(scratch_);
    fn(args);
  }
  // Temporaries are gone; nothing in the step reads them.
  for (ValueId id : prologue_temps_) views_[id] = TensorView{};
  return absl::OkStatus();
}

Executable::~Executable() {
  AlignedFree(arena_);
  AlignedFree(scratch_);
  AlignedFree(constants_);
  AlignedFree(rope_tables_);
}

void Executable::ShareRopeTables() {
  std::vector<Instr*> ropes;
  std::vector<ValueId> ids;
  for (Instr& instr : program_) {
    if (instr.args.node->op != OpKind::kRope) continue;
    if (instr.fn != ops::GetOpDef(OpKind::kRope).fast) continue;
    ropes.push_back(&instr);
    ids.push_back(instr.node);
  }
  const RopeTablePlan plan = PlanRopeTables(graph_, ids);
  if (plan.floats == 0) return;
  rope_tables_ = AlignedAllocZeroed(plan.floats * sizeof(float));
  memory_.scratch_bytes += plan.floats * sizeof(float);
  for (size_t i = 0; i < ropes.size(); ++i) {
    ropes[i]->args.rope_table = reinterpret_cast<float*>(rope_tables_) + plan.offset[i];
    ropes[i]->args.rope_table_owner = plan.owner[i];
  }
}

void Executable::ResetProfile() {
  std::fill(instr_seconds_.begin(), instr_seconds_.end(), 0.0);
  profiled_steps_ = 0;
}

std::string Executable::ProfileReport(int slowest_nodes) const {
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
  const double steps = std::max<double>(1.0, static_cast<double>(profiled_steps_));
  std::string out = absl::StrFormat("%-28s %6s %12s %7s\n", "op", "nodes", "ms/step", "share");
  for (const auto& [name, entry] : rows) {
    absl::StrAppendFormat(&out, "%-28s %6d %12.3f %6.1f%%\n", name, entry.second,
                          1e3 * entry.first / steps, total > 0 ? 100.0 * entry.first / total : 0.0);
  }
  if (slowest_nodes <= 0) return out;
  std::vector<size_t> order(program_.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return instr_seconds_[a] > instr_seconds_[b]; });
  order.resize(std::min(order.size(), static_cast<size_t>(slowest_nodes)));
  absl::StrAppendFormat(&out, "\n%-12s %6s %-28s %s\n", "ms/step", "instr", "node",
                        "inputs -> output");
  for (size_t i : order) {
    const ops::KernelArgs& args = program_[i].args;
    std::string types;
    for (int k = 0; k < args.num_inputs; ++k) {
      absl::StrAppend(&types, k > 0 ? ", " : "", TypeToString(graph_.type(args.node->inputs[k])));
    }
    if (ops::GetOpDef(args.node->op).has_output) {
      absl::StrAppend(&types, " -> ", TypeToString(args.node->type));
    }
    absl::StrAppendFormat(&out, "%-12.3f %6d %-28s %s\n", 1e3 * instr_seconds_[i] / steps, i,
                          ops::GetOpDef(args.node->op).name, types);
  }
  return out;
}

absl::StatusOr<TensorView> Executable::Input(const std::string& name) {
  auto it = inputs_.find(name);
  if (it == inputs_.end()) {
    return absl::NotFoundError(absl::StrCat("the graph has no input '", name, "'"));
  }
  for (Staged& s : staged_inputs_) {
    if (s.value == it->second) return s.batch.view();
  }
  return views_[it->second];
}

absl::Status Executable::SetInput(const std::string& name, const Tensor& value) {
  ASSIGN_OR_RETURN(TensorView view, Input(name));
  const TensorType want{view.dtype, *view.shape};
  if (value.type() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input '", name, "' expects ", TypeToString(want), ", got ", TypeToString(value.type())));
  }
  std::memcpy(view.data, value.raw(), value.bytes());
  return absl::OkStatus();
}

absl::StatusOr<TensorView> Executable::Output(ValueId id) const {
  if (!graph_.IsOutput(id)) {
    return absl::InvalidArgumentError(absl::StrCat("%", id, " is not a marked output"));
  }
  for (const Staged& s : staged_outputs_) {
    if (s.value == id)
      return TensorView{const_cast<void*>(s.batch.raw()), &s.batch.shape(), s.batch.dtype()};
  }
  return views_[id];
}

void Executable::RunProgram() {
  if (!profile_) {
    for (const Instr& instr : program_) instr.fn(instr.args);
    return;
  }
  for (size_t i = 0; i < program_.size(); ++i) {
    const auto start = std::chrono::steady_clock::now();
    program_[i].fn(program_[i].args);
    instr_seconds_[i] +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
}

absl::Status Executable::Run() {
  // The caller may not be the thread that compiled (kernels::FlushDenormals).
  kernels::FlushDenormalsOnThisThread();
  kernels::SetKernelIsa(isa_);
  if (micro_batches_ == 1) {
    RunProgram();
  } else {
    WeighMicroBatches();
    step_.micro_batches = micro_batches_;
    for (int k = 0; k < micro_batches_; ++k) {
      step_.micro_batch = k;
      step_.gradient_weight = gradient_weights_[k];
      for (Staged& s : staged_inputs_) {  // kernels read slice k where it is
        void* slice = static_cast<std::byte*>(s.batch.raw()) + k * graph_.type(s.value).bytes();
        views_[s.value].data = slice;
        for (size_t i : s.operand_slots) operands_[i].data = slice;
      }
      RunProgram();
      for (Staged& s : staged_outputs_) {
        const TensorView& slice = views_[s.value];
        if (s.batch.shape().empty()) {  // the loss: weighted by the slice's share
          const float part = gradient_weights_[k] * slice.f32()[0];
          s.batch.f32()[0] = k == 0 ? part : s.batch.f32()[0] + part;
          continue;
        }
        const size_t bytes = graph_.type(s.value).bytes();
        std::memcpy(static_cast<std::byte*>(s.batch.raw()) + k * bytes, slice.data, bytes);
      }
    }
    step_.micro_batch = 0;
    step_.micro_batches = 1;
    step_.gradient_weight = 1.0f;
  }
  if (profile_) ++profiled_steps_;
  if (updates_) ++step_.step;
  return absl::OkStatus();
}

absl::StatusOr<MemoryStats> EstimateMemory(const Graph& graph, const CompileOptions& options) {
  RETURN_IF_ERROR(VerifyGraph(graph));
  const int n = graph.num_nodes();
  const std::vector<bool> constant =
      options.fold_constants ? FindConstants(graph) : std::vector<bool>(n, false);
  ASSIGN_OR_RETURN(std::vector<StagedType> staged, PlanStaging(graph, options));
  std::vector<ValueId> staged_inputs;
  for (const StagedType& s : staged) {
    if (s.input) staged_inputs.push_back(s.value);
  }
  ASSIGN_OR_RETURN(const ArenaSchedule schedule,
                   ScheduleArena(graph, options, constant, staged_inputs));
  const std::vector<ValueId>& producers = schedule.producers;
  const ArenaLayout& layout = schedule.layout;
  MemoryStats m;
  for (const StagedType& s : staged) m.staging_bytes += s.batch.bytes();
  m.arena_bytes = layout.plan.arena_bytes;
  m.in_place_nodes = layout.in_place_nodes;
  m.scratch_bytes = ScratchBytesWith(graph, producers);
  if (!options.use_reference_kernels) {
    std::vector<ValueId> ropes;
    for (ValueId id = 0; id < n; ++id) {
      if (graph.node(id).op == OpKind::kRope && !constant[id]) ropes.push_back(id);
    }
    m.scratch_bytes += PlanRopeTables(graph, ropes).floats * sizeof(float);
  }
  const std::vector<std::vector<ValueId>> users = graph.ComputeUsers();
  for (ValueId id = 0; id < n; ++id) {
    const Node& node = graph.node(id);
    if (node.op == OpKind::kParameter) {
      const bool state = std::get<ParameterAttrs>(node.attrs).role == ParamRole::kOptimizerState;
      (state ? m.optimizer_state_bytes : m.weight_bytes) += node.type.bytes();
      continue;
    }
    if (!constant[id]) continue;
    ++m.constant_nodes;
    if (PersistsAfterPrologue(graph, constant, users, id))
      m.constant_bytes += ConstantSlotBytes(node);
  }
  return m;
}

}  // namespace fleettune::engine::runtime
