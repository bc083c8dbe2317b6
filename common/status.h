// Status helpers. Recoverable errors are absl::Status / absl::StatusOr<T>; these two
// macros are what Abseil 20220623 lacks.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SPANSERVE_CONCAT_INNER(a, b) a##b
#define SPANSERVE_CONCAT(a, b) SPANSERVE_CONCAT_INNER(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function if not OK.
#define RETURN_IF_ERROR(expr)                     \
  do {                                            \
    if (::absl::Status _st = (expr); !_st.ok()) { \
      return _st;                                 \
    }                                             \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX());` evaluates a StatusOr<T>; on error returns its
// status, else moves the value into the declaration.
#define ASSIGN_OR_RETURN(lhs, expr) \
  SPANSERVE_ASSIGN_OR_RETURN_IMPL(SPANSERVE_CONCAT(_status_or_, __LINE__), lhs, expr)
#define SPANSERVE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                    \
  if (!tmp.ok()) return std::move(tmp).status();        \
  lhs = std::move(tmp).value()
