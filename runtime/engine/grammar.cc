#include "runtime/engine/grammar.h"

#include <algorithm>
#include <queue>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/text.h"
#include "runtime/engine/code_points.h"

namespace spanserve::engine {

namespace {

constexpr uint64_t kInfinite = uint64_t{1} << 60;  // bytes: saturates below overflow
constexpr uint32_t kMinOfLength[5] = {0, 0, 0x80, 0x800, 0x10000};

using Ranges = CodePointRanges;

uint64_t Utf8Length(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t AddSat(uint64_t a, uint64_t b) { return std::min(a + b, kInfinite); }

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_';
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The compiler: parsing into rules of alternatives (groups and repetitions become rules of
// their own), then the checks, then the flat form.

class GrammarCompiler {
 public:
  explicit GrammarCompiler(std::string_view text) : text_(text) {}

  absl::StatusOr<std::shared_ptr<const Grammar>> Run();

 private:
  struct Elem {
    bool ref = false;
    uint32_t arg = 0;  // a set or a rule
  };
  using Seq = std::vector<Elem>;
  struct Rule {
    std::string name;        // a named rule's; generated ones: empty
    uint32_t owner = 0;      // the named rule it was written in
    size_t where = 0;        // a named rule: its definition (or first use); else the element
    bool defined = false;    // named rules
    bool repeat = false;     // generated for `*`, `+` or `{m,}`: body() repeats
    uint32_t body_rule = 0;  // repeat: the repeated element
    bool body_is_ref = false;
    std::vector<Seq> alts;
  };

  absl::Status Error(size_t at, std::string_view what) const {
    // Line and column (in characters) of byte `at`.
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        col = 1;
      } else if ((static_cast<uint8_t>(text_[i]) & 0xC0) != 0x80) {
        ++col;
      }
    }
    return absl::InvalidArgumentError(absl::StrCat("at ", line, ":", col, ": ", Sv(what)));
  }
  absl::Status TooLarge(std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("too large: ", Sv(what)));
  }
  char Peek(size_t k = 0) const { return pos_ + k < text_.size() ? text_[pos_ + k] : '\0'; }
  // Where the name that begins at `from` ends.
  size_t NameEnd(size_t from) const {
    while (from < text_.size() && IsNameChar(text_[from])) ++from;
    return from;
  }
  bool AtEnd() const { return pos_ >= text_.size(); }
  void Blanks(bool newlines);
  absl::Status Alternatives(bool nested, std::vector<Seq>* alts, int depth);
  absl::Status Sequence(bool nested, Seq* seq, int depth);
  absl::Status Primary(bool nested, Seq* seq, int depth);
  absl::Status Postfix(size_t at, Seq* seq, size_t first);
  absl::StatusOr<uint32_t> Char(bool in_class);  // a literal's or class's character
  absl::StatusOr<uint32_t> Hex(int digits, size_t at);
  absl::StatusOr<uint32_t> NewRule(size_t where);
  absl::StatusOr<uint32_t> RuleNamed(std::string_view name, size_t where);
  uint32_t Set(Ranges ranges);
  absl::Status CountElements(size_t n);
  absl::Status Check();

