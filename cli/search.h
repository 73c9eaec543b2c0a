// `fleettune search`: picks an update scheme per device class (issue #7).
//
//   fleettune search --model=mlp --base=mnist_mlp.safetensors
//       --calibration=opencv-digits-png:third_party/data/opencv/digits.png
//       --classes=rpi4,x86-avx2 --plot=/tmp/profile.png --out-dir=/tmp/schemes
//
// Needs no coordinator. From the operator's calibration data (public or proxy
// data, never a device's), it fine-tunes each update candidate of the zoo
// model alone from the base weights (engine/search/contribution.h; the profile
// is cached per model, weights, data and options in --profile-cache), costs
// each candidate per class with the compiler (engine/search/cost_model.h),
// and selects the best set under each class's budget
// (engine/search/select.h). Unless --verify-steps=0, each class's shortlist
// (that selection, selections under smaller budgets, and the full, bias-only
// and last-k presets that fit) is then fine-tuned jointly on the calibration
// data, and a set that beat the selection by more than one standard error
// replaces it (engine/search/verify.h); the measurements join the cached
// profile, so `fleettune submit --profile` hands them to the coordinator,
// which then makes the same choices. It prints the profile as a table, then each
// class's scheme with its predicted memory, step time and gain; --plot draws
// contribution against cost per candidate (PNG); --out-dir writes each class's
// scheme as <class>.scheme (protobuf text format, for `fleettune compile
// --scheme-file` and job specs).
#ifndef FLEETTUNE_CLI_SEARCH_H_
#define FLEETTUNE_CLI_SEARCH_H_

#include <map>
#include <ostream>
#include <string>

#include "absl/status/status.h"

namespace fleettune::cli {

// Flags (names without dashes), as ParseCommandLine collected them:
//   model              zoo model name (required)
//   base               base weights, safetensors (required)
//   calibration        FORMAT:PATH of the calibration data: mnist-json, opencv-digits-png or idx
//                      (agent/data/readers.h) (required)
//   calibration-shard  I/N: use shard I of N of the calibration data (default all)
//   calibration-holdout  fraction held out to measure each candidate (default 0.5)
//   task               the profile's label (default the calibration file's name)
//   steps              fine-tuning steps per candidate (default 60)
//   calibration-batch  batch of those steps (default 32)
//   verify-steps       joint fine-tuning steps per shortlisted set (default 120; 0: none)
//   lr, momentum       SGD for those steps and for costing plans (defaults 0.05, 0.9)
//   gain               accuracy | loss: what a candidate's contribution is (default accuracy)
//   seed               (default 0)
//   threads            threads for the calibration runs (default 2)
//   batch              training batch the plans are costed at (default 32)
//   classes            comma-separated class names (default every class)
//   device-classes     class config file (text proto; default the built-in classes)
//   budget             class | overhead:F: the class's training-memory budget, or F in (0, 1]
//                      of full fine-tuning's training overhead (cost_model.h) (default class)
//   step-budget-ms     a step-time budget per class, from its training_flops_per_second
//   profile-cache      directory of cached profiles (default $HOME/.cache/fleettune/profiles;
//                      "none" disables caching)
//   plot               write the contribution-against-cost plot here (PNG)
//   out-dir            write <class>.scheme files here
// With `json`, prints one JSON object per class instead of the tables.
// InvalidArgument naming the flag for a bad value; NotFound for an unknown
// model, class or file; the search's own errors otherwise (e.g.
// ResourceExhausted when a class's budget fits no candidate: the other
// classes are still searched and printed, and the first such error is
// returned at the end).
absl::Status RunSearch(const std::map<std::string, std::string>& flags, bool json,
                       std::ostream* out);

}  // namespace fleettune::cli

#endif  // FLEETTUNE_CLI_SEARCH_H_
