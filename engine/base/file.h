// Whole-file reads and crash-safe writes.
//
//   ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path, /*max_bytes=*/1 << 28));
//   RETURN_IF_ERROR(WriteFileAtomically(path, bytes));
//
// Errors name the path: NotFound for a missing file, InvalidArgument for a
// directory or other non-regular file or one larger than `max_bytes`, and the
// errno-derived code for I/O failures. Thread-compatible.
#ifndef FLEETTUNE_ENGINE_BASE_FILE_H_
#define FLEETTUNE_ENGINE_BASE_FILE_H_

#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fleettune::engine {

// Reads a regular file whole, refusing files over `max_bytes` (checked before
// reading and again while reading, in case the file grows).
absl::StatusOr<std::string> ReadFileToString(
    const std::string& path, uint64_t max_bytes = std::numeric_limits<uint64_t>::max());

// Writes `bytes` to a temporary file beside `path` (mode 0644), fsyncs it and
// renames it over `path`, so readers see the old file or the new one, never a
// partial one. Leaves no temporary file behind on failure.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes);

}  // namespace fleettune::engine

#endif  // FLEETTUNE_ENGINE_BASE_FILE_H_
