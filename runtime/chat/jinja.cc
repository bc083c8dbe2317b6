#include "runtime/chat/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "common/text.h"

namespace spanserve::chat::jinja {
namespace internal {
namespace {

// ---------------------------------------------------------------------------------------
// Values

class Value;
class Renderer;
using ValueList = std::vector<Value>;
struct DictData;
struct Callable;
struct CallArgs;

using Fn = std::function<absl::StatusOr<Value>(CallArgs&, Renderer&)>;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };

  Value() = default;
  static Value None() { return Value(Kind::kNone); }
  static Value Bool(bool b) {
    Value v(Kind::kBool);
    v.b_ = b;
    return v;
  }
  static Value Int(int64_t i) {
    Value v(Kind::kInt);
    v.i_ = i;
    return v;
  }
  static Value Float(double f) {
    Value v(Kind::kFloat);
    v.f_ = f;
    return v;
  }
  static Value Str(std::string s) {
    Value v(Kind::kString);
    v.s_ = std::make_shared<const std::string>(std::move(s));
    return v;
  }
  static Value List(ValueList l) {
    Value v(Kind::kList);
    v.l_ = std::make_shared<ValueList>(std::move(l));
    return v;
  }
  static Value Dict(std::shared_ptr<DictData> d, bool is_namespace = false) {
    Value v(Kind::kDict);
    v.d_ = std::move(d);
    v.namespace_ = is_namespace;
    return v;
  }
  static Value Function(std::string name, Fn fn);

  Kind kind() const { return kind_; }
  bool undefined() const { return kind_ == Kind::kUndefined; }
  bool none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt || kind_ == Kind::kBool; }
  bool is_number() const { return is_int() || kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kDict && namespace_; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  bool b() const { return b_; }
  int64_t i() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }
  double f() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(i()); }
  const std::string& s() const { return *s_; }
  const ValueList& list() const { return *l_; }
  DictData& dict() const { return *d_; }
  const Callable& callable() const { return *c_; }

  bool Truthy() const;

 private:
  explicit Value(Kind k) : kind_(k) {}
  Kind kind_ = Kind::kUndefined;
  bool namespace_ = false;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> s_;
  std::shared_ptr<ValueList> l_;
  std::shared_ptr<DictData> d_;
  std::shared_ptr<const Callable> c_;
};

struct DictData {
  std::vector<std::pair<std::string, Value>> items;
  const Value* Find(absl::string_view key) const {
    for (const auto& [k, v] : items) {
      if (k == key) return &v;
    }
    return nullptr;
  }
  void Set(const std::string& key, Value v) {
    for (auto& [k, old] : items) {
      if (k == key) {
        old = std::move(v);
        return;
      }
    }
    items.emplace_back(key, std::move(v));
  }
};

struct Callable {
  std::string name;
  Fn fn;
};

Value Value::Function(std::string name, Fn fn) {
  Value v(Kind::kCallable);
  v.c_ = std::make_shared<const Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return b_;
    case Kind::kInt:
      return i_ != 0;
    case Kind::kFloat:
      return f_ != 0;
    case Kind::kString:
      return !s_->empty();
    case Kind::kList:
      return !l_->empty();
    case Kind::kDict:
      return namespace_ || !d_->items.empty();
    case Kind::kCallable:
      return true;
  }
  return false;
}

Value FromJson(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::None();
    case nlohmann::json::value_t::boolean:
      return Value::Bool(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::Int(j.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      return u <= static_cast<uint64_t>(INT64_MAX) ? Value::Int(static_cast<int64_t>(u))
                                                   : Value::Float(static_cast<double>(u));
    }
    case nlohmann::json::value_t::number_float:
      return Value::Float(j.get<double>());
    case nlohmann::json::value_t::string:
      return Value::Str(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      ValueList l;
      l.reserve(j.size());
      for (const auto& e : j) l.push_back(FromJson(e));
      return Value::List(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      auto d = std::make_shared<DictData>();
      d->items.reserve(j.size());
      for (const auto& [k, v] : j.items()) d->items.emplace_back(k, FromJson(v));
      return Value::Dict(std::move(d));
    }
    default:
      return Value::None();
  }
}

// ---------------------------------------------------------------------------------------
// Python's formatting of values

// repr(float): the shortest digits that read back, fixed notation for exponents in
// [-4, 16), else d.ddde±XX.
std::string PyFloat(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  std::string sign;
  if (!mant.empty() && mant[0] == '-') {
    sign = "-";
    mant.erase(0, 1);
  }
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  if (exp >= -4 && exp < 16) {
    std::string out;
    if (exp < 0) {
      out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exp + 1) {
      out = digits +
            std::string(static_cast<size_t>(exp + 1 - static_cast<int>(digits.size())), '0') + ".0";
    } else {
      out = digits.substr(0, static_cast<size_t>(exp + 1)) + "." +
            digits.substr(static_cast<size_t>(exp + 1));
    }
    return sign + out;
  }
  std::string out = digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  char ebuf[16];
  std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
  return sign + out + ebuf;
}

std::string PyRepr(const Value& v);

std::string PyStrRepr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == quote) {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += quote;
  return out;
}

// str(v) as Jinja prints it; undefined prints as nothing.
std::string PyStr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNone:
      return "None";
    case Value::Kind::kBool:
      return v.b() ? "True" : "False";
    case Value::Kind::kInt:
      return std::to_string(v.i());
    case Value::Kind::kFloat:
      return PyFloat(v.f());
    case Value::Kind::kString:
      return v.s();
    case Value::Kind::kList: {
      std::string out = "[";
      for (size_t k = 0; k < v.list().size(); ++k) {
        if (k > 0) out += ", ";
        out += PyRepr(v.list()[k]);
      }
      return out + "]";
    }
    case Value::Kind::kDict: {
      std::string out = v.is_namespace() ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& [k, e] : v.dict().items) {
        if (!first) out += ", ";
        first = false;
        absl::StrAppend(&out, PyStrRepr(k), ": ", PyRepr(e));
      }
      return out + (v.is_namespace() ? "}>" : "}");
    }
    case Value::Kind::kCallable:
      return absl::StrCat("<function ", v.callable().name, ">");
  }
  return "";
}

std::string PyRepr(const Value& v) {
  if (v.is_string()) return PyStrRepr(v.s());
  if (v.undefined()) return "Undefined";
  return PyStr(v);
}

struct JsonOptions {
  int indent = -1;  // < 0: none
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
};

void AppendJsonString(const std::string& s, bool ensure_ascii, std::string* out) {
  *out += '"';
  for (size_t k = 0; k < s.size(); ++k) {
    const unsigned char c = static_cast<unsigned char>(s[k]);
    switch (c) {
      case '"':
        *out += "\\\"";
        continue;
      case '\\':
        *out += "\\\\";
        continue;
      case '\n':
        *out += "\\n";
        continue;
      case '\r':
        *out += "\\r";
        continue;
      case '\t':
        *out += "\\t";
        continue;
      case '\b':
        *out += "\\b";
        continue;
      case '\f':
        *out += "\\f";
        continue;
      default:
        break;
    }
    char buf[16];
    if (c < 0x20 || (ensure_ascii && c == 0x7f)) {
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      *out += buf;
    } else if (c >= 0x80 && ensure_ascii) {
      // Decode one UTF-8 sequence (invalid bytes stand for themselves as U+FFFD).
      uint32_t cp = 0xFFFD;
      int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
      if (len > 1 && k + static_cast<size_t>(len) <= s.size()) {
        cp = c & (0x3F >> (len - 1));
        for (int t = 1; t < len; ++t)
          cp = (cp << 6) | (static_cast<unsigned char>(s[k + t]) & 0x3F);
        k += static_cast<size_t>(len - 1);
      }
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", 0xD800 + (cp >> 10),
                      0xDC00 + (cp & 0x3FF));
      } else {
        std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
      }
      *out += buf;
    } else {
      *out += static_cast<char>(c);
    }
  }
  *out += '"';
}

absl::Status ToJson(const Value& v, const JsonOptions& o, int depth, std::string* out) {
  if (depth > 256) return absl::InvalidArgumentError("tojson: the value nests too deep");
  const auto newline = [&](int level) {
    if (o.indent < 0) return;
    *out += '\n';
    out->append(static_cast<size_t>(o.indent) * static_cast<size_t>(level), ' ');
  };
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return absl::InvalidArgumentError("tojson: the value is undefined");
    case Value::Kind::kNone:
      *out += "null";
      return absl::OkStatus();
    case Value::Kind::kBool:
      *out += v.b() ? "true" : "false";
      return absl::OkStatus();
    case Value::Kind::kInt:
      *out += std::to_string(v.i());
      return absl::OkStatus();
    case Value::Kind::kFloat:
      if (std::isnan(v.f())) {
        *out += "NaN";
      } else if (std::isinf(v.f())) {
        *out += v.f() > 0 ? "Infinity" : "-Infinity";
      } else {
        *out += PyFloat(v.f());
      }
      return absl::OkStatus();
    case Value::Kind::kString:
      AppendJsonString(v.s(), o.ensure_ascii, out);
      return absl::OkStatus();
    case Value::Kind::kList: {
      if (v.list().empty()) {
        *out += "[]";
        return absl::OkStatus();
      }
      *out += '[';
      for (size_t k = 0; k < v.list().size(); ++k) {
        if (k > 0) *out += o.item_sep;
        newline(depth + 1);
        RETURN_IF_ERROR(ToJson(v.list()[k], o, depth + 1, out));
      }
      newline(depth);
      *out += ']';
      return absl::OkStatus();
    }
    case Value::Kind::kDict: {
      if (v.dict().items.empty()) {
        *out += "{}";
        return absl::OkStatus();
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& item : v.dict().items) items.push_back(&item);
      if (o.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](const auto* a, const auto* b) { return a->first < b->first; });
      }
      *out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k > 0) *out += o.item_sep;
        newline(depth + 1);
        AppendJsonString(items[k]->first, o.ensure_ascii, out);
        *out += o.key_sep;
        RETURN_IF_ERROR(ToJson(items[k]->second, o, depth + 1, out));
      }
      newline(depth);
      *out += '}';
      return absl::OkStatus();
    }
    case Value::Kind::kCallable:
      return absl::InvalidArgumentError("tojson: a function is not JSON serializable");
  }
  return absl::OkStatus();
}

// UTF-8 code point boundaries of s: offsets of each code point's first byte, then s.size().
std::vector<size_t> CodePoints(const std::string& s) {
  std::vector<size_t> at;
  at.reserve(s.size() + 1);
  for (size_t k = 0; k < s.size(); ++k) {
    // A stray continuation byte belongs to the character before it (or starts one at 0).
    if (k == 0 || (static_cast<unsigned char>(s[k]) & 0xC0) != 0x80) at.push_back(k);
  }
  at.push_back(s.size());
  return at;
}

bool Equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind() == Value::Kind::kFloat || b.kind() == Value::Kind::kFloat) return a.f() == b.f();
    return a.i() == b.i();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone:
      return true;
    case Value::Kind::kString:
      return a.s() == b.s();
    case Value::Kind::kList:
      if (a.list().size() != b.list().size()) return false;
      for (size_t k = 0; k < a.list().size(); ++k) {
        if (!Equal(a.list()[k], b.list()[k])) return false;
      }
      return true;
    case Value::Kind::kDict: {
      if (a.is_namespace() || b.is_namespace()) return &a.dict() == &b.dict();
      if (a.dict().items.size() != b.dict().items.size()) return false;
      for (const auto& [k, v] : a.dict().items) {
        const Value* o = b.dict().Find(k);
        if (o == nullptr || !Equal(v, *o)) return false;
      }
      return true;
    }
    case Value::Kind::kCallable:
      return &a.callable() == &b.callable();
    default:
      return false;
  }
}

