// The runtime: compile a graph once, then run steps with no allocation.
//
//   ParameterStore params;                  // weights (and optimizer state)
//   RETURN_IF_ERROR(params.Set("fc1.weight", w));
//   ASSIGN_OR_RETURN(auto exe, Executable::Compile(graph, &params, {.threads = 2}));
//   ASSIGN_OR_RETURN(TensorView x, exe->Input("x"));   // write the batch here
//   RETURN_IF_ERROR(exe->Run());
//   ASSIGN_OR_RETURN(TensorView loss, exe->Output(loss_id));
//
// Compile() verifies the graph, binds parameters (creating zero tensors for
// missing optimizer state; weights and buffers must be present), sizes one
// kernel workspace (OpDef::scratch_bytes), plans one static arena for
// every other value (liveness + greedy offsets, checked for overlap), and lays
// out an instruction list of plain function pointers. Run() only calls
// kernels. Reshapes alias their input instead of copying.
//
// In-place execution (CompileOptions::in_place, on by default): an elementwise
// op whose input dies at that op writes its output over the input's buffer
// (InPlaceInput() lists the ops and operands; in_place_test.cc runs each one's
// kernels in place). The planner's checker proves every such pair legal.
//
// Constant folding (CompileOptions::fold_constants, off by default): a value
// that depends only on frozen parameters (weights and buffers no update node
// writes) and kFill constants is computed once, by a prologue that Compile()
// runs, into persistent storage outside the arena (MemoryStats::constant_bytes);
// Run() skips those nodes. The prologue reads the ParameterStore's tensors
// as they are at Compile(): after changing a frozen weight in the store (a new
// checkpoint, or training it through another executable that shares the
// store), call RefreshConstants() before the next Run(). That is why the
// option is off by default: an evaluation executable sharing its store with a
// training one would otherwise see stale weights.
//
// Thread-safety: one Executable runs one step at a time. Several executables
// may share a ParameterStore (training and evaluation), but not concurrently.
#ifndef FLEETTUNE_ENGINE_RUNTIME_EXECUTABLE_H_
#define FLEETTUNE_ENGINE_RUNTIME_EXECUTABLE_H_

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"
#include "engine/kernels/isa.h"
#include "engine/memory/planner.h"
#include "engine/ops/op_registry.h"

namespace fleettune::engine::runtime {

// Named persistent tensors: model weights and optimizer state.
class ParameterStore {
 public:
  // Adds a tensor, or copies `tensor` into the existing one of that name. The
  // storage of an existing tensor never moves, so executables bound to it stay
  // valid. InvalidArgument if the existing tensor has another type.
  absl::Status Set(const std::string& name, const Tensor& tensor);
  Tensor* Find(const std::string& name);
  const Tensor* Find(const std::string& name) const;
  const std::map<std::string, Tensor>& tensors() const { return tensors_; }
  size_t bytes() const;

 private:
  std::map<std::string, Tensor> tensors_;
};

struct CompileOptions {
  // Threads for GEMM (process-wide: the last compile wins).
  int threads = 1;
  // Use every op's reference kernel (tests and debugging).
  bool use_reference_kernels = false;
  // Time every instruction (two clock reads each); see ProfileReport().
  bool profile = false;
  // Elementwise ops write over an input that dies at them (see above).
  bool in_place = true;
  // Compute values of frozen parameters once at Compile() (see above).
  bool fold_constants = false;
  // The vector width of the engine's own kernels (engine/kernels/isa.h):
  // "generic", "avx2" or "avx512", as a plan's device class names it; empty
  // for the widest this CPU runs. Set on every Run (process-wide).
  // InvalidArgument for an unknown name, FailedPrecondition when this CPU
  // lacks it.
  std::string kernel_isa;
  // Micro-batching, the planner's lever on activation memory: `graph` is
  // built for one slice of the batch, and Run() runs it once per slice,
  // `micro_batches` slices in all. Input() and Output() are the whole
  // batch's, staged outside the arena (MemoryStats::staging_bytes): every
  // input not named in `shared_inputs` is per-example, its dim 0 batch-major,
  // and slice k is rows [k·n, (k+1)·n) of it, which kernels read in place (no
  // arena copy); an f32 scalar output (the loss)
  // is the slices' weighted sum, any other output their concatenation along
  // dim 0. Each slice's gradients count its share of the examples the loss
  // counts (its softmax cross-entropy labels that are not ignored; equal
  // shares for other losses), and SGD accumulates them in its momentum
  // buffer (engine/ops/optimizer.cc): the update is the one the whole batch
  // would give, up to the order of the sums, while the arena holds one
  // slice's activations. InvalidArgument for ops that couple a batch's
  // examples (BatchNorm with batch statistics, dropout's per-step masks) or an
  // update with no buffer to accumulate in (AdamW, SGD without momentum).
  int micro_batches = 1;
  std::vector<std::string> shared_inputs;  // the same for every slice (positions)
};

struct MemoryStats {
  size_t arena_bytes = 0;            // activations, gradients, inputs: the static arena
  size_t weight_bytes = 0;           // weights and buffers bound by this executable
  size_t optimizer_state_bytes = 0;  // momentum / Adam moments bound by this executable
  size_t scratch_bytes = 0;          // kernel workspace (im2col) shared by all ops, rope tables
  size_t constant_bytes = 0;         // folded constants the step reads (fold_constants)
  int constant_nodes = 0;            // nodes the prologue computes instead of every step
  int in_place_nodes = 0;            // nodes writing over a dying input (in_place)
  size_t staging_bytes = 0;          // micro-batching: the whole batch's inputs and outputs

