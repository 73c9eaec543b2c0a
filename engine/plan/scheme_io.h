// Conversion between fleettune.v1.UpdateScheme (proto/fleettune/v1/scheme.proto)
// and the engine's scheme::UpdateScheme, and its text form. Lives in
// engine/plan/ because only this directory of engine/ uses protobuf.
//
//   ASSIGN_OR_RETURN(scheme::UpdateScheme s, ParseSchemeText(file_contents));
//   ASSIGN_OR_RETURN(scheme::ResolvedScheme r, scheme::ResolveScheme(model, s));
//
// The text form is protobuf text format, parsed by google::protobuf::TextFormat
// (a well-kept library parser; we do not write our own). Schemes come from
// operators and files, so every input is untrusted: errors, never crashes.
// Thread-safe (functions only).
#ifndef FLEETTUNE_ENGINE_PLAN_SCHEME_IO_H_
#define FLEETTUNE_ENGINE_PLAN_SCHEME_IO_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/scheme/scheme.h"
#include "proto/fleettune/v1/scheme.pb.h"

namespace fleettune::engine::plan {

// Bounds on untrusted schemes.
inline constexpr size_t kMaxSchemeTextBytes = size_t{1} << 20;
inline constexpr int kMaxSchemeRules = 100000;

// InvalidArgument for a rule with an unspecified or unknown mode, or more than
// kMaxSchemeRules rules (the message names the rule index and pattern). The
// rules' meaning is checked later, against a model, by scheme::ResolveScheme.
absl::StatusOr<scheme::UpdateScheme> SchemeFromProto(const v1::UpdateScheme& proto);

v1::UpdateScheme SchemeToProto(const scheme::UpdateScheme& scheme);

// Parses the text format. InvalidArgument with line and column for a syntax
// error, for text over kMaxSchemeTextBytes, and as SchemeFromProto.
absl::StatusOr<scheme::UpdateScheme> ParseSchemeText(absl::string_view text);

// The text format of `scheme` (round-trips through ParseSchemeText).
std::string SchemeToText(const scheme::UpdateScheme& scheme);

}  // namespace fleettune::engine::plan

#endif  // FLEETTUNE_ENGINE_PLAN_SCHEME_IO_H_
