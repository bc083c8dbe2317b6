// Fuzzes the regular-expression compiler of guided decoding (runtime/engine/regex.h): a
// pattern as a request carries it (guided_regex, a JSON Schema `pattern`), compiled to a DFA,
// then a text walked through it. Whatever the pattern, compiling must end in a DFA or in
// INVALID_ARGUMENT saying where ("at offset N: ...") or why ("no text matches it", "too
// complex: ..."), within the size limits.
//
// Input: byte 0 holds flags: bit 0: search (JSON Schema's `pattern`) rather than a whole-text
// match (guided_regex); bit 1: the DFA is also restricted by length (WithLength), byte 1
// holding the bounds (min: its low four bits; max: its high four bits, or none when bit 2 is
// set); bit 3: the pattern is also compiled in the other mode. Then the pattern, a NUL byte,
// and a text to walk (its first 256 bytes).
//
// Checked on every DFA: the start is live and the states are within kMaxDfaStates; the dead
// state takes nothing; every live state can reach a match (min_chars finite), has min_chars 0
// when accepting and otherwise the fewest over its transitions (a byte that continues a
// character begins none, so 0 without a match only in the middle of a character), and is
// final exactly when it takes no byte (and is then accepting). Along the text: nothing leaves
// the dead state, Walk agrees with Next, min_chars falls by at most one per byte (not at all
// on a continuation byte), an accepted prefix is UTF-8. WithLength accepts a prefix exactly
// when the DFA does and its code points are within the bounds, and says no text matches only
// when no prefix is such a match. Both modes refuse a pattern's syntax alike, and a
// whole-text match is a search match. For a short ASCII pattern and text, a whole-text match
// agrees with std::regex_match (ECMAScript) and a search with std::regex_search, where
// std::regex reads the pattern alike and backtracks over it cheaply enough.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "fuzz_util.h"
#include "runtime/engine/regex.h"

namespace {

using spanserve::engine::RegexDfa;
using Match = RegexDfa::Match;

constexpr uint32_t kDead = RegexDfa::kDead;
constexpr uint32_t kUnbounded = RegexDfa::kUnbounded;
constexpr size_t kMaxWalk = 256;

bool IsContinuation(uint8_t b) { return (b & 0xC0) == 0x80; }

std::string_view Message(const absl::Status& status) {
  return std::string_view(status.message().data(), status.message().size());
}

// Code points begun in `text` (its bytes that do not continue a character).
uint32_t CodePoints(std::string_view text) {
  uint32_t n = 0;
  for (const char c : text) n += IsContinuation(static_cast<uint8_t>(c)) ? 0 : 1;
  return n;
}

[[noreturn]] void Fail(const char* what, std::string_view pattern, std::string_view text) {
  std::fprintf(stderr, "%s: pattern \"%.*s\" text \"%.*s\"\n", what,
               static_cast<int>(pattern.size()), pattern.data(), static_cast<int>(text.size()),
               text.data());
  std::abort();
}

// A refusal: INVALID_ARGUMENT with an offset inside the pattern and what is not supported,
// or one of the whole-pattern reasons.
void CheckRefusal(const absl::Status& status, std::string_view pattern) {
  SPANSERVE_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  const std::string_view message = Message(status);
  if (message.starts_with("at offset ")) {
    std::string_view rest = message.substr(10);
    size_t offset = 0, digits = 0;
    while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') {
      offset = offset * 10 + static_cast<size_t>(rest[digits] - '0');
      SPANSERVE_CHECK_LE(offset, size_t{1} << 32);
      ++digits;
    }
    SPANSERVE_CHECK_GT(digits, size_t{0});
    SPANSERVE_CHECK_LE(offset, pattern.size());
    rest = rest.substr(digits);
    SPANSERVE_CHECK(rest.starts_with(": ") && rest.size() > 2);
    return;
  }
  SPANSERVE_CHECK(message == "no text matches it" || message.starts_with("too complex: "));
}

