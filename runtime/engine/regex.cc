#include "runtime/engine/regex.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <deque>
#include <span>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/text.h"
#include "runtime/engine/code_points.h"

namespace spanserve::engine {

// Fills in a RegexDfa (a friend of it) from a DFA as built.
class RegexDfaBuilder {
 public:
  // A DFA before the states that cannot reach a match are taken out. State 0 is the dead
  // state; `next` holds a row of `num_classes` entries per state.
  struct Raw {
    uint32_t num_classes = 1;
    uint8_t class_of[256] = {};
    std::vector<uint32_t> next;
    std::vector<uint8_t> accepting;
    uint32_t start = 1;
  };
  // Keeps the states reachable from the start that can reach an accepting state (a
  // transition to any other becomes kDead), numbers them dead = 0, start = 1, merges the
  // byte classes that no state tells apart, and sets the flags.
  static absl::StatusOr<std::shared_ptr<const RegexDfa>> Finish(const Raw& raw);
};

namespace {

constexpr uint32_t kEnd = UINT32_MAX;  // Peek() past the end of the pattern
// Kernel entries (NFA state ids) kept by the subset construction, all states together.
constexpr size_t kMaxKernelEntries = size_t{1} << 21;

absl::Status TooCostly(uint64_t* work) {
  *work = 0;
  return absl::InvalidArgumentError("too complex: its automaton is too costly to build");
}

absl::Status TooComplex() {
  return absl::InvalidArgumentError(
      absl::StrCat("too complex: more than ", RegexDfa::kMaxDfaStates, " states"));
}

// ---------------------------------------------------------------------------------------
// Code-point sets: sorted, disjoint, non-adjacent ranges, never holding a surrogate.

using CpRanges = CodePointRanges;

// The class escapes, as sets both dialects agree a character is in: ECMAScript's `\d` and
// `\w` are ASCII, Python's take Unicode digits and letters, so `\d` and `\w` are ASCII here
// and `\D` and `\W` hold only characters neither dialect counts as a digit or a word
// character (without Unicode's tables: ASCII, and for `\D` the Latin blocks up to U+024F,
// which hold no digit). `\s` is the whitespace of both (ECMAScript's but U+FEFF), `\S` what
// neither counts as whitespace (Python's adds U+001C..U+001F and U+0085).
CpRanges DigitSet() { return {{'0', '9'}}; }
CpRanges WordSet() { return {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}}; }
CpRanges SpaceSet() {
  return NormalizeCodePoints({{0x09, 0x0D},
                              {0x20, 0x20},
                              {0xA0, 0xA0},
                              {0x1680, 0x1680},
                              {0x2000, 0x200A},
                              {0x2028, 0x2029},
                              {0x202F, 0x202F},
                              {0x205F, 0x205F},
                              {0x3000, 0x3000}});
}
// Every character either dialect counts as whitespace.
CpRanges AnySpaceSet() {
  CpRanges s = SpaceSet();
  s.push_back({0x1C, 0x1F});
  s.push_back({0x85, 0x85});
  s.push_back({0xFEFF, 0xFEFF});
  return NormalizeCodePoints(s);
}
CpRanges Intersect(const CpRanges& a, const CpRanges& b) {
  return ComplementCodePoints(NormalizeCodePoints([&] {
    CpRanges u = ComplementCodePoints(a);
    const CpRanges nb = ComplementCodePoints(b);
    u.insert(u.end(), nb.begin(), nb.end());
    return u;
  }()));
}
// The complement of the escape `kind` (d, w or s), limited as above.
CpRanges NegatedClassSet(uint32_t kind) {
  if (kind == 'd') return Intersect(ComplementCodePoints(DigitSet()), {{0, 0x24F}});
  if (kind == 'w') return Intersect(ComplementCodePoints(WordSet()), {{0, 0x7F}});
  return ComplementCodePoints(AnySpaceSet());
}
CpRanges DotSet() {
  return ComplementCodePoints(NormalizeCodePoints({{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}}));
}
CpRanges AnySet() { return NormalizeCodePoints({{0, kMaxCodePoint}}); }

// ---------------------------------------------------------------------------------------
// UTF-8.

int EncodeUtf8(uint32_t cp, uint8_t* out) {
  if (cp < 0x80) {
    out[0] = static_cast<uint8_t>(cp);
    return 1;
  }
  if (cp < 0x800) {
    out[0] = static_cast<uint8_t>(0xC0 | (cp >> 6));
    out[1] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = static_cast<uint8_t>(0xE0 | (cp >> 12));
    out[1] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F));
    out[2] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = static_cast<uint8_t>(0xF0 | (cp >> 18));
  out[1] = static_cast<uint8_t>(0x80 | ((cp >> 12) & 0x3F));
  out[2] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F));
  out[3] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
  return 4;
}

// One code point's text, for messages: printable ASCII as is, anything else as U+XXXX.
std::string CharName(uint32_t cp) {
  if (cp >= 0x21 && cp <= 0x7E) return std::string(1, static_cast<char>(cp));
  char buf[16];
  snprintf(buf, sizeof(buf), "U+%04X", cp);
  return buf;
}

// A run of bytes matched position by position: byte k is in [lo[k], hi[k]].
struct ByteSeq {
  int n = 0;
  uint8_t lo[4] = {};
  uint8_t hi[4] = {};
};

// The UTF-8 encodings of the code points lo..=hi (no surrogate among them) as byte-range
// sequences: split where the encoding length changes, then wherever a lower byte's range
// would depend on a higher byte, so that each sequence is a product of its byte ranges.
void Utf8Sequences(uint32_t lo, uint32_t hi, std::vector<ByteSeq>* out) {
  std::vector<std::pair<uint32_t, uint32_t>> stack = {{lo, hi}};
  while (!stack.empty()) {
    auto [a, b] = stack.back();
    stack.pop_back();
    bool split = false;
    for (uint32_t max : {0x7Fu, 0x7FFu, 0xFFFFu}) {
      if (a <= max && b > max) {
        stack.push_back({a, max});
        stack.push_back({max + 1, b});
        split = true;
        break;
      }
    }
    if (split) continue;
    uint8_t ea[4], eb[4];
    const int n = EncodeUtf8(a, ea);
    EncodeUtf8(b, eb);
    for (int i = 1; i < n && !split; ++i) {
      const uint32_t m = (1u << (6 * i)) - 1;
      if ((a & ~m) == (b & ~m)) continue;
      if ((a & m) != 0) {
        stack.push_back({a, a | m});
        stack.push_back({(a | m) + 1, b});
        split = true;
      } else if ((b & m) != m) {
        stack.push_back({a, (b & ~m) - 1});
        stack.push_back({b & ~m, b});
        split = true;
      }
    }
    if (split) continue;
    ByteSeq seq;
    seq.n = n;
    for (int i = 0; i < n; ++i) {
      seq.lo[i] = ea[i];
      seq.hi[i] = eb[i];
    }
    out->push_back(seq);
  }
}

