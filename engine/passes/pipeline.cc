#include "engine/passes/pipeline.h"

#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/base/status_macros.h"
#include "engine/ir/verifier.h"
#include "engine/passes/dce.h"
#include "engine/passes/fold_batch_norm.h"
#include "engine/passes/fold_matmul.h"
#include "engine/passes/fuse.h"
#include "engine/passes/fuse_elementwise.h"
#include "engine/passes/fuse_updates.h"
#include "engine/passes/pack_masks.h"
#include "engine/passes/reorder_updates.h"
#include "engine/passes/rewrite.h"
#include "engine/runtime/executable.h"

namespace fleettune::engine::passes {
namespace {

absl::StatusOr<size_t> ArenaBytes(const Graph& graph, bool fold_constants, bool in_place) {
  runtime::ArenaOptions options;
  options.in_place = in_place;
  if (fold_constants) options.outside_arena = runtime::FindConstants(graph);
  ASSIGN_OR_RETURN(runtime::ArenaLayout layout, runtime::PlanArena(graph, options));
  return layout.plan.arena_bytes;
}

}  // namespace

absl::StatusOr<PassOptions> PassOptions::Parse(absl::string_view spec) {
  PassOptions all;
  if (spec == "all") return all;
  PassOptions out = all;
  out.fold_batch_norm = out.fuse = out.dce = out.pack_masks = out.fuse_updates = false;
  out.reorder_updates = false;
  out.fold_constants = out.in_place = false;
  if (spec == "none" || spec.empty()) return out;
  for (absl::string_view name : absl::StrSplit(spec, ',')) {
    if (name == "fold_batch_norm") {
      out.fold_batch_norm = true;
    } else if (name == "fuse") {
      out.fuse = true;
    } else if (name == "dce") {
      out.dce = true;
    } else if (name == "pack_masks") {
      out.pack_masks = true;
    } else if (name == "fuse_updates") {
      out.fuse_updates = true;
    } else if (name == "reorder_updates") {
      out.reorder_updates = true;
    } else if (name == "fold_constants") {
      out.fold_constants = true;
    } else if (name == "in_place") {
      out.in_place = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown pass '", name,
          "' (known: fold_batch_norm, fuse, dce, pack_masks, fuse_updates, reorder_updates, "
          "fold_constants, in_place, all, none)"));
    }
  }
  return out;
}

std::string PassReport::ToString() const {
  std::string out = absl::StrFormat("%-16s %-4s %7s %7s %8s %14s %14s\n", "pass", "on", "nodes",
                                    "after", "rewrites", "arena_before", "arena_after");
  for (const PassStats& p : passes) {
    absl::StrAppendFormat(&out, "%-16s %-4s %7d %7d %8d %14zu %14zu\n", p.name,
                          p.enabled ? "yes" : "no", p.nodes_before, p.nodes_after, p.rewrites,
                          p.arena_bytes_before, p.arena_bytes_after);
  }
  return out;
}