const char* KindName(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return "undefined";
    case Value::Kind::kNone:
      return "none";
    case Value::Kind::kBool:
      return "bool";
    case Value::Kind::kInt:
      return "int";
    case Value::Kind::kFloat:
      return "float";
    case Value::Kind::kString:
      return "string";
    case Value::Kind::kList:
      return "list";
    case Value::Kind::kDict:
      return v.is_namespace() ? "namespace" : "dict";
    case Value::Kind::kCallable:
      return "function";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------
// Template text into segments: text, {{ expression }}, {% statement %}, with Jinja's
// whitespace rules as transformers configures them (trim_blocks, lstrip_blocks).

struct Segment {
  enum class Type { kText, kExpr, kStmt };
  Type type;
  std::string text;
  int line;
};

absl::Status SyntaxError(int line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("chat template line ", line, ": ", what));
}

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// Where the tag opened at `from` (just past its opening and sign) closes: the position of
// `close` ("}}" or "%}") outside string literals; npos if none.
size_t FindTagEnd(absl::string_view src, size_t from, absl::string_view close) {
  char quote = 0;
  for (size_t k = from; k < src.size(); ++k) {
    const char c = src[k];
    if (quote != 0) {
      if (c == '\\') {
        ++k;
      } else if (c == quote) {
        quote = 0;
      }
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (src.substr(k, close.size()) == close) {
      return k;
    }
  }
  return absl::string_view::npos;
}

absl::StatusOr<std::vector<Segment>> Lex(absl::string_view src) {
  // keep_trailing_newline=False: one newline at the very end of the source goes.
  if (absl::EndsWith(src, "\r\n")) {
    src.remove_suffix(2);
  } else if (absl::EndsWith(src, "\n")) {
    src.remove_suffix(1);
  }
  std::vector<Segment> out;
  size_t pos = 0;
  bool line_starting = true;
  int line = 1;
  size_t line_counted = 0;               // lines counted up to here
  const auto line_at = [&](size_t at) {  // at never decreases
    line += static_cast<int>(std::count(src.begin() + static_cast<ptrdiff_t>(line_counted),
                                        src.begin() + static_cast<ptrdiff_t>(at), '\n'));
    line_counted = at;
    return line;
  };
  while (pos <= src.size()) {
    size_t open = pos;
    while (open + 1 < src.size() &&
           !(src[open] == '{' &&
             (src[open + 1] == '{' || src[open + 1] == '%' || src[open + 1] == '#'))) {
      ++open;
    }
    if (open + 1 >= src.size()) {
      if (pos < src.size())
        out.push_back({Segment::Type::kText, std::string(src.substr(pos)), line_at(pos)});
      break;
    }
    std::string text(src.substr(pos, open - pos));
    const char kind = src[open + 1];
    size_t inner = open + 2;
    const char sign =
        inner < src.size() && (src[inner] == '-' || src[inner] == '+') ? src[inner] : 0;
    if (sign != 0) ++inner;
    if (sign == '-') {
      while (!text.empty() && IsSpace(text.back())) text.pop_back();
    } else if (sign != '+' && kind != '{') {
      // lstrip_blocks: spaces and tabs between the line's start and the tag go.
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if (l_pos > 0 || line_starting) {
        bool blank = true;
        for (size_t k = l_pos; k < text.size(); ++k)
          blank = blank && (text[k] == ' ' || text[k] == '\t');
        if (blank) text.resize(l_pos);
      }
    }
    const int text_line = line_at(pos);
    const int tag_line = line_at(open);
    if (!text.empty()) out.push_back({Segment::Type::kText, std::move(text), text_line});
    const absl::string_view close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    const size_t end = kind == '#' ? src.find("#}", inner) : FindTagEnd(src, inner, close);
    if (end == absl::string_view::npos) {
      return SyntaxError(tag_line, absl::StrCat("'{", std::string(1, kind), "' is never closed"));
    }
    size_t content_end = end;
    char end_sign = 0;
    if (content_end > inner && (src[content_end - 1] == '-' || src[content_end - 1] == '+')) {
      end_sign = src[content_end - 1];
      --content_end;
    }
    std::string content(src.substr(inner, content_end - inner));
    pos = end + 2;
    if (kind == '%' && absl::StripAsciiWhitespace(content) == "raw") {
      // {% raw %}...{% endraw %}: the text between as it is.
      size_t search = pos;
      size_t raw_end = absl::string_view::npos, after = 0;
      while ((search = src.find("{%", search)) != absl::string_view::npos) {
        size_t k = search + 2;
        const bool strip_before = k < src.size() && src[k] == '-';
        if (k < src.size() && (src[k] == '-' || src[k] == '+')) ++k;
        while (k < src.size() && IsSpace(src[k])) ++k;
        if (src.substr(k, 6) == "endraw") {
          const size_t tag_end = src.find("%}", k);
          if (tag_end == absl::string_view::npos) break;
          raw_end = search;
          after = tag_end + 2;
          std::string raw(src.substr(pos, raw_end - pos));
          if (end_sign == '-')
            raw.erase(0, raw.find_first_not_of(" \t\n\r\f\v") == std::string::npos
                             ? raw.size()
                             : raw.find_first_not_of(" \t\n\r\f\v"));
          if (strip_before) {
            while (!raw.empty() && IsSpace(raw.back())) raw.pop_back();
          }
          if (!raw.empty()) out.push_back({Segment::Type::kText, std::move(raw), line_at(pos)});
          const bool strip_after = tag_end > 0 && src[tag_end - 1] == '-';
          pos = after;
          if (strip_after) {
            while (pos < src.size() && IsSpace(src[pos])) ++pos;
          } else if (pos < src.size() && src[pos] == '\n') {
            ++pos;
          }
          break;
        }
        search += 2;
      }
      if (raw_end == absl::string_view::npos)
        return SyntaxError(tag_line, "'{% raw %}' is never closed");
      line_starting = pos > 0 && src[pos - 1] == '\n';
      continue;
    }
    if (end_sign == '-') {
      const size_t before = pos;
      while (pos < src.size() && IsSpace(src[pos])) ++pos;
      line_starting = pos > before && src[pos - 1] == '\n';
    } else if (kind != '{' && end_sign != '+') {
      // trim_blocks: the newline right after a block or comment tag goes.
      if (pos < src.size() && src[pos] == '\n') {
        ++pos;
        line_starting = true;
      } else if (pos + 1 < src.size() && src[pos] == '\r' && src[pos + 1] == '\n') {
        pos += 2;
        line_starting = true;
      } else {
        line_starting = false;
      }
    } else {
      line_starting = false;
    }
    if (kind == '{') out.push_back({Segment::Type::kExpr, std::move(content), tag_line});
    if (kind == '%') out.push_back({Segment::Type::kStmt, std::move(content), tag_line});
    if (pos >= src.size()) break;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Tokens inside a tag

struct Tok {
  enum class Type { kName, kInt, kFloat, kString, kOp, kEnd };
  Type type = Type::kEnd;
  std::string text;  // name, operator, or the string literal's value
  int64_t i = 0;
  double f = 0;
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A string literal's body with Python's escapes (Jinja decodes them with unicode-escape).
std::string Unescape(absl::string_view body) {
  std::string out;
  for (size_t k = 0; k < body.size(); ++k) {
    const char c = body[k];
    if (c == '\r' && k + 1 < body.size() && body[k + 1] == '\n') continue;  // newlines normalized
    if (c != '\\' || k + 1 >= body.size()) {
      out += c;
      continue;
    }
    const char e = body[++k];
    switch (e) {
      case '\n':
        break;
      case '\\':
      case '\'':
      case '"':
        out += e;
        break;
      case 'a':
        out += '\a';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'v':
        out += '\v';
        break;
      case 'x':
      case 'u':
      case 'U': {
        const int digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        uint32_t cp = 0;
        bool ok = k + static_cast<size_t>(digits) < body.size();
        for (int d = 1; ok && d <= digits; ++d) {
          const int h = HexValue(body[k + static_cast<size_t>(d)]);
          ok = h >= 0;
          cp = cp * 16 + static_cast<uint32_t>(std::max(h, 0));
        }
        if (!ok) {
          out += '\\';
          out += e;
          break;
        }
        AppendUtf8(cp, &out);
        k += static_cast<size_t>(digits);
        break;
      }
      default:
        if (e >= '0' && e <= '7') {
          uint32_t cp = static_cast<uint32_t>(e - '0');
          for (int d = 0; d < 2 && k + 1 < body.size() && body[k + 1] >= '0' && body[k + 1] <= '7';
               ++d) {
            cp = cp * 8 + static_cast<uint32_t>(body[++k] - '0');
          }
          AppendUtf8(cp, &out);
        } else {
          out += '\\';
          out += e;
        }
        break;
    }
  }
  return out;
}

absl::StatusOr<std::vector<Tok>> Tokenize(absl::string_view s, int line) {
  std::vector<Tok> toks;
  size_t k = 0;
  while (k < s.size()) {
    const char c = s[k];
    if (IsSpace(c)) {
      ++k;
      continue;
    }
    Tok t;
    if (absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = k;
      while (j < s.size() && (absl::ascii_isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_'))
        ++j;
      t.type = Tok::Type::kName;
      t.text = std::string(s.substr(k, j - k));
      k = j;
    } else if (absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      size_t j = k;
      std::string digits;
      bool is_float = false;
      while (j < s.size() &&
             (absl::ascii_isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) {
        if (s[j] != '_') digits += s[j];
        ++j;
      }
      if (j + 1 < s.size() && s[j] == '.' &&
          absl::ascii_isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        digits += '.';
        ++j;
        while (j < s.size() &&
               (absl::ascii_isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) {
          if (s[j] != '_') digits += s[j];
          ++j;
        }
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t e = j + 1;
        if (e < s.size() && (s[e] == '+' || s[e] == '-')) ++e;
        if (e < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[e]))) {
          is_float = true;
          digits += 'e';
          digits += std::string(s.substr(j + 1, e - j - 1));
          j = e;
          while (j < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[j])))
            digits += s[j++];
        }
      }
      if (is_float) {
        t.type = Tok::Type::kFloat;
        t.f = std::strtod(digits.c_str(), nullptr);
      } else {
        t.type = Tok::Type::kInt;
        const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), t.i);
        if (r.ec != std::errc())
          return SyntaxError(line, absl::StrCat("integer ", digits, " is out of range"));
      }
      k = j;
    } else if (c == '\'' || c == '"') {
      size_t j = k + 1;
      while (j < s.size() && s[j] != c) j += s[j] == '\\' ? 2 : 1;
      if (j >= s.size()) return SyntaxError(line, "unterminated string literal");
      t.type = Tok::Type::kString;
      t.text = Unescape(s.substr(k + 1, j - k - 1));
      k = j + 1;
    } else {
      static constexpr absl::string_view kTwo[] = {"==", "!=", "<=", ">=", "//", "**"};
      t.type = Tok::Type::kOp;
      for (absl::string_view two : kTwo) {
        if (s.substr(k, 2) == two) t.text = std::string(two);
      }
      if (t.text.empty()) {
        if (std::string_view("+-*/%~<>=()[]{}.,:|").find(c) == std::string_view::npos) {
          return SyntaxError(line, absl::StrCat("unexpected character '", std::string(1, c), "'"));
        }
        t.text = std::string(1, c);
      }
      k += t.text.size();
    }
    toks.push_back(std::move(t));
  }
  toks.push_back(Tok{});
  return toks;
}

// ---------------------------------------------------------------------------------------
// The syntax tree

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Op {
    kLiteral,
    kName,
    kList,
    kDict,
    kAttr,
    kItem,
    kSlice,
    kCall,
    kFilter,
    kTest,
    kNeg,
    kPos,
    kNot,
    kAnd,
    kOr,
    kBinary,
    kCompare,
    kCond
  };
  Op op;
  int line = 0;
  Value literal;
  std::string name;           // name, attribute, filter, test or binary operator
  std::vector<ExprPtr> args;  // operands; kCall: callee first; kFilter / kTest: input first
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;  // kCompare: the operators between args
  bool negate = false;           // kTest: `is not`
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind {
    kText,
    kOutput,
    kIf,
    kFor,
    kSet,
    kSetBlock,
    kMacro,
    kBreak,
    kContinue,
    kFilterBlock,
    kBlock
  };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr expr;                                    // output, set value, for iterable, filter block
  std::vector<std::pair<ExprPtr, Body>> branches;  // if: (condition or null for else, body)
  std::vector<std::string> targets;                // for / set names; macro name first
  std::string attr;                                // set ns.attr
  ExprPtr condition;                               // for ... if condition
  Body body, else_body;
  std::vector<std::string> params;  // macro
  std::vector<ExprPtr> defaults;    // macro, aligned with params (null: none)
};

bool KnownFilter(absl::string_view name);
bool KnownTest(absl::string_view name);

constexpr int kMaxNesting = 128;

class ExprParser {
 public:
  ExprParser(std::vector<Tok> toks, int line) : toks_(std::move(toks)), line_(line) {}

  bool AtEnd() const { return toks_[at_].type == Tok::Type::kEnd; }
  const Tok& Peek(size_t ahead = 0) const { return toks_[std::min(at_ + ahead, toks_.size() - 1)]; }
  bool IsOp(absl::string_view op, size_t ahead = 0) const {
    return Peek(ahead).type == Tok::Type::kOp && Peek(ahead).text == op;
  }
  bool IsName(absl::string_view name, size_t ahead = 0) const {
    return Peek(ahead).type == Tok::Type::kName && Peek(ahead).text == name;
  }
  bool SkipOp(absl::string_view op) {
    if (!IsOp(op)) return false;
    ++at_;
    return true;
  }
  bool SkipName(absl::string_view name) {
    if (!IsName(name)) return false;
    ++at_;
    return true;
  }
  absl::Status ExpectOp(absl::string_view op) {
    if (SkipOp(op)) return absl::OkStatus();
    return Error(absl::StrCat("expected '", op, "'"));
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Peek().type != Tok::Type::kName) return Error("expected a name");
    return toks_[at_++].text;
  }
  absl::Status ExpectEnd() {
    if (AtEnd()) return absl::OkStatus();
    return Error("unexpected text at the end of the tag");
  }
  absl::Status Error(absl::string_view what) const {
    const Tok& t = Peek();
    return SyntaxError(line_, absl::StrCat(what, t.type == Tok::Type::kEnd
                                                     ? " at the end of the tag"
                                                     : absl::StrCat(" before '", t.text, "'")));
  }

  ExprPtr Make(Expr::Op op) {
    auto e = std::make_unique<Expr>();
    e->op = op;
    e->line = line_;
    return e;
  }

  // An expression, or several separated by commas (a tuple, as a list).
  absl::StatusOr<ExprPtr> Tuple(bool with_cond = true) {
    ASSIGN_OR_RETURN(ExprPtr first, Expression(with_cond));
    if (!IsOp(",")) return first;
    ExprPtr list = Make(Expr::Op::kList);
    list->args.push_back(std::move(first));
    while (SkipOp(",")) {
      if (AtEnd() || IsOp(")") || IsOp("=")) break;
      ASSIGN_OR_RETURN(ExprPtr e, Expression(with_cond));
      list->args.push_back(std::move(e));
    }
    return list;
  }

  absl::StatusOr<ExprPtr> Expression(bool with_cond = true) {
    if (++depth_ > kMaxNesting) return Error("the expression nests too deep");
    ASSIGN_OR_RETURN(ExprPtr e, Or());
    if (with_cond && IsName("if")) {
      ++at_;
      ExprPtr cond = Make(Expr::Op::kCond);
      ASSIGN_OR_RETURN(ExprPtr test, Or());
      ExprPtr other;
      if (SkipName("else")) {
        ASSIGN_OR_RETURN(other, Expression());
      } else {
        other = Make(Expr::Op::kLiteral);
      }
      cond->args.push_back(std::move(test));
      cond->args.push_back(std::move(e));
      cond->args.push_back(std::move(other));
      e = std::move(cond);
    }
    --depth_;
    return e;
  }

 private:
  absl::StatusOr<ExprPtr> Or() {
    ASSIGN_OR_RETURN(ExprPtr e, And());
    while (SkipName("or")) {
      ASSIGN_OR_RETURN(ExprPtr r, And());
      e = Binary(Expr::Op::kOr, "or", std::move(e), std::move(r));
    }
    return e;
  }
  absl::StatusOr<ExprPtr> And() {
    ASSIGN_OR_RETURN(ExprPtr e, Not());
    while (SkipName("and")) {
      ASSIGN_OR_RETURN(ExprPtr r, Not());
      e = Binary(Expr::Op::kAnd, "and", std::move(e), std::move(r));
    }
    return e;
  }
  absl::StatusOr<ExprPtr> Not() {
    if (IsName("not") && !IsName("in", 1)) {
      ++at_;
      if (++depth_ > kMaxNesting) return Error("the expression nests too deep");
      ExprPtr e = Make(Expr::Op::kNot);
      ASSIGN_OR_RETURN(ExprPtr operand, Not());
      --depth_;
      e->args.push_back(std::move(operand));
      return e;
    }
    return Compare();
  }
  absl::StatusOr<ExprPtr> Compare() {
    ASSIGN_OR_RETURN(ExprPtr first, Concat());
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (Peek().type == Tok::Type::kOp &&
          (Peek().text == "==" || Peek().text == "!=" || Peek().text == "<" || Peek().text == ">" ||
           Peek().text == "<=" || Peek().text == ">=")) {
        op = toks_[at_++].text;
      } else if (IsName("in")) {
        ++at_;
        op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        at_ += 2;
        op = "not in";
      } else {
        break;
      }
      if (cmp == nullptr) {
        cmp = Make(Expr::Op::kCompare);
        cmp->args.push_back(std::move(first));
      }
      ASSIGN_OR_RETURN(ExprPtr r, Concat());
      cmp->ops.push_back(op);
      cmp->args.push_back(std::move(r));
    }
    return cmp != nullptr ? std::move(cmp) : std::move(first);
  }
  absl::StatusOr<ExprPtr> Concat() {
    ASSIGN_OR_RETURN(ExprPtr e, Math1());
    while (SkipOp("~")) {
      ASSIGN_OR_RETURN(ExprPtr r, Math1());
      e = Binary(Expr::Op::kBinary, "~", std::move(e), std::move(r));
    }
    return e;
  }
  absl::StatusOr<ExprPtr> Math1() {
    ASSIGN_OR_RETURN(ExprPtr e, Math2());
    while (IsOp("+") || IsOp("-")) {
      const std::string op = toks_[at_++].text;
      ASSIGN_OR_RETURN(ExprPtr r, Math2());
      e = Binary(Expr::Op::kBinary, op, std::move(e), std::move(r));
    }
    return e;
  }
  absl::StatusOr<ExprPtr> Math2() {
    ASSIGN_OR_RETURN(ExprPtr e, Pow());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const std::string op = toks_[at_++].text;
      ASSIGN_OR_RETURN(ExprPtr r, Pow());
      e = Binary(Expr::Op::kBinary, op, std::move(e), std::move(r));
    }
    return e;
  }
  absl::StatusOr<ExprPtr> Pow() {
    ASSIGN_OR_RETURN(ExprPtr e, Unary(true));
    while (SkipOp("**")) {
      ASSIGN_OR_RETURN(ExprPtr r, Unary(true));
      e = Binary(Expr::Op::kBinary, "**", std::move(e), std::move(r));
    }
    return e;
  }
  absl::StatusOr<ExprPtr> Unary(bool with_filter) {
    if (++depth_ > kMaxNesting) return Error("the expression nests too deep");
    ExprPtr e;
    if (IsOp("-") || IsOp("+")) {
      e = Make(IsOp("-") ? Expr::Op::kNeg : Expr::Op::kPos);
      ++at_;
      ASSIGN_OR_RETURN(ExprPtr operand, Unary(false));
      e->args.push_back(std::move(operand));
    } else {
      ASSIGN_OR_RETURN(e, Primary());
    }
    ASSIGN_OR_RETURN(e, Postfix(std::move(e)));
    if (with_filter) {
      ASSIGN_OR_RETURN(e, FilterExpr(std::move(e)));
    }
    --depth_;
    return e;
  }

  absl::StatusOr<ExprPtr> Primary() {
    const Tok& t = Peek();
    switch (t.type) {
      case Tok::Type::kName: {
        ++at_;
        ExprPtr e = Make(Expr::Op::kLiteral);
        if (t.text == "true" || t.text == "True") {
          e->literal = Value::Bool(true);
        } else if (t.text == "false" || t.text == "False") {
          e->literal = Value::Bool(false);
        } else if (t.text == "none" || t.text == "None") {
          e->literal = Value::None();
        } else {
          e->op = Expr::Op::kName;
          e->name = t.text;
        }
        return e;
      }
      case Tok::Type::kString: {
        std::string s;
        while (Peek().type == Tok::Type::kString) s += toks_[at_++].text;  // adjacent literals join
        ExprPtr e = Make(Expr::Op::kLiteral);
        e->literal = Value::Str(std::move(s));
        return e;
      }
      case Tok::Type::kInt:
      case Tok::Type::kFloat: {
        ExprPtr e = Make(Expr::Op::kLiteral);
        e->literal = t.type == Tok::Type::kInt ? Value::Int(t.i) : Value::Float(t.f);
        ++at_;
        return e;
      }
      case Tok::Type::kOp:
        if (SkipOp("(")) {
          if (SkipOp(")")) return Make(Expr::Op::kList);  // ()
          ASSIGN_OR_RETURN(ExprPtr e, Expression());
          if (IsOp(",")) {
            ExprPtr list = Make(Expr::Op::kList);
            list->args.push_back(std::move(e));
            while (SkipOp(",")) {
              if (IsOp(")")) break;
              ASSIGN_OR_RETURN(ExprPtr item, Expression());
              list->args.push_back(std::move(item));
            }
            e = std::move(list);
          }
          RETURN_IF_ERROR(ExpectOp(")"));
          return e;
        }
        if (SkipOp("[")) {
          ExprPtr list = Make(Expr::Op::kList);
          while (!IsOp("]")) {
            ASSIGN_OR_RETURN(ExprPtr item, Expression());
            list->args.push_back(std::move(item));
            if (!SkipOp(",")) break;
          }
          RETURN_IF_ERROR(ExpectOp("]"));
          return list;
        }
        if (SkipOp("{")) {
          ExprPtr dict = Make(Expr::Op::kDict);
          while (!IsOp("}")) {
            ASSIGN_OR_RETURN(ExprPtr key, Expression());
            RETURN_IF_ERROR(ExpectOp(":"));
            ASSIGN_OR_RETURN(ExprPtr value, Expression());
            dict->args.push_back(std::move(key));
            dict->args.push_back(std::move(value));
            if (!SkipOp(",")) break;
          }
          RETURN_IF_ERROR(ExpectOp("}"));
          return dict;
        }
        break;
      default:
        break;
    }
    return Error("expected an expression");
  }

  absl::Status CallArgsInto(Expr* call) {
    while (!IsOp(")")) {
      if (Peek().type == Tok::Type::kName && IsOp("=", 1)) {
        std::string name = toks_[at_].text;
        at_ += 2;
        ASSIGN_OR_RETURN(ExprPtr value, Expression());
        call->kwargs.emplace_back(std::move(name), std::move(value));
      } else {
        if (!call->kwargs.empty()) return Error("a positional argument after keyword arguments");
        ASSIGN_OR_RETURN(ExprPtr value, Expression());
        call->args.push_back(std::move(value));
      }
      if (!SkipOp(",")) break;
    }
    return ExpectOp(")");
  }

  absl::StatusOr<ExprPtr> Postfix(ExprPtr e) {
    while (true) {
      if (SkipOp(".")) {
        ExprPtr attr;
        if (Peek().type == Tok::Type::kInt) {
          attr = Make(Expr::Op::kItem);
          ExprPtr index = Make(Expr::Op::kLiteral);
          index->literal = Value::Int(toks_[at_++].i);
          attr->args.push_back(std::move(e));
          attr->args.push_back(std::move(index));
        } else {
          attr = Make(Expr::Op::kAttr);
          ASSIGN_OR_RETURN(attr->name, ExpectName());
          attr->args.push_back(std::move(e));
        }
        e = std::move(attr);
      } else if (SkipOp("[")) {
        ExprPtr parts[3];
        bool slice = false;
        for (int part = 0; part < 3; ++part) {
          if (!IsOp(":") && !IsOp("]")) {
            ASSIGN_OR_RETURN(parts[part], Expression());
          }
          if (part < 2 && SkipOp(":")) {
            slice = true;
            continue;
          }
          break;
        }
        RETURN_IF_ERROR(ExpectOp("]"));
        ExprPtr item = Make(slice ? Expr::Op::kSlice : Expr::Op::kItem);
        item->args.push_back(std::move(e));
        if (slice) {
          for (ExprPtr& p : parts) item->args.push_back(std::move(p));
        } else {
          if (parts[0] == nullptr) return Error("expected a subscript");
          item->args.push_back(std::move(parts[0]));
        }
        e = std::move(item);
      } else if (SkipOp("(")) {
        ExprPtr call = Make(Expr::Op::kCall);
        call->args.push_back(std::move(e));
        RETURN_IF_ERROR(CallArgsInto(call.get()));
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  absl::StatusOr<ExprPtr> FilterExpr(ExprPtr e) {
    while (true) {
      if (SkipOp("|")) {
        ExprPtr f = Make(Expr::Op::kFilter);
        ASSIGN_OR_RETURN(f->name, ExpectName());
        if (!KnownFilter(f->name)) {
          return SyntaxError(line_, absl::StrCat("no filter named '", f->name, "'"));
        }
        f->args.push_back(std::move(e));
        if (SkipOp("(")) RETURN_IF_ERROR(CallArgsInto(f.get()));
        e = std::move(f);
      } else if (IsName("is")) {
        ++at_;
        ExprPtr t = Make(Expr::Op::kTest);
        t->negate = SkipName("not");
        if (Peek().type == Tok::Type::kName) {
          t->name = toks_[at_++].text;
        } else if (Peek().type == Tok::Type::kOp &&
                   (Peek().text == "==" || Peek().text == "!=" || Peek().text == "<" ||
                    Peek().text == ">" || Peek().text == "<=" || Peek().text == ">=")) {
          t->name = toks_[at_++].text;
        } else {
          return Error("expected a test name");
        }
        if (t->name == "true" || t->name == "True") t->name = "true";
        if (t->name == "false" || t->name == "False") t->name = "false";
        if (t->name == "none" || t->name == "None") t->name = "none";
        if (!KnownTest(t->name))
          return SyntaxError(line_, absl::StrCat("no test named '", t->name, "'"));
        t->args.push_back(std::move(e));
        if (SkipOp("(")) {
          RETURN_IF_ERROR(CallArgsInto(t.get()));
        } else if (Peek().type == Tok::Type::kString || Peek().type == Tok::Type::kInt ||
                   Peek().type == Tok::Type::kFloat ||
                   (Peek().type == Tok::Type::kName && !IsName("else") && !IsName("or") &&
                    !IsName("and") && !IsName("if") && !IsName("in") && !IsName("not") &&
                    !IsName("is"))) {
          // `is divisibleby 3`, `is sameas false`: one argument without parentheses.
          ASSIGN_OR_RETURN(ExprPtr arg, Primary());
          ASSIGN_OR_RETURN(arg, Postfix(std::move(arg)));
          t->args.push_back(std::move(arg));
        }
        e = std::move(t);
      } else if (SkipOp("(")) {
        ExprPtr call = Make(Expr::Op::kCall);
        call->args.push_back(std::move(e));
        RETURN_IF_ERROR(CallArgsInto(call.get()));
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  ExprPtr Binary(Expr::Op op, std::string name, ExprPtr l, ExprPtr r) {
    ExprPtr e = Make(op);
    e->name = std::move(name);
    e->args.push_back(std::move(l));
    e->args.push_back(std::move(r));
    return e;
  }

  std::vector<Tok> toks_;
  size_t at_ = 0;
  int line_;
  int depth_ = 0;
};

// Statements: segments into a tree of bodies.
class StmtParser {
 public:
  explicit StmtParser(std::vector<Segment> segs) : segs_(std::move(segs)) {}

  absl::StatusOr<Body> Program() {
    std::string end;
    ASSIGN_OR_RETURN(Body body, Until({}, &end, nullptr));
    return body;
  }

 private:
  // Parses statements up to a tag whose keyword is in `ends` (its keyword into *end and the
  // parser over the rest of its tag into *rest); at the end of the template when `ends` is
  // empty.
  absl::StatusOr<Body> Until(std::initializer_list<absl::string_view> ends, std::string* end,
                             std::unique_ptr<ExprParser>* rest) {
    const int opened = at_ > 0 ? segs_[at_ - 1].line : 1;
    if (++depth_ > kMaxNesting) return SyntaxError(opened, "blocks nest too deep");
    Body body;
    while (at_ < segs_.size()) {
      const Segment& seg = segs_[at_++];
      auto stmt = std::make_unique<Stmt>();
      stmt->line = seg.line;
      if (seg.type == Segment::Type::kText) {
        stmt->kind = Stmt::Kind::kText;
        stmt->text = seg.text;
        body.push_back(std::move(stmt));
        continue;
      }
      ASSIGN_OR_RETURN(std::vector<Tok> toks, Tokenize(seg.text, seg.line));
      auto p = std::make_unique<ExprParser>(std::move(toks), seg.line);
      if (seg.type == Segment::Type::kExpr) {
        stmt->kind = Stmt::Kind::kOutput;
        ASSIGN_OR_RETURN(stmt->expr, p->Tuple());
        RETURN_IF_ERROR(p->ExpectEnd());
        body.push_back(std::move(stmt));
        continue;
      }
      ASSIGN_OR_RETURN(std::string keyword, p->ExpectName());
      if (std::find(ends.begin(), ends.end(), keyword) != ends.end()) {
        *end = keyword;
        if (rest != nullptr) *rest = std::move(p);
        --depth_;
        return body;
      }
      RETURN_IF_ERROR(Statement(keyword, *p, stmt.get()));
      body.push_back(std::move(stmt));
    }
    if (ends.size() > 0) {
      return SyntaxError(opened, absl::StrCat("the block is never closed: expected '",
                                              absl::StrJoin(ends, "' or '"), "'"));
    }
    --depth_;
    return body;
  }

  absl::Status Statement(const std::string& keyword, ExprParser& p, Stmt* s) {
    std::string end;
    std::unique_ptr<ExprParser> rest;
    if (keyword == "if") {
      s->kind = Stmt::Kind::kIf;
      ASSIGN_OR_RETURN(ExprPtr cond, p.Tuple());
      RETURN_IF_ERROR(p.ExpectEnd());
      while (true) {
        ASSIGN_OR_RETURN(Body body, Until({"elif", "else", "endif"}, &end, &rest));
        s->branches.emplace_back(std::move(cond), std::move(body));
        if (end == "elif") {
          ASSIGN_OR_RETURN(cond, rest->Tuple());
          RETURN_IF_ERROR(rest->ExpectEnd());
          continue;
        }
        RETURN_IF_ERROR(rest->ExpectEnd());
        if (end == "else") {
          ASSIGN_OR_RETURN(Body other, Until({"endif"}, &end, &rest));
          RETURN_IF_ERROR(rest->ExpectEnd());
          s->branches.emplace_back(nullptr, std::move(other));
        }
        return absl::OkStatus();
      }
    }
    if (keyword == "for") {
      s->kind = Stmt::Kind::kFor;
      const bool paren = p.SkipOp("(");
      do {
        ASSIGN_OR_RETURN(std::string name, p.ExpectName());
        s->targets.push_back(std::move(name));
      } while (p.SkipOp(","));
      if (paren) RETURN_IF_ERROR(p.ExpectOp(")"));
      if (!p.SkipName("in")) return p.Error("expected 'in'");
      ASSIGN_OR_RETURN(s->expr, p.Tuple(/*with_cond=*/false));
      if (p.SkipName("if")) {
        ASSIGN_OR_RETURN(s->condition, p.Expression(/*with_cond=*/false));
      }
      if (p.IsName("recursive")) return p.Error("recursive loops are not supported");
      RETURN_IF_ERROR(p.ExpectEnd());
      ASSIGN_OR_RETURN(s->body, Until({"else", "endfor"}, &end, &rest));
      RETURN_IF_ERROR(rest->ExpectEnd());
      if (end == "else") {
        ASSIGN_OR_RETURN(s->else_body, Until({"endfor"}, &end, &rest));
        RETURN_IF_ERROR(rest->ExpectEnd());
      }
      return absl::OkStatus();
    }
    if (keyword == "set") {
      ASSIGN_OR_RETURN(std::string name, p.ExpectName());
      s->targets.push_back(std::move(name));
      if (p.SkipOp(".")) {
        ASSIGN_OR_RETURN(s->attr, p.ExpectName());
      } else {
        while (p.SkipOp(",")) {
          ASSIGN_OR_RETURN(std::string more, p.ExpectName());
          s->targets.push_back(std::move(more));
        }
      }
      if (p.SkipOp("=")) {
        s->kind = Stmt::Kind::kSet;
        ASSIGN_OR_RETURN(s->expr, p.Tuple());
        return p.ExpectEnd();
      }
      if (s->targets.size() != 1 || !s->attr.empty()) return p.Error("expected '='");
      s->kind = Stmt::Kind::kSetBlock;
      RETURN_IF_ERROR(p.ExpectEnd());
      ASSIGN_OR_RETURN(s->body, Until({"endset"}, &end, &rest));
      return rest->ExpectEnd();
    }
    if (keyword == "macro") {
      s->kind = Stmt::Kind::kMacro;
      ASSIGN_OR_RETURN(std::string name, p.ExpectName());
      s->targets.push_back(std::move(name));
      RETURN_IF_ERROR(p.ExpectOp("("));
      while (!p.IsOp(")")) {
        ASSIGN_OR_RETURN(std::string param, p.ExpectName());
        s->params.push_back(std::move(param));
        ExprPtr def;
        if (p.SkipOp("=")) {
          ASSIGN_OR_RETURN(def, p.Expression());
        }
        s->defaults.push_back(std::move(def));
        if (!p.SkipOp(",")) break;
      }
      RETURN_IF_ERROR(p.ExpectOp(")"));
      RETURN_IF_ERROR(p.ExpectEnd());
      ASSIGN_OR_RETURN(s->body, Until({"endmacro"}, &end, &rest));
      return absl::OkStatus();  // `endmacro name` is allowed
    }
    if (keyword == "break" || keyword == "continue") {
      s->kind = keyword == "break" ? Stmt::Kind::kBreak : Stmt::Kind::kContinue;
      return p.ExpectEnd();
    }
    if (keyword == "filter") {
      s->kind = Stmt::Kind::kFilterBlock;
      // The filters apply to a placeholder literal that is replaced by the body's text.
      ExprPtr placeholder = p.Make(Expr::Op::kLiteral);
      placeholder->literal = Value::Str("");
      ExprPtr e = std::move(placeholder);
      do {
        ExprPtr f = p.Make(Expr::Op::kFilter);
        ASSIGN_OR_RETURN(f->name, p.ExpectName());
        if (!KnownFilter(f->name))
          return SyntaxError(s->line, absl::StrCat("no filter named '", f->name, "'"));
        f->args.push_back(std::move(e));
        if (p.SkipOp("(")) {
          // Reuse the call-argument parser through a filter expression on the rest.
          return p.Error("filter blocks with arguments are not supported");
        }
        e = std::move(f);
      } while (p.SkipOp("|"));
      s->expr = std::move(e);
      RETURN_IF_ERROR(p.ExpectEnd());
      ASSIGN_OR_RETURN(s->body, Until({"endfilter"}, &end, &rest));
      return rest->ExpectEnd();
    }
    if (keyword == "generation") {
      s->kind = Stmt::Kind::kBlock;
      RETURN_IF_ERROR(p.ExpectEnd());
      ASSIGN_OR_RETURN(s->body, Until({"endgeneration"}, &end, &rest));
      return rest->ExpectEnd();
    }
    return SyntaxError(s->line, absl::StrCat("'", keyword, "' tags are not supported"));
  }

  std::vector<Segment> segs_;
  size_t at_ = 0;
  int depth_ = 0;
};

// ---------------------------------------------------------------------------------------
// Rendering

struct CallArgs {
  ValueList pos;
  std::vector<std::pair<std::string, Value>> kw;
  const Value* Get(size_t index, absl::string_view name) const {
    if (index < pos.size()) return &pos[index];
    for (const auto& [k, v] : kw) {
      if (k == name) return &v;
    }
    return nullptr;
  }
  Value Or(size_t index, absl::string_view name, Value fallback) const {
    const Value* v = Get(index, name);
    return v != nullptr ? *v : std::move(fallback);
  }
};

// raise_exception's status: passed up unchanged, made INVALID_ARGUMENT by Render.
constexpr absl::StatusCode kRaised = absl::StatusCode::kFailedPrecondition;

constexpr int kMaxValueDepth = 256;
constexpr int64_t kMaxItems = int64_t{1} << 22;

absl::Status TypeError(absl::string_view what) { return absl::InvalidArgumentError(what); }

int Depth(const Value& v, int limit) {
  if (limit <= 0) return 1;
  int d = 0;
  if (v.is_list()) {
    for (const Value& e : v.list()) d = std::max(d, Depth(e, limit - 1));
    return d + 1;
  }
  if (v.is_dict()) {
    for (const auto& [k, e] : v.dict().items) d = std::max(d, Depth(e, limit - 1));
    return d + 1;
  }
  return 0;
}

class Renderer {
 public:
  explicit Renderer(const RenderLimits& limits) : limits_(limits) { scopes_.emplace_back(); }

  void SetGlobal(const std::string& name, Value v) { Assign(&scopes_[0], name, std::move(v)); }

  absl::Status Run(const Body& body, std::string* out) {
    out_ = out;
    return Exec(body);
  }

  const RenderLimits& limits() const { return limits_; }

  absl::Status Tick() {
    if (++steps_ > limits_.max_steps) {
      return absl::InvalidArgumentError(
          absl::StrCat("the chat template ran more than ", limits_.max_steps, " steps"));
    }
    return absl::OkStatus();
  }
  absl::Status CheckBytes(size_t n) const {
    if (static_cast<int64_t>(n) > limits_.max_output_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("the chat template's output passed ", limits_.max_output_bytes, " bytes"));
    }
    return absl::OkStatus();
  }
  absl::Status CheckItems(size_t n) const {
    if (static_cast<int64_t>(n) > kMaxItems) {
      return absl::InvalidArgumentError(
          absl::StrCat("the chat template made a list of over ", kMaxItems, " items"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Value> Eval(const Expr& e);
  absl::StatusOr<bool> ApplyTest(const std::string& name, const Value& in, CallArgs& a);
  absl::StatusOr<Value> ApplyFilter(const std::string& name, const Value& in, CallArgs& a);
  absl::StatusOr<Value> Call(const Value& callee, CallArgs& a) {
    if (!callee.is_callable())
      return TypeError(absl::StrCat("a ", KindName(callee), " value is not callable"));
    if (depth_ >= limits_.max_call_depth) {
      return absl::InvalidArgumentError(absl::StrCat("the chat template nested calls more than ",
                                                     limits_.max_call_depth, " deep"));
    }
    RETURN_IF_ERROR(Tick());
    ++depth_;
    absl::StatusOr<Value> v = callee.callable().fn(a, *this);
    --depth_;
    return v;
  }

 private:
  using Scope = std::vector<std::pair<std::string, Value>>;
  enum class Flow { kNormal, kBreak, kContinue };

  static void Assign(Scope* scope, const std::string& name, Value v) {
    for (auto& [k, old] : *scope) {
      if (k == name) {
        old = std::move(v);
        return;
      }
    }
    scope->emplace_back(name, std::move(v));
  }
  const Value* Find(absl::string_view name) const {
    for (size_t s = scopes_.size(); s-- > base_;) {
      for (const auto& [k, v] : scopes_[s]) {
        if (k == name) return &v;
      }
    }
    for (const auto& [k, v] : scopes_[0]) {
      if (k == name) return &v;
    }
    return nullptr;
  }
  absl::Status SetVar(const std::string& name, Value v) {
    if (Depth(v, kMaxValueDepth + 1) > kMaxValueDepth) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", name, "' nests more than ", kMaxValueDepth, " deep"));
    }
    Assign(&scopes_.back(), name, std::move(v));
    return absl::OkStatus();
  }
  absl::Status Emit(absl::string_view text) {
    out_->append(text.data(), text.size());
    return CheckBytes(out_->size());
  }

  absl::Status Exec(const Body& body) {
    for (const auto& s : body) {
      RETURN_IF_ERROR(Tick());
      RETURN_IF_ERROR(ExecOne(*s));
      if (flow_ != Flow::kNormal) return absl::OkStatus();
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Capture(const Body& body) {
    std::string text;
    std::string* saved = out_;
    out_ = &text;
    absl::Status st = Exec(body);
    out_ = saved;
    RETURN_IF_ERROR(st);
    return text;
  }

  absl::Status ExecOne(const Stmt& s);
  absl::Status ExecFor(const Stmt& s);
  absl::StatusOr<Value> CallMacro(const Stmt& s, CallArgs& a);
  Value Global(absl::string_view name);
  absl::StatusOr<Value> GetAttr(const Value& obj, const std::string& name);
  absl::StatusOr<Value> GetItem(const Value& obj, const Value& key);
  absl::StatusOr<Value> Binary(const std::string& op, const Value& l, const Value& r);

  const RenderLimits& limits_;
  std::vector<Scope> scopes_;
  size_t base_ = 1;
  std::string* out_ = nullptr;
  int64_t steps_ = 0;
  int depth_ = 0;
  Flow flow_ = Flow::kNormal;
};

absl::StatusOr<ValueList> Iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return ValueList{};
    case Value::Kind::kList:
      return v.list();
    case Value::Kind::kDict: {
      ValueList keys;
      for (const auto& [k, e] : v.dict().items) keys.push_back(Value::Str(k));
      return keys;
    }
    case Value::Kind::kString: {
      ValueList chars;
      const std::vector<size_t> at = CodePoints(v.s());
      for (size_t k = 0; k + 1 < at.size(); ++k)
        chars.push_back(Value::Str(v.s().substr(at[k], at[k + 1] - at[k])));
      return chars;
    }
    default:
      return TypeError(absl::StrCat("a ", KindName(v), " value is not iterable"));
  }
}

absl::Status Renderer::ExecOne(const Stmt& s) {
  switch (s.kind) {
    case Stmt::Kind::kText:
      return Emit(s.text);
    case Stmt::Kind::kOutput: {
      ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
      return Emit(PyStr(v));
    }
    case Stmt::Kind::kIf:
      for (const auto& [cond, body] : s.branches) {
        bool take = cond == nullptr;
        if (!take) {
          ASSIGN_OR_RETURN(Value c, Eval(*cond));
          take = c.Truthy();
        }
        if (take) return Exec(body);
      }
      return absl::OkStatus();
    case Stmt::Kind::kFor:
      return ExecFor(s);
    case Stmt::Kind::kSet: {
      ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
      if (!s.attr.empty()) {
        const Value* ns = Find(s.targets[0]);
        if (ns == nullptr || !ns->is_namespace()) {
          return absl::InvalidArgumentError(absl::StrCat("chat template line ", s.line, ": '",
                                                         s.targets[0], "' is not a namespace"));
        }
        if (v.is_namespace()) {
          return absl::InvalidArgumentError(
              absl::StrCat("chat template line ", s.line, ": a namespace cannot hold a namespace"));
        }
        if (Depth(v, kMaxValueDepth + 1) > kMaxValueDepth) {
          return absl::InvalidArgumentError(
              absl::StrCat("chat template line ", s.line, ": the value nests too deep"));
        }
        ns->dict().Set(s.attr, std::move(v));
        return absl::OkStatus();
      }
      if (s.targets.size() == 1) return SetVar(s.targets[0], std::move(v));
      ASSIGN_OR_RETURN(ValueList items, Iterate(v));
      if (items.size() != s.targets.size()) {
        return absl::InvalidArgumentError(absl::StrCat("chat template line ", s.line,
                                                       ": cannot unpack ", items.size(),
                                                       " values into ", s.targets.size()));
      }
      for (size_t k = 0; k < items.size(); ++k) RETURN_IF_ERROR(SetVar(s.targets[k], items[k]));
      return absl::OkStatus();
    }
    case Stmt::Kind::kSetBlock: {
      ASSIGN_OR_RETURN(std::string text, Capture(s.body));
      return SetVar(s.targets[0], Value::Str(std::move(text)));
    }
    case Stmt::Kind::kMacro: {
      const Stmt* macro = &s;
      return SetVar(s.targets[0], Value::Function(s.targets[0], [macro](CallArgs& a, Renderer& r) {
                      return r.CallMacro(*macro, a);
                    }));
    }
    case Stmt::Kind::kBreak:
      flow_ = Flow::kBreak;
      return absl::OkStatus();
    case Stmt::Kind::kContinue:
      flow_ = Flow::kContinue;
      return absl::OkStatus();
    case Stmt::Kind::kFilterBlock: {
      ASSIGN_OR_RETURN(std::string text, Capture(s.body));
      std::vector<const Expr*> chain;
      for (const Expr* f = s.expr.get(); f->op == Expr::Op::kFilter; f = f->args[0].get())
        chain.push_back(f);
      Value v = Value::Str(std::move(text));
      for (size_t k = chain.size(); k-- > 0;) {
        CallArgs none;
        ASSIGN_OR_RETURN(v, ApplyFilter(chain[k]->name, v, none));
      }
      return Emit(PyStr(v));
    }
    case Stmt::Kind::kBlock:
      return Exec(s.body);
  }
  return absl::OkStatus();
}

absl::Status Renderer::ExecFor(const Stmt& s) {
  ASSIGN_OR_RETURN(Value iterable, Eval(*s.expr));
  ASSIGN_OR_RETURN(ValueList items, Iterate(iterable));
  scopes_.emplace_back();
  const auto bind = [&](const Value& item) -> absl::Status {
    if (s.targets.size() == 1) return SetVar(s.targets[0], item);
    ASSIGN_OR_RETURN(ValueList parts, Iterate(item));
    if (parts.size() != s.targets.size()) {
      return absl::InvalidArgumentError(absl::StrCat("chat template line ", s.line,
                                                     ": cannot unpack ", parts.size(),
                                                     " values into ", s.targets.size()));
    }
    for (size_t k = 0; k < parts.size(); ++k) RETURN_IF_ERROR(SetVar(s.targets[k], parts[k]));
    return absl::OkStatus();
  };
  absl::Status st;
  if (s.condition != nullptr) {
    ValueList kept;
    for (const Value& item : items) {
      st = Tick();
      if (st.ok()) st = bind(item);
      if (!st.ok()) break;
      absl::StatusOr<Value> c = Eval(*s.condition);
      if (!c.ok()) {
        st = c.status();
        break;
      }
      if (c->Truthy()) kept.push_back(item);
    }
    items = std::move(kept);
  }
  const int64_t n = static_cast<int64_t>(items.size());
  for (int64_t k = 0; st.ok() && k < n; ++k) {
    st = Tick();
    if (st.ok()) st = bind(items[static_cast<size_t>(k)]);
    if (!st.ok()) break;
    auto loop = std::make_shared<DictData>();
    loop->items = {{"index", Value::Int(k + 1)},
                   {"index0", Value::Int(k)},
                   {"revindex", Value::Int(n - k)},
                   {"revindex0", Value::Int(n - k - 1)},
                   {"first", Value::Bool(k == 0)},
                   {"last", Value::Bool(k == n - 1)},
                   {"length", Value::Int(n)},
                   {"previtem", k > 0 ? items[static_cast<size_t>(k - 1)] : Value()},
                   {"nextitem", k + 1 < n ? items[static_cast<size_t>(k + 1)] : Value()},
                   {"depth", Value::Int(1)},
                   {"depth0", Value::Int(0)}};
    Assign(&scopes_.back(), "loop", Value::Dict(std::move(loop)));
    st = Exec(s.body);
    if (flow_ == Flow::kBreak) {
      flow_ = Flow::kNormal;
      break;
    }
    flow_ = Flow::kNormal;
  }
  scopes_.pop_back();
  RETURN_IF_ERROR(st);
  if (n == 0 && !s.else_body.empty()) return Exec(s.else_body);
  return absl::OkStatus();
}

absl::StatusOr<Value> Renderer::CallMacro(const Stmt& s, CallArgs& a) {
  if (a.pos.size() > s.params.size()) {
    return TypeError(
        absl::StrCat("macro '", s.targets[0], "' takes ", s.params.size(), " arguments"));
  }
  const size_t saved_base = base_;
  scopes_.emplace_back();
  base_ = scopes_.size() - 1;
  absl::Status st;
  for (size_t k = 0; k < s.params.size() && st.ok(); ++k) {
    const Value* given = a.Get(k, s.params[k]);
    if (given != nullptr) {
      Assign(&scopes_.back(), s.params[k], *given);
    } else if (s.defaults[k] != nullptr) {
      absl::StatusOr<Value> d = Eval(*s.defaults[k]);
      if (d.ok()) {
        Assign(&scopes_.back(), s.params[k], *std::move(d));
      } else {
        st = d.status();
      }
    } else {
      Assign(&scopes_.back(), s.params[k], Value());
    }
  }
  absl::StatusOr<std::string> text = st.ok() ? Capture(s.body) : absl::StatusOr<std::string>(st);
  scopes_.pop_back();
  base_ = saved_base;
  flow_ = Flow::kNormal;
  RETURN_IF_ERROR(text.status());
  return Value::Str(*std::move(text));
}

// Python's slice.indices: the positions a[start:stop:step] takes from a sequence of n.
absl::StatusOr<std::vector<int64_t>> SliceIndices(int64_t n, const Value& start, const Value& stop,
                                                  const Value& step_v) {
  int64_t step = 1;
  if (!step_v.none() && !step_v.undefined()) {
    if (!step_v.is_int()) return TypeError("slice indices must be integers");
    step = step_v.i();
    if (step == 0) return TypeError("slice step cannot be zero");
  }
  const auto bound = [&](const Value& v, int64_t dflt) -> absl::StatusOr<int64_t> {
    if (v.none() || v.undefined()) return dflt;
    if (!v.is_int()) return TypeError("slice indices must be integers");
    int64_t x = v.i();
    if (x < 0) {
      x += n;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= n) {
      x = step < 0 ? n - 1 : n;
    }
    return x;
  };
  ASSIGN_OR_RETURN(const int64_t lo, bound(start, step < 0 ? n - 1 : 0));
  ASSIGN_OR_RETURN(const int64_t hi, bound(stop, step < 0 ? -1 : n));
  std::vector<int64_t> out;
  if (step > 0) {
    for (int64_t k = lo; k < hi; k += step) out.push_back(k);
  } else {
    for (int64_t k = lo; k > hi; k += step) out.push_back(k);
  }
  return out;
}

bool IsPySpace(uint32_t cp) {
  return cp == ' ' || (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x1f) || cp == 0x85 ||
         cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

uint32_t DecodeAt(const std::string& s, size_t from, size_t to) {
  const unsigned char c = static_cast<unsigned char>(s[from]);
  if (to - from == 1) return c;
  // A lead byte of the right length, else not a character (runs of stray bytes).
  const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (len != to - from) return 0xFFFD;
  uint32_t cp = c & (0x3F >> (len - 1));
  for (size_t k = from + 1; k < to; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[k]) & 0x3F);
  return cp;
}

// str.strip / lstrip / rstrip: whitespace, or the code points of `chars`.
std::string Strip(const std::string& s, const Value* chars, bool left, bool right) {
  const std::vector<size_t> at = CodePoints(s);
  std::vector<std::string> set;
  if (chars != nullptr && chars->is_string()) {
    const std::vector<size_t> c_at = CodePoints(chars->s());
    for (size_t k = 0; k + 1 < c_at.size(); ++k)
      set.push_back(chars->s().substr(c_at[k], c_at[k + 1] - c_at[k]));
  }
  const bool whitespace = chars == nullptr || chars->none() || chars->undefined();
  const auto strippable = [&](size_t k) {
    if (whitespace) return IsPySpace(DecodeAt(s, at[k], at[k + 1]));
    const absl::string_view cp(s.data() + at[k], at[k + 1] - at[k]);
    return std::find(set.begin(), set.end(), cp) != set.end();
  };
  size_t lo = 0, hi = at.size() - 1;
  if (left) {
    while (lo < hi && strippable(lo)) ++lo;
  }
  if (right) {
    while (hi > lo && strippable(hi - 1)) --hi;
  }
  return s.substr(at[lo], at[hi] - at[lo]);
}

std::vector<std::string> SplitWhitespace(const std::string& s, int64_t maxsplit) {
  std::vector<std::string> out;
  const std::vector<size_t> at = CodePoints(s);
  size_t k = 0;
  const size_t n = at.size() - 1;
  while (k < n) {
    while (k < n && IsPySpace(DecodeAt(s, at[k], at[k + 1]))) ++k;
    if (k >= n) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) >= maxsplit) {
      // The rest, with its trailing whitespace removed (Python keeps it only when split
      // from the right).
      std::string rest = s.substr(at[k]);
      out.push_back(Strip(rest, nullptr, false, true));
      return out;
    }
    size_t j = k;
    while (j < n && !IsPySpace(DecodeAt(s, at[j], at[j + 1]))) ++j;
    out.push_back(s.substr(at[k], at[j] - at[k]));
    k = j;
  }
  return out;
}

std::vector<std::string> SplitOn(const std::string& s, const std::string& sep, int64_t maxsplit) {
  std::vector<std::string> out;
  size_t from = 0;
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    const size_t at = s.find(sep, from);
    if (at == std::string::npos) break;
    out.push_back(s.substr(from, at - from));
    from = at + sep.size();
  }
  out.push_back(s.substr(from));
  return out;
}

std::vector<std::string> RSplitOn(const std::string& s, const std::string& sep, int64_t maxsplit) {
  std::vector<std::string> out;
  size_t to = s.size();
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    if (to < sep.size()) break;
    const size_t at = s.rfind(sep, to - sep.size());
    if (at == std::string::npos) break;
    out.push_back(s.substr(at + sep.size(), to - at - sep.size()));
    to = at;
  }
  out.push_back(s.substr(0, to));
  std::reverse(out.begin(), out.end());
  return out;
}

// str.splitlines() for '\n', '\r' and "\r\n" breaks.
std::vector<std::string> SplitLines(const std::string& s) {
  std::vector<std::string> lines;
  std::string cur;
  for (size_t k = 0; k < s.size(); ++k) {
    if (s[k] == '\n' || s[k] == '\r') {
      lines.push_back(cur);
      cur.clear();
      if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n') ++k;
    } else {
      cur += s[k];
    }
  }
  if (!cur.empty()) lines.push_back(cur);
  return lines;
}

Value StrList(const std::vector<std::string>& parts) {
  ValueList l;
  l.reserve(parts.size());
  for (const std::string& p : parts) l.push_back(Value::Str(p));
  return Value::List(std::move(l));
}

std::string Lower(std::string s) { return absl::AsciiStrToLower(s); }
std::string Upper(std::string s) { return absl::AsciiStrToUpper(s); }
std::string Capitalize(const std::string& s) {
  std::string out = Lower(s);
  if (!out.empty()) out[0] = absl::ascii_toupper(static_cast<unsigned char>(out[0]));
  return out;
}
std::string Title(const std::string& s) {
  std::string out = s;
  bool prev_cased = false;
  for (char& c : out) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (absl::ascii_isalpha(u)) {
      c = prev_cased ? absl::ascii_tolower(u) : absl::ascii_toupper(u);
      prev_cased = true;
    } else {
      prev_cased = u >= 0x80 && prev_cased;
    }
  }
  return out;
}

std::string Replace(const std::string& s, const std::string& from, const std::string& to,
                    int64_t count) {
  std::string out;
  if (from.empty()) {
    const std::vector<size_t> at = CodePoints(s);
    int64_t done = 0;
    for (size_t k = 0; k + 1 < at.size(); ++k) {
      if (count < 0 || done < count) {
        out += to;
        ++done;
      }
      out.append(s, at[k], at[k + 1] - at[k]);
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = s.find(from, pos);
    if (at == std::string::npos) break;
    out.append(s, pos, at - pos);
    out += to;
    pos = at + from.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// str.format: {} / {0} / {name} fields (a format spec after ':' is ignored), {{ and }}.
absl::StatusOr<std::string> PyFormat(const std::string& f, const CallArgs& a) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < f.size(); ++k) {
    if (f[k] == '{' && k + 1 < f.size() && f[k + 1] == '{') {
      out += '{';
      ++k;
    } else if (f[k] == '}' && k + 1 < f.size() && f[k + 1] == '}') {
      out += '}';
      ++k;
    } else if (f[k] == '{') {
      const size_t end = f.find('}', k);
      if (end == std::string::npos) return TypeError("str.format: a '{' is never closed");
      std::string field = f.substr(k + 1, end - k - 1);
      field = field.substr(0, field.find(':'));
      const Value* v = nullptr;
      if (field.empty()) {
        v = a.Get(auto_index++, "");
      } else if (absl::ascii_isdigit(static_cast<unsigned char>(field[0]))) {
        v = a.Get(static_cast<size_t>(std::atoi(field.c_str())), "");
      } else {
        v = a.Get(SIZE_MAX, field);
      }
      if (v == nullptr) return TypeError(absl::StrCat("str.format: no argument for {", field, "}"));
      out += PyStr(*v);
      k = end;
    } else {
      out += f[k];
    }
  }
  return out;
}

absl::StatusOr<Value> StringMethod(const std::string& s, const std::string& name, CallArgs& a) {
  const Value* a0 = a.Get(0, "");
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    return Value::Str(Strip(s, a.Get(0, "chars"), name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    const Value sep = a.Or(0, "sep", Value::None());
    const Value max = a.Or(1, "maxsplit", Value::Int(-1));
    const int64_t maxsplit = max.is_int() ? max.i() : -1;
    if (sep.none()) return StrList(SplitWhitespace(s, name == "split" ? maxsplit : -1));
    if (!sep.is_string() || sep.s().empty())
      return TypeError("str.split: the separator must be a non-empty string");
    return StrList(name == "split" ? SplitOn(s, sep.s(), maxsplit)
                                   : RSplitOn(s, sep.s(), maxsplit));
  }
  if (name == "startswith" || name == "endswith") {
    if (a0 == nullptr) return TypeError(absl::StrCat("str.", name, " takes an argument"));
    ValueList options = a0->is_list() ? a0->list() : ValueList{*a0};
    for (const Value& o : options) {
      if (!o.is_string())
        return TypeError(absl::StrCat("str.", name, ": the argument must be a string"));
      if (name == "startswith" ? absl::StartsWith(s, o.s()) : absl::EndsWith(s, o.s()))
        return Value::Bool(true);
    }
    return Value::Bool(false);
  }
  if (name == "upper") return Value::Str(Upper(s));
  if (name == "lower") return Value::Str(Lower(s));
  if (name == "title") return Value::Str(Title(s));
  if (name == "capitalize") return Value::Str(Capitalize(s));
  if (name == "replace") {
    const Value* from = a.Get(0, "old");
    const Value* to = a.Get(1, "new");
    if (from == nullptr || to == nullptr || !from->is_string() || !to->is_string()) {
      return TypeError("str.replace takes two strings");
    }
    const Value count = a.Or(2, "count", Value::Int(-1));
    return Value::Str(Replace(s, from->s(), to->s(), count.is_int() ? count.i() : -1));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "count") {
    if (a0 == nullptr || !a0->is_string())
      return TypeError(absl::StrCat("str.", name, " takes a string"));
    if (name == "count") {
      if (a0->s().empty()) return Value::Int(static_cast<int64_t>(CodePoints(s).size()));
      int64_t n = 0;
      for (size_t at = s.find(a0->s()); at != std::string::npos;
           at = s.find(a0->s(), at + a0->s().size()))
        ++n;
      return Value::Int(n);
    }
    const size_t at = name == "rfind" ? s.rfind(a0->s()) : s.find(a0->s());
    if (at == std::string::npos) {
      if (name == "index") return TypeError("str.index: substring not found");
      return Value::Int(-1);
    }
    // In code points.
    int64_t cp = 0;
    for (size_t k = 0; k < at; ++k) cp += (static_cast<unsigned char>(s[k]) & 0xC0) != 0x80;
    return Value::Int(cp);
  }
  if (name == "join") {
    if (a0 == nullptr) return TypeError("str.join takes an iterable");
    ASSIGN_OR_RETURN(ValueList items, Iterate(*a0));
    std::string out;
    for (size_t k = 0; k < items.size(); ++k) {
      if (!items[k].is_string()) return TypeError("str.join: every item must be a string");
      if (k > 0) out += s;
      out += items[k].s();
    }
    return Value::Str(std::move(out));
  }
  if (name == "splitlines") {
    return StrList(SplitLines(s));
  }
  if (name == "format") {
    ASSIGN_OR_RETURN(std::string out, PyFormat(s, a));
    return Value::Str(std::move(out));
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" ||
      name == "islower" || name == "isupper") {
    if (s.empty()) return Value::Bool(false);
    bool all = true, cased = false;
    for (unsigned char c : s) {
      if (name == "isdigit") all = all && absl::ascii_isdigit(c);
      if (name == "isalpha") all = all && absl::ascii_isalpha(c);
      if (name == "isalnum") all = all && absl::ascii_isalnum(c);
      if (name == "isspace") all = all && absl::ascii_isspace(c);
      if (name == "islower")
        all = all && !absl::ascii_isupper(c), cased = cased || absl::ascii_islower(c);
      if (name == "isupper")
        all = all && !absl::ascii_islower(c), cased = cased || absl::ascii_isupper(c);
    }
    if (name == "islower" || name == "isupper") all = all && cased;
    return Value::Bool(all);
  }
  return TypeError(absl::StrCat("strings have no method '", name, "'"));
}

bool IsStringMethod(absl::string_view name) {
  static constexpr absl::string_view kNames[] = {
      "strip",   "lstrip",  "rstrip",  "split",      "rsplit",  "startswith", "endswith",
      "upper",   "lower",   "title",   "capitalize", "replace", "find",       "rfind",
      "index",   "count",   "join",    "splitlines", "format",  "isdigit",    "isalpha",
      "isalnum", "isspace", "islower", "isupper"};
  return std::find(std::begin(kNames), std::end(kNames), name) != std::end(kNames);
}

Value Bound(const Value& obj, const std::string& name) {
  return Value::Function(name, [obj, name](CallArgs& a, Renderer&) -> absl::StatusOr<Value> {
    if (obj.is_string()) return StringMethod(obj.s(), name, a);
    if (obj.is_dict()) {
      const DictData& d = obj.dict();
      if (name == "items") {
        ValueList l;
        for (const auto& [k, v] : d.items) l.push_back(Value::List({Value::Str(k), v}));
        return Value::List(std::move(l));
      }
      if (name == "keys" || name == "values") {
        ValueList l;
        for (const auto& [k, v] : d.items) l.push_back(name == "keys" ? Value::Str(k) : v);
        return Value::List(std::move(l));
      }
      // get
      const Value* key = a.Get(0, "key");
      if (key == nullptr) return TypeError("dict.get takes a key");
      const Value* v = key->is_string() ? d.Find(key->s()) : nullptr;
      return v != nullptr ? *v : a.Or(1, "default", Value::None());
    }
    // list.index / list.count
    const Value* x = a.Get(0, "value");
    if (x == nullptr) return TypeError(absl::StrCat("list.", name, " takes a value"));
    int64_t count = 0;
    for (size_t k = 0; k < obj.list().size(); ++k) {
      if (Equal(obj.list()[k], *x)) {
        if (name == "index") return Value::Int(static_cast<int64_t>(k));
        ++count;
      }
    }
    if (name == "index") return TypeError("list.index: the value is not in the list");
    return Value::Int(count);
  });
}

absl::StatusOr<Value> Renderer::GetAttr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      return TypeError(absl::StrCat("an undefined value has no attribute '", name, "'"));
    case Value::Kind::kString:
      return IsStringMethod(name) ? Bound(obj, name) : Value();
    case Value::Kind::kDict:
      if (!obj.is_namespace() &&
          (name == "items" || name == "keys" || name == "values" || name == "get")) {
        return Bound(obj, name);
      }
      if (const Value* v = obj.dict().Find(name)) return *v;
      return Value();
    case Value::Kind::kList:
      return name == "index" || name == "count" ? Bound(obj, name) : Value();
    default:
      return Value();
  }
}

absl::StatusOr<Value> Renderer::GetItem(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      return TypeError(absl::StrCat("an undefined value has no item ", PyRepr(key)));
    case Value::Kind::kList:
    case Value::Kind::kString: {
      if (!key.is_int()) return key.is_string() ? GetAttr(obj, key.s()) : Value();
      int64_t n = 0;
      std::vector<size_t> at;
      if (obj.is_list()) {
        n = static_cast<int64_t>(obj.list().size());
      } else {
        at = CodePoints(obj.s());
        n = static_cast<int64_t>(at.size()) - 1;
      }
      int64_t k = key.i();
      if (k < 0) k += n;
      if (k < 0 || k >= n) return Value();
      if (obj.is_list()) return obj.list()[static_cast<size_t>(k)];
      return Value::Str(obj.s().substr(
          at[static_cast<size_t>(k)], at[static_cast<size_t>(k) + 1] - at[static_cast<size_t>(k)]));
    }
    case Value::Kind::kDict:
      if (key.is_string()) {
        if (const Value* v = obj.dict().Find(key.s())) return *v;
        return GetAttr(obj, key.s());
      }
      return Value();
    default:
      return Value();
  }
}

absl::StatusOr<Value> Renderer::Binary(const std::string& op, const Value& l, const Value& r) {
  if (op == "~") {
    std::string s = PyStr(l);
    s += PyStr(r);
    RETURN_IF_ERROR(CheckBytes(s.size()));
    return Value::Str(std::move(s));
  }
  const bool ints = l.is_int() && r.is_int();
  if (l.is_number() && r.is_number()) {
    if (op == "+" || op == "-" || op == "*") {
      if (ints) {
        int64_t out;
        const bool overflow = op == "+"   ? __builtin_add_overflow(l.i(), r.i(), &out)
                              : op == "-" ? __builtin_sub_overflow(l.i(), r.i(), &out)
                                          : __builtin_mul_overflow(l.i(), r.i(), &out);
        if (!overflow) return Value::Int(out);
      }
      const double a = l.f(), b = r.f();
      return Value::Float(op == "+" ? a + b : op == "-" ? a - b : a * b);
    }
    if (op == "/") {
      if (r.f() == 0) return TypeError("division by zero");
      return Value::Float(l.f() / r.f());
    }
    if (op == "//" || op == "%") {
      if (ints) {
        if (r.i() == 0) return TypeError("integer division or modulo by zero");
        if (l.i() == INT64_MIN && r.i() == -1)
          return op == "//" ? Value::Float(-static_cast<double>(INT64_MIN)) : Value::Int(0);
        int64_t q = l.i() / r.i(), m = l.i() % r.i();
        if (m != 0 && ((m < 0) != (r.i() < 0))) {
          --q;
          m += r.i();
        }
        return Value::Int(op == "//" ? q : m);
      }
      if (r.f() == 0) return TypeError("float division or modulo by zero");
      const double q = std::floor(l.f() / r.f());
      return Value::Float(op == "//" ? q : l.f() - q * r.f());
    }
    if (op == "**") {
      if (ints && r.i() >= 0) {
        int64_t out = 1;
        bool overflow = false;
        for (int64_t k = 0; k < r.i() && !overflow; ++k) {
          overflow = __builtin_mul_overflow(out, l.i(), &out);
          if (out == 0 || out == 1) break;
        }
        if (!overflow) return Value::Int(out);
      }
      return Value::Float(std::pow(l.f(), r.f()));
    }
  }
  if (op == "+" && l.is_string() && r.is_string()) {
    RETURN_IF_ERROR(CheckBytes(l.s().size() + r.s().size()));
    return Value::Str(l.s() + r.s());
  }
  if (op == "+" && l.is_list() && r.is_list()) {
    RETURN_IF_ERROR(CheckItems(l.list().size() + r.list().size()));
    ValueList out = l.list();
    out.insert(out.end(), r.list().begin(), r.list().end());
    return Value::List(std::move(out));
  }
  if (op == "*" && (l.is_string() || l.is_list()) && r.is_int()) return Binary(op, r, l);
  if (op == "*" && l.is_int() && (r.is_string() || r.is_list())) {
    const int64_t times = std::max<int64_t>(l.i(), 0);
    if (r.is_string()) {
      RETURN_IF_ERROR(
          CheckBytes(static_cast<size_t>(std::min<int64_t>(times, limits_.max_output_bytes + 1)) *
                     std::max<size_t>(r.s().size(), times > 0 ? 0 : 0)));
      if (static_cast<double>(times) * static_cast<double>(r.s().size()) >
          static_cast<double>(limits_.max_output_bytes)) {
        return CheckBytes(static_cast<size_t>(limits_.max_output_bytes) + 1);
      }
      std::string out;
      for (int64_t k = 0; k < times; ++k) out += r.s();
      return Value::Str(std::move(out));
    }
    if (static_cast<double>(times) * static_cast<double>(r.list().size()) >
        static_cast<double>(kMaxItems)) {
      return CheckItems(static_cast<size_t>(kMaxItems) + 1);
    }
    ValueList out;
    for (int64_t k = 0; k < times; ++k) out.insert(out.end(), r.list().begin(), r.list().end());
    return Value::List(std::move(out));
  }
  return TypeError(absl::StrCat("unsupported operand types for ", op, ": '", KindName(l), "' and '",
                                KindName(r), "'"));
}

absl::StatusOr<bool> Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::kString:
      if (!item.is_string()) return TypeError("'in <string>' requires a string on the left");
      return absl::StrContains(container.s(), item.s());
    case Value::Kind::kList:
      for (const Value& e : container.list()) {
        if (Equal(e, item)) return true;
      }
      return false;
    case Value::Kind::kDict:
      return item.is_string() && container.dict().Find(item.s()) != nullptr;
    case Value::Kind::kUndefined:
      return false;
    default:
      return TypeError(absl::StrCat("a ", KindName(container), " value is not a container"));
  }
}