// ---------------------------------------------------------------------------------------
// Parser: the pattern to a syntax tree over code-point sets.

struct Node {
  enum Kind : uint8_t { kEmpty, kSet, kConcat, kAlt, kRepeat };
  Kind kind = kEmpty;
  CpRanges set;               // kSet
  std::vector<int32_t> kids;  // kConcat, kAlt; kRepeat: the one repeated
  int32_t min = 0;            // kRepeat
  int32_t max = 0;            // kRepeat; -1: no bound
};

// One top-level alternative and its anchors.
struct TopAlt {
  int32_t node = -1;
  bool anchored_start = false;  // `^`
  bool anchored_end = false;    // `$`
};

class Parser {
 public:
  explicit Parser(std::string_view pattern) : pattern_(pattern) {}

  // Parses the whole pattern; false with error() set if it is refused.
  bool Parse() {
    for (size_t i = 0; i < pattern_.size();) {
      uint32_t cp;
      const size_t len = DecodeUtf8(absl::string_view(pattern_.data(), pattern_.size()), i, &cp);
      if (len == 0) {
        error_ = absl::InvalidArgumentError(
            absl::StrCat("at offset ", i, ": a pattern that is not valid UTF-8 is not supported"));
        return false;
      }
      cps_.push_back({cp, static_cast<uint32_t>(i)});
      i += len;
    }
    n_ = cps_.size();
    cps_.push_back({kEnd, static_cast<uint32_t>(pattern_.size())});
    for (;;) {
      TopAlt alt;
      if (Peek() == '^') {
        alt.anchored_start = true;
        ++pos_;
      }
      alt.node = ParseSeq(0, &alt.anchored_end);
      if (alt.node < 0) return false;
      alts_.push_back(alt);
      if (Peek() == '|') {
        ++pos_;
        continue;
      }
      if (pos_ >= n_) return true;
      return Fail(pos_, "unbalanced parenthesis: a `)` without its `(` is not supported");
    }
  }

