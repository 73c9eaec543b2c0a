// The training-plan compiler driver: a model and an update scheme in, a
// CompiledPlan (proto/fleettune/v1/plan.proto) with its cost metadata out.
//
//   CompileOptions options;
//   options.model_name = "mobilenet_v2";
//   ASSIGN_OR_RETURN(options.scheme, train::ResolvePreset(model, "sparse"));
//   options.optimizer = OptimizerConfig::Sgd({0.01f, 0.9f});
//   options.device_class = "rpi4";  options.threads = 4;
//   ASSIGN_OR_RETURN(CompiledTraining compiled, CompileTraining(model, options));
//   std::cout << FormatPlanSummary(compiled.plan.metadata());
//   RETURN_IF_ERROR(plan::WritePlan(path, compiled.plan));
//
// CompileTraining derives the whole training graph at compile time: forward,
// the backward pruned to what the trained parameters need, and the optimizer
// updates; optimizes it (engine/passes: BatchNorm folding, fusion, dead code,
// ReLU6 outputs packed to bit masks, updates reordered next to their
// gradients); then measures it without
// weights: the static arena (the runtime's own planner, with in-place
// execution and folded constants as the device will run them), kernel
// scratch, weight / gradient / optimizer-state / folded-constant bytes, FLOPs
// per step (cost.h), the kernel each op runs, what each pass did, and what an
// activation cache would save. A device rebuilds the
// graph from the plan (plan::GraphFromProto), binds its weights and compiles
// it with the metadata's fold_constants and in_place (RuntimeOptionsFor);
// Executable::memory() then reports exactly the arena, scratch and constant
// bytes the metadata promised.
//
// Errors: InvalidArgument for a scheme tensor the model lacks, a scheme that
// trains nothing, threads < 1, or a graph the verifier rejects. Thread-safe
// (pure).
#ifndef FLEETTUNE_ENGINE_COMPILE_COMPILER_H_
#define FLEETTUNE_ENGINE_COMPILE_COMPILER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/autodiff/autodiff.h"
#include "engine/ir/graph.h"
#include "engine/models/model.h"
#include "engine/passes/pipeline.h"
#include "engine/runtime/executable.h"
#include "engine/scheme/scheme.h"
#include "engine/train/trainer.h"
#include "proto/fleettune/v1/plan.pb.h"

namespace fleettune::engine::compile {

struct CompileOptions {
  std::string model_name;  // recorded in the metadata
  // What to update (scheme.name is recorded), partial channels included.
  scheme::ResolvedScheme scheme;
  autodiff::OptimizerConfig optimizer;
  std::string device_class;  // recorded in the metadata
  int threads = 1;           // the class's kernel threads
  // The class's kernel ISA level (engine/kernels/isa.h), recorded in the
  // metadata: "generic", "avx2" or "avx512".
  std::string kernel_isa = "generic";
  // Graph passes and runtime features; the metadata records which runtime
  // features the device must enable. Default: every pass, but constants are
  // not folded: BatchNorm-folded weights would sit next to the frozen weights
  // they come from (8.4 MiB more for MobileNetV2) to save one elementwise pass
  // over the weights per step; devices are short of memory, not of that time.
  passes::PassOptions passes = train::DefaultTrainingPasses();
  // Micro-batching (runtime::CompileOptions::micro_batches): `model` is built
  // for one slice, and a step runs it this many times over the batch, the
  // gradients accumulated in SGD's momentum buffers, so the arena holds one
  // slice's activations. A micro-batched plan outputs only the loss: the
  // whole batch's logits would need a staging buffer as large as the
  // activations it saves (32 MiB for Llama-mini's vocabulary). InvalidArgument
  // for graphs that cannot run in slices (runtime/executable.h).
  int micro_batches = 1;
};

struct CompiledTraining {
  Graph graph;            // the training graph (what plan.graph() encodes)
  v1::CompiledPlan plan;  // format version, graph and metadata
  // Model::loss and Model::logits in `graph` (passes renumber nodes); no
  // logits in a micro-batched plan.
  ValueId loss = kNoValue;
  ValueId logits = kNoValue;
};

absl::StatusOr<CompiledTraining> CompileTraining(const models::Model& model,
                                                 const CompileOptions& options);

// Everything a training step keeps: arena, scratch, folded constants, staged
// batch, weights and optimizer state.
uint64_t TrainingBytes(const v1::PlanMetadata& metadata);

// The runtime options a device compiles `metadata`'s plan with.
runtime::CompileOptions RuntimeOptionsFor(const v1::PlanMetadata& metadata);

// A human-readable summary of a plan's metadata: sizes in MiB and bytes,
// GFLOPs per step, node counts per phase and the kernels used, one fact per
// line.
std::string FormatPlanSummary(const v1::PlanMetadata& metadata);

}  // namespace fleettune::engine::compile

#endif  // FLEETTUNE_ENGINE_COMPILE_COMPILER_H_