absl::StatusOr<bool> Compare(const std::string& op, const Value& l, const Value& r) {
  if (op == "==") return Equal(l, r);
  if (op == "!=") return !Equal(l, r);
  if (op == "in") return Contains(r, l);
  if (op == "not in") {
    ASSIGN_OR_RETURN(bool in, Contains(r, l));
    return !in;
  }
  int c = 0;
  if (l.is_number() && r.is_number()) {
    c = l.f() < r.f() ? -1 : l.f() > r.f() ? 1 : 0;
    if (l.is_int() && r.is_int()) c = l.i() < r.i() ? -1 : l.i() > r.i() ? 1 : 0;
  } else if (l.is_string() && r.is_string()) {
    c = l.s().compare(r.s());
    c = c < 0 ? -1 : c > 0 ? 1 : 0;
  } else {
    return TypeError(absl::StrCat("'", op, "' is not supported between '", KindName(l), "' and '",
                                  KindName(r), "'"));
  }
  if (op == "<") return c < 0;
  if (op == ">") return c > 0;
  if (op == "<=") return c <= 0;
  return c >= 0;
}

// An error of the expression at `line`, named with it.
template <typename T>
absl::StatusOr<T> AtLine(int line, absl::StatusOr<T> v) {
  if (v.ok()) return v;
  return absl::InvalidArgumentError(
      absl::StrCat("chat template line ", line, ": ", v.status().message()));
}