  const absl::Status& error() const { return error_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<TopAlt>& alts() const { return alts_; }

 private:
  struct Cp {
    uint32_t cp;
    uint32_t offset;  // in bytes
  };
  // An item of a bracket class: one code point, or a class escape's set.
  struct ClassAtom {
    bool is_set = false;
    uint32_t cp = 0;
    CpRanges set;
    uint32_t escape = 0;  // a class escape's letter (d, D, w, W, s, S)
  };

  uint32_t Peek(size_t ahead = 0) const { return pos_ + ahead < n_ ? cps_[pos_ + ahead].cp : kEnd; }
  static bool IsDigit(uint32_t c) { return c >= '0' && c <= '9'; }
  static bool IsHex(uint32_t c) {
    return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  }
  static uint32_t HexValue(uint32_t c) {
    return IsDigit(c) ? c - '0' : (c >= 'a' ? c - 'a' + 10 : c - 'A' + 10);
  }
  static bool IsAsciiAlnum(uint32_t c) {
    return IsDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  }

  // Sets the error ("at offset N: what"), `at` being an index into cps_; returns false.
  bool Fail(size_t at, const std::string& what) {
    error_ = absl::InvalidArgumentError(absl::StrCat("at offset ", cps_[at].offset, ": ", what));
    return false;
  }
  int32_t FailNode(size_t at, const std::string& what) {
    Fail(at, what);
    return -1;
  }

  int32_t Add(Node node) {
    nodes_.push_back(std::move(node));
    return static_cast<int32_t>(nodes_.size() - 1);
  }
  int32_t AddSet(CpRanges set) {
    Node node;
    node.kind = Node::kSet;
    node.set = NormalizeCodePoints(set);
    return Add(std::move(node));
  }
  int32_t AddList(Node::Kind kind, std::vector<int32_t> kids) {
    if (kids.size() == 1) return kids[0];
    Node node;
    node.kind = kids.empty() ? Node::kEmpty : kind;
    node.kids = std::move(kids);
    return Add(std::move(node));
  }

  // Alternatives inside a group, up to its `)` (not consumed).
  int32_t ParseAlt(int depth) {
    std::vector<int32_t> seqs;
    for (;;) {
      const int32_t seq = ParseSeq(depth, nullptr);
      if (seq < 0) return -1;
      seqs.push_back(seq);
      if (Peek() != '|') break;
      ++pos_;
    }
    return AddList(Node::kAlt, std::move(seqs));
  }

  // Quantified atoms up to `|`, `)` or the end; a `$` ends a top-level one.
  int32_t ParseSeq(int depth, bool* anchored_end) {
    std::vector<int32_t> items;
    for (;;) {
      const uint32_t c = Peek();
      if (c == kEnd || c == '|' || c == ')') break;
      if (c == '$') {
        if (depth == 0 && (Peek(1) == kEnd || Peek(1) == '|')) {
          *anchored_end = true;
          ++pos_;
          break;
        }
        return FailNode(pos_,
                        "`$` other than at the end of the pattern or of a top-level alternative "
                        "is not supported");
      }
      if (c == '^') {
        return FailNode(pos_,
                        "`^` other than at the start of the pattern or of a top-level "
                        "alternative is not supported");
      }
      int32_t atom = ParseAtom(depth);
      if (atom < 0) return -1;
      int32_t min, max;
      const int q = ParseQuantifier(pos_, &min, &max, &pos_);
      if (q < 0) return -1;
      if (q > 0) {
        if (Peek() == '+') return FailNode(pos_, "a possessive quantifier is not supported");
        if (Peek() == '?') ++pos_;  // lazy: the same texts match
        int32_t unused;
        size_t end;
        const int again = ParseQuantifier(pos_, &unused, &unused, &end);
        if (again < 0) return -1;
        if (again > 0) {
          return FailNode(pos_, "a quantifier with nothing to repeat is not supported");
        }
        if (max != 1 || min != 1) {
          Node node;
          node.kind = Node::kRepeat;
          node.kids = {atom};
          node.min = min;
          node.max = max;
          atom = Add(std::move(node));
        }
      }
      items.push_back(atom);
    }
    return AddList(Node::kConcat, std::move(items));
  }

  // A quantifier at `at`: 0 if there is none (a `{` that does not start one is a literal),
  // 1 with its bounds and where it ends, -1 if it is refused.
  int ParseQuantifier(size_t at, int32_t* min, int32_t* max, size_t* end) {
    const uint32_t c = at < n_ ? cps_[at].cp : kEnd;
    if (c == '*' || c == '+' || c == '?') {
      *min = c == '+' ? 1 : 0;
      *max = c == '?' ? 1 : -1;
      *end = at + 1;
      return 1;
    }
    if (c != '{') return 0;
    size_t i = at + 1;
    auto number = [&](int64_t* value) {
      const size_t first = i;
      *value = 0;
      while (i < n_ && IsDigit(cps_[i].cp)) {
        *value = std::min<int64_t>(*value * 10 + (cps_[i].cp - '0'), int64_t{1} << 40);
        ++i;
      }
      return i > first;
    };
    int64_t lo = 0, hi = 0;
    const bool has_lo = number(&lo);
    bool has_comma = false, has_hi = false;
    if (i < n_ && cps_[i].cp == ',') {
      has_comma = true;
      ++i;
      has_hi = number(&hi);
    }
    if (i >= n_ || cps_[i].cp != '}') return 0;
    if (!has_lo) {
      if (has_comma && has_hi) {
        Fail(at, "`{,m}` is not supported (Python reads it as {0,m}, ECMAScript as text)");
        return -1;
      }
      return 0;
    }
    if (!has_comma) hi = lo;
    if (lo > RegexDfa::kMaxRepeat || (has_hi && hi > RegexDfa::kMaxRepeat)) {
      Fail(at, absl::StrCat("a repeat count over ", RegexDfa::kMaxRepeat, " is not supported"));
      return -1;
    }
    if ((!has_comma || has_hi) && lo > hi) {
      Fail(at, absl::StrCat("a quantifier {", lo, ",", hi,
                            "} with its bounds out of order is not supported"));
      return -1;
    }
    *min = static_cast<int32_t>(lo);
    *max = has_comma && !has_hi ? -1 : static_cast<int32_t>(hi);
    *end = i + 1;
    return 1;
  }

  int32_t ParseAtom(int depth) {
    const size_t at = pos_;
    const uint32_t c = Peek();
    switch (c) {
      case '(':
        return ParseGroup(depth);
      case '[':
        return ParseClass();
      case '.':
        ++pos_;
        return AddSet(DotSet());
      case '\\': {
        ClassAtom atom;
        if (!ParseEscape(false, &atom)) return -1;
        return AddSet(atom.is_set ? atom.set : CpRanges{{atom.cp, atom.cp}});
      }
      case '*':
      case '+':
      case '?':
        return FailNode(at, "a quantifier with nothing to repeat is not supported");
      case '{': {
        int32_t min, max;
        size_t end;
        const int q = ParseQuantifier(at, &min, &max, &end);
        if (q < 0) return -1;
        if (q > 0) return FailNode(at, "a quantifier with nothing to repeat is not supported");
        ++pos_;
        return AddSet({{'{', '{'}});
      }
      default:
        ++pos_;
        return AddSet({{c, c}});
    }
  }

  int32_t ParseGroup(int depth) {
    const size_t open = pos_;
    ++pos_;
    if (Peek() == '?') {
      const uint32_t c1 = Peek(1), c2 = Peek(2);
      if (c1 == ':') {
        pos_ += 2;
      } else if (c1 == '=' || c1 == '!') {
        return FailNode(open, absl::StrCat("lookahead `(?", CharName(c1), "` is not supported"));
      } else if (c1 == '<' && (c2 == '=' || c2 == '!')) {
        return FailNode(open, absl::StrCat("lookbehind `(?<", CharName(c2), "` is not supported"));
      } else if (c1 == '<') {
        pos_ += 2;
        if (!ParseGroupName()) return -1;
      } else if (c1 == 'P' && c2 == '<') {
        pos_ += 3;
        if (!ParseGroupName()) return -1;
      } else if (c1 == 'P' && (c2 == '=' || c2 == '>')) {
        return FailNode(open, "a backreference `(?P=name)` is not supported");
      } else if (c1 == '#') {
        return FailNode(open, "a comment group `(?#...)` is not supported");
      } else if (c1 == '>') {
        return FailNode(open, "an atomic group `(?>...)` is not supported");
      } else if (c1 == '(') {
        return FailNode(open, "a conditional group `(?(...)...)` is not supported");
      } else if (c1 < 0x80 && std::string_view("aiLmsux-^").find(static_cast<char>(c1)) !=
                                  std::string_view::npos) {
        return FailNode(open, "inline flags `(?flags)` are not supported");
      } else {
        return FailNode(open,
                        "a group starting `(?` other than `(?:`, `(?<name>` or `(?P<name>` "
                        "is not supported");
      }
    }
    if (depth + 1 > RegexDfa::kMaxNesting) {
      return FailNode(open, absl::StrCat("groups nested deeper than ", RegexDfa::kMaxNesting,
                                         " are not supported"));
    }
    const int32_t node = ParseAlt(depth + 1);
    if (node < 0) return -1;
    if (Peek() != ')') {
      return FailNode(open, "unbalanced parenthesis: a `(` without its `)` is not supported");
    }
    ++pos_;
    return node;
  }

  // A group name and its `>`; names are ASCII identifiers, each used once.
  bool ParseGroupName() {
    const size_t first = pos_;
    while (Peek() == '_' || IsAsciiAlnum(Peek())) {
      if (pos_ == first && IsDigit(Peek())) break;
      ++pos_;
    }
    if (pos_ == first || Peek() != '>') {
      return Fail(first, "a group name other than an ASCII identifier is not supported");
    }
    std::string name;
    for (size_t i = first; i < pos_; ++i) name.push_back(static_cast<char>(cps_[i].cp));
    for (const std::string& seen : group_names_) {
      if (seen == name) return Fail(first, "a group name used twice is not supported");
    }
    group_names_.push_back(std::move(name));
    ++pos_;
    return true;
  }

  int32_t ParseClass() {
    const size_t open = pos_;
    ++pos_;
    const bool negate = Peek() == '^';
    if (negate) ++pos_;
    if (Peek() == ']') {
      return FailNode(pos_,
                      "`]` first in a class is not supported (ECMAScript reads `[]` as an empty "
                      "class, Python as a literal `]`): write `\\]`");
    }
    CpRanges set;
    // In a negated class, \d and \w leave what neither dialect counts as a digit or a word
    // character, and \s what neither counts as whitespace (see NegatedClassSet).
    CpRanges limit = {{0, kMaxCodePoint}};
    for (;;) {
      if (pos_ >= n_) {
        return FailNode(open, "unbalanced bracket: a `[` without its `]` is not supported");
      }
      if (Peek() == ']') {
        ++pos_;
        break;
      }
      if (Peek() == '[' && Peek(1) == ':') {
        return FailNode(pos_, "a POSIX class `[:name:]` is not supported");
      }
      ClassAtom first;
      if (!ParseClassAtom(&first)) return -1;
      if (Peek() == '-' && Peek(1) != ']' && Peek(1) != kEnd) {
        const size_t dash = pos_;
        ++pos_;
        ClassAtom last;
        if (!ParseClassAtom(&last)) return -1;
        if (first.is_set || last.is_set) {
          return FailNode(dash,
                          "a range with a class escape (\\d, \\w, \\s) as a bound is "
                          "not supported");
        }
        if (first.cp > last.cp) {
          return FailNode(dash, absl::StrCat("a range ", CharName(first.cp), "-", CharName(last.cp),
                                             " out of order is not supported"));
        }
        set.push_back({first.cp, last.cp});
      } else if (first.is_set) {
        if (negate && (first.escape == 'D' || first.escape == 'W' || first.escape == 'S')) {
          return FailNode(pos_ - 2, absl::StrCat("`\\", CharName(first.escape),
                                                 "` in a negated class is not supported"));
        }
        if (negate && first.escape == 's') {
          const CpRanges spaces = AnySpaceSet();
          set.insert(set.end(), spaces.begin(), spaces.end());
        } else {
          set.insert(set.end(), first.set.begin(), first.set.end());
        }
        if (negate && first.escape == 'd') limit = Intersect(limit, {{0, 0x24F}});
        if (negate && first.escape == 'w') limit = Intersect(limit, {{0, 0x7F}});
      } else {
        set.push_back({first.cp, first.cp});
      }
    }
    set = NormalizeCodePoints(set);
    return AddSet(negate ? Intersect(ComplementCodePoints(set), limit) : set);
  }

  bool ParseClassAtom(ClassAtom* atom) {
    if (Peek() == '\\') return ParseEscape(true, atom);
    atom->cp = Peek();
    ++pos_;
    return true;
  }

  // The hex number of `count` digits at cps_[at], if they are there.
  bool Hex(size_t at, int count, uint32_t* value) const {
    *value = 0;
    for (int k = 0; k < count; ++k) {
      if (at + k >= n_ || !IsHex(cps_[at + k].cp)) return false;
      *value = *value * 16 + HexValue(cps_[at + k].cp);
    }
    return true;
  }

  // An escape, at its `\`; inside a bracket class if `in_class`.
  bool ParseEscape(bool in_class, ClassAtom* atom) {
    const size_t at = pos_;
    ++pos_;
    const uint32_t c = Peek();
    if (c == kEnd) return Fail(at, "a `\\` at the end of the pattern is not supported");
    ++pos_;
    auto set = [&](CpRanges s, bool negate) {
      atom->is_set = true;
      atom->escape = c;
      atom->set = negate ? NegatedClassSet(c | 0x20) : NormalizeCodePoints(s);
      return true;
    };
    auto cp = [&](uint32_t v) {
      atom->cp = v;
      return true;
    };
    switch (c) {
      case 'd':
      case 'D':
        return set(DigitSet(), c == 'D');
      case 'w':
      case 'W':
        return set(WordSet(), c == 'W');
      case 's':
      case 'S':
        return set(SpaceSet(), c == 'S');
      case 'n':
        return cp('\n');
      case 't':
        return cp('\t');
      case 'r':
        return cp('\r');
      case 'f':
        return cp('\f');
      case 'v':
        return cp('\v');
      case '0':
        if (IsDigit(Peek())) return Fail(at, "an octal escape is not supported");
        return cp(0);
      case 'x': {
        uint32_t v;
        if (!Hex(pos_, 2, &v)) return Fail(at, "`\\x` without two hex digits is not supported");
        pos_ += 2;
        return cp(v);
      }
      case 'u': {
        uint32_t v;
        if (Peek() == '{') {
          size_t i = pos_ + 1;
          v = 0;
          int digits = 0;
          while (i < n_ && IsHex(cps_[i].cp) && digits <= 6) {
            v = v * 16 + HexValue(cps_[i].cp);
            ++digits;
            ++i;
          }
          if (digits == 0 || digits > 6 || i >= n_ || cps_[i].cp != '}' || v > kMaxCodePoint) {
            return Fail(at,
                        "`\\u{...}` other than 1 to 6 hex digits up to 10FFFF is not supported");
          }
          pos_ = i + 1;
          return cp(v);
        }
        if (!Hex(pos_, 4, &v)) {
          return Fail(at, "`\\u` without four hex digits is not supported");
        }
        pos_ += 4;
        // A UTF-16 surrogate pair written as two escapes (ECMAScript) is one code point.
        uint32_t low;
        if (v >= 0xD800 && v <= 0xDBFF && Peek() == '\\' && Peek(1) == 'u' &&
            Hex(pos_ + 2, 4, &low) && low >= 0xDC00 && low <= 0xDFFF) {
          v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00);
          pos_ += 6;
        }
        return cp(v);
      }
      case 'b':
        if (in_class) return cp(0x08);
        return Fail(at, "a word boundary `\\b` is not supported");
      case 'B':
        return Fail(at, "a word boundary `\\B` is not supported");
      case 'k':
        return Fail(at, "a backreference `\\k<name>` is not supported");
      case 'p':
      case 'P':
        return Fail(at, absl::StrCat("a Unicode property class `\\", CharName(c),
                                     "{...}` is not supported"));
      case 'A':
      case 'Z':
      case 'z':
      case 'G':
        return Fail(at, absl::StrCat("an anchor `\\", CharName(c), "` is not supported"));
      case 'c':
        return Fail(at, "a control escape `\\c` is not supported");
      default:
        break;
    }
    if (IsDigit(c)) {
      return Fail(
          at, in_class ? "an octal escape is not supported" : "a backreference is not supported");
    }
    if (IsAsciiAlnum(c)) {
      return Fail(at, absl::StrCat("the escape `\\", CharName(c), "` is not supported"));
    }
    if (c >= 0x20 && c <= 0x7E) return cp(c);  // escaped punctuation (or space)
    return Fail(at, absl::StrCat("an escaped ", CharName(c),
                                 " (other than ASCII punctuation) is not supported"));
  }

