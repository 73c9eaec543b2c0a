// Status propagation macros.
//
// Abseil 20220623 (Debian 12) ships no status macros, so fleettune keeps these
// two. They are named like the ones in newer Abseil / Google code so that a
// later Abseil upgrade is a rename.
//
//   absl::StatusOr<Graph> Load(const std::string& path) {
//     ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
//     RETURN_IF_ERROR(Validate(bytes));
//     ...
//   }
#ifndef FLEETTUNE_ENGINE_BASE_STATUS_MACROS_H_
#define FLEETTUNE_ENGINE_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FT_STATUS_CONCAT_INNER_(a, b) a##b
#define FT_STATUS_CONCAT_(a, b) FT_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::absl::Status ft_status_ = (expr);      \
    if (!ft_status_.ok()) return ft_status_; \
  } while (false)

// Evaluates `rexpr` (an absl::StatusOr<T>); on error returns its status, else
// assigns the value to `lhs` (which may be a declaration).
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  FT_ASSIGN_OR_RETURN_IMPL_(FT_STATUS_CONCAT_(ft_statusor_, __LINE__), lhs, rexpr)

#define FT_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return statusor.status();         \
  lhs = std::move(statusor).value()

#endif  // FLEETTUNE_ENGINE_BASE_STATUS_MACROS_H_