absl::StatusOr<Value> Renderer::Eval(const Expr& e) {
  switch (e.op) {
    case Expr::Op::kLiteral:
      return e.literal;
    case Expr::Op::kName:
      if (const Value* v = Find(e.name)) return *v;
      return Global(e.name);
    case Expr::Op::kList: {
      ValueList l;
      l.reserve(e.args.size());
      for (const ExprPtr& a : e.args) {
        ASSIGN_OR_RETURN(Value v, Eval(*a));
        if (v.is_namespace()) return TypeError("a namespace cannot be put in a list");
        l.push_back(std::move(v));
      }
      return Value::List(std::move(l));
    }
    case Expr::Op::kDict: {
      auto d = std::make_shared<DictData>();
      for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
        ASSIGN_OR_RETURN(Value key, Eval(*e.args[k]));
        ASSIGN_OR_RETURN(Value v, Eval(*e.args[k + 1]));
        if (v.is_namespace()) return TypeError("a namespace cannot be put in a dict");
        d->Set(key.is_string() ? key.s() : PyStr(key), std::move(v));
      }
      return Value::Dict(std::move(d));
    }
    case Expr::Op::kAttr: {
      ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      return AtLine(e.line, GetAttr(obj, e.name));
    }
    case Expr::Op::kItem: {
      ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
      return AtLine(e.line, GetItem(obj, key));
    }
    case Expr::Op::kSlice: {
      ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
      Value parts[3];
      for (int k = 0; k < 3; ++k) {
        if (e.args[static_cast<size_t>(k) + 1] != nullptr) {
          ASSIGN_OR_RETURN(parts[k], Eval(*e.args[static_cast<size_t>(k) + 1]));
        }
      }
      if (obj.is_list()) {
        ASSIGN_OR_RETURN(
            std::vector<int64_t> idx,
            SliceIndices(static_cast<int64_t>(obj.list().size()), parts[0], parts[1], parts[2]));
        ValueList out;
        out.reserve(idx.size());
        for (int64_t k : idx) out.push_back(obj.list()[static_cast<size_t>(k)]);
        return Value::List(std::move(out));
      }
      if (obj.is_string()) {
        const std::vector<size_t> at = CodePoints(obj.s());
        ASSIGN_OR_RETURN(std::vector<int64_t> idx, SliceIndices(static_cast<int64_t>(at.size()) - 1,
                                                                parts[0], parts[1], parts[2]));
        std::string out;
        for (int64_t k : idx)
          out.append(obj.s(), at[static_cast<size_t>(k)],
                     at[static_cast<size_t>(k) + 1] - at[static_cast<size_t>(k)]);
        return Value::Str(std::move(out));
      }
      if (obj.undefined())
        return absl::InvalidArgumentError(
            absl::StrCat("chat template line ", e.line, ": an undefined value cannot be sliced"));
      return Value();
    }
    case Expr::Op::kCall:
    case Expr::Op::kFilter:
    case Expr::Op::kTest: {
      ASSIGN_OR_RETURN(Value first, Eval(*e.args[0]));
      CallArgs a;
      for (size_t k = 1; k < e.args.size(); ++k) {
        ASSIGN_OR_RETURN(Value v, Eval(*e.args[k]));
        a.pos.push_back(std::move(v));
      }
      for (const auto& [name, x] : e.kwargs) {
        ASSIGN_OR_RETURN(Value v, Eval(*x));
        a.kw.emplace_back(name, std::move(v));
      }
      absl::Status st;
      if (e.op == Expr::Op::kTest) {
        absl::StatusOr<bool> t = ApplyTest(e.name, first, a);
        if (t.ok()) return Value::Bool(*t != e.negate);
        st = t.status();
      } else {
        absl::StatusOr<Value> v =
            e.op == Expr::Op::kCall ? Call(first, a) : ApplyFilter(e.name, first, a);
        if (v.ok()) return v;
        st = v.status();
      }
      if (st.code() == kRaised || absl::StartsWith(st.message(), "chat template line ")) return st;
      return absl::InvalidArgumentError(
          absl::StrCat("chat template line ", e.line, ": ", st.message()));
    }
    case Expr::Op::kNeg:
    case Expr::Op::kPos: {
      ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
      if (!v.is_number())
        return absl::InvalidArgumentError(
            absl::StrCat("chat template line ", e.line, ": bad operand type for unary ",
                         e.op == Expr::Op::kNeg ? "-" : "+", ": '", KindName(v), "'"));
      if (e.op == Expr::Op::kPos) return v.is_bool() ? Value::Int(v.i()) : v;
      if (v.is_int() && v.i() != INT64_MIN) return Value::Int(-v.i());
      return Value::Float(-v.f());
    }
    case Expr::Op::kNot: {
      ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
      return Value::Bool(!v.Truthy());
    }
    case Expr::Op::kAnd:
    case Expr::Op::kOr: {
      ASSIGN_OR_RETURN(Value l, Eval(*e.args[0]));
      if (l.Truthy() == (e.op == Expr::Op::kOr)) return l;
      return Eval(*e.args[1]);
    }
    case Expr::Op::kBinary: {
      ASSIGN_OR_RETURN(Value l, Eval(*e.args[0]));
      ASSIGN_OR_RETURN(Value r, Eval(*e.args[1]));
      return AtLine(e.line, Binary(e.name, l, r));
    }
    case Expr::Op::kCompare: {
      ASSIGN_OR_RETURN(Value l, Eval(*e.args[0]));
      for (size_t k = 0; k < e.ops.size(); ++k) {
        ASSIGN_OR_RETURN(Value r, Eval(*e.args[k + 1]));
        ASSIGN_OR_RETURN(const bool c, AtLine(e.line, Compare(e.ops[k], l, r)));
        if (!c) return Value::Bool(false);
        l = std::move(r);
      }
      return Value::Bool(true);
    }
    case Expr::Op::kCond: {
      ASSIGN_OR_RETURN(Value c, Eval(*e.args[0]));
      return Eval(*e.args[c.Truthy() ? 1 : 2]);
    }
  }
  return Value();
}

