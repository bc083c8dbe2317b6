#include "runtime/engine/json_grammar.h"

#include <algorithm>

namespace spanserve::engine {
namespace {

constexpr const char* kLiterals[3] = {"true", "false", "null"};

bool IsWhitespace(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }
bool IsHex(uint8_t c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
int HexValue(uint8_t c) { return IsDigit(c) ? c - '0' : (c | 0x20) - 'a' + 10; }

// Bounded numbers are compared exactly, as integers scaled by a power of ten.
using Int128 = __int128;
Int128 Pow10(int k) {
  Int128 p = 1;
  while (k-- > 0) p *= 10;
  return p;
}
// Significant digits a bounded number may have: its value is then exact in a double.
constexpr int kIntegerDigits = 18;
constexpr int kNumberDigits = 15;

// The bounds on a number's magnitude x (its value is x, or -x when negative), scaled by 10^k.
struct MagnitudeRange {
  Int128 lo, hi;
  bool lo_open, hi_open;
  MagnitudeRange(const JsonSchema::Node& n, bool negative, int k) {
    const Int128 s = Pow10(k);
    lo = (negative ? -Int128{n.hi} : Int128{n.lo}) * s;
    hi = (negative ? -Int128{n.lo} : Int128{n.hi}) * s;
    lo_open = negative ? n.hi_open : n.lo_open;
    hi_open = negative ? n.lo_open : n.hi_open;
  }
  bool Contains(Int128 x) const {
    return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  }
  // Whether [a, b) meets the range: any of its reals, or (integers) any of its integers.
  bool Meets(Int128 a, Int128 b, bool integers) const {
    if (integers) {
      return std::max(a, lo_open ? lo + 1 : lo) <= std::min(b - 1, hi_open ? hi - 1 : hi);
    }
    Int128 low = a, high = b;
    bool low_open = false, high_open = true;
    if (lo > a || (lo == a && lo_open)) {
      low = lo;
      low_open = lo_open;
    }
    if (hi < b) {
      high = hi;
      high_open = hi_open;
    }
    return low < high || (low == high && !low_open && !high_open);
  }
};

}  // namespace

using Kind = JsonSchema::Kind;

JsonMatcher::JsonMatcher(const JsonSchema* schema) : schema_(schema) {
  if (schema_ != nullptr) node_ = schema_->root();
}

bool JsonMatcher::Feed(uint8_t c) {
  const JsonMatcher saved = *this;
  if (FeedInner(c)) return true;
  *this = saved;
  return false;
}

bool JsonMatcher::Feed(std::string_view bytes) {
  for (const char c : bytes) {
    if (!FeedInner(static_cast<uint8_t>(c))) return false;
  }
  return true;
}

const RegexDfa* JsonMatcher::pattern() const {
  if (schema_ == nullptr || key_) return nullptr;
  const JsonSchema::Node& n = node(node_);
  return n.kind == Kind::kString ? n.regex.get() : nullptr;
}

bool JsonMatcher::TakesPlain(std::string_view bytes, uint32_t chars) const {
  if (chars > string_room()) return false;
  const RegexDfa* re = pattern();
  if (re == nullptr) return true;
  const uint32_t end = re->Walk(re_, bytes);
  return end != RegexDfa::kDead && Room(end, count_ + chars);
}

// A pattern string whose state would be `state` after `chars` characters can still match
// within its maxLength.
bool JsonMatcher::Room(uint32_t state, uint32_t chars) const {
  const JsonSchema::Node& n = node(node_);
  return n.max == JsonSchema::kUnbounded ||
         uint64_t{chars} + n.regex->min_chars(state) <= uint64_t{n.max};
}

// One byte of a pattern string's value (an escape's, decoded), of its `chars`-th character.
bool JsonMatcher::RegexByte(uint8_t c, uint32_t chars) {
  const RegexDfa* re = pattern();
  if (re == nullptr) return true;
  const uint32_t next = re->Next(re_, c);
  if (next == RegexDfa::kDead || !Room(next, chars)) return false;
  re_ = next;
  return true;
}

// In a pattern string, whether some ASCII character may come next as its `chars`-th (each
// can be written as an escape); true elsewhere.
bool JsonMatcher::AsciiMayFollow(uint32_t chars) const {
  const RegexDfa* re = pattern();
  if (re == nullptr) return true;
  for (int b = 0; b < 0x80; ++b) {
    const uint32_t next = re->Next(re_, static_cast<uint8_t>(b));
    if (next != RegexDfa::kDead && Room(next, chars)) return true;
  }
  return false;
}

// One hex digit of a \u escape in a pattern string: only ASCII characters are written so
// ("\u00XX", XX below 80), and only those the pattern takes here.
bool JsonMatcher::UnicodeEscape(uint8_t c) {
  const RegexDfa& re = *pattern();
  const int digit = 4 - aux_;  // 0 ..= 3
  const int v = HexValue(c);
  if (digit < 2) return v == 0;
  if (digit == 2) {
    if (v > 7) return false;
    for (int low = 0; low < 16; ++low) {
      const uint32_t next = re.Next(re_, static_cast<uint8_t>(v * 16 + low));
      if (next != RegexDfa::kDead && Room(next, count_)) {
        pos_ = static_cast<uint16_t>(v);
        return true;
      }
    }
    return false;
  }
  return RegexByte(static_cast<uint8_t>(pos_ * 16 + v), count_);
}

// A bounded number's first byte ('-' or a digit, already taken by StartAny).
bool JsonMatcher::StartNumber(uint8_t c) {
  neg_ = c == '-';
  mag_ = neg_ ? 0 : c - '0';
  digits_ = neg_ ? 0 : 1;
  frac_ = 0;
  frac_digits_ = 0;
  return NumberFeasible();
}

// One more digit of a bounded number, in the mode it leaves (kNumInt or kNumFrac).
bool JsonMatcher::NumberDigit(uint8_t c) {
  const int budget = node(node_).kind == Kind::kInteger ? kIntegerDigits : kNumberDigits;
  if (digits_ >= budget) return false;
  ++digits_;
  if (mode_ == Mode::kNumFrac) {
    frac_ = frac_ * 10 + (c - '0');
    ++frac_digits_;
  } else {
    mag_ = mag_ * 10 + (c - '0');
  }
  return NumberFeasible();
}

// Some number that begins with the bytes read so far is within the bounds, and within the
// digits a bounded number may have.
bool JsonMatcher::NumberFeasible() const {
  const JsonSchema::Node& n = node(node_);
  const bool integer = n.kind == Kind::kInteger;
  const int budget = integer ? kIntegerDigits : kNumberDigits;
  if (mode_ == Mode::kNumMinus) {  // "-": some first digit
    JsonMatcher m = *this;
    for (uint8_t d = 0; d < 10; ++d) {
      m.mode_ = d == 0 ? Mode::kNumZero : Mode::kNumInt;
      m.mag_ = d;
      m.digits_ = 1;
      if (m.NumberFeasible()) return true;
    }
    return false;
  }
  if (mode_ == Mode::kNumDot || mode_ == Mode::kNumFrac) {
    // The value lies in [a, a + 1) at the scale of its fraction digits; with none yet
    // ("1."), a digit must come.
    const MagnitudeRange r(n, neg_, frac_digits_);
    const Int128 a = Int128{mag_} * Pow10(frac_digits_) + frac_;
    if (digits_ >= budget) return mode_ == Mode::kNumFrac && r.Contains(a);
    return r.Meets(a, a + 1, false);
  }
  const MagnitudeRange r(n, neg_, 0);
  if (mode_ == Mode::kNumZero) return integer ? r.Contains(0) : r.Meets(0, 1, false);
  // An integer part m: j more digits give [m 10^j, (m + 1) 10^j); at the digits' end, its
  // integers only.
  Int128 a = mag_, w = 1;
  for (int j = 0; digits_ + j <= budget && a <= r.hi; ++j, a *= 10, w *= 10) {
    if (r.Meets(a, a + w, integer || digits_ + j == budget)) return true;
  }
  return false;
}

// A bounded number that ends here is within its bounds.
bool JsonMatcher::NumberInBounds() const {
  const JsonSchema::Node& n = node(node_);
  const int k = mode_ == Mode::kNumFrac ? frac_digits_ : 0;
  return MagnitudeRange(n, neg_, k).Contains(Int128{mag_} * Pow10(k) + (k > 0 ? frac_ : 0));
}

uint32_t JsonMatcher::string_room() const {
  if (schema_ == nullptr || key_ || node(node_).kind != Kind::kString) return UINT32_MAX;
  const uint32_t max = node(node_).max;
  return max == JsonSchema::kUnbounded ? UINT32_MAX : max - count_;
}

bool JsonMatcher::pending_union() const {
  return schema_ != nullptr &&
         (mode_ == Mode::kStart || mode_ == Mode::kValue || mode_ == Mode::kArrFirst) &&
         node(node_).kind == Kind::kUnion;
}

std::span<const uint16_t> JsonMatcher::alternatives() const {
  if (!pending_union()) return {};
  return node(node_).alternatives;
}

bool JsonMatcher::Whitespace(uint8_t c) {
  if (ws_ >= (schema_ != nullptr ? schema_->max_whitespace() : kMaxWhitespace)) return false;
  const uint8_t bit = c == '\n' ? 1 : (c == '\r' ? 2 : 0);
  // One line break: a '\n', or "\r\n"; nothing of it twice, and no '\r' after the '\n'.
  if ((ws_breaks_ & bit) != 0 || (bit == 2 && (ws_breaks_ & 1) != 0)) return false;
  ws_breaks_ |= bit;
  ++ws_;
  return true;
}

bool JsonMatcher::Push(bool object, uint16_t container) {
  if (depth_ >= kMaxDepth) return false;
  if (object) {
    objects_ |= uint32_t{1} << depth_;
  } else {
    objects_ &= ~(uint32_t{1} << depth_);
  }
  frames_[depth_] = Frame{container, 0};
  ++depth_;
  mode_ = object ? Mode::kObjFirst : Mode::kArrFirst;
  // An array's first item is due.
  node_ = schema_ != nullptr && !object ? node(container).values : 0;
  return true;
}

void JsonMatcher::AfterValue() {
  node_ = 0;
  count_ = 0;
  if (depth_ == 0) {
    mode_ = Mode::kDone;
    return;
  }
  if (((objects_ >> (depth_ - 1)) & 1) != 0) {
    mode_ = Mode::kObjNext;
  } else {
    mode_ = Mode::kArrNext;
    if (top().n < 0xFFFF) ++top().n;
  }
}

// An object may close: every required property has come.
bool JsonMatcher::CanClose() const {
  if (schema_ == nullptr) return true;
  const JsonSchema::Node& o = node(top().node);
  return o.kind != Kind::kObject || o.free || o.next_required[top().n] == o.properties.size();
}

bool JsonMatcher::StartString(bool key) {
  mode_ = Mode::kString;
  key_ = key;
  count_ = 0;
  if (const RegexDfa* re = pattern(); re != nullptr) re_ = re->start();
  return true;
}

// Any value (JSON mode, or a schema's kAny).
bool JsonMatcher::StartAny(uint8_t c) {
  switch (c) {
    case '{':
      return Push(true, 0);
    case '[':
      return Push(false, 0);
    case '"':
      return StartString(false);
    case '-':
      mode_ = Mode::kNumMinus;
      return true;
    case '0':
      mode_ = Mode::kNumZero;
      return true;
    case 't':
    case 'f':
    case 'n':
      literal_ = c == 't' ? 0 : (c == 'f' ? 1 : 2);
      aux_ = 1;
      mode_ = Mode::kLiteral;
      return true;
    default:
      if (c >= '1' && c <= '9') {
        mode_ = Mode::kNumInt;
        return true;
      }
      return false;
  }
}

bool JsonMatcher::StartValue(uint8_t c) {
  if (schema_ == nullptr) return StartAny(c);
  const JsonSchema::Node& n = node(node_);
  switch (n.kind) {
    case Kind::kAny:
      return StartAny(c);
    case Kind::kObject:
      return c == '{' && Fits(node_) && Push(true, node_);
    case Kind::kArray:
      return c == '[' && Fits(node_) && Push(false, node_);
    case Kind::kString:
      return c == '"' && StartString(false);
    case Kind::kNumber:
    case Kind::kInteger:
      if (!(c == '-' || IsDigit(c)) || !StartAny(c)) return false;
      return !n.bounded || StartNumber(c);
    case Kind::kBoolean:
      return (c == 't' || c == 'f') && StartAny(c);
    case Kind::kNull:
      return c == 'n' && StartAny(c);
    case Kind::kEnum:
      mode_ = Mode::kEnum;
      lo_ = 0;
      hi_ = static_cast<uint16_t>(n.literals.size());
      pos_ = 0;
      return Literal(c);
    case Kind::kUnion:
      return false;
  }
  return false;
}

namespace {

// Within [lo, hi) of strings sorted by their bytes that share their first `pos` bytes (one of
// just `pos` bytes sorting first), the range of those whose byte `pos` is c (binary searches).
template <typename At>
std::pair<uint16_t, uint16_t> Narrow(uint16_t lo, uint16_t hi, uint16_t pos, uint8_t c,
                                     const At& str) {
  if (lo < hi && str(lo).size() == pos) ++lo;
  const auto byte = [&](uint16_t i) { return static_cast<uint8_t>(str(i)[pos]); };
  uint16_t a = lo, b = hi;
  while (a < b) {
    const uint16_t mid = static_cast<uint16_t>(a + (b - a) / 2);
    if (byte(mid) < c) {
      a = static_cast<uint16_t>(mid + 1);
    } else {
      b = mid;
    }
  }
  uint16_t e = a;
  b = hi;
  while (e < b) {
    const uint16_t mid = static_cast<uint16_t>(e + (b - e) / 2);
    if (byte(mid) <= c) {
      e = static_cast<uint16_t>(mid + 1);
    } else {
      b = mid;
    }
  }
  return {a, e};
}

}  // namespace

// A value of `n` started here can be finished within kMaxDepth.
bool JsonMatcher::Fits(uint16_t n) const { return depth_ + node(n).min_depth <= kMaxDepth; }

// Some key may come next in the object on top (a schema's): a declared object's next
// properties that may come, one of them with a value that fits; a free object's values fit.
bool JsonMatcher::KeyMayCome() const {
  const JsonSchema::Node& o = node(top().node);
  if (o.kind != Kind::kObject) return true;  // any
  if (o.free) return Fits(o.values);
  const size_t last = std::min<size_t>(o.next_required[top().n], o.properties.size() - 1);
  for (size_t j = top().n; j <= last && j < o.properties.size(); ++j) {
    if (Fits(o.properties[j].node)) return true;
  }
  return false;
}

// One byte of a declared object's key: the keys of by_key [lo_, hi_) share the pos_ bytes
// so far; at least one of them must be allowed next.
bool JsonMatcher::Key(uint8_t c) {
  const JsonSchema::Node& o = node(top().node);
  const uint16_t next = top().n;
  const uint16_t last = o.next_required[next];  // keys next ..= last may come
  const auto key = [&](uint16_t i) -> const std::string& { return o.properties[o.by_key[i]].key; };
  const auto allowed = [&](uint16_t i) {
    const uint16_t j = o.by_key[i];
    return j >= next && j <= last && j < o.properties.size() && Fits(o.properties[j].node);
  };
  // A '"' after the whole of a key closes it (within a key it would follow a backslash, and no
  // encoded key ends in one).
  if (c == '"' && lo_ < hi_ && key(lo_).size() == pos_) {
    if (!allowed(lo_)) return false;
    const uint16_t j = o.by_key[lo_];
    top().n = static_cast<uint16_t>(j + 1);
    node_ = o.properties[j].node;
    mode_ = Mode::kColon;
    lo_ = hi_ = pos_ = 0;
    return true;
  }
  const auto [a, b] = Narrow(lo_, hi_, pos_, c, key);
  bool any = false;
  for (uint16_t i = a; i < b && !any; ++i) any = allowed(i);
  if (!any) return false;
  lo_ = a;
  hi_ = b;
  ++pos_;
  return true;
}

// One byte of an enum's value, as Key for the literals. A literal that is a number may be
// followed by more of a longer one, so it ends only at the next byte that continues none.
bool JsonMatcher::Literal(uint8_t c) {
  const std::vector<std::string>& lits = node(node_).literals;
  const auto literal = [&](uint16_t i) -> const std::string& { return lits[i]; };
  const bool ended = lo_ < hi_ && lits[lo_].size() == pos_;
  const auto [a, b] = Narrow(lo_, hi_, pos_, c, literal);
  if (a < b) {
    lo_ = a;
    hi_ = b;
    ++pos_;
    if (hi_ - lo_ == 1 && lits[lo_].size() == pos_) {  // one literal left, and it is whole
      lo_ = hi_ = pos_ = 0;
      AfterValue();
    }
    return true;
  }
  if (!ended) return false;
  // The literal (a number) ended before c; numbers only end so inside a container.
  lo_ = hi_ = pos_ = 0;
  AfterValue();
  return FeedInner(c);
}

// One more character of a string: within a bounded string's maxLength.
bool JsonMatcher::CountChar() {
  if (schema_ == nullptr || key_) return true;
  const JsonSchema::Node& n = node(node_);
  if (n.kind != Kind::kString) return true;
  if (count_ >= n.max) return false;
  ++count_;
  return true;
}

bool JsonMatcher::FeedInner(uint8_t c) {
  if (pending_union()) return false;
  // The structural modes: whitespace (bounded) between tokens.
  switch (mode_) {
    case Mode::kStart:
    case Mode::kValue:
    case Mode::kObjFirst:
    case Mode::kObjKey:
    case Mode::kColon:
    case Mode::kObjNext:
    case Mode::kArrFirst:
    case Mode::kArrNext:
      if (IsWhitespace(c)) return Whitespace(c);
      ws_ = 0;
      ws_breaks_ = 0;
      break;
    default:
      break;
  }
  switch (mode_) {
    case Mode::kStart:
      // JSON mode, and a schema that allows anything at the top: an object.
      if (schema_ == nullptr || node(node_).kind == Kind::kAny) return c == '{' && Push(true, 0);
      return StartValue(c);
    case Mode::kValue:
      return StartValue(c);
    case Mode::kObjFirst:
    case Mode::kObjKey:
      if (c == '"') {
        if (schema_ != nullptr) {
          const JsonSchema::Node& o = node(top().node);
          if (!KeyMayCome()) return false;
          if (o.kind == Kind::kObject && !o.free) {
            mode_ = Mode::kKey;
            lo_ = 0;
            hi_ = static_cast<uint16_t>(o.by_key.size());
            pos_ = 0;
            return true;
          }
        }
        return StartString(true);
      }
      if (c == '}' && mode_ == Mode::kObjFirst && CanClose()) {
        --depth_;
        AfterValue();
        return true;
      }
      return false;
    case Mode::kKey:
      return Key(c);
    case Mode::kEnum:
      return Literal(c);
    case Mode::kColon:
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kObjNext:
      if (c == ',') {
        if (schema_ != nullptr && !KeyMayCome()) return false;
        mode_ = Mode::kObjKey;
        return true;
      }
      if (c == '}' && CanClose()) {
        --depth_;
        AfterValue();
        return true;
      }
      return false;
    case Mode::kArrNext:
    case Mode::kArrFirst: {
      const JsonSchema::Node* a = schema_ != nullptr ? &node(top().node) : nullptr;
      const uint32_t items = top().n;
      if (c == ']') {
        if (a != nullptr && items < a->min) return false;
        --depth_;
        AfterValue();
        return true;
      }
      if (a != nullptr && items >= a->max) return false;
      if (mode_ == Mode::kArrFirst) return StartValue(c);
      if (c != ',') return false;
      mode_ = Mode::kValue;
      node_ = a != nullptr ? a->values : 0;
      return true;
    }
    case Mode::kString:
      if (utf8_need_ > 0) {
        if (c < utf8_lo_ || c > utf8_hi_) return false;
        --utf8_need_;
        utf8_lo_ = 0x80;
        utf8_hi_ = 0xBF;
        return RegexByte(c, count_);
      }
      if (c == '"') {
        if (key_) {
          key_ = false;
          mode_ = Mode::kColon;
          // A free object's value (any, in JSON mode).
          node_ = schema_ != nullptr ? node(top().node).values : 0;
          return true;
        }
        if (schema_ != nullptr && node(node_).kind == Kind::kString && count_ < node(node_).min) {
          return false;
        }
        if (const RegexDfa* re = pattern(); re != nullptr && !re->accepting(re_)) return false;
        AfterValue();
        return true;
      }
      if (c == '\\') {
        // In a pattern string some ASCII character must be able to come: each can be escaped.
        if (!CountChar() || !AsciiMayFollow(count_)) return false;
        mode_ = Mode::kEscape;
        return true;
      }
      if (c < 0x20) return false;
      if (!RegexByte(c, count_ + 1)) return false;
      if (c < 0x80) return CountChar();
      // UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF.
      if (c >= 0xC2 && c <= 0xDF) {
        if (!CountChar()) return false;
        utf8_need_ = 1;
        return true;
      }
      if (c >= 0xE0 && c <= 0xEF) {
        if (!CountChar()) return false;
        utf8_need_ = 2;
        utf8_lo_ = c == 0xE0 ? 0xA0 : 0x80;
        utf8_hi_ = c == 0xED ? 0x9F : 0xBF;
        return true;
      }
      if (c >= 0xF0 && c <= 0xF4) {
        if (!CountChar()) return false;
        utf8_need_ = 3;
        utf8_lo_ = c == 0xF0 ? 0x90 : 0x80;
        utf8_hi_ = c == 0xF4 ? 0x8F : 0xBF;
        return true;
      }
      return false;
    case Mode::kEscape:
      // A pattern string reads the escaped character.
      switch (c) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't': {
          constexpr std::string_view kFrom = "\"\\/bfnrt", kTo = "\"\\/\b\f\n\r\t";
          if (!RegexByte(static_cast<uint8_t>(kTo[kFrom.find(static_cast<char>(c))]), count_)) {
            return false;
          }
          mode_ = Mode::kString;
          return true;
        }
        case 'u':
          if (!AsciiMayFollow(count_)) return false;
          mode_ = Mode::kUnicode;
          aux_ = 4;
          return true;
        default:
          return false;
      }
    case Mode::kUnicode:
      if (!IsHex(c)) return false;
      if (pattern() != nullptr && !UnicodeEscape(c)) return false;
      if (--aux_ == 0) mode_ = Mode::kString;
      return true;
    case Mode::kNumMinus:
      if (!IsDigit(c)) return false;
      mode_ = c == '0' ? Mode::kNumZero : Mode::kNumInt;
      return !bounded() || NumberDigit(c);
    case Mode::kNumZero:
    case Mode::kNumInt:
    case Mode::kNumFrac:
    case Mode::kNumExp: {
      const bool integer = schema_ != nullptr && node(node_).kind == Kind::kInteger;
      if (IsDigit(c) && mode_ != Mode::kNumZero) return !bounded() || NumberDigit(c);
      if (c == '.' && !integer && (mode_ == Mode::kNumZero || mode_ == Mode::kNumInt)) {
        mode_ = Mode::kNumDot;
        return !bounded() || NumberFeasible();
      }
      if ((c == 'e' || c == 'E') && !integer && mode_ != Mode::kNumExp && !bounded()) {
        mode_ = Mode::kNumE;
        return true;
      }
      // The number ended before c (numbers only occur inside a container).
      if (bounded() && !NumberInBounds()) return false;
      AfterValue();
      return FeedInner(c);
    }
    case Mode::kNumDot:
      if (!IsDigit(c)) return false;
      mode_ = Mode::kNumFrac;
      return !bounded() || NumberDigit(c);
    case Mode::kNumE:
      if (c == '+' || c == '-') {
        mode_ = Mode::kNumESign;
        return true;
      }
      if (!IsDigit(c)) return false;
      mode_ = Mode::kNumExp;
      return true;
    case Mode::kNumESign:
      if (!IsDigit(c)) return false;
      mode_ = Mode::kNumExp;
      return true;
    case Mode::kLiteral: {
      const char* word = kLiterals[literal_];
      if (c != static_cast<uint8_t>(word[aux_])) return false;
      if (word[++aux_] == '\0') AfterValue();
      return true;
    }
    case Mode::kDone:
      return false;
  }
  return false;
}

namespace {

using Threads = std::array<JsonMatcher, JsonState::kMaxThreads>;

// Adds m to out[0, *n), or each alternative of its pending union: no state twice, at most
// kMaxThreads (the later ones are dropped).
void AddExpanded(const JsonMatcher& m, Threads& out, size_t* n) {
  const auto add = [&](const JsonMatcher& t) {
    for (size_t i = 0; i < *n; ++i) {
      if (out[i] == t) return;
    }
    if (*n < out.size()) out[(*n)++] = t;
  };
  if (!m.pending_union()) return add(m);
  for (const uint16_t alternative : m.alternatives()) {
    JsonMatcher t = m;
    t.Choose(alternative);
    add(t);
  }
}

// The states that `in[0, n)` (none with a pending union) reach by `bytes`, a byte at a time,
// each union met expanded as AddExpanded does: into out; returns how many (0: none takes
// the bytes). Bounded work per byte whatever the schema: at most kMaxThreads states, each
// expanding into at most kMaxAlternatives.
size_t Step(const JsonMatcher* in, size_t n, std::string_view bytes, Threads& out) {
  if (n == 1) {
    // The common case: one state, and no union on the way.
    JsonMatcher t = in[0];
    size_t i = 0;
    for (; i < bytes.size() && !t.pending_union(); ++i) {
      if (!t.Feed(bytes.substr(i, 1))) return 0;
    }
    if (i == bytes.size() && !t.pending_union()) {
      out[0] = t;
      return 1;
    }
  }
  Threads a, b;
  Threads* cur = &a;
  Threads* next = &b;
  size_t count = 0;
  for (size_t i = 0; i < n; ++i) AddExpanded(in[i], *cur, &count);
  for (const char c : bytes) {
    size_t taken = 0;
    for (size_t i = 0; i < count; ++i) {
      JsonMatcher t = (*cur)[i];
      if (t.Feed(std::string_view(&c, 1))) AddExpanded(t, *next, &taken);
    }
    if (taken == 0) return 0;
    std::swap(cur, next);
    count = taken;
  }
  std::copy_n(cur->begin(), count, out.begin());
  return count;
}

}  // namespace

JsonState::JsonState(const JsonSchema* schema) {
  count_ = 0;
  AddExpanded(JsonMatcher(schema), threads_, &count_);
}

bool JsonState::Feed(std::string_view bytes) {
  Threads next;
  const size_t n = Step(threads_.data(), count_, bytes, next);
  if (n == 0) return false;
  std::copy_n(next.begin(), n, threads_.begin());
  count_ = n;
  return true;
}

TokenBytesTable::TokenBytesTable(int32_t vocab_size,
                                 const std::function<std::string(int32_t)>& bytes_of)
    : bytes_(static_cast<size_t>(vocab_size > 0 ? vocab_size : 0)), by_first_byte_(256) {
  // A plain string state: inside an object's first key.
  JsonMatcher in_string;
  in_string.Feed(std::string_view("{\""));
  for (int32_t id = 0; id < vocab_size; ++id) {
    std::string& b = bytes_[id];
    b = bytes_of(id);
    if (b.empty()) continue;
    JsonMatcher m = in_string;
    // Without a '"' a token's fate inside a string does not depend on the string's kind.
    if (b.find('"') == std::string::npos && m.Feed(b)) {
      plain_.push_back(id);
      // No escape in it: a character per lead byte.
      const auto chars = static_cast<uint32_t>(std::count_if(
          b.begin(), b.end(), [](char c) { return (static_cast<uint8_t>(c) & 0xC0) != 0x80; }));
      plain_chars_.push_back(chars);
      plain_escaped_.push_back(b.find('\\') != std::string::npos);
      max_plain_chars_ = std::max(max_plain_chars_, chars);
    } else {
      other_.push_back(id);
    }
    by_first_byte_[static_cast<uint8_t>(b[0])].push_back(id);
  }
}

int32_t AllowedJsonTokens(const JsonState& state, const TokenBytesTable& table,
                          std::vector<int32_t>* ids) {
  const size_t before = ids->size();
  const std::span<const JsonMatcher> threads = state.threads();
  Threads out;
  // Every state reads the same bytes, so all are in a string or none is.
  if (threads[0].in_plain_string()) {
    const bool pattern = std::any_of(threads.begin(), threads.end(),
                                     [](const JsonMatcher& m) { return m.in_pattern(); });
    if (pattern) {
      // A pattern reads each character, an escape's decoded: those with one are stepped.
      for (size_t i = 0; i < table.plain_.size(); ++i) {
        const int32_t id = table.plain_[i];
        const std::string& b = table.bytes_[id];
        const bool taken =
            table.plain_escaped_[i] != 0
                ? Step(threads.data(), threads.size(), b, out) > 0
                : std::any_of(threads.begin(), threads.end(), [&](const JsonMatcher& m) {
                    return m.TakesPlain(b, table.plain_chars_[i]);
                  });
        if (taken) ids->push_back(id);
      }
    } else {
      // The tokens any string takes, those that fit where its length is bounded.
      uint32_t room = 0;
      for (const JsonMatcher& m : threads) room = std::max(room, m.string_room());
      if (room >= table.max_plain_chars_) {
        ids->insert(ids->end(), table.plain_.begin(), table.plain_.end());
      } else {
        for (size_t i = 0; i < table.plain_.size(); ++i) {
          if (table.plain_chars_[i] <= room) ids->push_back(table.plain_[i]);
        }
      }
    }
    for (const int32_t id : table.other_) {
      if (Step(threads.data(), threads.size(), table.bytes_[id], out) > 0) ids->push_back(id);
    }
  } else if (!state.complete()) {
    Threads first;
    for (int b = 0; b < 256; ++b) {
      const std::vector<int32_t>& group = table.by_first_byte_[b];
      if (group.empty()) continue;
      const char c = static_cast<char>(b);
      const size_t n = Step(threads.data(), threads.size(), std::string_view(&c, 1), first);
      if (n == 0) continue;
      for (const int32_t id : group) {
        if (Step(first.data(), n, std::string_view(table.bytes_[id]).substr(1), out) > 0) {
          ids->push_back(id);
        }
      }
    }
  }
  return static_cast<int32_t>(ids->size() - before);
}

}  // namespace spanserve::engine