  std::string_view pattern_;
  std::vector<Cp> cps_;  // the pattern's code points, then an end marker
  size_t n_ = 0;         // code points in the pattern
  size_t pos_ = 0;
  std::vector<Node> nodes_;
  std::vector<TopAlt> alts_;
  std::vector<std::string> group_names_;
  absl::Status error_;
};

// ---------------------------------------------------------------------------------------
// Thompson NFA over bytes.

using ByteMask = std::array<uint64_t, 4>;

ByteMask MaskOf(uint32_t lo, uint32_t hi) {
  ByteMask m = {};
  for (uint32_t b = lo; b <= hi; ++b) m[b >> 6] |= uint64_t{1} << (b & 63);
  return m;
}
bool MaskHas(const ByteMask& m, uint32_t b) { return (m[b >> 6] >> (b & 63)) & 1; }

struct NfaState {
  enum Kind : uint8_t { kBytes, kSplit, kMatch };
  Kind kind = kSplit;
  int32_t mask = -1;  // kBytes: index into NfaBuilder::masks
  int32_t out = -1;   // -1: none (yet)
  int32_t out1 = -1;  // kSplit's second way
};

// A piece of NFA: where it starts, and the state whose `out` is still to be set.
struct Frag {
  int32_t start;
  int32_t end;
};