Value Renderer::Global(absl::string_view name) {
  if (name == "range") {
    return Value::Function("range", [](CallArgs& a, Renderer& r) -> absl::StatusOr<Value> {
      for (const Value& v : a.pos) {
        if (!v.is_int()) return TypeError("range takes integers");
      }
      int64_t start = 0, stop = 0, step = 1;
      if (a.pos.size() == 1) {
        stop = a.pos[0].i();
      } else if (a.pos.size() == 2 || a.pos.size() == 3) {
        start = a.pos[0].i();
        stop = a.pos[1].i();
        if (a.pos.size() == 3) step = a.pos[2].i();
      } else {
        return TypeError("range takes 1 to 3 arguments");
      }
      if (step == 0) return TypeError("range: the step must not be zero");
      const double n =
          std::max(0.0, std::ceil((static_cast<double>(stop) - static_cast<double>(start)) /
                                  static_cast<double>(step)));
      RETURN_IF_ERROR(r.CheckItems(static_cast<size_t>(std::min(n, 1e18))));
      ValueList l;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) l.push_back(Value::Int(k));
      return Value::List(std::move(l));
    });
  }
  if (name == "namespace" || name == "dict") {
    const bool ns = name == "namespace";
    return Value::Function(
        std::string(name), [ns](CallArgs& a, Renderer&) -> absl::StatusOr<Value> {
          auto d = std::make_shared<DictData>();
          for (const Value& v : a.pos) {
            if (!v.is_dict()) return TypeError("namespace / dict take keyword arguments or a dict");
            for (const auto& [k, x] : v.dict().items) d->Set(k, x);
          }
          for (const auto& [k, x] : a.kw) {
            if (x.is_namespace()) return TypeError("a namespace cannot hold a namespace");
            d->Set(k, x);
          }
          return Value::Dict(std::move(d), ns);
        });
  }
  if (name == "raise_exception") {
    return Value::Function("raise_exception", [](CallArgs& a, Renderer&) -> absl::StatusOr<Value> {
      return absl::Status(kRaised,
                          a.pos.empty() ? std::string("raise_exception") : PyStr(a.pos[0]));
    });
  }
  if (name == "strftime_now") {
    return Value::Function("strftime_now", [](CallArgs& a, Renderer& r) -> absl::StatusOr<Value> {
      if (a.pos.empty() || !a.pos[0].is_string()) return TypeError("strftime_now takes a format");
      std::tm tm{};
      if (r.limits().fixed_now >= 0) {
        const std::time_t fixed = static_cast<std::time_t>(r.limits().fixed_now);
        gmtime_r(&fixed, &tm);
      } else {
        const std::time_t now = std::time(nullptr);
        localtime_r(&now, &tm);
      }
      char buf[256];
      const size_t n = std::strftime(buf, sizeof(buf), a.pos[0].s().c_str(), &tm);
      return Value::Str(std::string(buf, n));
    });
  }
  return Value();
}