// One live state's invariants.
void CheckState(const RegexDfa& dfa, uint32_t s) {
  const auto n = static_cast<uint32_t>(dfa.num_states());
  const uint64_t mc = dfa.min_chars(s);
  SPANSERVE_CHECK_NE(mc, uint64_t{UINT32_MAX});
  if (dfa.accepting(s)) SPANSERVE_CHECK_EQ(mc, uint64_t{0});
  bool any = false, begins = false;
  uint64_t best = UINT64_MAX;
  for (int b = 0; b < 256; ++b) {
    const uint32_t t = dfa.Next(s, static_cast<uint8_t>(b));
    SPANSERVE_CHECK_LT(t, n);
    if (t == kDead) continue;
    any = true;
    begins |= !IsContinuation(b);
    const uint64_t via = uint64_t{dfa.min_chars(t)} + (IsContinuation(b) ? 0 : 1);
    SPANSERVE_CHECK_NE(dfa.min_chars(t), uint32_t{UINT32_MAX});
    SPANSERVE_CHECK_LE(mc, via);
    best = std::min(best, via);
  }
  SPANSERVE_CHECK_EQ(dfa.final(s), !any);
  if (dfa.final(s)) SPANSERVE_CHECK(dfa.accepting(s));
  if (!dfa.accepting(s)) {
    SPANSERVE_CHECK_EQ(mc, best);
    // 0 without a match: only the rest of a character begun may follow.
    if (mc == 0) SPANSERVE_CHECK(!begins);
  }
}

// The whole DFA's invariants: every state up to a few thousand, a sample past that (the
// states a walk visits are checked as it goes).
void CheckDfa(const RegexDfa& dfa) {
  const int32_t n = dfa.num_states();
  SPANSERVE_CHECK_GE(n, 2);
  SPANSERVE_CHECK_LE(n, RegexDfa::kMaxDfaStates);
  SPANSERVE_CHECK_NE(dfa.start(), kDead);
  SPANSERVE_CHECK_LT(dfa.start(), static_cast<uint32_t>(n));
  SPANSERVE_CHECK(!dfa.accepting(kDead));
  for (int b = 0; b < 256; ++b) SPANSERVE_CHECK_EQ(dfa.Next(kDead, static_cast<uint8_t>(b)), kDead);
  const int32_t stride = n <= 4096 ? 1 : n / 2048;
  for (int32_t s = 1; s < n; s += stride) CheckState(dfa, static_cast<uint32_t>(s));
}

// Walks `text` byte by byte: the states after each prefix, kDead once one is refused.
std::vector<uint32_t> WalkAll(const RegexDfa& dfa, std::string_view pattern,
                              std::string_view text) {
  std::vector<uint32_t> states = {dfa.start()};
  uint32_t s = dfa.start();
  for (size_t i = 0; i < text.size(); ++i) {
    const auto b = static_cast<uint8_t>(text[i]);
    const uint32_t t = dfa.Next(s, b);
    if (s == kDead) {
      SPANSERVE_CHECK_EQ(t, kDead);
    } else if (t != kDead) {
      CheckState(dfa, t);
      if (uint64_t{dfa.min_chars(t)} + 1 < dfa.min_chars(s)) {
        Fail("min_chars fell by more than one", pattern, text.substr(0, i + 1));
      }
      if (IsContinuation(b) && dfa.min_chars(t) < dfa.min_chars(s)) {
        Fail("min_chars fell on a continuation byte", pattern, text.substr(0, i + 1));
      }
      if (dfa.accepting(t) && !spanserve::fuzz::IsValidUtf8(text.substr(0, i + 1))) {
        Fail("an accepted text is not UTF-8", pattern, text.substr(0, i + 1));
      }
    }
    s = t;
    states.push_back(s);
  }
  SPANSERVE_CHECK_EQ(dfa.Walk(dfa.start(), text), s);
  return states;
}