  std::string_view text_;
  size_t pos_ = 0;
  uint32_t current_ = 0;  // the named rule being read
  std::vector<Rule> rules_;
  absl::flat_hash_map<std::string, uint32_t> by_name_;
  std::vector<Ranges> sets_;
  absl::flat_hash_map<Ranges, uint32_t> set_ids_;
  size_t elements_ = 0;
  std::vector<uint64_t> min_;  // each rule's fewest bytes (kInfinite: derives none)
};

void GrammarCompiler::Blanks(bool newlines) {
  while (!AtEnd()) {
    const char c = Peek();
    if (c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r'))) {
      ++pos_;
    } else if (c == '#') {
      while (!AtEnd() && Peek() != '\n' && Peek() != '\r') ++pos_;
    } else {
      break;
    }
  }
}

absl::Status GrammarCompiler::CountElements(size_t n) {
  elements_ += n;
  if (elements_ > static_cast<size_t>(Grammar::kMaxElements)) {
    return TooLarge(absl::StrCat("more than ", Grammar::kMaxElements,
                                 " elements once repetitions are expanded"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> GrammarCompiler::NewRule(size_t where) {
  if (rules_.size() >= static_cast<size_t>(Grammar::kMaxRules)) {
    return TooLarge(absl::StrCat("more than ", Grammar::kMaxRules, " rules"));
  }
  Rule r;
  r.owner = current_;
  r.where = where;
  r.defined = true;
  rules_.push_back(std::move(r));
  return static_cast<uint32_t>(rules_.size() - 1);
}

absl::StatusOr<uint32_t> GrammarCompiler::RuleNamed(std::string_view name, size_t where) {
  auto it = by_name_.find(std::string(name));
  if (it != by_name_.end()) return it->second;
  auto id = NewRule(where);
  if (!id.ok()) return id.status();
  rules_[*id].name = std::string(name);
  rules_[*id].owner = *id;
  rules_[*id].defined = false;
  by_name_.emplace(std::string(name), *id);
  return *id;
}

uint32_t GrammarCompiler::Set(Ranges ranges) {
  auto [it, added] = set_ids_.try_emplace(ranges, static_cast<uint32_t>(sets_.size()));
  if (added) sets_.push_back(std::move(ranges));
  return it->second;
}

absl::StatusOr<uint32_t> GrammarCompiler::Hex(int digits, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < digits; ++i) {
    const char c = Peek();
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return Error(at, absl::StrCat("bad escape: expected ", digits, " hex digits"));
    }
    v = v * 16 + static_cast<uint32_t>(d);
    ++pos_;
  }
  if (v > kMaxCodePoint) return Error(at, "bad escape: past U+10FFFF");
  return v;
}

absl::StatusOr<uint32_t> GrammarCompiler::Char(bool in_class) {
  const size_t at = pos_;
  const auto c = static_cast<uint8_t>(Peek());
  if (c == '\\') {
    ++pos_;
    const char e = Peek();
    ++pos_;
    switch (e) {
      case 'n':
        return '\n';
      case 'r':
        return '\r';
      case 't':
        return '\t';
      case '\\':
      case '"':
      case '[':
      case ']':
        return static_cast<uint32_t>(e);
      case '-':
      case '^':
        if (in_class) return static_cast<uint32_t>(e);
        break;
      case 'x':
        return Hex(2, at);
      case 'u':
        return Hex(4, at);
      case 'U':
        return Hex(8, at);
      default:
        break;
    }
    if (e == '\0' && pos_ > text_.size()) return Error(at, "bad escape at the end of the text");
    return Error(at, absl::StrCat("bad escape '\\", std::string(1, e), "'"));
  }
  if (c == '\n' || c == '\r') {
    return Error(at, in_class ? "unterminated character class" : "unterminated string literal");
  }
  // A UTF-8 character of the grammar's text.
  int n = c < 0x80                 ? 0
          : c >= 0xC2 && c <= 0xDF ? 1
          : c >= 0xE0 && c <= 0xEF ? 2
          : c >= 0xF0 && c <= 0xF4 ? 3
                                   : -1;
  if (n < 0) return Error(at, "invalid UTF-8");
  uint32_t cp = n == 0 ? c : c & (0x3F >> n);
  ++pos_;
  for (int k = 0; k < n; ++k) {
    const auto cc = static_cast<uint8_t>(Peek());
    if (AtEnd() || (cc & 0xC0) != 0x80) return Error(at, "invalid UTF-8");
    cp = (cp << 6) | (cc & 0x3F);
    ++pos_;
  }
  if (cp < kMinOfLength[n + 1] || cp > kMaxCodePoint || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return Error(at, "invalid UTF-8");
  }
  return cp;
}

absl::Status GrammarCompiler::Postfix(size_t at, Seq* seq, size_t first) {
  // The element from `first` on: one element, or a new rule holding them.
  auto element = [&]() -> absl::StatusOr<Elem> {
    if (seq->size() == first + 1) return (*seq)[first];
    auto g = NewRule(at);
    if (!g.ok()) return g.status();
    rules_[*g].alts.push_back(Seq(seq->begin() + static_cast<std::ptrdiff_t>(first), seq->end()));
    return Elem{true, *g};
  };
  // A rule x R | ε (`repeat`: R is the rule itself, else `tail`).
  auto star = [&](Elem x) -> absl::StatusOr<uint32_t> {
    auto r = NewRule(at);
    if (!r.ok()) return r.status();
    rules_[*r].repeat = true;
    rules_[*r].body_rule = x.arg;
    rules_[*r].body_is_ref = x.ref;
    rules_[*r].alts = {Seq{x, Elem{true, *r}}, Seq{}};
    if (auto s = CountElements(4); !s.ok()) return s;
    return *r;
  };
  while (true) {
    const char op = Peek();
    if (op != '*' && op != '+' && op != '?' && op != '{') return absl::OkStatus();
    const size_t op_at = pos_;
    ++pos_;
    if (seq->size() == first) return Error(op_at, "nothing to repeat");
    auto x = element();
    if (!x.ok()) return x.status();
    seq->resize(first);
    int m = 0, n = -1;  // n -1: unbounded
    if (op == '*') {
      m = 0;
    } else if (op == '+') {
      m = 1;
    } else if (op == '?') {
      m = 0;
      n = 1;
    } else {
      auto number = [&]() -> absl::StatusOr<int> {
        Blanks(true);
        if (!(Peek() >= '0' && Peek() <= '9')) return Error(pos_, "expected a number in { }");
        const size_t num_at = pos_;
        int v = 0;
        while (Peek() >= '0' && Peek() <= '9') {
          v = v * 10 + (Peek() - '0');
          ++pos_;
          if (v > Grammar::kMaxRepeat) {
            return Error(num_at,
                         absl::StrCat("too large: repetition bound over ", Grammar::kMaxRepeat));
          }
        }
        Blanks(true);
        return v;
      };
      auto lo = number();
      if (!lo.ok()) return lo.status();
      m = *lo;
      n = m;
      if (Peek() == ',') {
        ++pos_;
        Blanks(true);
        if (Peek() == '}') {
          n = -1;
        } else {
          auto hi = number();
          if (!hi.ok()) return hi.status();
          n = *hi;
          if (n < m) return Error(op_at, absl::StrCat("{", m, ",", n, "}: m is over n"));
        }
      }
      if (Peek() != '}') return Error(pos_, "expected '}'");
      ++pos_;
    }
    if (auto s = CountElements(static_cast<size_t>(m)); !s.ok()) return s;
    for (int i = 0; i < m; ++i) seq->push_back(*x);
    if (n < 0) {
      auto r = star(*x);
      if (!r.ok()) return r.status();
      seq->push_back(Elem{true, *r});
    } else if (n > m) {
      // Nested optionals: x (x (x)?)?, one rule per level.
      uint32_t inner = 0;
      for (int k = 0; k < n - m; ++k) {
        auto r = NewRule(op_at);
        if (!r.ok()) return r.status();
        if (auto s = CountElements(4); !s.ok()) return s;
        rules_[*r].alts = {k == 0 ? Seq{*x} : Seq{*x, Elem{true, inner}}, Seq{}};
        inner = *r;
      }
      seq->push_back(Elem{true, inner});
    }
    if (seq->size() == first) {
      // x{0}: nothing; a following operator has nothing to repeat.
      return absl::OkStatus();
    }
  }
}

absl::Status GrammarCompiler::Primary(bool nested, Seq* seq, int depth) {
  const size_t at = pos_;
  const size_t first = seq->size();
  const char c = Peek();
  if (c == '"') {
    ++pos_;
    while (Peek() != '"') {
      if (AtEnd()) return Error(at, "unterminated string literal");
      auto cp = Char(false);
      if (!cp.ok()) return cp.status();
      if (*cp >= 0xD800 && *cp <= 0xDFFF) return Error(at, "a surrogate in a string literal");
      seq->push_back(Elem{false, Set({{*cp, *cp}})});
    }
    ++pos_;
    if (auto s = CountElements(seq->size() - first); !s.ok()) return s;
  } else if (c == '[') {
    ++pos_;
    bool negated = false;
    if (Peek() == '^') {
      negated = true;
      ++pos_;
    }
    Ranges ranges;
    while (Peek() != ']') {
      if (AtEnd()) return Error(at, "unterminated character class");
      auto lo = Char(true);
      if (!lo.ok()) return lo.status();
      uint32_t hi = *lo;
      if (Peek() == '-' && Peek(1) != ']' && pos_ + 1 < text_.size()) {
        const size_t range_at = pos_;
        ++pos_;
        auto h = Char(true);
        if (!h.ok()) return h.status();
        hi = *h;
        if (hi < *lo) return Error(range_at, "a range whose end is before its start");
      }
      ranges.push_back({*lo, hi});
    }
    ++pos_;
    ranges = NormalizeCodePoints(std::move(ranges));
    if (negated) ranges = ComplementCodePoints(ranges);
    if (ranges.empty()) return Error(at, "an empty character class (it matches no character)");
    seq->push_back(Elem{false, Set(std::move(ranges))});
    if (auto s = CountElements(1); !s.ok()) return s;
  } else if (c == '.') {
    ++pos_;
    seq->push_back(Elem{false, Set(NormalizeCodePoints({{0, kMaxCodePoint}}))});
    if (auto s = CountElements(1); !s.ok()) return s;
  } else if (c == '(') {
    if (depth >= Grammar::kMaxNesting) {
      return TooLarge(absl::StrCat("groups nested deeper than ", Grammar::kMaxNesting));
    }
    ++pos_;
    Blanks(true);
    auto g = NewRule(at);
    if (!g.ok()) return g.status();
    std::vector<Seq> alts;
    if (auto s = Alternatives(true, &alts, depth + 1); !s.ok()) return s;
    if (Peek() != ')') return Error(pos_, AtEnd() ? "expected ')' before the end" : "expected ')'");
    ++pos_;
    rules_[*g].alts = std::move(alts);
    seq->push_back(Elem{true, *g});
    if (auto s = CountElements(1); !s.ok()) return s;
  } else if (IsNameChar(c)) {
    const size_t end = NameEnd(pos_);
    const std::string_view name = text_.substr(pos_, end - pos_);
    pos_ = end;
    auto r = RuleNamed(name, at);
    if (!r.ok()) return r.status();
    seq->push_back(Elem{true, *r});
    if (auto s = CountElements(1); !s.ok()) return s;
  } else {
    return Error(at, "expected an element");
  }
  Blanks(nested);
  if (auto s = Postfix(at, seq, first); !s.ok()) return s;
  Blanks(nested);
  return absl::OkStatus();
}

absl::Status GrammarCompiler::Sequence(bool nested, Seq* seq, int depth) {
  while (!AtEnd()) {
    const char c = Peek();
    if (c == '|' || c == ')' || c == '\n' || c == '\r') break;
    if (c == '*' || c == '+' || c == '?' || c == '{') return Error(pos_, "nothing to repeat");
    if (c != '"' && c != '[' && c != '.' && c != '(' && !IsNameChar(c)) {
      return Error(pos_, absl::StrCat("unexpected '", std::string(1, c), "'"));
    }
    if (IsNameChar(c)) {
      // A name followed by ::= begins a rule: the previous one lacks its line break.
      size_t end = NameEnd(pos_);
      while (end < text_.size() && (text_[end] == ' ' || text_[end] == '\t')) ++end;
      if (text_.substr(end).starts_with("::=")) {
        return Error(pos_, "expected a line break before the next rule");
      }
    }
    if (auto s = Primary(nested, seq, depth); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status GrammarCompiler::Alternatives(bool nested, std::vector<Seq>* alts, int depth) {
  alts->emplace_back();
  if (auto s = Sequence(nested, &alts->back(), depth); !s.ok()) return s;
  while (true) {
    if (Peek() == '|') {
      ++pos_;
      Blanks(true);
      alts->emplace_back();
      if (auto s = Sequence(nested, &alts->back(), depth); !s.ok()) return s;
      continue;
    }
    if (!nested && (Peek() == '\n' || Peek() == '\r')) {
      // A later line that begins with '|' continues the alternatives.
      const size_t keep = pos_;
      Blanks(true);
      if (Peek() == '|') continue;
      pos_ = keep;
    }
    return absl::OkStatus();
  }
}

absl::Status GrammarCompiler::Check() {
  const size_t n = rules_.size();
  for (uint32_t r = 0; r < n; ++r) {
    if (!rules_[r].defined) {
      return Error(rules_[r].where,
                   absl::StrCat("rule '", rules_[r].name, "' is used but not defined"));
    }
  }
  auto root = by_name_.find("root");
  if (root == by_name_.end()) {
    return absl::InvalidArgumentError("no rule 'root' (the start rule)");
  }
  // The fewest bytes of each rule (Knuth's generalization of Dijkstra's algorithm): a rule is
  // settled at its least sum once an alternative has all its rules settled.
  min_.assign(n, kInfinite);
  struct AltState {
    uint32_t rule;
    uint32_t pending;
    uint64_t sum;
  };
  std::vector<AltState> alt_states;
  std::vector<std::vector<uint32_t>> uses(n);  // rule -> alternatives using it (repeated)
  using Item = std::pair<uint64_t, uint32_t>;
  std::priority_queue<Item, std::vector<Item>, std::greater<>> queue;
  for (uint32_t r = 0; r < n; ++r) {
    for (const Seq& alt : rules_[r].alts) {
      const auto a = static_cast<uint32_t>(alt_states.size());
      AltState st{r, 0, 0};
      for (const Elem& e : alt) {
        if (e.ref) {
          ++st.pending;
          uses[e.arg].push_back(a);
        } else {
          st.sum = AddSat(st.sum, Utf8Length(sets_[e.arg].front().first));
        }
      }
      alt_states.push_back(st);
      if (st.pending == 0) queue.push({st.sum, r});
    }
  }
  std::vector<bool> settled(n, false);
  while (!queue.empty()) {
    const auto [v, r] = queue.top();
    queue.pop();
    if (settled[r]) continue;
    settled[r] = true;
    min_[r] = v;
    for (const uint32_t a : uses[r]) {
      AltState& st = alt_states[a];
      st.sum = AddSat(st.sum, v);
      if (--st.pending == 0) queue.push({st.sum, st.rule});
    }
  }
  for (uint32_t r = 0; r < n; ++r) {
    if (settled[r]) continue;
    // Every alternative of a rule that is not settled uses one that is not either: follow
    // them to a rule that needs itself, and name that one.
    std::vector<bool> on_path(n, false);
    uint32_t at = r;
    while (!on_path[at]) {
      on_path[at] = true;
      for (const Elem& e : rules_[at].alts.front()) {
        if (e.ref && !settled[e.arg]) {
          at = e.arg;
          break;
        }
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "rule '", rules_[rules_[at].owner].name, "' can never finish (it derives no finite text)"));
  }
  // A repetition of something that can be empty.
  for (uint32_t r = 0; r < n; ++r) {
    const Rule& rule = rules_[r];
    if (rule.repeat && rule.body_is_ref && min_[rule.body_rule] == 0) {
      return Error(rule.where, "a repetition of something that can be empty");
    }
  }
  // Left recursion: a cycle of rules each reached from the previous past a prefix that can
  // be empty.
  std::vector<std::vector<uint32_t>> left(n);
  for (uint32_t r = 0; r < n; ++r) {
    for (const Seq& alt : rules_[r].alts) {
      for (const Elem& e : alt) {
        if (!e.ref) break;
        left[r].push_back(e.arg);
        if (min_[e.arg] != 0) break;
      }
    }
  }
  std::vector<uint8_t> color(n, 0);  // 0 unseen, 1 on the path, 2 done
  for (uint32_t s = 0; s < n; ++s) {
    if (color[s] != 0) continue;
    std::vector<std::pair<uint32_t, size_t>> path = {{s, 0}};
    color[s] = 1;
    while (!path.empty()) {
      auto& [r, i] = path.back();
      if (i == left[r].size()) {
        color[r] = 2;
        path.pop_back();
        continue;
      }
      const uint32_t t = left[r][i++];
      if (color[t] == 1) {
        // The cycle runs from t to the path's end: name a named rule on it, t's owner.
        uint32_t named = rules_[t].owner;
        for (auto it = path.rbegin(); it != path.rend(); ++it) {
          if (!rules_[it->first].name.empty()) named = it->first;
          if (it->first == t) break;
        }
        return absl::InvalidArgumentError(
            absl::StrCat("rule '", rules_[named].name, "' is left-recursive"));
      }
      if (color[t] == 0) {
        color[t] = 1;
        path.push_back({t, 0});
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Grammar>> GrammarCompiler::Run() {
  if (text_.size() > Grammar::kMaxGrammarBytes) {
    return TooLarge(absl::StrCat("the grammar is over ", Grammar::kMaxGrammarBytes, " bytes"));
  }
  Blanks(true);
  while (!AtEnd()) {
    const size_t at = pos_;
    if (!IsNameChar(Peek())) return Error(pos_, "expected a rule name");
    const size_t end = NameEnd(pos_);
    const std::string_view name = text_.substr(pos_, end - pos_);
    pos_ = end;
    auto r = RuleNamed(name, at);
    if (!r.ok()) return r.status();
    if (rules_[*r].defined) {
      return Error(at, absl::StrCat("rule '", Sv(name), "' is defined twice"));
    }
    rules_[*r].defined = true;
    rules_[*r].where = at;
    current_ = *r;
    Blanks(false);
    if (!text_.substr(pos_).starts_with("::=")) return Error(pos_, "expected '::='");
    pos_ += 3;
    Blanks(true);
    std::vector<Seq> alts;
    if (auto s = Alternatives(false, &alts, 0); !s.ok()) return s;
    rules_[*r].alts = std::move(alts);
    if (!AtEnd() && Peek() != '\n' && Peek() != '\r') {
      return Error(pos_, absl::StrCat("unexpected '", std::string(1, Peek()), "'"));
    }
    Blanks(true);
  }
  if (auto s = Check(); !s.ok()) return s;

  // The flat form.
  auto g = std::shared_ptr<Grammar>(new Grammar());
  for (const Ranges& set : sets_) {
    Grammar::CharSet cs;
    cs.begin = static_cast<uint32_t>(g->ranges_.size());
    for (const auto& [lo, hi] : set) {
      g->ranges_.push_back({lo, hi});
      for (uint32_t c = lo; c <= std::min<uint32_t>(hi, 127); ++c) {
        cs.ascii[c >> 6] |= uint64_t{1} << (c & 63);
      }
    }
    cs.end = static_cast<uint32_t>(g->ranges_.size());
    g->sets_.push_back(cs);
  }
  const size_t n = rules_.size();
  g->rule_alts_.resize(n);
  g->best_alt_.assign(n, 0);
  for (uint32_t r = 0; r < n; ++r) {
    uint64_t best = kInfinite + 1;
    for (const Seq& alt : rules_[r].alts) {
      const auto first = static_cast<uint32_t>(g->elems_.size());
      g->rule_alts_[r].push_back(first);
      for (const Elem& e : alt) {
        g->elems_.push_back({e.ref ? Grammar::kRef : Grammar::kChar, e.arg});
      }
      g->elems_.push_back({Grammar::kEnd, 0});
      // The fewest bytes from each position to the alternative's end.
      g->suffix_min_.resize(g->elems_.size(), 0);
      uint64_t sum = 0;
      for (size_t i = alt.size(); i-- > 0;) {
        const Elem& e = alt[i];
        sum = AddSat(sum, e.ref ? min_[e.arg] : Utf8Length(sets_[e.arg].front().first));
        g->suffix_min_[first + i] = sum;
      }
      if (sum < best) {
        best = sum;
        g->best_alt_[r] = first;
      }
    }
  }
  g->root_ = static_cast<int32_t>(by_name_.find("root")->second);
  GrammarState start(nullptr);
  start.grammar_ = g.get();
  if (!start.FillStart()) {
    return TooLarge("the start of the text passes the limits on parses");
  }
  g->start_ = std::move(start.data_);
  return std::shared_ptr<const Grammar>(std::move(g));
}

absl::StatusOr<std::shared_ptr<const Grammar>> Grammar::Compile(std::string_view text) {
  GrammarCompiler compiler(text);
  return compiler.Run();
}

bool Grammar::Contains(uint32_t set, uint32_t cp) const {
  const CharSet& s = sets_[set];
  if (cp < 128) return (s.ascii[cp >> 6] >> (cp & 63)) & 1;
  auto begin = ranges_.begin() + s.begin, end = ranges_.begin() + s.end;
  auto it = std::upper_bound(begin, end, cp, [](uint32_t v, const auto& r) { return v < r.first; });
  return it != begin && std::prev(it)->second >= cp;
}

bool Grammar::Intersects(uint32_t set, uint32_t lo, uint32_t hi) const {
  const CharSet& s = sets_[set];
  auto begin = ranges_.begin() + s.begin, end = ranges_.begin() + s.end;
  // The first range that ends at or after lo.
  auto it =
      std::lower_bound(begin, end, lo, [](const auto& r, uint32_t v) { return r.second < v; });
  return it != end && it->first <= hi;
}

bool Grammar::Covers(uint32_t set, uint32_t lo, uint32_t hi) const {
  const CharSet& s = sets_[set];
  auto begin = ranges_.begin() + s.begin, end = ranges_.begin() + s.end;
  auto it =
      std::lower_bound(begin, end, lo, [](const auto& r, uint32_t v) { return r.second < v; });
  return it != end && it->first <= lo && it->second >= hi;
}

// ---------------------------------------------------------------------------------------
// The recognizer.

GrammarState::GrammarState(const Grammar* grammar) : grammar_(grammar) {
  if (grammar_ != nullptr) data_ = grammar_->start_;
}

bool GrammarState::FillStart() {
  std::vector<std::vector<uint32_t>> work;
  for (const uint32_t a : grammar_->rule_alts_[grammar_->root_]) work.push_back({a});
  return Close(&work);
}

bool GrammarState::Close(std::vector<std::vector<uint32_t>>* work) {
  const std::vector<Grammar::Elem>& elems = grammar_->elems_;
  absl::flat_hash_set<std::vector<uint32_t>> seen;
  std::vector<std::vector<uint32_t>> done;
  int visited = 0;
  while (!work->empty()) {
    std::vector<uint32_t> s = std::move(work->back());
    work->pop_back();
    // Alternatives that are over return to their callers.
    while (!s.empty() && elems[s.back()].kind == Grammar::kEnd) s.pop_back();
    if (!seen.insert(s).second) continue;
    if (++visited > Grammar::kMaxExpansionWork) return false;
    if (s.empty() || elems[s.back()].kind == Grammar::kChar) {
      if (done.size() >= static_cast<size_t>(Grammar::kMaxStacks)) return false;
      done.push_back(std::move(s));
      continue;
    }
    // A rule's reference: its alternatives, above where to go on after it (nothing when the
    // reference ends its alternative).
    const uint32_t p = s.back();
    s.pop_back();
    if (elems[p + 1].kind != Grammar::kEnd) s.push_back(p + 1);
    if (s.size() + 1 > static_cast<size_t>(Grammar::kMaxStackDepth)) return false;
    for (const uint32_t a : grammar_->rule_alts_[elems[p].arg]) {
      std::vector<uint32_t> t;
      t.reserve(s.size() + 1);
      t = s;
      t.push_back(a);
      work->push_back(std::move(t));
    }
  }
  std::sort(done.begin(), done.end());
  data_.clear();
  for (const auto& s : done) {
    data_.push_back(static_cast<uint32_t>(s.size()));
    data_.insert(data_.end(), s.begin(), s.end());
  }
  return true;
}

bool GrammarState::Advance(uint32_t cp, bool all) {
  const std::vector<Grammar::Elem>& elems = grammar_->elems_;
  std::vector<std::vector<uint32_t>> work;
  for (size_t i = 0; i < data_.size(); i += data_[i] + 1) {
    const uint32_t len = data_[i];
    if (len == 0) continue;
    const uint32_t top = data_[i + len];
    if (!all && !grammar_->Contains(elems[top].arg, cp)) continue;
    std::vector<uint32_t> s(data_.begin() + static_cast<std::ptrdiff_t>(i + 1),
                            data_.begin() + static_cast<std::ptrdiff_t>(i + 1 + len));
    s.back() = top + 1;
    work.push_back(std::move(s));
  }
  if (work.empty()) return false;
  std::reverse(work.begin(), work.end());
  if (!Close(&work)) {
    over_limits_ = true;
    return false;
  }
  return !data_.empty();
}

bool GrammarState::FeedByte(uint8_t b) {
  uint32_t v;
  uint8_t rem, len;
  if (rem_ == 0) {
    if (b < 0x80) return Advance(b, false);
    if (b >= 0xC2 && b <= 0xDF) {
      v = b & 0x1F, rem = 1, len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      v = b & 0x0F, rem = 2, len = 3;
    } else if (b >= 0xF0 && b <= 0xF4) {
      v = b & 0x07, rem = 3, len = 4;
    } else {
      return false;
    }
  } else {
    if ((b & 0xC0) != 0x80) return false;
    if (any_) {
      if (--rem_ > 0) return true;
      any_ = false;
      return Advance(0, true);
    }
    v = (value_ << 6) | (b & 0x3F);
    rem = static_cast<uint8_t>(rem_ - 1);
    len = len_;
  }
  if (rem == 0) {
    rem_ = 0;
    value_ = 0;
    len_ = 0;
    if (v < kMinOfLength[len]) return false;  // overlong (surrogates: in no set)
    return Advance(v, false);
  }
  // The code points this character may still become.
  const uint32_t shift = 6u * rem;
  uint32_t lo = v << shift;
  uint32_t hi = lo | ((1u << shift) - 1);
  const bool all_valid =
      lo >= kMinOfLength[len] && hi <= kMaxCodePoint && (hi < 0xD800 || lo > 0xDFFF);
  lo = std::max(lo, kMinOfLength[len]);
  hi = std::min(hi, kMaxCodePoint);
  if (lo > hi) return false;
  const std::vector<Grammar::Elem>& elems = grammar_->elems_;
  bool covers = all_valid;
  size_t out = 0;
  for (size_t i = 0; i < data_.size();) {
    const uint32_t n = data_[i];
    const size_t next = i + n + 1;
    if (n > 0 && grammar_->Intersects(elems[data_[i + n]].arg, lo, hi)) {
      covers = covers && grammar_->Covers(elems[data_[i + n]].arg, lo, hi);
      if (out != i) std::copy(data_.begin() + i, data_.begin() + next, data_.begin() + out);
      out += n + 1;
    }
    i = next;
  }
  data_.resize(out);
  if (out == 0) return false;
  rem_ = rem;
  any_ = covers;
  value_ = covers ? 0 : v;
  len_ = covers ? 0 : len;
  return true;
}

bool GrammarState::Feed(std::string_view bytes) {
  if (grammar_ == nullptr) return false;
  over_limits_ = false;
  for (const char c : bytes) {
    if (!FeedByte(static_cast<uint8_t>(c))) return false;
  }
  return true;
}

bool GrammarState::accepting() const {
  return grammar_ != nullptr && rem_ == 0 && !data_.empty() && data_[0] == 0;
}

bool GrammarState::final() const {
  return grammar_ != nullptr && rem_ == 0 && data_.size() == 1 && data_[0] == 0;
}

bool GrammarState::operator==(const GrammarState& o) const {
  return grammar_ == o.grammar_ && rem_ == o.rem_ && any_ == o.any_ && value_ == o.value_ &&
         len_ == o.len_ && data_ == o.data_;
}

size_t GrammarState::Hash() const {
  return absl::HashOf(reinterpret_cast<uintptr_t>(grammar_), rem_, any_, value_, len_, data_);
}

size_t GrammarState::num_stacks() const {
  size_t n = 0;
  for (size_t i = 0; i < data_.size(); i += data_[i] + 1) ++n;
  return n;
}

uint64_t GrammarState::StackMin(size_t at, size_t len) const {
  uint64_t sum = 0;
  for (size_t k = 0; k < len; ++k) {
    const uint32_t p = data_[at + k];
    // The top of a character under way: its remaining bytes, then what follows it.
    sum = AddSat(sum, k + 1 == len && rem_ > 0 ? rem_ + grammar_->suffix_min_[p + 1]
                                               : grammar_->suffix_min_[p]);
  }
  return sum;
}

uint64_t GrammarState::min_completion_bytes() const {
  uint64_t best = kInfinite;
  if (grammar_ == nullptr) return best;
  for (size_t i = 0; i < data_.size(); i += data_[i] + 1) {
    if (rem_ > 0 && data_[i] == 0) continue;
    best = std::min(best, StackMin(i + 1, data_[i]));
  }
  return best;
}

bool GrammarState::ShortestCompletion(size_t max_bytes, std::string* out) const {
  if (grammar_ == nullptr) return false;
  const Grammar& g = *grammar_;
  size_t best_at = 0;
  uint64_t best = kInfinite;
  for (size_t i = 0; i < data_.size(); i += data_[i] + 1) {
    if (rem_ > 0 && data_[i] == 0) continue;
    const uint64_t m = StackMin(i + 1, data_[i]);
    if (m < best) best = m, best_at = i;
  }
  if (best >= kInfinite || best > max_bytes) return false;
  const size_t limit = out->size() + max_bytes;
  std::vector<uint32_t> todo(
      data_.begin() + static_cast<std::ptrdiff_t>(best_at + 1),
      data_.begin() + static_cast<std::ptrdiff_t>(best_at + 1 + data_[best_at]));
  if (rem_ > 0) {
    // Finish the character under way with the least code point its top takes.
    const uint32_t set = g.elems_[todo.back()].arg;
    uint32_t cp = 0;
    if (!any_) {
      const uint32_t shift = 6u * rem_;
      const uint32_t lo = std::max(value_ << shift, kMinOfLength[len_]);
      const uint32_t hi = std::min(lo | ((1u << shift) - 1), kMaxCodePoint);
      const auto begin = g.ranges_.begin() + g.sets_[set].begin;
      const auto end = g.ranges_.begin() + g.sets_[set].end;
      auto it =
          std::lower_bound(begin, end, lo, [](const auto& r, uint32_t v) { return r.second < v; });
      if (it == end) return false;
      cp = std::max(lo, it->first);
      if (cp > hi) return false;
    }
    for (int k = rem_ - 1; k >= 0; --k) {
      out->push_back(static_cast<char>(0x80 | ((cp >> (6 * k)) & 0x3F)));
    }
    todo.back() += 1;
  }
  // Positions still to complete, the next one last.
  while (!todo.empty()) {
    if (out->size() > limit) return false;
    const uint32_t p = todo.back();
    todo.pop_back();
    const Grammar::Elem& e = g.elems_[p];
    if (e.kind == Grammar::kEnd) continue;
    todo.push_back(p + 1);
    if (e.kind == Grammar::kChar) {
      AppendUtf8(g.ranges_[g.sets_[e.arg].begin].first, out);
    } else {
      todo.push_back(g.best_alt_[e.arg]);
    }
  }
  return out->size() <= limit;
}

// ---------------------------------------------------------------------------------------
// The tokens a state allows: each token's bytes are walked through the states met so far in
// this call, each state's transitions computed once (inside a string, most bytes lead back to
// the same state), the tokens grouped by their first byte.

namespace {

class TransitionMemo {
 public:
  static constexpr int32_t kUnknown = -1;
  static constexpr int32_t kDead = -2;
  static constexpr int32_t kFull = -3;  // no room for more states
  static constexpr size_t kMaxStates = 4096;

  explicit TransitionMemo(const GrammarState& start) { Intern(start); }
  const GrammarState& state(int32_t id) const { return states_[id]; }
  int32_t Step(int32_t from, uint8_t b) {
    int32_t& to = next_[static_cast<size_t>(from) * 256 + b];
    if (to != kUnknown) return to;
    GrammarState s = states_[from];
    const char c = static_cast<char>(b);
    if (!s.Feed(std::string_view(&c, 1))) return to = kDead;
    const int32_t id = Intern(std::move(s));
    // `to` may dangle once next_ grew.
    next_[static_cast<size_t>(from) * 256 + b] = id;
    return id;
  }

 private:
  struct Hasher {
    const std::vector<GrammarState>* states;
    size_t operator()(int32_t id) const { return (*states)[id].Hash(); }
  };
  struct Eq {
    const std::vector<GrammarState>* states;
    bool operator()(int32_t a, int32_t b) const { return (*states)[a] == (*states)[b]; }
  };
  int32_t Intern(GrammarState s) {
    states_.push_back(std::move(s));
    const auto id = static_cast<int32_t>(states_.size() - 1);
    auto [it, added] = ids_.insert(id);
    if (!added) {
      states_.pop_back();
      return *it;
    }
    if (states_.size() > kMaxStates) {
      ids_.erase(id);
      states_.pop_back();
      return kFull;
    }
    next_.resize(states_.size() * 256, kUnknown);
    return id;
  }

  std::vector<GrammarState> states_;
  absl::flat_hash_set<int32_t, Hasher, Eq> ids_{0, Hasher{&states_}, Eq{&states_}};
  std::vector<int32_t> next_;
};

}  // namespace

int32_t AllowedGrammarTokens(const GrammarState& state, const TokenBytesTable& table,
                             std::vector<int32_t>* ids) {
  const size_t before = ids->size();
  if (state.final()) return 0;
  TransitionMemo memo(state);
  for (int b = 0; b < 256; ++b) {
    const std::vector<int32_t>& group = table.with_first_byte(static_cast<uint8_t>(b));
    if (group.empty()) continue;
    const int32_t first = memo.Step(0, static_cast<uint8_t>(b));
    if (first == TransitionMemo::kDead) continue;
    for (const int32_t id : group) {
      const std::string& bytes = table.bytes(id);
      int32_t s = first;
      size_t i = 1;
      int32_t last = 0;  // the state before bytes[i - 1]
      for (; i < bytes.size() && s >= 0; ++i) {
        last = s;
        s = memo.Step(s, static_cast<uint8_t>(bytes[i]));
      }
      if (s == TransitionMemo::kFull) {
        // Past the memo's room: the rest of the token on a copy.
        GrammarState t = memo.state(last);
        if (t.Feed(std::string_view(bytes).substr(i - 1))) ids->push_back(id);
      } else if (s >= 0) {
        ids->push_back(id);
      }
    }
  }
  return static_cast<int32_t>(ids->size() - before);
}
}  // namespace spanserve::engine
