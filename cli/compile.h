// `fleettune compile`: compiles a training plan locally, the way the
// coordinator does for each device class, and prints its summary.
//
//   fleettune compile --model=mobilenet_v2 --scheme=bias-only --device-class=rpi4
//       --out=/tmp/mobilenet_v2.rpi4.plan
//
// Needs no coordinator: it builds the zoo model (engine/models/zoo.h), applies
// the scheme, derives and measures the training graph (engine/compile) for the
// class's threads, says whether it fits the class's training-memory budget,
// and writes the plan file when --out is given (devices load it with
// engine/plan/plan_io.h).
#ifndef FLEETTUNE_CLI_COMPILE_H_
#define FLEETTUNE_CLI_COMPILE_H_

#include <map>
#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace fleettune::cli {

// Flags (names without dashes), as ParseCommandLine collected them:
//   model           zoo model name (required)
//   scheme          preset: full, bias-only, last-k:N, freeze:A,B, sparse,
//                   pockengine (default full)
//   scheme-file     an UpdateScheme in protobuf text format (instead of --scheme)
//   device-class    class name (default x86-avx2)
//   device-classes  class config file (text proto); default the built-in classes
//   batch           examples per step (default 8)
//   batchnorm       frozen | train: BatchNorm statistics (default frozen)
//   optimizer       sgd | adamw (default sgd); lr (default 0.01); momentum (default 0.9)
//   out             where to write the plan (optional)
// With `json`, prints the plan metadata as one JSON object instead of the
// table. InvalidArgument naming the flag for a bad value; NotFound for an
// unknown model or class; the file's error for an unreadable config or an
// unwritable --out.
absl::Status RunCompile(const std::map<std::string, std::string>& flags, bool json,
                        std::ostream* out);

}  // namespace fleettune::cli

#endif  // FLEETTUNE_CLI_COMPILE_H_
