// Compiled-plan serialization: engine graphs to and from fleettune.v1 protos
// (proto/fleettune/v1/plan.proto), and plan files on disk.
//
//   // Coordinator: compile, then ship.
//   v1::CompiledPlan compiled;
//   compiled.set_format_version(plan::kPlanFormatVersion);
//   ASSIGN_OR_RETURN(*compiled.mutable_graph(), plan::GraphToProto(training_graph));
//   RETURN_IF_ERROR(plan::WritePlan("/var/cache/fleettune/mlp.rpi4.plan", compiled));
//
//   // Device: plans are untrusted; both steps validate.
//   ASSIGN_OR_RETURN(v1::CompiledPlan received, plan::ReadPlan(path));
//   ASSIGN_OR_RETURN(Graph graph, plan::GraphFromProto(received.graph()));
//
// Plans carry structure and sizes only, never training data or weights (see
// plan.proto); nothing here reads or writes tensor contents.
//
// Error codes (messages name the node, "node 12 (matmul): ...", or the path):
//   InvalidArgument     a graph or plan that breaks a rule below; a plan over
//                       kMaxPlanBytes; format_version 0; a path that is not a
//                       regular file.
//   FailedPrecondition  format_version newer than kPlanFormatVersion.
//   NotFound            ReadPlan: no such file.
//   DataLoss            the bytes do not parse as a CompiledPlan (truncated or
//                       corrupted file).
// Other I/O failures carry the code that matches errno.
//
// Thread-safety: the functions share no state; call them from any thread.
#ifndef FLEETTUNE_ENGINE_PLAN_PLAN_IO_H_
#define FLEETTUNE_ENGINE_PLAN_PLAN_IO_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/ir/graph.h"
#include "proto/fleettune/v1/plan.pb.h"

namespace fleettune::engine::plan {

// The CompiledPlan.format_version this build writes and the newest it reads.
inline constexpr uint32_t kPlanFormatVersion = 1;

// Largest serialized plan accepted. Plans hold no weights, so real ones are
// kilobytes to a few megabytes; the cap bounds the memory a hostile file can
// make the parser allocate.
inline constexpr int64_t kMaxPlanBytes = int64_t{256} << 20;

// Largest graph GraphFromProto accepts, in nodes (a large transformer's
// training graph has tens of thousands).
inline constexpr int kMaxGraphNodes = 1 << 20;

// ---------------------------------------------------------------------------
// GraphToProto()
//
// Converts a graph that passes VerifyGraph to its wire form. Ops whose
// attributes are NoAttrs leave `Node.attrs` unset. InvalidArgument if the
// graph fails VerifyGraph or a node holds attributes of the wrong kind for its
// op (the verifier does not check attributes of attribute-less ops).
absl::StatusOr<fleettune::v1::Graph> GraphToProto(const Graph& graph);

// ---------------------------------------------------------------------------
// GraphFromProto()
//
// Rebuilds a graph from untrusted wire data. Checks, node by node: the op is a
// known, specified OpKind; inputs name earlier nodes; the attrs oneof is the
// one the op takes, with valid enum values and shapes; the type has a known
// dtype and a valid shape. Then checks the outputs and runs VerifyGraph, whose
// error is returned as is. InvalidArgument on any violation; never crashes.
// Round trip: PrintGraph(*GraphFromProto(*GraphToProto(g))) == PrintGraph(g).
absl::StatusOr<Graph> GraphFromProto(const fleettune::v1::Graph& proto);

// ---------------------------------------------------------------------------
// OpKindToProto() / OpKindFromProto()
//
// The one-to-one mapping between engine OpKind and fleettune.v1.OpKind.
// InvalidArgument for an engine kind >= kCount, or a wire value that is
// unknown or OP_KIND_UNSPECIFIED.
absl::StatusOr<fleettune::v1::OpKind> OpKindToProto(OpKind op);
absl::StatusOr<OpKind> OpKindFromProto(fleettune::v1::OpKind op);

// ---------------------------------------------------------------------------
// ParsePlan()
//
// Parses serialized CompiledPlan bytes and checks the size cap and
// format_version; the graph is not validated (use GraphFromProto).
// InvalidArgument over kMaxPlanBytes or for format_version 0,
// FailedPrecondition for a newer format_version, DataLoss for bytes that do
// not parse.
absl::StatusOr<fleettune::v1::CompiledPlan> ParsePlan(absl::string_view bytes);

// ---------------------------------------------------------------------------
// WritePlan()
//
// Serializes `plan` to a temporary file beside `path` (mode 0644), fsyncs it
// and renames it over `path`, so readers see the old plan or the new one,
// never a torn file. InvalidArgument for format_version 0 or a plan over
// kMaxPlanBytes; I/O errors by errno (NotFound for a missing directory).
absl::Status WritePlan(const std::string& path, const fleettune::v1::CompiledPlan& plan);

// ---------------------------------------------------------------------------
// ReadPlan()
//
// Reads and parses a plan file with ParsePlan's checks. Messages start with
// the path. NotFound if it does not exist; InvalidArgument if it is not a
// regular file or is over kMaxPlanBytes; DataLoss if truncated or corrupted.
absl::StatusOr<fleettune::v1::CompiledPlan> ReadPlan(const std::string& path);

}  // namespace fleettune::engine::plan

#endif  // FLEETTUNE_ENGINE_PLAN_PLAN_IO_H_
