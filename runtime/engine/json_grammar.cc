#include "runtime/engine/json_grammar.h"

#include <algorithm>

namespace spanserve::engine {
namespace {

constexpr const char* kLiterals[3] = {"true", "false", "null"};

bool IsWhitespace(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }
bool IsHex(uint8_t c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

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
      return (c == '-' || IsDigit(c)) && StartAny(c);
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
        return true;
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
        AfterValue();
        return true;
      }
      if (c == '\\') {
        if (!CountChar()) return false;
        mode_ = Mode::kEscape;
        return true;
      }
      if (c < 0x20) return false;
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
      switch (c) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
          mode_ = Mode::kString;
          return true;
        case 'u':
          mode_ = Mode::kUnicode;
          aux_ = 4;
          return true;
        default:
          return false;
      }
    case Mode::kUnicode:
      if (!IsHex(c)) return false;
      if (--aux_ == 0) mode_ = Mode::kString;
      return true;
    case Mode::kNumMinus:
      if (c == '0') {
        mode_ = Mode::kNumZero;
        return true;
      }
      if (c >= '1' && c <= '9') {
        mode_ = Mode::kNumInt;
        return true;
      }
      return false;
    case Mode::kNumZero:
    case Mode::kNumInt:
    case Mode::kNumFrac:
    case Mode::kNumExp: {
      const bool integer = schema_ != nullptr && node(node_).kind == Kind::kInteger;
      if (IsDigit(c) && mode_ != Mode::kNumZero) return true;
      if (c == '.' && !integer && (mode_ == Mode::kNumZero || mode_ == Mode::kNumInt)) {
        mode_ = Mode::kNumDot;
        return true;
      }
      if ((c == 'e' || c == 'E') && !integer && mode_ != Mode::kNumExp) {
        mode_ = Mode::kNumE;
        return true;
      }
      // The number ended before c (numbers only occur inside a container).
      AfterValue();
      return FeedInner(c);
    }
    case Mode::kNumDot:
      if (!IsDigit(c)) return false;
      mode_ = Mode::kNumFrac;
      return true;
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