absl::StatusOr<PassReport> RunPasses(Graph& graph, const PassOptions& options) {
  // The passes assume a well-formed graph (inputs earlier, attributes of the
  // op's type); plans arrive from outside, so check first.
  RETURN_IF_ERROR(VerifyGraph(graph));
  PassReport report;
  report.old_to_new.resize(graph.num_nodes());
  std::iota(report.old_to_new.begin(), report.old_to_new.end(), 0);
  // Graph passes measure the arena as Compile() will plan it: without the
  // runtime features, so each graph pass's saving is its own.
  auto run = [&](const char* name, bool enabled, auto&& pass) -> absl::Status {
    PassStats stats;
    stats.name = name;
    stats.enabled = enabled;
    stats.nodes_before = stats.nodes_after = graph.num_nodes();
    if (options.measure_memory) {
      ASSIGN_OR_RETURN(stats.arena_bytes_before, ArenaBytes(graph, false, false));
      stats.arena_bytes_after = stats.arena_bytes_before;
    }
    if (enabled) {
      std::vector<ValueId> map;
      ASSIGN_OR_RETURN(stats.changed, pass(&map, &stats.rewrites));
      if (stats.changed) report.old_to_new = ComposeMaps(report.old_to_new, map);
      if (options.verify) {
        if (absl::Status s = VerifyGraph(graph); !s.ok()) {
          return absl::InternalError(
              absl::StrCat("graph fails verification after pass ", name, ": ", s.message()));
        }
      }
      stats.nodes_after = graph.num_nodes();
      if (options.measure_memory) {
        ASSIGN_OR_RETURN(stats.arena_bytes_after, ArenaBytes(graph, false, false));
      }
    }
    report.passes.push_back(stats);
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(run("fold_batch_norm", options.fold_batch_norm,
                      [&](std::vector<ValueId>* map, int* n) -> absl::StatusOr<bool> {
                        int pairs = 0, grads = 0;
                        ASSIGN_OR_RETURN(bool changed, FoldBatchNorm(graph, map, &pairs, &grads));
                        *n = pairs + grads;
                        return changed;
                      }));
  RETURN_IF_ERROR(
      run("fuse", options.fuse, [&](std::vector<ValueId>* map, int* n) -> absl::StatusOr<bool> {
        // Matmul folds first: a scale they take would otherwise join a chain.
        std::vector<ValueId> folds_map, pairs_map, chains_map;
        int folds = 0, pairs = 0, chains = 0;
        ASSIGN_OR_RETURN(bool folded, FoldIntoMatMuls(graph, &folds_map, &folds));
        ASSIGN_OR_RETURN(bool paired, FuseActivations(graph, &pairs_map, &pairs));
        ASSIGN_OR_RETURN(bool chained, FuseElementwiseChains(graph, &chains_map, &chains));
        *map = ComposeMaps(ComposeMaps(folds_map, pairs_map), chains_map);
        *n = folds + pairs + chains;
        return folded || paired || chained;
      }));
  RETURN_IF_ERROR(run("dce", options.dce, [&](std::vector<ValueId>* map, int* n) {
    const int before = graph.num_nodes();
    absl::StatusOr<bool> changed = EliminateDeadCode(graph, map);
    *n = before - graph.num_nodes();
    return changed;
  }));
  RETURN_IF_ERROR(
      run("pack_masks", options.pack_masks,
          [&](std::vector<ValueId>* map, int* n) -> absl::StatusOr<bool> {
            // Pack, then fold masks into convolutions' input gradients.
            std::vector<ValueId> pack_map, fold_map;
            int packed = 0, folded = 0;
            ASSIGN_OR_RETURN(bool packs, PackActivationMasks(graph, &pack_map, &packed));
            ASSIGN_OR_RETURN(bool folds, FoldMasksIntoConvGrads(graph, &fold_map, &folded));
            *map = ComposeMaps(pack_map, fold_map);
            *n = packed + folded;
            return packs || folds;
          }));
  RETURN_IF_ERROR(run("fuse_updates", options.fuse_updates, [&](std::vector<ValueId>* map, int* n) {
    return FuseUpdates(graph, map, n);
  }));
  RETURN_IF_ERROR(run("reorder_updates", options.reorder_updates,
                      [&](std::vector<ValueId>* map, int* n) -> absl::StatusOr<bool> {
                        ASSIGN_OR_RETURN(bool changed, ReorderUpdates(graph, map));
                        *n = 0;
                        for (size_t i = 0; i < map->size(); ++i) {
                          if ((*map)[i] != static_cast<ValueId>(i)) ++*n;
                        }
                        return changed;
                      }));
  // Runtime features: measured here, applied by Compile().
  for (const char* name : {"fold_constants", "in_place"}) {
    const bool fold = std::string(name) == "fold_constants";
    PassStats stats;
    stats.name = name;
    stats.enabled = fold ? options.fold_constants : options.in_place;
    stats.nodes_before = stats.nodes_after = graph.num_nodes();
    if (stats.enabled) {
      if (fold) {
        const std::vector<bool> constant = runtime::FindConstants(graph);
        for (ValueId id = 0; id < graph.num_nodes(); ++id) {
          if (constant[id] && graph.node(id).op != OpKind::kParameter) ++stats.rewrites;
        }
      }
      if (options.measure_memory) {
        // Cumulative: constants first, then in-place on top of them.
        const bool fold_on = fold || options.fold_constants;
        ASSIGN_OR_RETURN(stats.arena_bytes_before,
                         ArenaBytes(graph, fold ? false : fold_on, false));
        ASSIGN_OR_RETURN(stats.arena_bytes_after, ArenaBytes(graph, fold_on, !fold));
      }
      if (!fold) {
        runtime::ArenaOptions arena;
        arena.in_place = true;
        if (options.fold_constants) arena.outside_arena = runtime::FindConstants(graph);
        ASSIGN_OR_RETURN(runtime::ArenaLayout layout, runtime::PlanArena(graph, arena));
        stats.rewrites = layout.in_place_nodes;
      }
      stats.changed = stats.rewrites > 0;
    }
    report.passes.push_back(stats);
  }
  return report;
}

}  // namespace fleettune::engine::passes
