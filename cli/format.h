// Rendering of FleetService responses for the `fleettune` operator CLI.
//
// Pure functions from protos (and the current time, for ages) to text: aligned
// tables for people, one-line JSON for scripts. Nothing here talks to the
// network or reads the clock, so every view is unit-tested.
//
//   std::cout << FormatJobList(response.jobs(), absl::Now());
//   ASSIGN_OR_RETURN(std::string line, FormatJson(response));
//
// Every string that came from the coordinator (names, board names, failure
// details) is untrusted: table cells have control characters replaced so a
// device cannot send escape sequences to the operator's terminal.
//
// Units: bytes as B/KiB/MiB/GiB (1024-based); accuracies and
// memory_saving_vs_dense are fractions in [0, 1] and print as percentages;
// speedup_vs_dense is a ratio and prints as "2.10x". A metric that is 0 means
// "not measured yet" (the proto's convention) and prints as "-".
//
// Thread-safe: no shared state.
#ifndef FLEETTUNE_CLI_FORMAT_H_
#define FLEETTUNE_CLI_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "google/protobuf/repeated_field.h"
#include "google/protobuf/timestamp.pb.h"
#include "proto/fleettune/v1/device.pb.h"
#include "proto/fleettune/v1/job.pb.h"

namespace fleettune::cli {

// ---------------------------------------------------------------------------
// Cells

// "0 B", "512 B", "1.5 KiB", "3.2 MiB", "1.0 GiB". Negative sizes print "-".
std::string FormatBytes(int64_t bytes);

// A fraction as a percentage with one decimal: 0.845 -> "84.5%".
std::string FormatPercent(double fraction);

// A ratio with two decimals: 2.1 -> "2.10x".
std::string FormatRatio(double ratio);

// A count with thousands separators: 235146 -> "235,146".
std::string FormatCount(int64_t n);

// A non-negative duration, coarsened to its two largest units: "0s", "45s",
// "3m12s", "2h05m", "3d04h". Negative durations print as their magnitude.
std::string FormatShortDuration(absl::Duration d);

// RFC 3339 in UTC, to the second ("2024-05-01T12:00:00Z"); "-" when unset.
std::string FormatTimestamp(const google::protobuf::Timestamp& t);

// "running", "succeeded", ...; "unspecified" for 0, the number for unknown values.
std::string JobStateName(v1::JobState state);

// "online", "offline", ...
std::string DeviceStateName(v1::DeviceState state);

// "full", "last-k:2", ... or "fit" for fit_class_budget; "-" when unset.
std::string SchemeName(const v1::SchemeSpec& scheme);

// Converts a Timestamp to absl::Time; absl::InfinitePast() when unset.
absl::Time ToTime(const google::protobuf::Timestamp& t);

// Replaces C0/C1 control characters (ESC included) with '?'.
std::string SanitizeForTerminal(absl::string_view text);

// Columns a string takes in a terminal, counting UTF-8 code points.
int DisplayWidth(absl::string_view text);

// ---------------------------------------------------------------------------
// Tables

enum class Align { kLeft, kRight };

struct Column {
  std::string title;
  Align align = Align::kLeft;
};

// A header row and the rows under it, columns two spaces apart, no trailing
// spaces. Cells are sanitized; rows shorter than the header are padded.
std::string RenderTable(const std::vector<Column>& columns,
                        const std::vector<std::vector<std::string>>& rows);

// ---------------------------------------------------------------------------
// Views of responses. `now` gives the ages ("5m12s") and time to deadlines.

// ListJobs: ID, NAME, STATE, SCHEME, DEVICES (completed/wanted), AGE. "no jobs" when empty.
std::string FormatJobList(const google::protobuf::RepeatedPtrField<v1::Job>& jobs, absl::Time now);

// GetJob, CreateJob, CancelJob: the spec as key/value lines, then the plan and
// the progress of each device class.
std::string FormatJob(const v1::Job& job, absl::Time now);

// One line about the job: id, name, state, completed devices, deadline.
std::string FormatJobHeadline(const v1::Job& job, absl::Time now);

// What the compiler decided per class: scheme, trainable parameters, memory
// (arena, weights, optimizer state, total vs budget, dense total), plan digest.
std::string FormatPlanTable(const v1::Job& job);

// Per-class progress: class, scheme, wanted/assigned/running/completed/
// failed/lost, ms/step, speedup, memory saving, peak memory, accuracy
// before -> after. "no device classes yet" when the job has no progress.
std::string FormatProgressTable(const v1::Job& job);

// One WatchJob update: the headline, the state detail if any, the progress table.
std::string FormatWatchFrame(const v1::Job& job, absl::Time now);

// ListDevices: ID, CLASS, STATE, ARCH, CORES, MEMORY, ACCELERATOR, HEARTBEAT
// (age), ASSIGNMENT. "no devices" when empty.
std::string FormatDeviceList(const google::protobuf::RepeatedPtrField<v1::Device>& devices,
                             absl::Time now);

// ListDeviceClasses: NAME, ARCH, ISA, MIN MEMORY, TRAINING BUDGET, THREADS,
// PRIORITY, DESCRIPTION. "no device classes" when empty.
std::string FormatClassList(const google::protobuf::RepeatedPtrField<v1::DeviceClass>& classes);

// The message as one line of proto3 JSON (lowerCamelCase names, zero values
// included so scripts see every field), without a trailing newline.
// Internal if the message cannot be converted.
absl::StatusOr<std::string> FormatJson(const google::protobuf::Message& message);

}  // namespace fleettune::cli

#endif  // FLEETTUNE_CLI_FORMAT_H_