// ---------------------------------------------------------------------------------------
// Filters and tests

std::string HtmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

int64_t Length(const Value& v) {
  if (v.is_string()) return static_cast<int64_t>(CodePoints(v.s()).size()) - 1;
  if (v.is_list()) return static_cast<int64_t>(v.list().size());
  if (v.is_dict()) return static_cast<int64_t>(v.dict().items.size());
  return 0;
}

// `attribute` of the filters that take one: "a.b" and "0" walk into items.
absl::StatusOr<Value> AttributeOf(Renderer& r, const Value& v, const std::string& path);

constexpr absl::string_view kFilters[] = {
    "abs",    "attr",   "capitalize", "count",      "d",           "default", "dictsort",
    "e",      "escape", "first",      "float",      "forceescape", "indent",  "int",
    "items",  "join",   "last",       "length",     "list",        "lower",   "map",
    "max",    "min",    "reject",     "rejectattr", "replace",     "reverse", "round",
    "safe",   "select", "selectattr", "sort",       "string",      "sum",     "title",
    "tojson", "trim",   "unique",     "upper",      "wordcount"};
constexpr absl::string_view kTests[] = {
    "defined",  "undefined", "none",    "boolean",     "true",     "false",       "integer",
    "float",    "number",    "string",  "mapping",     "iterable", "sequence",    "callable",
    "sameas",   "eq",        "equalto", "==",          "ne",       "!=",          "lt",
    "lessthan", "<",         "le",      "<=",          "gt",       "greaterthan", ">",
    "ge",       ">=",        "in",      "divisibleby", "even",     "odd",         "lower",
    "upper",    "escaped"};

