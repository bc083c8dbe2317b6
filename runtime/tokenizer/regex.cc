#include "runtime/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "runtime/tokenizer/string_map.h"
#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {
namespace {

// Per-thread PCRE2 scratch: match data for one pair of offsets and a JIT stack large
// enough for long runs of whitespace or letters.
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;

  MatchScratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
    SPANSERVE_CHECK(data != nullptr && context != nullptr && jit_stack != nullptr);
    pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchScratch& Scratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

// Oniguruma's (Unicode) \s: White_Space without U+180E, which PCRE2's \s still has.
constexpr std::string_view kOnigSpace =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
// Oniguruma's \w: alphabetic, marks, decimal digits, connector punctuation; outside a
// bracket class it also matches the Latin-1 superscripts and fractions (U+00B2..U+00BE).
// Both measured against `tokenizers` over all code points.
constexpr std::string_view kOnigWordInClass = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}";
constexpr std::string_view kOnigWord =
    "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{B2}\\x{B3}\\x{B9}\\x{BC}-\\x{BE}";
constexpr std::string_view kOnigHex = "0-9a-fA-F";

}  // namespace

std::string TranslateOnigurumaPattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  int class_depth = 0;  // inside [...] (Oniguruma allows nested classes)
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      ++i;
      std::string_view set;
      bool negated = false;
      switch (e) {
        case 's':
          set = kOnigSpace;
          break;
        case 'S':
          set = kOnigSpace;
          negated = true;
          break;
        case 'w':
          set = kOnigWord;
          break;
        case 'W':
          set = kOnigWord;
          negated = true;
          break;
        case 'h':
          set = kOnigHex;
          break;
        case 'H':
          set = kOnigHex;
          negated = true;
          break;
        case 'u': {
          // \uHHHH -> \x{HHHH}
          bool hex = i + 4 < p.size();
          for (size_t k = 1; hex && k <= 4; ++k) {
            hex = std::isxdigit(static_cast<unsigned char>(p[i + k])) != 0;
          }
          if (hex) {
            absl::StrAppend(&out, "\\x{", Sv(p.substr(i + 1, 4)), "}");
            i += 4;
          } else {
            out.append("\\u");
          }
          continue;
        }
        default:
          out.push_back('\\');
          out.push_back(e);
          continue;
      }
      if (class_depth == 0) {
        absl::StrAppend(&out, negated ? "[^" : "[", Sv(set), "]");
      } else if (!negated) {
        out.append(set == kOnigWord ? kOnigWordInClass : set);
      } else {
        // A negated set inside a class cannot be spelled as a list; keep PCRE2's own
        // meaning (differs from Oniguruma only on the code points listed above).
        out.push_back('\\');
        out.push_back(e);
      }
      continue;
    }
    if (c == '[') {
      ++class_depth;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    if (c == ']' && class_depth > 0) --class_depth;
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Pattern>> Pattern::Regex(std::string_view oniguruma_pattern) {
  auto pattern = Pcre2(TranslateOnigurumaPattern(oniguruma_pattern));
  if (pattern.ok()) (*pattern)->source_ = std::string(oniguruma_pattern);
  return pattern;
}

absl::StatusOr<std::unique_ptr<Pattern>> Pattern::Pcre2(std::string_view translated) {
  std::unique_ptr<Pattern> pattern(new Pattern());
  pattern->source_ = std::string(translated);
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("cannot compile regex '", Sv(translated),
                                                   "': ", reinterpret_cast<char*>(message),
                                                   " at offset ", error_offset));
  }
  pattern->code_ = code;
  pattern->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return pattern;
}

absl::StatusOr<std::unique_ptr<Pattern>> Pattern::Literal(std::string_view literal) {
  if (literal.empty()) return absl::InvalidArgumentError("empty string pattern");
  std::unique_ptr<Pattern> pattern(new Pattern());
  pattern->source_ = std::string(literal);
  pattern->literal_ = std::string(literal);
  return pattern;
}

Pattern::~Pattern() {
  if (code_ != nullptr) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

bool Pattern::FindAll(std::string_view text, std::vector<Span>* matches) const {
  if (code_ == nullptr) {
    size_t pos = 0;
    while ((pos = text.find(literal_, pos)) != std::string_view::npos) {
      matches->push_back(
          {static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + literal_.size())});
      pos += literal_.size();
    }
    return true;
  }
  auto* code = static_cast<pcre2_code*>(code_);
  MatchScratch& scratch = Scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t start = 0;
  bool have_last_end = false;
  size_t last_end = 0;
  while (start <= n) {
    int rc = jit_ ? pcre2_jit_match(code, subject, n, start, 0, scratch.data, scratch.context)
                  : PCRE2_ERROR_JIT_STACKLIMIT;
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      // The JIT stack ran out (or there is no JIT): the interpreter keeps its backtracking
      // state on the heap instead.
      rc = pcre2_match(code, subject, n, start, PCRE2_NO_UTF_CHECK, scratch.data, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) return true;
    if (rc < 0) return false;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch.data);
    const size_t b = ov[0], e = ov[1];
    if (b == e && have_last_end && last_end == e) {
      // Skip the empty match that abuts the previous one; retry one character later.
      if (start >= n) return true;
      start += Utf8LeadLength(static_cast<uint8_t>(text[start]));
      continue;
    }
    matches->push_back({static_cast<uint32_t>(b), static_cast<uint32_t>(e)});
    have_last_end = true;
    last_end = e;
    start = e;
    if (b == e) {
      // An empty match: the next search starts here too, and is then skipped above.
      continue;
    }
  }
  return true;
}

}  // namespace spanserve::tokenizer