  // Everything a step keeps in memory: arena, scratch, folded constants,
  // staging, weights and optimizer state.
  size_t total_bytes() const {
    return arena_bytes + scratch_bytes + constant_bytes + staging_bytes + weight_bytes +
           optimizer_state_bytes;
  }
};

class Executable {
 public:
  // InvalidArgument if the graph does not verify, a weight is missing from
  // `params`, or a stored tensor's type differs from the graph's.
  static absl::StatusOr<std::unique_ptr<Executable>> Compile(const Graph& graph,
                                                             ParameterStore* params,
                                                             const CompileOptions& options = {});

  // The arena buffer of input `name`; write the step's data into it.
  // NotFound for an unknown input.
  absl::StatusOr<TensorView> Input(const std::string& name);
  // Copies `value` into input `name`; InvalidArgument on a type mismatch.
  absl::Status SetInput(const std::string& name, const Tensor& value);
  // A value marked with Graph::MarkOutput, valid until the next Run().
  // InvalidArgument if `id` is not a marked output.
  absl::StatusOr<TensorView> Output(ValueId id) const;

  // Runs one step. Never allocates.
  absl::Status Run();

  // Recomputes the folded constants from the parameter store's current
  // tensors (no-op without CompileOptions::fold_constants). Call it after
  // changing a frozen weight or buffer in the store. Allocates a temporary
  // workspace for the prologue's intermediate values; not for the step loop.
  absl::Status RefreshConstants();

  const MemoryStats& memory() const { return memory_; }

  // With CompileOptions::profile: time per op kind per step, averaged over the
  // steps run since compiling or the last ResetProfile(), most expensive
  // first, as a table; then, with slowest_nodes > 0, that many
  // single nodes, slowest first, with their input and output types (which
  // matmul or convolution is slow, not only that matmuls are). Empty without
  // profiling.
  std::string ProfileReport(int slowest_nodes = 0) const;
  // Forgets the times profiled so far: call it after warm-up steps, whose
  // one-time costs (the first GEMM JIT-compiles oneDNN's kernels, ~50 ms)
  // would otherwise be spread over the steps measured.
  void ResetProfile();
  const Graph& graph() const { return graph_; }
  int64_t steps_run() const { return step_.step - 1; }
  // Sets the optimizer step count, to resume from a checkpoint (AdamW's bias
  // correction depends on it).
  void set_steps_run(int64_t steps) { step_.step = steps + 1; }

  Executable(const Executable&) = delete;
  Executable& operator=(const Executable&) = delete;
  ~Executable();

 private:
  struct Instr {
    ops::KernelFn fn;
    ops::KernelArgs args;
    ValueId node = kNoValue;  // the node it runs
  };
  // A value of one slice and the whole batch's. An input's slice is read in
  // place in the batch (operand_slots: where its view is in operands_); an
  // output's is copied out of the arena.
  struct Staged {
    ValueId value = kNoValue;
    Tensor batch;
    std::vector<size_t> operand_slots;
  };
  Executable() = default;
  // Allocates the staged batch: per-example inputs, then outputs, each a
  // value and its type for the whole batch.
  void SetUpMicroBatches(int micro_batches,
                         const std::vector<std::pair<ValueId, TensorType>>& inputs,
                         const std::vector<std::pair<ValueId, TensorType>>& outputs);
  // Each slice's share of the loss's counted examples.
  void WeighMicroBatches();
  void RunProgram();
  void ShareRopeTables();