bool KnownFilter(absl::string_view name) {
  return std::find(std::begin(kFilters), std::end(kFilters), name) != std::end(kFilters);
}
bool KnownTest(absl::string_view name) {
  return std::find(std::begin(kTests), std::end(kTests), name) != std::end(kTests);
}

absl::StatusOr<Value> AttributeOf(Renderer& r, const Value& v, const std::string& path) {
  Value cur = v;
  for (const std::string& part : SplitOn(path, ".", -1)) {
    Value key = Value::Str(part);
    if (!part.empty() && absl::ascii_isdigit(static_cast<unsigned char>(part[0])))
      key = Value::Int(std::atoll(part.c_str()));
    if (cur.undefined()) return Value();
    absl::StatusOr<Value> next =
        cur.is_dict() && key.is_string() && cur.dict().Find(part) != nullptr
            ? absl::StatusOr<Value>(*cur.dict().Find(part))
            : absl::StatusOr<Value>(Value());
    if (!next->undefined() || !cur.is_list()) {
      cur = *next;
    } else if (key.is_int()) {
      const int64_t k = key.i();
      cur = k >= 0 && k < static_cast<int64_t>(cur.list().size())
                ? cur.list()[static_cast<size_t>(k)]
                : Value();
    } else {
      cur = Value();
    }
  }
  (void)r;
  return cur;
}

// Python's sort order for the values a template sorts: numbers, then strings.
absl::StatusOr<bool> Less(const Value& a, const Value& b, bool case_sensitive) {
  if (a.is_string() && b.is_string() && !case_sensitive) return Lower(a.s()) < Lower(b.s());
  ASSIGN_OR_RETURN(bool lt, Compare("<", a, b));
  return lt;
}

absl::StatusOr<bool> Renderer::ApplyTest(const std::string& name, const Value& in, CallArgs& a) {
  const Value* arg = a.Get(0, "other");
  const auto need = [&]() -> absl::Status {
    if (arg == nullptr) return TypeError(absl::StrCat("the test '", name, "' takes an argument"));
    return absl::OkStatus();
  };
  if (name == "defined") return !in.undefined();
  if (name == "undefined") return in.undefined();
  if (name == "none") return in.none();
  if (name == "boolean") return in.is_bool();
  if (name == "true") return in.is_bool() && in.b();
  if (name == "false") return in.is_bool() && !in.b();
  if (name == "integer") return in.kind() == Value::Kind::kInt;
  if (name == "float") return in.kind() == Value::Kind::kFloat;
  if (name == "number") return in.is_number();
  if (name == "string") return in.is_string();
  if (name == "mapping") return in.is_dict() && !in.is_namespace();
  if (name == "iterable")
    return in.is_string() || in.is_list() || (in.is_dict() && !in.is_namespace()) || in.undefined();
  if (name == "sequence")
    return in.is_string() || in.is_list() || (in.is_dict() && !in.is_namespace());
  if (name == "callable") return in.is_callable();
  if (name == "escaped") return false;
  if (name == "lower" || name == "upper") {
    if (!in.is_string()) return false;
    return name == "lower" ? Lower(in.s()) == in.s() : Upper(in.s()) == in.s();
  }
  if (name == "sameas") {
    RETURN_IF_ERROR(need());
    if (in.kind() != arg->kind()) return false;
    if (in.none() || in.undefined()) return true;
    if (in.is_bool()) return in.b() == arg->b();
    if (in.is_list()) return &in.list() == &arg->list();
    if (in.is_dict()) return &in.dict() == &arg->dict();
    return Equal(in, *arg);
  }
  if (name == "even" || name == "odd" || name == "divisibleby") {
    if (!in.is_int()) return TypeError(absl::StrCat("the test '", name, "' takes an integer"));
    if (name == "divisibleby") {
      RETURN_IF_ERROR(need());
      if (!arg->is_int() || arg->i() == 0) return TypeError("divisibleby takes a non-zero integer");
      return in.i() % arg->i() == 0;
    }
    return (in.i() % 2 == 0) == (name == "even");
  }
  RETURN_IF_ERROR(need());
  if (name == "in") return Contains(*arg, in);
  const std::string op = name == "eq" || name == "equalto" || name == "=="      ? "=="
                         : name == "ne" || name == "!="                         ? "!="
                         : name == "lt" || name == "lessthan" || name == "<"    ? "<"
                         : name == "le" || name == "<="                         ? "<="
                         : name == "gt" || name == "greaterthan" || name == ">" ? ">"
                                                                                : ">=";
  return Compare(op, in, *arg);
}

