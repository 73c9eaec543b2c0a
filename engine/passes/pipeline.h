// The pass pipeline: graph-level optimizations of a training graph, run after
// autodiff and before Executable::Compile().
//
//   ASSIGN_OR_RETURN(Graph graph, train::BuildTrainingGraph(model, trainable, optimizer));
//   PassOptions options;                       // every pass on
//   options.fuse = false;                      // each can be switched off
//   ASSIGN_OR_RETURN(PassReport report, RunPasses(graph, options));
//   std::cout << report.ToString();            // what each pass did
//   runtime::CompileOptions compile;
//   compile.fold_constants = options.fold_constants;   // runtime half, see below
//   compile.in_place = options.in_place;
//   ASSIGN_OR_RETURN(auto exe, runtime::Executable::Compile(graph, &params, compile));
//   ValueId loss = report.Map(model.loss);     // ids change: map the ones you hold
//
// Graph passes, in this order (each is one file with its own test):
//   fold_batch_norm  conv2d + frozen batch_norm_inference → one conv (fold_batch_norm.h)
//   fuse             head transposes and power-of-two scales → the matmuls
//                    that read or write them (fold_matmul.h), then
//                    conv/linear/frozen BN/add/norm + activation → fused op
//                    (fuse.h), then elementwise chains → elementwise_chain
//                    (fuse_elementwise.h); rewrites = folds + pairs + chains
//   dce              drop nodes no output, loss or update needs (dce.h)
//   pack_masks       ReLU/ReLU6 outputs kept for their gradient → bit masks,
//                    applied by the convolution input gradients they follow
//                    (pack_masks.h)
//   fuse_updates     weight-gradient matmul + SGD update → one update whose GEMM
//                    accumulates into the momentum buffer (fuse_updates.h)
//   reorder_updates  each update right after its gradient (reorder_updates.h)
// Runtime features the report measures but Compile() applies:
//   fold_constants   values of frozen parameters computed once (CompileOptions)
//   in_place         elementwise ops overwrite a dying input (CompileOptions)
//
// With `verify` the verifier runs after every pass (tests set it; it is cheap
// next to compilation). With `measure_memory` the report plans the arena
// (runtime::PlanArena) before and after each pass to give bytes saved.
// Not thread-safe (mutates the graph).
#ifndef FLEETTUNE_ENGINE_PASSES_PIPELINE_H_
#define FLEETTUNE_ENGINE_PASSES_PIPELINE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/ir/graph.h"

namespace fleettune::engine::passes {

struct PassOptions {
  bool fold_batch_norm = true;
  bool fuse = true;
  bool dce = true;
  bool pack_masks = true;
  bool fuse_updates = true;
  bool reorder_updates = true;
  // Runtime halves: copy into runtime::CompileOptions.
  bool fold_constants = true;
  bool in_place = true;
  // Run VerifyGraph after every pass; Internal error naming the pass if it fails.
  bool verify = true;
  // Plan the arena before and after each pass (adds one planning per pass).
  bool measure_memory = true;

  // "all", "none", or a comma list of pass names to turn on ("dce,fuse").
  // InvalidArgument for an unknown name.
  static absl::StatusOr<PassOptions> Parse(absl::string_view spec);
};

// What one pass did.
struct PassStats {
  std::string name;
  bool enabled = false;
  bool changed = false;
  int nodes_before = 0;
  int nodes_after = 0;
  // pairs folded / fused, nodes removed, values packed, updates moved, constants, in-place ops
  int rewrites = 0;
  // Arena bytes (runtime::PlanArena) before and after; 0 without measure_memory.
  size_t arena_bytes_before = 0;
  size_t arena_bytes_after = 0;
};

struct PassReport {
  std::vector<PassStats> passes;
  // Old id (before RunPasses) → new id, kNoValue for removed values.
  std::vector<ValueId> old_to_new;
  ValueId Map(ValueId old_id) const {
    return old_id >= 0 && old_id < static_cast<ValueId>(old_to_new.size()) ? old_to_new[old_id]
                                                                           : kNoValue;
  }
  // One line per pass, for `fleettune compile`.
  std::string ToString() const;
};

// Runs the enabled passes on `graph` in the order above. The graph is verified
// first (InvalidArgument from VerifyGraph for a malformed one: the individual
// passes assume a verified graph). Errors: a pass's own error, or Internal when
// the graph fails verification after a pass (message names the pass).
absl::StatusOr<PassReport> RunPasses(Graph& graph, const PassOptions& options = {});

}  // namespace fleettune::engine::passes

#endif  // FLEETTUNE_ENGINE_PASSES_PIPELINE_H_