// An upper bound on what a backtracking matcher (std::regex's) does on `pattern` over a text
// of `len` bytes: the choice sequences it can follow (a loop entered at most twice per
// position) times the pattern's size once counted repeats are expanded. nullopt where
// std::regex would read the pattern otherwise: a named group, a `\u` escape past ASCII (it
// keeps one byte of it), `[=` `[.` `[:` inside a class (its collating and equivalence
// classes).
class BacktrackCost {
 public:
  static std::optional<double> Of(std::string_view pattern, int len) {
    BacktrackCost c(pattern, len);
    double paths, size;
    if (!c.Alt(&paths, &size) || c.i_ != pattern.size()) return std::nullopt;
    return Cap(paths * (size + 1));
  }

 private:
  BacktrackCost(std::string_view p, int len) : p_(p), loop_(2.0 * len + 3) {}

  static double Cap(double x) { return std::min(x, 1e30); }
  // 1 + p + ... + p^k.
  static double Geometric(double p, double k) {
    if (p <= 1) return k + 1;
    if ((k + 1) * std::log10(p) > 30) return 1e30;
    return Cap((std::pow(p, k + 1) - 1) / (p - 1));
  }
  static double Power(double p, double k) {
    if (p <= 1) return 1;
    if (k * std::log10(p) > 30) return 1e30;
    return std::pow(p, k);
  }
  bool More() const { return i_ < p_.size(); }
  char Peek(size_t ahead = 0) const { return i_ + ahead < p_.size() ? p_[i_ + ahead] : '\0'; }

  bool Alt(double* paths, double* size) {
    *paths = 0;
    *size = 0;
    for (;;) {
      double p, s;
      if (!Seq(&p, &s)) return false;
      *paths = Cap(*paths + p);
      *size = Cap(*size + s + 1);
      if (Peek() != '|') return true;
      ++i_;
    }
  }

  bool Seq(double* paths, double* size) {
    *paths = 1;
    *size = 0;
    while (More() && Peek() != '|' && Peek() != ')') {
      double p, s;
      if (!Atom(&p, &s)) return false;
      Quantifier(&p, &s);
      *paths = Cap(*paths * p);
      *size = Cap(*size + s);
    }
    return true;
  }

  bool Atom(double* paths, double* size) {
    *paths = 1;
    *size = 1;
    switch (Peek()) {
      case '(':
        ++i_;
        if (Peek() == '?') {
          if (Peek(1) != ':') return false;
          i_ += 2;
        }
        if (!Alt(paths, size) || Peek() != ')') return false;
        ++i_;
        *size += 2;
        return true;
      case '[':
        ++i_;
        if (Peek() == '^') ++i_;
        while (More() && Peek() != ']') {
          if (Peek() == '[' && (Peek(1) == ':' || Peek(1) == '=' || Peek(1) == '.')) return false;
          if (Peek() == '\\') {
            if (!Escape()) return false;
          } else {
            ++i_;
          }
        }
        if (!More()) return false;
        ++i_;
        return true;
      case '\\':
        return Escape();
      default:
        ++i_;
        return true;
    }
  }