class NfaBuilder {
 public:
  explicit NfaBuilder(const std::vector<Node>& nodes) : nodes_(nodes) {
    NfaState match;
    match.kind = NfaState::kMatch;
    states.push_back(match);  // kMatchState
  }

  static constexpr int32_t kMatchState = 0;

  // Past kMaxNfaStates: building stops (new states all alias state 0), and the pattern is
  // refused.
  bool overflow() const { return overflow_; }

  int32_t Split(int32_t out = -1, int32_t out1 = -1) {
    NfaState s;
    s.out = out;
    s.out1 = out1;
    return Add(s);
  }
  int32_t Bytes(const ByteMask& mask, int32_t out) {
    auto [it, inserted] = mask_ids_.try_emplace(mask, static_cast<int32_t>(masks.size()));
    if (inserted) masks.push_back(mask);
    NfaState s;
    s.kind = NfaState::kBytes;
    s.mask = it->second;
    s.out = out;
    return Add(s);
  }
  void Patch(int32_t end, int32_t target) {
    if (!overflow_) states[end].out = target;
  }
  // A state leading to each of `starts`.
  int32_t FanOut(const std::vector<int32_t>& starts) {
    if (starts.empty()) return Split();
    int32_t s = starts.back();
    for (size_t i = starts.size() - 1; i-- > 0;) s = Split(starts[i], s);
    return s;
  }

  Frag Compile(int32_t id) {
    if (overflow_) return {0, 0};
    const Node& node = nodes_[id];
    switch (node.kind) {
      case Node::kEmpty: {
        const int32_t s = Split();
        return {s, s};
      }
      case Node::kSet:
        return CompileSet(node.set);
      case Node::kConcat: {
        Frag f = Compile(node.kids[0]);
        for (size_t i = 1; i < node.kids.size() && !overflow_; ++i) {
          const Frag g = Compile(node.kids[i]);
          Patch(f.end, g.start);
          f.end = g.end;
        }
        return f;
      }
      case Node::kAlt: {
        const int32_t join = Split();
        std::vector<int32_t> starts;
        for (int32_t kid : node.kids) {
          if (overflow_) break;
          const Frag g = Compile(kid);
          Patch(g.end, join);
          starts.push_back(g.start);
        }
        return {FanOut(starts), join};
      }
      case Node::kRepeat:
        return CompileRepeat(node.kids[0], node.min, node.max);
    }
    return {0, 0};
  }

  // The UTF-8 of the code points in `set`. Sequences share their common tails, and first
  // bytes leading to the same state share one state.
  Frag CompileSet(const CpRanges& set) {
    std::vector<ByteSeq> seqs;
    for (auto [lo, hi] : set) Utf8Sequences(lo, hi, &seqs);
    if (seqs.empty()) {  // no code point: nothing gets through
      const int32_t fail = Split();
      const int32_t join = Split();
      return {fail, join};
    }
    const bool single_bytes =
        std::all_of(seqs.begin(), seqs.end(), [](const ByteSeq& s) { return s.n == 1; });
    if (single_bytes) {
      ByteMask mask = {};
      for (const ByteSeq& s : seqs) {
        const ByteMask m = MaskOf(s.lo[0], s.hi[0]);
        for (int k = 0; k < 4; ++k) mask[k] |= m[k];
      }
      const int32_t b = Bytes(mask, -1);
      return {b, b};
    }
    const int32_t join = Split();
    absl::flat_hash_map<uint64_t, int32_t> tails;     // (lo, hi, out) -> state
    std::vector<std::pair<int32_t, ByteMask>> leads;  // (out, first bytes)
    absl::flat_hash_map<int32_t, size_t> lead_of;
    for (const ByteSeq& seq : seqs) {
      int32_t next = join;
      for (int i = seq.n - 1; i >= 1; --i) {
        const uint64_t key =
            seq.lo[i] | (uint64_t{seq.hi[i]} << 8) | (static_cast<uint64_t>(next) << 16);
        auto it = tails.find(key);
        if (it == tails.end())
          it = tails.emplace(key, Bytes(MaskOf(seq.lo[i], seq.hi[i]), next)).first;
        next = it->second;
        if (overflow_) return {0, 0};
      }
      auto [it, inserted] = lead_of.try_emplace(next, leads.size());
      if (inserted) leads.push_back({next, ByteMask{}});
      const ByteMask m = MaskOf(seq.lo[0], seq.hi[0]);
      for (int k = 0; k < 4; ++k) leads[it->second].second[k] |= m[k];
    }
    std::vector<int32_t> starts;
    for (const auto& [next, mask] : leads) starts.push_back(Bytes(mask, next));
    return {FanOut(starts), join};
  }

  // `kid` {min,max} (max -1: no bound): min copies, then either a loop or max - min nested
  // optional copies, whose skips all lead to one exit.
  Frag CompileRepeat(int32_t kid, int32_t min, int32_t max) {
    Frag f = {-1, -1};
    auto append = [&](Frag g) {
      if (f.start < 0) {
        f = g;
      } else {
        Patch(f.end, g.start);
        f.end = g.end;
      }
    };
    if (max < 0) {
      for (int32_t i = 0; i + 1 < min && !overflow_; ++i) append(Compile(kid));
      const Frag x = Compile(kid);
      const int32_t exit = Split();
      const int32_t loop = Split(x.start, exit);
      Patch(x.end, loop);
      append({min == 0 ? loop : x.start, exit});
    } else {
      for (int32_t i = 0; i < min && !overflow_; ++i) append(Compile(kid));
      if (max > min) {
        const int32_t exit = Split();
        int32_t first = -1, prev_end = -1;
        for (int32_t i = min; i < max && !overflow_; ++i) {
          const Frag x = Compile(kid);
          const int32_t skip = Split(x.start, exit);
          if (prev_end < 0) {
            first = skip;
          } else {
            Patch(prev_end, skip);
          }
          prev_end = x.end;
        }
        Patch(prev_end, exit);
        append({first, exit});
      }
      if (f.start < 0) {
        const int32_t s = Split();
        f = {s, s};
      }
    }
    if (overflow_) return {0, 0};
    return f;
  }

