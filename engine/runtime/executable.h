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
// Thread-safety: one Executable runs one step at a time. Several executables
// may share a ParameterStore (training and evaluation), but not concurrently.
#ifndef FLEETTUNE_ENGINE_RUNTIME_EXECUTABLE_H_
#define FLEETTUNE_ENGINE_RUNTIME_EXECUTABLE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/ir/graph.h"
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
};

struct MemoryStats {
  size_t arena_bytes = 0;            // activations, gradients, inputs: the static arena
  size_t weight_bytes = 0;           // weights and buffers bound by this executable
  size_t optimizer_state_bytes = 0;  // momentum / Adam moments bound by this executable
  size_t scratch_bytes = 0;          // kernel workspace (im2col), one buffer shared by all ops
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

  const MemoryStats& memory() const { return memory_; }

  // With CompileOptions::profile: time per op kind summed over the steps run,
  // most expensive first, as a table. Empty otherwise.
  std::string ProfileReport() const;
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
  };
  Executable() = default;

  Graph graph_;
  std::byte* arena_ = nullptr;
  std::byte* scratch_ = nullptr;      // kernel workspace, MemoryStats::scratch_bytes
  std::vector<TensorView> views_;     // one per value
  std::vector<TensorView> operands_;  // flat storage behind every KernelArgs::inputs
  std::vector<Instr> program_;
  std::map<std::string, ValueId> inputs_;
  ops::StepInfo step_;
  bool updates_ = false;
  bool profile_ = false;
  std::vector<double> instr_seconds_;  // per instruction, when profiling
  MemoryStats memory_;
};

// Plans the arena of `graph` without compiling kernels: per-value buffer
// requests (aliases folded in), for memory reports and tests.
struct ArenaLayout {
  std::vector<ValueId> values;                  // arena-resident values, request order
  std::vector<memory::BufferRequest> requests;  // parallel to `values`
  memory::MemoryPlan plan;
  std::vector<ValueId> alias_of;  // per value: root value or itself
};
absl::StatusOr<ArenaLayout> PlanArena(const Graph& graph);

}  // namespace fleettune::engine::runtime

#endif  // FLEETTUNE_ENGINE_RUNTIME_EXECUTABLE_H_