  bool Escape() {
    ++i_;
    if (!More()) return false;
    const char c = Peek();
    ++i_;
    if (c == 'x') {
      i_ += 2;
    } else if (c == 'u') {
      unsigned v = 0;
      for (int k = 0; k < 4; ++k) {
        const char h = Peek(k);
        if (!std::isxdigit(static_cast<unsigned char>(h))) return false;
        v = v * 16 + static_cast<unsigned>(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
      }
      if (v > 0x7F) return false;
      i_ += 4;
    }
    return i_ <= p_.size();
  }

  // A number of a counted repeat at i_, if there is one.
  bool Number(double* value) {
    const size_t first = i_;
    *value = 0;
    while (Peek() >= '0' && Peek() <= '9') *value = std::min(*value * 10 + (p_[i_++] - '0'), 1e9);
    return i_ > first;
  }

  // The quantifier after an atom of `paths` and `size`, if any (a `{` that begins none is
  // the next atom).
  void Quantifier(double* paths, double* size) {
    const double p = *paths, s = *size;
    const char c = Peek();
    if (c == '*' || c == '+') {
      ++i_;
      *paths = Geometric(p, loop_);
      *size = s + 2;
    } else if (c == '?') {
      ++i_;
      *paths = Cap(p + 1);
      *size = s + 2;
    } else if (c == '{') {
      const size_t at = i_;
      ++i_;
      double lo = 0, hi = 0;
      const bool has_lo = Number(&lo);
      bool has_comma = false, has_hi = false;
      if (Peek() == ',') {
        has_comma = true;
        ++i_;
        has_hi = Number(&hi);
      }
      if (!has_lo || Peek() != '}') {
        i_ = at;
        return;
      }
      ++i_;
      if (!has_comma) {
        *paths = Power(p, lo);
        *size = Cap(s * lo + 2);
      } else if (has_hi) {
        *paths = Cap(Power(p, lo) * Geometric(p, hi - lo));
        *size = Cap(s * hi + 2);
      } else {
        *paths = Cap(Power(p, lo) * Geometric(p, loop_));
        *size = Cap(s * (lo + 1) + 2);
      }
    } else {
      return;
    }
    if (Peek() == '?') ++i_;  // lazy
  }

  std::string_view p_;
  double loop_;
  size_t i_ = 0;
};

// std::regex (ECMAScript) on a short ASCII pattern and the text's first ASCII bytes (no more
// than the backtracking budget allows): regex_match for a whole-text DFA, regex_search for a
// search one, against the DFA's verdict.
void CompareWithStdRegex(const RegexDfa& dfa, Match match, std::string_view pattern,
                         std::string_view text) {
  constexpr size_t kMaxPattern = 24, kMaxText = 16;
  constexpr double kBudget = 1e5;
  if (pattern.size() > kMaxPattern) return;
  for (const char c : pattern) {
    if (static_cast<uint8_t>(c) >= 0x80) return;
  }
  size_t len = 0;
  while (len < text.size() && len < kMaxText && static_cast<uint8_t>(text[len]) < 0x80) ++len;
  const double starts = match == Match::kSearch ? static_cast<double>(len + 1) : 1;
  for (;; --len) {
    const std::optional<double> cost = BacktrackCost::Of(pattern, static_cast<int>(len));
    if (!cost) return;
    if (*cost * starts <= kBudget) break;
    if (len == 0) return;
  }
  const std::string t(text.substr(0, len));
  bool expected;
  try {
    const std::regex re(pattern.begin(), pattern.end(), std::regex_constants::ECMAScript);
    expected = match == Match::kSearch ? std::regex_search(t, re) : std::regex_match(t, re);
  } catch (const std::regex_error&) {
    return;  // a construct std::regex refuses or a limit of its own
  }
  if (dfa.accepting(dfa.Walk(dfa.start(), t)) != expected) {
    Fail(expected ? "std::regex matches, the DFA does not" : "the DFA matches, std::regex does not",
         pattern, t);
  }
}

// WithLength(min, max) against the DFA it restricts, along the walk.
void CheckWithLength(const RegexDfa& dfa, const std::vector<uint32_t>& walk, uint32_t min,
                     uint32_t max, std::string_view pattern, std::string_view text) {
  auto limited = dfa.WithLength(min, max);
  auto in_range = [&](size_t prefix) {
    const uint32_t n = CodePoints(text.substr(0, prefix));
    return n >= min && n <= max;
  };
  if (!limited.ok()) {
    CheckRefusal(limited.status(), pattern);
    const std::string_view message = Message(limited.status());
    SPANSERVE_CHECK(message == "no text matches it" || message.starts_with("too complex: "));
    if (min > max) SPANSERVE_CHECK(message == "no text matches it");
    if (message == "no text matches it") {
      for (size_t i = 0; i < walk.size(); ++i) {
        if (dfa.accepting(walk[i]) && in_range(i)) {
          Fail("WithLength says no text matches, but one does", pattern, text.substr(0, i));
        }
      }
    }
    return;
  }
  SPANSERVE_CHECK_LE(min, max);
  const RegexDfa& l = **limited;
  CheckDfa(l);
  SPANSERVE_CHECK_GE(l.min_chars(l.start()), min);
  SPANSERVE_CHECK_GE(l.min_chars(l.start()), dfa.min_chars(dfa.start()));
  const std::vector<uint32_t> lwalk = WalkAll(l, pattern, text);
  for (size_t i = 0; i < lwalk.size(); ++i) {
    const uint32_t s = lwalk[i];
    const bool want = dfa.accepting(walk[i]) && in_range(i);
    if (l.accepting(s) != want) {
      Fail(want ? "WithLength refuses a match within the bounds"
                : "WithLength accepts a text the DFA does not or out of bounds",
           pattern, text.substr(0, i));
    }
    if (s == kDead) continue;
    if (walk[i] == kDead) Fail("WithLength goes on where the DFA is dead", pattern, text);
    const uint64_t least = uint64_t{CodePoints(text.substr(0, i))} + l.min_chars(s);
    if (least < min || (max != kUnbounded && least > max)) {
      Fail("WithLength's min_chars out of the bounds", pattern, text.substr(0, i));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  const Match match = flags & 1 ? Match::kSearch : Match::kFull;
  const bool limit = flags & 2;
  size_t at = 1;
  uint32_t min = 0, max = kUnbounded;
  if (limit) {
    if (size < 2) return 0;
    min = data[1] & 0x0F;
    max = flags & 4 ? kUnbounded : data[1] >> 4;
    at = 2;
  }
  const std::string_view in(reinterpret_cast<const char*>(data) + at, size - at);
  const size_t cut = in.find('\0');
  const std::string_view pattern = in.substr(0, cut);
  const std::string_view text =
      cut == std::string_view::npos ? std::string_view() : in.substr(cut + 1, kMaxWalk);

  auto dfa = RegexDfa::Compile(pattern, match);
  if (!dfa.ok()) CheckRefusal(dfa.status(), pattern);

  if (flags & 8) {
    const Match other_match = match == Match::kFull ? Match::kSearch : Match::kFull;
    auto other = RegexDfa::Compile(pattern, other_match);
    if (!other.ok()) CheckRefusal(other.status(), pattern);
    // The syntax is read alike in both modes; no text matches in one exactly when none does
    // in the other (unless the other is too complex to build).
    for (const auto* s : {&dfa, &other}) {
      const auto* o = s == &dfa ? &other : &dfa;
      if (s->ok()) continue;
      const std::string_view message = Message(s->status());
      if (message.starts_with("at offset ")) {
        if (o->ok() || o->status() != s->status())
          Fail("the modes read it differently", pattern, "");
      } else if (message == "no text matches it") {
        if (o->ok() ||
            !(o->status() == s->status() || Message(o->status()).starts_with("too complex: "))) {
          Fail("no text matches in one mode only", pattern, "");
        }
      }
    }
    if (other.ok()) {
      CheckDfa(**other);
      CompareWithStdRegex(**other, other_match, pattern, text);
    }
    if (dfa.ok() && other.ok()) {
      const RegexDfa& full = match == Match::kFull ? **dfa : **other;
      const RegexDfa& search = match == Match::kFull ? **other : **dfa;
      const std::vector<uint32_t> fw = WalkAll(full, pattern, text);
      const std::vector<uint32_t> sw = WalkAll(search, pattern, text);
      for (size_t i = 0; i < fw.size(); ++i) {
        if (full.accepting(fw[i]) && !search.accepting(sw[i])) {
          Fail("a whole-text match is not a search match", pattern, text.substr(0, i));
        }
      }
    }
  }
  if (!dfa.ok()) return 0;

  CheckDfa(**dfa);
  const std::vector<uint32_t> walk = WalkAll(**dfa, pattern, text);
  CompareWithStdRegex(**dfa, match, pattern, text);
  if (limit) CheckWithLength(**dfa, walk, min, max, pattern, text);
  return 0;
}
