#include "runtime/engine/json_grammar.h"

namespace spanserve::engine {
namespace {

constexpr const char* kLiterals[3] = {"true", "false", "null"};

bool IsWhitespace(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }
bool IsHex(uint8_t c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

}  // namespace

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

bool JsonMatcher::Whitespace(uint8_t c) {
  if (ws_ >= kMaxWhitespace) return false;
  const uint8_t bit = c == '\n' ? 1 : (c == '\r' ? 2 : 0);
  // One line break: a '\n', or "\r\n"; nothing of it twice, and no '\r' after the '\n'.
  if ((ws_breaks_ & bit) != 0 || (bit == 2 && (ws_breaks_ & 1) != 0)) return false;
  ws_breaks_ |= bit;
  ++ws_;
  return true;
}

bool JsonMatcher::Push(bool object) {
  if (depth_ >= kMaxDepth) return false;
  if (object) {
    objects_ |= uint32_t{1} << depth_;
  } else {
    objects_ &= ~(uint32_t{1} << depth_);
  }
  ++depth_;
  mode_ = object ? Mode::kObjFirst : Mode::kArrFirst;
  return true;
}

void JsonMatcher::AfterValue() {
  if (depth_ == 0) {
    mode_ = Mode::kDone;
    return;
  }
  mode_ = ((objects_ >> (depth_ - 1)) & 1) != 0 ? Mode::kObjNext : Mode::kArrNext;
}

bool JsonMatcher::StartValue(uint8_t c) {
  switch (c) {
    case '{':
      return Push(true);
    case '[':
      return Push(false);
    case '"':
      mode_ = Mode::kString;
      key_ = false;
      return true;
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

bool JsonMatcher::FeedInner(uint8_t c) {
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
      return c == '{' && Push(true);
    case Mode::kValue:
      return StartValue(c);
    case Mode::kObjFirst:
    case Mode::kObjKey:
      if (c == '"') {
        mode_ = Mode::kString;
        key_ = true;
        return true;
      }
      if (c == '}' && mode_ == Mode::kObjFirst) {
        --depth_;
        AfterValue();
        return true;
      }
      return false;
    case Mode::kColon:
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kObjNext:
    case Mode::kArrNext: {
      const bool object = mode_ == Mode::kObjNext;
      if (c == ',') {
        mode_ = object ? Mode::kObjKey : Mode::kValue;
        return true;
      }
      if (c == (object ? '}' : ']')) {
        --depth_;
        AfterValue();
        return true;
      }
      return false;
    }
    case Mode::kArrFirst:
      if (c == ']') {
        --depth_;
        AfterValue();
        return true;
      }
      return StartValue(c);
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
        } else {
          AfterValue();
        }
        return true;
      }
      if (c == '\\') {
        mode_ = Mode::kEscape;
        return true;
      }
      if (c < 0x20) return false;
      if (c < 0x80) return true;
      // UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF.
      if (c >= 0xC2 && c <= 0xDF) {
        utf8_need_ = 1;
        return true;
      }
      if (c >= 0xE0 && c <= 0xEF) {
        utf8_need_ = 2;
        utf8_lo_ = c == 0xE0 ? 0xA0 : 0x80;
        utf8_hi_ = c == 0xED ? 0x9F : 0xBF;
        return true;
      }
      if (c >= 0xF0 && c <= 0xF4) {
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
    case Mode::kNumExp:
      if (IsDigit(c) && mode_ != Mode::kNumZero) return true;
      if (c == '.' && (mode_ == Mode::kNumZero || mode_ == Mode::kNumInt)) {
        mode_ = Mode::kNumDot;
        return true;
      }
      if ((c == 'e' || c == 'E') && mode_ != Mode::kNumExp) {
        mode_ = Mode::kNumE;
        return true;
      }
      // The number ended before c (numbers only occur inside a container).
      AfterValue();
      return FeedInner(c);
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
    } else {
      other_.push_back(id);
    }
    by_first_byte_[static_cast<uint8_t>(b[0])].push_back(id);
  }
}

int32_t AllowedJsonTokens(const JsonMatcher& m, const TokenBytesTable& table,
                          std::vector<int32_t>* ids) {
  const size_t before = ids->size();
  if (m.in_plain_string()) {
    ids->insert(ids->end(), table.plain_.begin(), table.plain_.end());
    for (const int32_t id : table.other_) {
      JsonMatcher t = m;
      if (t.Feed(table.bytes_[id])) ids->push_back(id);
    }
  } else if (!m.complete()) {
    for (int b = 0; b < 256; ++b) {
      const std::vector<int32_t>& group = table.by_first_byte_[b];
      if (group.empty()) continue;
      JsonMatcher first = m;
      if (!first.Feed(static_cast<uint8_t>(b))) continue;
      for (const int32_t id : group) {
        JsonMatcher t = first;
        if (t.Feed(std::string_view(table.bytes_[id]).substr(1))) ids->push_back(id);
      }
    }
  }
  return static_cast<int32_t>(ids->size() - before);
}

}  // namespace spanserve::engine