  std::vector<NfaState> states;
  std::vector<ByteMask> masks;

 private:
  int32_t Add(const NfaState& s) {
    if (overflow_ || states.size() >= static_cast<size_t>(RegexDfa::kMaxNfaStates)) {
      overflow_ = true;
      return 0;
    }
    states.push_back(s);
    return static_cast<int32_t>(states.size() - 1);
  }

  const std::vector<Node>& nodes_;
  absl::flat_hash_map<ByteMask, int32_t> mask_ids_;
  bool overflow_ = false;
};

// ---------------------------------------------------------------------------------------
// Subset construction.

uint64_t HashKernel(std::span<const int32_t> k) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ k.size();
  for (int32_t v : k) {
    h ^= static_cast<uint32_t>(v);
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
  }
  return h;
}

// The DFA of `nfa` from `start`. A DFA state is keyed by its kernel: the sorted NFA states
// its last byte led to (or the start). A kernel whose closure holds `universal` (a state
// from which every UTF-8 text matches) is replaced by {universal}: its texts are the same.
// `work`: the allowance of steps (NFA states visited, transitions gathered, kernel entries
// sorted and interned), decreased by those taken.
absl::StatusOr<RegexDfaBuilder::Raw> BuildDfa(const NfaBuilder& nfa, int32_t start,
                                              int32_t universal, uint64_t* work) {
  const std::vector<NfaState>& states = nfa.states;
  RegexDfaBuilder::Raw raw;

  // Byte classes: bytes that every mask holds or lacks together. ASCII and continuation
  // bytes are always told apart (WithLength counts code points by them).
  uint8_t cls[256] = {};
  uint32_t num_classes = 1;
  auto refine = [&](const ByteMask& m) {
    int16_t remap[512];
    std::fill(std::begin(remap), std::end(remap), -1);
    uint32_t count = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const int key = cls[b] * 2 + (MaskHas(m, b) ? 1 : 0);
      if (remap[key] < 0) remap[key] = static_cast<int16_t>(count++);
      cls[b] = static_cast<uint8_t>(remap[key]);
    }
    num_classes = count;
  };
  refine(MaskOf(0x00, 0x7F));
  refine(MaskOf(0x80, 0xBF));
  for (const ByteMask& m : nfa.masks) refine(m);
  std::vector<std::vector<uint16_t>> classes_of_mask(nfa.masks.size());
  for (size_t i = 0; i < nfa.masks.size(); ++i) {
    std::vector<bool> seen(num_classes, false);
    for (uint32_t b = 0; b < 256; ++b) {
      if (MaskHas(nfa.masks[i], b) && !seen[cls[b]]) {
        seen[cls[b]] = true;
        classes_of_mask[i].push_back(cls[b]);
      }
    }
  }
  raw.num_classes = num_classes;
  std::memcpy(raw.class_of, cls, sizeof(cls));

  // States that reach `universal` without reading a byte.
  std::vector<uint8_t> to_universal(states.size(), 0);
  if (universal >= 0) {
    std::vector<std::vector<int32_t>> preds(states.size());
    for (size_t s = 0; s < states.size(); ++s) {
      if (states[s].kind != NfaState::kSplit) continue;
      if (states[s].out >= 0) preds[states[s].out].push_back(static_cast<int32_t>(s));
      if (states[s].out1 >= 0) preds[states[s].out1].push_back(static_cast<int32_t>(s));
    }
    std::vector<int32_t> stack = {universal};
    to_universal[universal] = 1;
    while (!stack.empty()) {
      const int32_t s = stack.back();
      stack.pop_back();
      for (int32_t p : preds[s]) {
        if (!to_universal[p]) {
          to_universal[p] = 1;
          stack.push_back(p);
        }
      }
    }
  }

  // Kernels, all in one pool; id 0 (dead) is the empty one.
  std::vector<int32_t> pool;
  std::vector<size_t> offsets = {0, 0};
  std::vector<uint64_t> hashes = {0};
  std::vector<uint32_t> table(1024, 0);  // open addressing; 0 = empty slot
  auto kernel = [&](uint32_t id) {
    return std::span<const int32_t>(pool.data() + offsets[id], offsets[id + 1] - offsets[id]);
  };
  bool too_complex = false, too_costly = false;
  // The id of kernel `k`, added if new (0 with too_complex set past the limits).
  auto intern = [&](std::vector<int32_t>& k) -> uint32_t {
    if (universal >= 0) {
      for (int32_t s : k) {
        if (to_universal[s]) {
          k.assign(1, universal);
          break;
        }
      }
    }
    const uint64_t h = HashKernel(k);
    size_t slot = h & (table.size() - 1);
    for (; table[slot] != 0; slot = (slot + 1) & (table.size() - 1)) {
      const uint32_t id = table[slot];
      if (hashes[id] == h && std::ranges::equal(kernel(id), k)) return id;
    }
    const uint32_t id = static_cast<uint32_t>(hashes.size());
    if (id >= static_cast<uint32_t>(RegexDfa::kMaxDfaStates)) {
      too_complex = true;
      return 0;
    }
    if (pool.size() + k.size() > kMaxKernelEntries) {
      too_costly = true;
      return 0;
    }
    pool.insert(pool.end(), k.begin(), k.end());
    offsets.push_back(pool.size());
    hashes.push_back(h);
    table[slot] = id;
    if (hashes.size() * 2 > table.size()) {
      std::vector<uint32_t> bigger(table.size() * 2, 0);
      for (uint32_t i = 1; i < hashes.size(); ++i) {
        size_t s = hashes[i] & (bigger.size() - 1);
        while (bigger[s] != 0) s = (s + 1) & (bigger.size() - 1);
        bigger[s] = i;
      }
      table.swap(bigger);
    }
    return id;
  };

  raw.next.assign(num_classes, 0);  // the dead state
  raw.accepting.push_back(0);
  std::vector<int32_t> first = {start};
  raw.start = intern(first);

  std::vector<uint32_t> mark(states.size(), 0);
  uint32_t generation = 0;
  std::vector<int32_t> stack, byte_states;
  uint64_t steps = 0;
  const uint64_t allowed = *work;
  std::vector<std::vector<int32_t>> buckets(num_classes);
  for (uint32_t id = 1; id < hashes.size(); ++id) {
    // The closure of the kernel: the byte states in it, and whether it holds the match.
    ++generation;
    byte_states.clear();
    bool accepting = false;
    const auto k = kernel(id);
    stack.assign(k.begin(), k.end());
    while (!stack.empty()) {
      const int32_t s = stack.back();
      stack.pop_back();
      if (mark[s] == generation) continue;
      mark[s] = generation;
      ++steps;
      const NfaState& st = states[s];
      switch (st.kind) {
        case NfaState::kMatch:
          accepting = true;
          break;
        case NfaState::kBytes:
          byte_states.push_back(s);
          break;
        case NfaState::kSplit:
          if (st.out1 >= 0) stack.push_back(st.out1);
          if (st.out >= 0) stack.push_back(st.out);
          break;
      }
    }
    raw.accepting.push_back(accepting ? 1 : 0);
    for (int32_t s : byte_states) {
      const std::vector<uint16_t>& classes = classes_of_mask[states[s].mask];
      steps += classes.size();
      for (uint16_t c : classes) buckets[c].push_back(states[s].out);
    }
    for (uint32_t c = 0; c < num_classes; ++c) steps += buckets[c].size();
    if (steps > allowed) return TooCostly(work);
    for (uint32_t c = 0; c < num_classes; ++c) {
      std::vector<int32_t>& b = buckets[c];
      uint32_t target = 0;
      if (!b.empty()) {
        std::sort(b.begin(), b.end());
        b.erase(std::unique(b.begin(), b.end()), b.end());
        target = intern(b);
        if (too_complex) return TooComplex();
        if (too_costly) return TooCostly(work);
        b.clear();
      }
      raw.next.push_back(target);
    }
  }
  *work -= steps;
  return raw;
}

}  // namespace