absl::StatusOr<Value> Renderer::ApplyFilter(const std::string& name, const Value& in, CallArgs& a) {
  const Value* a0 = a.Get(0, "");
  if (name == "safe") return in;
  if (name == "string") return Value::Str(PyStr(in));
  if (name == "e" || name == "escape" || name == "forceescape")
    return Value::Str(HtmlEscape(PyStr(in)));
  if (name == "d" || name == "default") {
    const Value fallback = a.Or(0, "default_value", Value::Str(""));
    const bool boolean = a.Or(1, "boolean", Value::Bool(false)).Truthy();
    if (in.undefined() || (boolean && !in.Truthy())) return fallback;
    return in;
  }
  if (name == "length" || name == "count") {
    if (!in.is_string() && !in.is_list() && !in.is_dict() && !in.undefined()) {
      return TypeError(absl::StrCat("a ", KindName(in), " value has no length"));
    }
    return Value::Int(Length(in));
  }
  if (name == "trim") {
    if (in.undefined()) return Value::Str("");
    return Value::Str(Strip(PyStr(in), a.Get(0, "chars"), true, true));
  }
  if (name == "lower" || name == "upper" || name == "title" || name == "capitalize") {
    const std::string s = PyStr(in);
    return Value::Str(name == "lower"   ? Lower(s)
                      : name == "upper" ? Upper(s)
                      : name == "title" ? Title(s)
                                        : Capitalize(s));
  }
  if (name == "replace") {
    const Value* from = a.Get(0, "old");
    const Value* to = a.Get(1, "new");
    if (from == nullptr || to == nullptr) return TypeError("replace takes two strings");
    const Value count = a.Or(2, "count", Value::None());
    std::string out = Replace(PyStr(in), PyStr(*from), PyStr(*to), count.is_int() ? count.i() : -1);
    RETURN_IF_ERROR(CheckBytes(out.size()));
    return Value::Str(std::move(out));
  }
  if (name == "tojson") {
    JsonOptions o;
    const Value indent = a.Or(0, "indent", Value::None());
    if (indent.is_int()) {
      o.indent = static_cast<int>(std::clamp<int64_t>(indent.i(), 0, 64));
      o.item_sep = ",";
    } else if (indent.is_string()) {
      return TypeError("tojson: a string indent is not supported");
    }
    o.ensure_ascii = a.Or(SIZE_MAX, "ensure_ascii", Value::Bool(false)).Truthy();
    o.sort_keys = a.Or(SIZE_MAX, "sort_keys", Value::Bool(false)).Truthy();
    const Value seps = a.Or(SIZE_MAX, "separators", Value::None());
    if (seps.is_list() && seps.list().size() == 2 && seps.list()[0].is_string() &&
        seps.list()[1].is_string()) {
      o.item_sep = seps.list()[0].s();
      o.key_sep = seps.list()[1].s();
    }
    std::string out;
    RETURN_IF_ERROR(ToJson(in, o, 0, &out));
    RETURN_IF_ERROR(CheckBytes(out.size()));
    return Value::Str(std::move(out));
  }
  if (name == "first" || name == "last") {
    if (in.is_string() || in.is_list() || in.is_dict()) {
      ASSIGN_OR_RETURN(ValueList items, Iterate(in));
      if (items.empty()) return Value();
      return name == "first" ? items.front() : items.back();
    }
    if (in.undefined()) return Value();
    return TypeError(absl::StrCat("a ", KindName(in), " value has no ", name, " item"));
  }
  if (name == "items") {
    if (in.undefined()) return Value::List({});
    if (!in.is_dict()) return TypeError("items takes a dict");
    ValueList l;
    for (const auto& [k, v] : in.dict().items) l.push_back(Value::List({Value::Str(k), v}));
    return Value::List(std::move(l));
  }
  if (name == "dictsort") {
    if (!in.is_dict()) return TypeError("dictsort takes a dict");
    std::vector<std::pair<std::string, Value>> items = in.dict().items;
    std::stable_sort(items.begin(), items.end(),
                     [](const auto& x, const auto& y) { return Lower(x.first) < Lower(y.first); });
    ValueList l;
    for (const auto& [k, v] : items) l.push_back(Value::List({Value::Str(k), v}));
    return Value::List(std::move(l));
  }
  if (name == "list") {
    ASSIGN_OR_RETURN(ValueList items, Iterate(in));
    return Value::List(std::move(items));
  }
  if (name == "reverse") {
    if (in.is_string()) {
      const std::vector<size_t> at = CodePoints(in.s());
      std::string out;
      for (size_t k = at.size() - 1; k-- > 0;) out.append(in.s(), at[k], at[k + 1] - at[k]);
      return Value::Str(std::move(out));
    }
    ASSIGN_OR_RETURN(ValueList items, Iterate(in));
    std::reverse(items.begin(), items.end());
    return Value::List(std::move(items));
  }
  if (name == "join") {
    ASSIGN_OR_RETURN(ValueList items, Iterate(in));
    const std::string sep = PyStr(a.Or(0, "d", Value::Str("")));
    const Value* attribute = a.Get(1, "attribute");
    std::string out;
    for (size_t k = 0; k < items.size(); ++k) {
      if (k > 0) out += sep;
      if (attribute != nullptr) {
        ASSIGN_OR_RETURN(Value v, AttributeOf(*this, items[k], PyStr(*attribute)));
        out += PyStr(v);
      } else {
        out += PyStr(items[k]);
      }
      RETURN_IF_ERROR(CheckBytes(out.size()));
    }
    return Value::Str(std::move(out));
  }
  if (name == "map") {
    ASSIGN_OR_RETURN(ValueList items, Iterate(in));
    ValueList out;
    if (const Value* attribute = a.Get(SIZE_MAX, "attribute")) {
      const Value* dflt = a.Get(SIZE_MAX, "default");
      for (const Value& item : items) {
        ASSIGN_OR_RETURN(Value v, AttributeOf(*this, item, PyStr(*attribute)));
        out.push_back(v.undefined() && dflt != nullptr ? *dflt : v);
      }
      return Value::List(std::move(out));
    }
    if (a0 == nullptr || !a0->is_string() || !KnownFilter(a0->s()))
      return TypeError("map takes a filter name or attribute=");
    CallArgs rest;
    rest.pos.assign(a.pos.begin() + 1, a.pos.end());
    rest.kw = a.kw;
    for (const Value& item : items) {
      RETURN_IF_ERROR(Tick());
      ASSIGN_OR_RETURN(Value v, ApplyFilter(a0->s(), item, rest));
      out.push_back(std::move(v));
    }
    return Value::List(std::move(out));
  }
  if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    ASSIGN_OR_RETURN(ValueList items, Iterate(in));
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_if = name == "select" || name == "selectattr";
    const size_t test_at = by_attr ? 1 : 0;
    if (by_attr && a0 == nullptr) return TypeError(absl::StrCat(name, " takes an attribute"));
    const Value* test = test_at < a.pos.size() ? &a.pos[test_at] : nullptr;
    if (test != nullptr && (!test->is_string() || !KnownTest(test->s()))) {
      return TypeError(absl::StrCat(name, ": no test named ", PyRepr(*test)));
    }
    CallArgs rest;
    if (test != nullptr)
      rest.pos.assign(a.pos.begin() + static_cast<ptrdiff_t>(test_at) + 1, a.pos.end());
    ValueList out;
    for (const Value& item : items) {
      RETURN_IF_ERROR(Tick());
      Value subject = item;
      if (by_attr) {
        ASSIGN_OR_RETURN(subject, AttributeOf(*this, item, PyStr(*a0)));
      }
      bool pass = subject.Truthy();
      if (test != nullptr) {
        ASSIGN_OR_RETURN(pass, ApplyTest(test->s(), subject, rest));
      }
      if (pass == keep_if) out.push_back(item);
    }
    return Value::List(std::move(out));
  }
  if (name == "unique") {
    ASSIGN_OR_RETURN(ValueList items, Iterate(in));
    const bool case_sensitive = a.Or(0, "case_sensitive", Value::Bool(false)).Truthy();
    ValueList out, keys;
    for (const Value& item : items) {
      RETURN_IF_ERROR(Tick());
      const Value key = item.is_string() && !case_sensitive ? Value::Str(Lower(item.s())) : item;
      bool seen = false;
      for (const Value& k : keys) seen = seen || Equal(k, key);
      if (!seen) {
        keys.push_back(key);
        out.push_back(item);
      }
    }
    return Value::List(std::move(out));
  }
  if (name == "sort" || name == "max" || name == "min") {
    ASSIGN_OR_RETURN(ValueList items, Iterate(in));
    const bool reverse = name == "sort" && a.Or(0, "reverse", Value::Bool(false)).Truthy();
    const bool case_sensitive =
        a.Or(name == "sort" ? 1 : 0, "case_sensitive", Value::Bool(false)).Truthy();
    const Value* attribute = a.Get(name == "sort" ? 2 : 1, "attribute");
    std::vector<std::pair<Value, Value>> keyed;
    for (const Value& item : items) {
      Value key = item;
      if (attribute != nullptr) {
        ASSIGN_OR_RETURN(key, AttributeOf(*this, item, PyStr(*attribute)));
      }
      keyed.emplace_back(std::move(key), item);
    }
    absl::Status st;
    const auto less = [&](const auto& x, const auto& y) {
      absl::StatusOr<bool> lt = Less(x.first, y.first, case_sensitive);
      if (!lt.ok()) {
        st = lt.status();
        return false;
      }
      return *lt;
    };
    if (name == "sort") {
      std::stable_sort(keyed.begin(), keyed.end(), less);
      RETURN_IF_ERROR(st);
      if (reverse) std::reverse(keyed.begin(), keyed.end());
      ValueList out;
      for (auto& [k, v] : keyed) out.push_back(std::move(v));
      return Value::List(std::move(out));
    }
    if (keyed.empty()) return Value();
    auto it = name == "max" ? std::max_element(keyed.begin(), keyed.end(), less)
                            : std::min_element(keyed.begin(), keyed.end(), less);
    RETURN_IF_ERROR(st);
    return it->second;
  }
  if (name == "sum") {
    ASSIGN_OR_RETURN(ValueList items, Iterate(in));
    const Value* attribute = a.Get(0, "attribute");
    Value total = a.Or(1, "start", Value::Int(0));
    for (const Value& item : items) {
      Value v = item;
      if (attribute != nullptr) {
        ASSIGN_OR_RETURN(v, AttributeOf(*this, item, PyStr(*attribute)));
      }
      ASSIGN_OR_RETURN(total, Binary("+", total, v));
    }
    return total;
  }
  if (name == "abs") {
    if (!in.is_number()) return TypeError("abs takes a number");
    if (in.is_int() && in.i() != INT64_MIN) return Value::Int(std::abs(in.i()));
    return Value::Float(std::fabs(in.f()));
  }
  if (name == "round") {
    if (!in.is_number()) return TypeError("round takes a number");
    const Value precision = a.Or(0, "precision", Value::Int(0));
    const std::string method = PyStr(a.Or(1, "method", Value::Str("common")));
    const double scale =
        std::pow(10.0, static_cast<double>(precision.is_int() ? precision.i() : 0));
    const double x = in.f() * scale;
    const double r = method == "ceil"    ? std::ceil(x)
                     : method == "floor" ? std::floor(x)
                                         : std::round(x);
    return Value::Float(r / scale);
  }
  if (name == "int" || name == "float") {
    const Value fallback = a.Or(0, "default", name == "int" ? Value::Int(0) : Value::Float(0));
    double d = 0;
    if (in.is_number()) {
      d = in.f();
      if (name == "int" && in.is_int()) return Value::Int(in.i());
    } else if (in.is_string()) {
      const std::string s = Strip(in.s(), nullptr, true, true);
      char* end = nullptr;
      d = std::strtod(s.c_str(), &end);
      if (s.empty() || end != s.c_str() + s.size()) return fallback;
    } else {
      return fallback;
    }
    if (name == "float") return Value::Float(d);
    if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return fallback;
    return Value::Int(static_cast<int64_t>(d));
  }
  if (name == "wordcount")
    return Value::Int(static_cast<int64_t>(SplitWhitespace(PyStr(in), -1).size()));
  if (name == "indent") {
    const Value width = a.Or(0, "width", Value::Int(4));
    const bool first = a.Or(1, "first", Value::Bool(false)).Truthy();
    const bool blank = a.Or(2, "blank", Value::Bool(false)).Truthy();
    const std::string pad =
        width.is_string()
            ? width.s()
            : std::string(
                  static_cast<size_t>(std::clamp<int64_t>(width.is_int() ? width.i() : 4, 0, 256)),
                  ' ');
    std::string s = PyStr(in) + "\n";
    const std::vector<std::string> lines = SplitLines(s);
    std::string out;
    for (size_t k = 0; k < lines.size(); ++k) {
      if (k > 0) out += "\n";
      if (k > 0 && (blank || !lines[k].empty())) out += pad;
      out += lines[k];
    }
    if (first) out = pad + out;
    RETURN_IF_ERROR(CheckBytes(out.size()));
    return Value::Str(std::move(out));
  }
  if (name == "attr") {
    if (a0 == nullptr) return TypeError("attr takes a name");
    return GetAttr(in, PyStr(*a0));
  }
  return TypeError(absl::StrCat("no filter named '", name, "'"));
}

absl::StatusOr<Value> FromJsonChecked(const nlohmann::ordered_json& j, int depth) {
  if (depth > 512)
    return absl::InvalidArgumentError("the chat template's input nests more than 512 deep");
  if (j.is_array()) {
    ValueList l;
    l.reserve(j.size());
    for (const auto& e : j) {
      ASSIGN_OR_RETURN(Value v, FromJsonChecked(e, depth + 1));
      l.push_back(std::move(v));
    }
    return Value::List(std::move(l));
  }
  if (j.is_object()) {
    auto d = std::make_shared<DictData>();
    d->items.reserve(j.size());
    for (const auto& [k, e] : j.items()) {
      ASSIGN_OR_RETURN(Value v, FromJsonChecked(e, depth + 1));
      d->items.emplace_back(k, std::move(v));
    }
    return Value::Dict(std::move(d));
  }
  return FromJson(j);
}

}  // namespace

struct Program {
  Body body;
};

}  // namespace internal

absl::StatusOr<Template> Template::Parse(absl::string_view source) {
  ASSIGN_OR_RETURN(std::vector<internal::Segment> segs, internal::Lex(source));
  internal::StmtParser parser(std::move(segs));
  ASSIGN_OR_RETURN(internal::Body body, parser.Program());
  auto program = std::make_shared<internal::Program>();
  program->body = std::move(body);
  Template t;
  t.program_ = std::move(program);
  return t;
}

absl::StatusOr<std::string> Template::Render(const nlohmann::ordered_json& context,
                                             const RenderLimits& limits) const {
  if (!context.is_object())
    return absl::InvalidArgumentError("the chat template's context must be an object");
  internal::Renderer r(limits);
  for (const auto& [k, v] : context.items()) {
    ASSIGN_OR_RETURN(internal::Value value, internal::FromJsonChecked(v, 0));
    r.SetGlobal(k, std::move(value));
  }
  std::string out;
  absl::Status st = r.Run(program_->body, &out);
  if (st.code() == internal::kRaised) return absl::InvalidArgumentError(st.message());
  RETURN_IF_ERROR(st);
  return out;
}

}  // namespace spanserve::chat::jinja
