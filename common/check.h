// Fatal checks for broken invariants (never for bad input: that is a Status).
// A failed check prints the expression, both values and the location, then aborts.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

namespace spanserve::internal {

[[noreturn]] inline void CheckFail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what.c_str());
  std::fflush(stderr);
  std::abort();
}

template <typename A, typename B>
std::string CheckOpMessage(const char* expr, const A& a, const B& b) {
  std::ostringstream os;
  os << expr << " (" << a << " vs " << b << ")";
  return os.str();
}

}  // namespace spanserve::internal

#define SPANSERVE_CHECK(cond)                                                 \
  do {                                                                        \
    if (!(cond)) ::spanserve::internal::CheckFail(__FILE__, __LINE__, #cond); \
  } while (0)

#define SPANSERVE_CHECK_OP(op, a, b)                                                             \
  do {                                                                                           \
    const auto& _a = (a);                                                                        \
    const auto& _b = (b);                                                                        \
    if (!(_a op _b))                                                                             \
      ::spanserve::internal::CheckFail(                                                          \
          __FILE__, __LINE__, ::spanserve::internal::CheckOpMessage(#a " " #op " " #b, _a, _b)); \
  } while (0)

#define SPANSERVE_CHECK_EQ(a, b) SPANSERVE_CHECK_OP(==, a, b)
#define SPANSERVE_CHECK_NE(a, b) SPANSERVE_CHECK_OP(!=, a, b)
#define SPANSERVE_CHECK_LE(a, b) SPANSERVE_CHECK_OP(<=, a, b)
#define SPANSERVE_CHECK_LT(a, b) SPANSERVE_CHECK_OP(<, a, b)
#define SPANSERVE_CHECK_GE(a, b) SPANSERVE_CHECK_OP(>=, a, b)
#define SPANSERVE_CHECK_GT(a, b) SPANSERVE_CHECK_OP(>, a, b)