// ---------------------------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<const RegexDfa>> RegexDfaBuilder::Finish(const Raw& raw) {
  const uint32_t k = raw.num_classes;
  const size_t n = raw.accepting.size();
  // Predecessors, each once per state.
  std::vector<uint32_t> pred_begin(n + 1, 0), seen(n, UINT32_MAX);
  for (uint32_t s = 1; s < n; ++s) {
    for (uint32_t c = 0; c < k; ++c) {
      const uint32_t t = raw.next[size_t{s} * k + c];
      if (t != 0 && seen[t] != s) {
        seen[t] = s;
        ++pred_begin[t + 1];
      }
    }
  }
  for (size_t i = 0; i < n; ++i) pred_begin[i + 1] += pred_begin[i];
  std::vector<uint32_t> preds(pred_begin[n]), fill(pred_begin.begin(), pred_begin.end() - 1);
  std::fill(seen.begin(), seen.end(), UINT32_MAX);
  for (uint32_t s = 1; s < n; ++s) {
    for (uint32_t c = 0; c < k; ++c) {
      const uint32_t t = raw.next[size_t{s} * k + c];
      if (t != 0 && seen[t] != s) {
        seen[t] = s;
        preds[fill[t]++] = s;
      }
    }
  }
  // Live: can reach an accepting state.
  std::vector<uint8_t> live(n, 0);
  std::vector<uint32_t> queue;
  for (uint32_t s = 1; s < n; ++s) {
    if (raw.accepting[s]) {
      live[s] = 1;
      queue.push_back(s);
    }
  }
  for (size_t i = 0; i < queue.size(); ++i) {
    for (uint32_t j = pred_begin[queue[i]]; j < pred_begin[queue[i] + 1]; ++j) {
      if (!live[preds[j]]) {
        live[preds[j]] = 1;
        queue.push_back(preds[j]);
      }
    }
  }
  if (raw.start == 0 || !live[raw.start]) {
    return absl::InvalidArgumentError("no text matches it");
  }
  // Number the live states reachable from the start, breadth first.
  std::vector<uint32_t> new_id(n, 0), order = {raw.start};
  new_id[raw.start] = 1;
  for (size_t i = 0; i < order.size(); ++i) {
    for (uint32_t c = 0; c < k; ++c) {
      const uint32_t t = raw.next[size_t{order[i]} * k + c];
      if (t != 0 && live[t] && new_id[t] == 0) {
        order.push_back(t);
        new_id[t] = static_cast<uint32_t>(order.size());
      }
    }
  }
  const size_t m = order.size() + 1;
  auto target = [&](size_t state, uint32_t c) -> uint32_t {  // state: new id >= 1
    const uint32_t t = raw.next[size_t{order[state - 1]} * k + c];
    return t != 0 && live[t] ? new_id[t] : 0;
  };
  // Merge the classes whose columns are the same.
  std::vector<uint64_t> column_hash(k, 0);
  for (uint32_t c = 0; c < k; ++c) {
    uint64_t h = 0x2545F4914F6CDD1Dull;
    for (size_t s = 1; s < m; ++s) {
      h ^= target(s, c);
      h *= 0xBF58476D1CE4E5B9ull;
      h ^= h >> 29;
    }
    column_hash[c] = h;
  }
  std::vector<int32_t> merged(k, -1);
  std::vector<uint32_t> representative;  // new class -> an old class
  for (uint32_t c = 0; c < k; ++c) {
    for (uint32_t nc = 0; nc < representative.size() && merged[c] < 0; ++nc) {
      const uint32_t r = representative[nc];
      if (column_hash[r] != column_hash[c]) continue;
      bool same = true;
      for (size_t s = 1; s < m && same; ++s) same = target(s, r) == target(s, c);
      if (same) merged[c] = static_cast<int32_t>(nc);
    }
    if (merged[c] < 0) {
      merged[c] = static_cast<int32_t>(representative.size());
      representative.push_back(c);
    }
  }

  auto dfa = std::make_shared<RegexDfa>();
  const uint32_t nk = static_cast<uint32_t>(representative.size());
  dfa->start_ = 1;
  dfa->num_classes_ = nk;
  for (int b = 0; b < 256; ++b) dfa->class_of_[b] = static_cast<uint8_t>(merged[raw.class_of[b]]);
  dfa->next_.assign(m * nk, RegexDfa::kDead);
  dfa->flags_.assign(m, 0);
  for (size_t s = 1; s < m; ++s) {
    bool any = false;
    for (uint32_t nc = 0; nc < nk; ++nc) {
      const uint32_t t = target(s, representative[nc]);
      dfa->next_[s * nk + nc] = t;
      any |= t != RegexDfa::kDead;
    }
    uint8_t flags = 0;
    if (raw.accepting[order[s - 1]]) flags |= RegexDfa::kAccepting;
    if (!any) flags |= RegexDfa::kFinal;
    dfa->flags_[s] = flags;
  }
  // The fewest characters to a match: a 0-1 breadth-first search back from the accepting
  // states, a class costing 0 where it holds a continuation byte (the character has begun).
  std::vector<uint8_t> begins(nk, 1);
  for (int b = 0x80; b < 0xC0; ++b) begins[dfa->class_of_[b]] = 0;
  std::vector<uint32_t> back_begin(m + 1, 0);
  for (size_t s = 1; s < m; ++s) {
    for (uint32_t nc = 0; nc < nk; ++nc) ++back_begin[dfa->next_[s * nk + nc] + 1];
  }
  for (size_t i = 0; i < m; ++i) back_begin[i + 1] += back_begin[i];
  std::vector<uint32_t> back(back_begin[m]), at(back_begin.begin(), back_begin.end() - 1);
  for (size_t s = 1; s < m; ++s) {
    for (uint32_t nc = 0; nc < nk; ++nc) {
      back[at[dfa->next_[s * nk + nc]]++] = static_cast<uint32_t>(s * nk + nc);
    }
  }
  dfa->min_chars_.assign(m, UINT32_MAX);
  std::deque<uint32_t> pending;
  for (size_t s = 1; s < m; ++s) {
    if (dfa->flags_[s] & RegexDfa::kAccepting) {
      dfa->min_chars_[s] = 0;
      pending.push_back(static_cast<uint32_t>(s));
    }
  }
  while (!pending.empty()) {
    const uint32_t t = pending.front();
    pending.pop_front();
    for (uint32_t j = back_begin[t]; j < back_begin[t + 1]; ++j) {
      const uint32_t s = back[j] / nk, cost = begins[back[j] % nk];
      if (s == 0 || dfa->min_chars_[t] + cost >= dfa->min_chars_[s]) continue;
      dfa->min_chars_[s] = dfa->min_chars_[t] + cost;
      if (cost == 0) {
        pending.push_front(s);
      } else {
        pending.push_back(s);
      }
    }
  }
  return std::shared_ptr<const RegexDfa>(std::move(dfa));
}