  Graph graph_;
  std::byte* arena_ = nullptr;
  std::byte* constants_ = nullptr;  // persistent folded constants
  // Prologue: constant nodes in graph order; intermediate constants (read
  // only by other constants) live in a workspace planned at Compile() and
  // allocated only while the prologue runs.
  std::vector<ValueId> prologue_;
  std::vector<ValueId> prologue_temps_;        // values in the workspace
  std::vector<size_t> prologue_temp_offsets_;  // parallel to prologue_temps_
  size_t prologue_workspace_bytes_ = 0;
  bool use_reference_kernels_ = false;
  kernels::Isa isa_ = kernels::Isa::kGeneric;
  std::byte* scratch_ = nullptr;  // kernel workspace, MemoryStats::scratch_bytes
  // Cos/sin tables that rope nodes share (ShareRopeTables), counted in
  // MemoryStats::scratch_bytes.
  std::byte* rope_tables_ = nullptr;
  std::vector<TensorView> views_;     // one per value
  std::vector<TensorView> operands_;  // flat storage behind every KernelArgs::inputs
  std::vector<Instr> program_;
  // Absorbed producers' kernel arguments (AbsorbedProducers), which the
  // nodes computing them point at (KernelArgs::producer); never reallocated.
  std::vector<ops::KernelArgs> producer_args_;
  std::map<std::string, ValueId> inputs_;
  ops::StepInfo step_;
  bool updates_ = false;
  bool profile_ = false;
  std::vector<double> instr_seconds_;  // per instruction, when profiling
  int64_t profiled_steps_ = 0;
  MemoryStats memory_;
  // Micro-batching (CompileOptions::micro_batches).
  int micro_batches_ = 1;
  std::vector<Staged> staged_inputs_;
  std::vector<Staged> staged_outputs_;
  std::vector<float> gradient_weights_;  // per slice, summing to 1
  // The loss's labels among staged_inputs_ (-1: equal shares), its class
  // count and ignore index.
  int label_input_ = -1;
  int64_t label_classes_ = 0;
  int32_t ignore_index_ = 0;
};

// Plans the arena of `graph` without compiling kernels: per-value buffer
// requests (aliases folded in), for memory reports and tests.
struct ArenaLayout {
  std::vector<ValueId> values;                  // arena-resident values, request order
  std::vector<memory::BufferRequest> requests;  // parallel to `values`
  memory::MemoryPlan plan;
  std::vector<ValueId> alias_of;  // per value: root value or itself
  // Per value: a reshape reading a frozen parameter's storage (its alias_of
  // root), in no arena buffer.
  std::vector<bool> parameter_view;
  int in_place_nodes = 0;  // requests with in_place_of set
};
struct ArenaOptions {
  // Let elementwise ops overwrite an input that dies at them.
  bool in_place = true;
  // Per value: true when it lives outside the arena (folded constants).
  // Empty: none.
  std::vector<bool> outside_arena;
  // Per value: the earlier node whose kernel writes it along with its own
  // output (AbsorbedMasks, AbsorbedChannelSums), so that its buffer is live
  // from that node on; kNoValue for the rest. Empty: none.
  std::vector<ValueId> written_by;
  // Per value: a later node whose kernel reads it although it is not that
  // node's operand (AbsorbedProducers: the producer's operands), so that its
  // buffer stays live until that node; kNoValue for the rest. Empty: none.
  std::vector<ValueId> read_until;
};
absl::StatusOr<ArenaLayout> PlanArena(const Graph& graph, const ArenaOptions& options = {});

// The operand of `node` its output may overwrite in place, when the op's
// kernels allow it: elementwise ops (relu, scale, activation, add, sub, mul,
// div and their gradients, frozen BatchNorm and its input gradient, the fused
// activation ops' elementwise tails excluded; an elementwise_chain's inputs
// that only its first step reads) and row-wise ops whose kernels read a row's
// statistics before writing it element by element (softmax, its gradient,
// softmax cross-entropy's gradient over the logits), whose output has the
// operand's type. Returns candidate operand indices, best first; empty when
// none.
std::vector<int> InPlaceCandidates(const Graph& graph, ValueId id);

// The activation_mask nodes the fast kernels compute inside the convolution
// they read: per node, the conv2d_activation (ReLU or ReLU6, the mask's clamp)
// that packs its bits while each output plane is in cache, or kNoValue. The
// planes must be whole mask words (ho·wo a multiple of 32), since threads
// write planes side by side. Compile() skips such a node's own instruction;
// its buffer is live from the convolution on (ArenaOptions::written_by).
std::vector<ValueId> AbsorbedMasks(const Graph& graph);

// Likewise for bias gradients: the reduce_sum nodes over (N, H, W) of a
// conv2d_backward_input's dx [N, C, H, W] (H·W > 1), which its fast kernel
// computes as it writes each plane (KernelArgs::channel_sums), in the order
// reduce_sum's fast kernel sums, so the bits are the same. Per node, the
// convolution that computes it, or kNoValue.
std::vector<ValueId> AbsorbedChannelSums(const Graph& graph);

// Softmax cross-entropy losses its gradient computes too: a marked output
// no node reads, whose softmax_cross_entropy_grad (same logits, labels and
// attributes) comes later and computes the row statistics the loss is made
// of (KernelArgs::cross_entropy_loss), the same bits as the loss's own fast
// kernel. Per node, that gradient, or kNoValue. The loss's buffer lives to
// the end of the step as an output, so the later write is safe.
std::vector<ValueId> AbsorbedLosses(const Graph& graph);

// Convolutions a later convolution computes too, a few channels at a time
// through per-thread scratch, so that the tensor between them (an inverted
// residual block's expanded activations, or their gradient) never reaches
// memory (ops::parts::ExpandDepthwiseFast, DepthwiseExpandGradFast):
//  - a pointwise ReLU/ReLU6 conv2d_activation whose output only a depthwise
//    conv2d_activation reads (besides its absorbed activation_mask), and
//  - a depthwise conv2d_backward_input whose dx only a pointwise
//    conv2d_backward_input reads (besides its absorbed bias gradient),
// on planes of 32×32 and larger: smaller ones ran slower this way (their
// tensors fit in cache anyway); and
//  - such a depthwise conv2d_activation (one computing its expand layer)
//    whose output only the block's projection reads, a pointwise conv2d
//    (ops::parts::InvertedResidualFast: all three layers), and
//  - the projection's input gradient, a pointwise conv2d_backward_input,
//    whose dx only such a depthwise input gradient (one the expand layer's
//    computes) reads, besides its absorbed bias gradient
//    (ops::parts::InvertedResidualGradFast).
// Per node, the convolution that computes it, or kNoValue. Compile() skips
// such a node's instruction, keeps its operands live until the node that
// runs the chain (ArenaOptions::read_until) and gives its output no buffer.
// What a chain's kernels write for absorbed nodes (masks, bias gradients'
// sums) is written when the chain runs: a node reading it before then (a
// bias's SGD update, which reorder_updates puts right after its gradient)
// runs right after the chain, or, where it cannot wait, the chain is undone.
std::vector<ValueId> AbsorbedProducers(const Graph& graph);

// Frozen BatchNorm scalings of a convolution weight, W·s (passes/
// fold_batch_norm.h: batch_norm_inference(reshape(W), 0, σ², γ, 0), then a
// reshape back), over the output channels of its only reader, a pointwise
// conv2d, conv2d_activation or conv2d_backward_input: that convolution applies
// s itself (ops::parts::IsWeightScaling; in its epilogue, as it packs W, on
// dY, or W·s into its scratch), instead of a node writing W·s to the arena
// for it to read back. MobileNetV2 has two a layer (forward and backward),
// 1.6 MB for its largest. Per node, for the scaling and the reshape after it,
// the convolution, or kNoValue. Compile() treats both as AbsorbedProducers do
// theirs, except that the reshape has no kernel arguments of its own.
std::vector<ValueId> AbsorbedWeightScalings(const Graph& graph);

// Values computable once at compile time: kFill, parameters no update node
// writes (weights and buffers; never optimizer state), and nodes whose inputs
// all are such values (dropout excluded: its mask changes every step).
std::vector<bool> FindConstants(const Graph& graph);

// The MemoryStats Compile(graph, params, options) will report, without
// weights or allocation: for budgets and plan metadata. weight_bytes counts
// every weight and buffer the graph names. InvalidArgument if the graph does
// not verify.
absl::StatusOr<MemoryStats> EstimateMemory(const Graph& graph, const CompileOptions& options = {});

}  // namespace fleettune::engine::runtime

#endif  // FLEETTUNE_ENGINE_RUNTIME_EXECUTABLE_H_