absl::StatusOr<std::shared_ptr<const RegexDfa>> RegexDfa::Compile(std::string_view pattern,
                                                                  Match match, uint64_t* work) {
  uint64_t own = kMaxWork;
  if (work == nullptr) work = &own;
  if (pattern.size() > kMaxPatternBytes) {
    return absl::InvalidArgumentError(absl::StrCat("at offset ", kMaxPatternBytes,
                                                   ": a pattern over ", kMaxPatternBytes,
                                                   " bytes is not supported"));
  }
  Parser parser(pattern);
  if (!parser.Parse()) return parser.error();

  NfaBuilder nfa(parser.nodes());
  std::vector<Frag> alts;
  for (const TopAlt& alt : parser.alts()) alts.push_back(nfa.Compile(alt.node));
  int32_t start;
  int32_t universal = -1;
  if (match == Match::kFull) {
    std::vector<int32_t> starts;
    for (const Frag& f : alts) {
      nfa.Patch(f.end, NfaBuilder::kMatchState);
      starts.push_back(f.start);
    }
    start = nfa.FanOut(starts);
  } else {
    // Search: any text before an alternative without `^`, any after one without `$`.
    const CpRanges any = AnySet();
    std::vector<int32_t> direct, after_any;
    for (size_t i = 0; i < alts.size(); ++i) {
      const TopAlt& alt = parser.alts()[i];
      if (!alt.anchored_end && universal < 0) {
        const Frag x = nfa.CompileSet(any);
        universal = nfa.Split(x.start, NfaBuilder::kMatchState);
        nfa.Patch(x.end, universal);
      }
      nfa.Patch(alts[i].end, alt.anchored_end ? NfaBuilder::kMatchState : universal);
      (alt.anchored_start ? direct : after_any).push_back(alts[i].start);
    }
    if (!after_any.empty()) {
      const int32_t then = nfa.FanOut(after_any);
      const Frag x = nfa.CompileSet(any);
      const int32_t loop = nfa.Split(x.start, then);
      nfa.Patch(x.end, loop);
      direct.push_back(loop);
    }
    start = nfa.FanOut(direct);
  }
  if (nfa.overflow()) {
    return absl::InvalidArgumentError(absl::StrCat("too complex: more than ", kMaxNfaStates,
                                                   " NFA states once repetition is expanded"));
  }
  auto raw = BuildDfa(nfa, start, universal, work);
  if (!raw.ok()) return raw.status();
  return RegexDfaBuilder::Finish(*raw);
}

absl::StatusOr<std::shared_ptr<const RegexDfa>> RegexDfa::WithLength(uint32_t min,
                                                                     uint32_t max) const {
  if (min > max) return absl::InvalidArgumentError("no text matches it");
  const uint32_t k = num_classes_;
  // Per class: does a byte of it start a code point? (A class that any live state takes is
  // all continuation bytes or none.)
  std::vector<uint8_t> starts_cp(k, 1);
  for (int b = 255; b >= 0; --b) starts_cp[class_of_[b]] = (b & 0xC0) != 0x80;
  // Product states (DFA state, code points so far); with no upper bound the count stops
  // at `min`.
  const uint64_t cap = max == kUnbounded ? min : max;
  RegexDfaBuilder::Raw raw;
  raw.num_classes = k;
  std::memcpy(raw.class_of, class_of_, sizeof(class_of_));
  raw.next.assign(k, 0);
  raw.accepting.push_back(0);
  absl::flat_hash_map<uint64_t, uint32_t> ids;
  std::vector<std::pair<uint32_t, uint64_t>> states = {{0, 0}};
  auto intern = [&](uint32_t s, uint64_t count) -> int64_t {
    auto [it, inserted] = ids.try_emplace((uint64_t{s} << 32) | count, states.size());
    if (inserted) {
      if (states.size() >= static_cast<size_t>(kMaxDfaStates)) return -1;
      states.push_back({s, count});
    }
    return it->second;
  };
  raw.start = static_cast<uint32_t>(intern(start_, 0));
  for (size_t id = 1; id < states.size(); ++id) {
    const auto [s, count] = states[id];
    raw.accepting.push_back(accepting(s) && count >= min ? 1 : 0);
    for (uint32_t c = 0; c < k; ++c) {
      const uint32_t t = next_[size_t{s} * k + c];
      uint32_t target = 0;
      if (t != kDead) {
        uint64_t next_count = count + starts_cp[c];
        if (max == kUnbounded) next_count = std::min(next_count, cap);
        if (next_count <= cap) {
          const int64_t got = intern(t, next_count);
          if (got < 0) return TooComplex();
          target = static_cast<uint32_t>(got);
        }
      }
      raw.next.push_back(target);
    }
  }
  return RegexDfaBuilder::Finish(raw);
}

}  // namespace spanserve::engine
