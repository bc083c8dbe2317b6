// Reading tokenizer.json into the pipeline components. Every unsupported component is a
// load error that names it; nothing is silently approximated.
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer/added_vocabulary.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/byte_level.h"
#include "runtime/tokenizer/decoders.h"
#include "runtime/tokenizer/normalizers.h"
#include "runtime/tokenizer/post_processors.h"
#include "runtime/tokenizer/pre_tokenizers.h"
#include "runtime/tokenizer/string_map.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {

using Json = nlohmann::json;

namespace {

absl::Status Invalid(std::string_view where, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", Sv(where), ": ", Sv(what)));
}

absl::Status Unsupported(std::string_view component, const std::string& type) {
  return absl::InvalidArgumentError(
      absl::StrCat("tokenizer.json: unsupported ", Sv(component), " type '", type, "'"));
}

absl::StatusOr<std::string> GetString(const Json& j, const char* key, std::string_view where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) {
    return Invalid(where, absl::StrCat("'", key, "' must be a string"));
  }
  return it->get<std::string>();
}

absl::StatusOr<bool> GetBool(const Json& j, const char* key, bool fallback,
                             std::string_view where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return Invalid(where, absl::StrCat("'", key, "' must be a boolean"));
  return it->get<bool>();
}

absl::StatusOr<int64_t> GetInt(const Json& j, const char* key, std::string_view where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) {
    return Invalid(where, absl::StrCat("'", key, "' must be an integer"));
  }
  return it->get<int64_t>();
}

// Token ids index dense tables (id -> token, the embedding's rows), so an id far beyond any
// vocabulary (the largest are under 2^20) is a corrupt file; a JSON integer outside int32
// must not wrap into one either.
constexpr int64_t kMaxTokenId = (int64_t{1} << 22) - 1;

// A token id: an integer in [0, kMaxTokenId].
absl::StatusOr<int32_t> TokenId(const Json& j, std::string_view where) {
  if (!j.is_number_integer()) return Invalid(where, "token ids must be integers");
  if (j.is_number_unsigned() ? j.get<uint64_t>() > static_cast<uint64_t>(kMaxTokenId)
                             : (j.get<int64_t>() < 0 || j.get<int64_t>() > kMaxTokenId)) {
    return Invalid(where,
                   absl::StrCat("token id ", j.dump(), " is out of range [0, ", kMaxTokenId, "]"));
  }
  return static_cast<int32_t>(j.get<int64_t>());
}

absl::StatusOr<const Json*> GetArray(const Json& j, const char* key, std::string_view where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) {
    return Invalid(where, absl::StrCat("'", key, "' must be an array"));
  }
  return &*it;
}

absl::StatusOr<std::string> GetType(const Json& j, std::string_view where) {
  if (!j.is_object()) return Invalid(where, "must be an object");
  return GetString(j, "type", where);
}

absl::StatusOr<char32_t> GetChar(const Json& j, const char* key, std::string_view where) {
  ASSIGN_OR_RETURN(std::string s, GetString(j, key, where));
  const std::string error = absl::StrCat("'", key, "' must be a single character");
  if (s.empty()) return Invalid(where, error);
  size_t pos = 0;
  const char32_t c = DecodeUtf8(s, &pos);
  if (pos != s.size()) return Invalid(where, error);
  return c;
}

// {"String": "..."} or {"Regex": "..."}.
absl::StatusOr<std::unique_ptr<Pattern>> ParsePattern(const Json& j, std::string_view where,
                                                      bool* is_regex) {
  if (!j.is_object() || j.size() != 1) {
    return Invalid(where, "'pattern' must be {\"String\": ...} or {\"Regex\": ...}");
  }
  if (auto it = j.find("String"); it != j.end() && it->is_string()) {
    *is_regex = false;
    auto p = Pattern::Literal(it->get<std::string>());
    if (!p.ok()) return Invalid(where, std::string(std::string(p.status().message())));
    return p;
  }
  if (auto it = j.find("Regex"); it != j.end() && it->is_string()) {
    *is_regex = true;
    auto p = Pattern::Regex(it->get<std::string>());
    if (!p.ok()) return Invalid(where, std::string(std::string(p.status().message())));
    return p;
  }
  return Invalid(where, "'pattern' must be {\"String\": ...} or {\"Regex\": ...}");
}

absl::StatusOr<PrependScheme> ParsePrependScheme(const Json& j, std::string_view where) {
  // Older files have add_prefix_space instead (true: always, false: never).
  ASSIGN_OR_RETURN(const bool add_prefix_space, GetBool(j, "add_prefix_space", true, where));
  auto it = j.find("prepend_scheme");
  if (it == j.end() || it->is_null()) {
    return add_prefix_space ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  if (!it->is_string()) return Invalid(where, "'prepend_scheme' must be a string");
  const std::string s = it->get<std::string>();
  if (s == "always") return PrependScheme::kAlways;
  if (s == "first") return PrependScheme::kFirst;
  if (s == "never") return PrependScheme::kNever;
  return Invalid(where, absl::StrCat("unknown prepend_scheme '", s, "'"));
}

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const Json& j) {
  constexpr std::string_view kWhere = "normalizer";
  ASSIGN_OR_RETURN(const std::string type, GetType(j, kWhere));
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfc);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfd);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfkc);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::kNfkd);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prefix, GetString(j, "prepend", "Prepend normalizer"));
    return std::make_unique<PrependNormalizer>(std::move(prefix));
  }
  if (type == "Replace") {
    auto it = j.find("pattern");
    if (it == j.end()) return Invalid("Replace normalizer", "'pattern' is missing");
    bool is_regex;
    ASSIGN_OR_RETURN(auto pattern, ParsePattern(*it, "Replace normalizer", &is_regex));
    ASSIGN_OR_RETURN(std::string content, GetString(j, "content", "Replace normalizer"));
    return std::make_unique<ReplaceNormalizer>(std::move(pattern), std::move(content));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(const bool left, GetBool(j, "strip_left", true, "Strip normalizer"));
    ASSIGN_OR_RETURN(const bool right, GetBool(j, "strip_right", true, "Strip normalizer"));
    return std::make_unique<StripNormalizer>(left, right);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, GetArray(j, "normalizers", "Sequence normalizer"));
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const Json& step : *list) {
      ASSIGN_OR_RETURN(auto n, ParseNormalizer(step));
      steps.push_back(std::move(n));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  return Unsupported(kWhere, type);
}

// Flattens nested Sequence pre-tokenizers into `types` (to check where ByteLevel sits).
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const Json& j,
                                                                std::vector<std::string>* types) {
  constexpr std::string_view kWhere = "pre_tokenizer";
  ASSIGN_OR_RETURN(const std::string type, GetType(j, kWhere));
  if (type != "Sequence") types->push_back(type);
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(const bool prefix, GetBool(j, "add_prefix_space", true, "ByteLevel"));
    ASSIGN_OR_RETURN(const bool use_regex, GetBool(j, "use_regex", true, "ByteLevel"));
    std::unique_ptr<Pattern> regex;
    if (use_regex) {
      ASSIGN_OR_RETURN(regex, Pattern::Regex(kGpt2Pattern));
    }
    return std::make_unique<ByteLevelPreTokenizer>(prefix, std::move(regex));
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(const char32_t replacement, GetChar(j, "replacement", "Metaspace"));
    ASSIGN_OR_RETURN(const PrependScheme scheme, ParsePrependScheme(j, "Metaspace"));
    ASSIGN_OR_RETURN(const bool split, GetBool(j, "split", true, "Metaspace"));
    return std::make_unique<MetaspacePreTokenizer>(replacement, scheme, split);
  }
  if (type == "Split") {
    auto it = j.find("pattern");
    if (it == j.end()) return Invalid("Split pre_tokenizer", "'pattern' is missing");
    bool is_regex;
    ASSIGN_OR_RETURN(auto pattern, ParsePattern(*it, "Split pre_tokenizer", &is_regex));
    ASSIGN_OR_RETURN(const std::string b, GetString(j, "behavior", "Split pre_tokenizer"));
    SplitBehavior behavior;
    if (b == "Removed") {
      behavior = SplitBehavior::kRemoved;
    } else if (b == "Isolated") {
      behavior = SplitBehavior::kIsolated;
    } else if (b == "MergedWithPrevious") {
      behavior = SplitBehavior::kMergedWithPrevious;
    } else if (b == "MergedWithNext") {
      behavior = SplitBehavior::kMergedWithNext;
    } else if (b == "Contiguous") {
      behavior = SplitBehavior::kContiguous;
    } else {
      return Invalid("Split pre_tokenizer", absl::StrCat("unknown behavior '", b, "'"));
    }
    ASSIGN_OR_RETURN(const bool invert, GetBool(j, "invert", false, "Split pre_tokenizer"));
    return std::make_unique<SplitPreTokenizer>(std::move(pattern), behavior, invert);
  }
  if (type == "Digits") {
    ASSIGN_OR_RETURN(const bool individual, GetBool(j, "individual_digits", false, "Digits"));
    return std::make_unique<DigitsPreTokenizer>(individual);
  }
  if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPreTokenizer>();
  if (type == "Whitespace") {
    // `tokenizers` compiles this one with Rust's regex crate: \w and \s are UTS #18's.
    ASSIGN_OR_RETURN(
        auto pattern,
        Pattern::Pcre2(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]+|)"
                       R"([^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}\p{White_Space}]+)"));
    return std::make_unique<WhitespacePreTokenizer>(std::move(pattern));
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, GetArray(j, "pretokenizers", "Sequence pre_tokenizer"));
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const Json& step : *list) {
      ASSIGN_OR_RETURN(auto p, ParsePreTokenizer(step, types));
      steps.push_back(std::move(p));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  return Unsupported(kWhere, type);
}

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j) {
  constexpr std::string_view kWhere = "decoder";
  ASSIGN_OR_RETURN(const std::string type, GetType(j, kWhere));
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(const char32_t replacement, GetChar(j, "replacement", "Metaspace decoder"));
    ASSIGN_OR_RETURN(const PrependScheme scheme, ParsePrependScheme(j, "Metaspace decoder"));
    return std::make_unique<MetaspaceDecoder>(replacement, scheme);
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    ASSIGN_OR_RETURN(const char32_t content, GetChar(j, "content", "Strip decoder"));
    ASSIGN_OR_RETURN(const int64_t start, GetInt(j, "start", "Strip decoder"));
    ASSIGN_OR_RETURN(const int64_t stop, GetInt(j, "stop", "Strip decoder"));
    if (start < 0 || stop < 0 || start > INT32_MAX || stop > INT32_MAX) {
      return Invalid("Strip decoder", "start/stop must be in [0, 2^31)");
    }
    return std::make_unique<StripDecoder>(content, static_cast<int>(start), static_cast<int>(stop));
  }
  if (type == "Replace") {
    auto it = j.find("pattern");
    if (it == j.end()) return Invalid("Replace decoder", "'pattern' is missing");
    bool is_regex;
    ASSIGN_OR_RETURN(auto pattern, ParsePattern(*it, "Replace decoder", &is_regex));
    ASSIGN_OR_RETURN(std::string content, GetString(j, "content", "Replace decoder"));
    return std::make_unique<ReplaceDecoder>(std::move(pattern), is_regex, std::move(content));
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, GetArray(j, "decoders", "Sequence decoder"));
    std::vector<std::unique_ptr<Decoder>> steps;
    for (const Json& step : *list) {
      ASSIGN_OR_RETURN(auto d, ParseDecoder(step));
      steps.push_back(std::move(d));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  return Unsupported(kWhere, type);
}

// The ids of a special token named in a post-processor, checked against `special_tokens`.
absl::StatusOr<std::vector<int32_t>> TemplateSpecialIds(const Json& special_tokens,
                                                        const std::string& name) {
  auto it = special_tokens.find(name);
  if (it == special_tokens.end() || !it->is_object()) {
    return Invalid("TemplateProcessing",
                   absl::StrCat("special token '", name, "' is not in special_tokens"));
  }
  ASSIGN_OR_RETURN(const Json* ids, GetArray(*it, "ids", "TemplateProcessing special token"));
  std::vector<int32_t> out;
  for (const Json& id : *ids) {
    ASSIGN_OR_RETURN(const int32_t v, TokenId(id, "TemplateProcessing"));
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const Json& j) {
  constexpr std::string_view kWhere = "post_processor";
  ASSIGN_OR_RETURN(const std::string type, GetType(j, kWhere));
  if (type == "ByteLevel") return std::make_unique<IdentityPostProcessor>();
  if (type == "TemplateProcessing") {
    ASSIGN_OR_RETURN(const Json* single, GetArray(j, "single", "TemplateProcessing"));
    const Json empty = Json::object();
    auto st = j.find("special_tokens");
    const Json& special_tokens = st != j.end() && st->is_object() ? *st : empty;
    std::vector<int32_t> prefix, suffix;
    int sequences = 0;
    for (const Json& piece : *single) {
      if (piece.contains("Sequence")) {
        ++sequences;
        continue;
      }
      auto sp = piece.find("SpecialToken");
      if (sp == piece.end() || !sp->is_object()) {
        return Invalid("TemplateProcessing",
                       "a 'single' piece is neither Sequence nor "
                       "SpecialToken");
      }
      ASSIGN_OR_RETURN(const std::string name, GetString(*sp, "id", "TemplateProcessing"));
      ASSIGN_OR_RETURN(std::vector<int32_t> ids, TemplateSpecialIds(special_tokens, name));
      auto& dst = sequences == 0 ? prefix : suffix;
      dst.insert(dst.end(), ids.begin(), ids.end());
    }
    if (sequences != 1) {
      return Invalid("TemplateProcessing", "the 'single' template must hold $A exactly once");
    }
    return std::make_unique<TemplatePostProcessor>(std::move(prefix), std::move(suffix));
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    std::vector<int32_t> ids[2];
    const char* keys[2] = {"cls", "sep"};
    for (int k = 0; k < 2; ++k) {
      auto it = j.find(keys[k]);
      if (it == j.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer()) {
        return Invalid(type, absl::StrCat("'", keys[k], "' must be [token, id]"));
      }
      ASSIGN_OR_RETURN(const int32_t id, TokenId((*it)[1], type));
      ids[k].push_back(id);
    }
    return std::make_unique<TemplatePostProcessor>(ids[0], ids[1]);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const Json* list, GetArray(j, "processors", "Sequence post_processor"));
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (const Json& step : *list) {
      ASSIGN_OR_RETURN(auto p, ParsePostProcessor(step));
      steps.push_back(std::move(p));
    }
    return std::make_unique<SequencePostProcessor>(std::move(steps));
  }
  return Unsupported(kWhere, type);
}

absl::StatusOr<std::unique_ptr<BpeModel>> ParseModel(const Json& j, bool byte_level) {
  constexpr std::string_view kWhere = "model";
  if (!j.is_object()) return Invalid(kWhere, "must be an object");
  std::string type = "BPE";  // old files leave the type out
  if (auto it = j.find("type"); it != j.end()) {
    if (!it->is_string()) return Invalid(kWhere, "'type' must be a string");
    type = it->get<std::string>();
  }
  if (type != "BPE") return Unsupported(kWhere, type);
  if (auto it = j.find("dropout"); it != j.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() != 0.0) {
      return Invalid("BPE model", "dropout is not supported (encoding must be deterministic)");
    }
  }
  BpeConfig config;
  config.byte_level = byte_level;
  auto vocab = j.find("vocab");
  if (vocab == j.end() || !vocab->is_object())
    return Invalid("BPE model", "'vocab' must be an object");
  config.vocab.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    ASSIGN_OR_RETURN(const int32_t id, TokenId(it.value(), "BPE model vocab"));
    config.vocab.emplace_back(it.key(), id);
  }
  ASSIGN_OR_RETURN(const Json* merges, GetArray(j, "merges", "BPE model"));
  config.merges.reserve(merges->size());
  for (const Json& m : *merges) {
    if (m.is_string()) {
      // "a b": exactly one space, as `tokenizers` requires.
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return Invalid("BPE model", absl::StrCat("bad merge '", s, "'"));
      }
      config.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      config.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return Invalid("BPE model", "a merge must be \"a b\" or [\"a\", \"b\"]");
    }
  }
  auto optional_string = [&j](const char* key) -> absl::StatusOr<std::string> {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return std::string();
    if (!it->is_string()) return Invalid("BPE model", absl::StrCat("'", key, "' must be a string"));
    return it->get<std::string>();
  };
  ASSIGN_OR_RETURN(std::string unk, optional_string("unk_token"));
  if (auto it = j.find("unk_token"); it != j.end() && it->is_string()) config.unk_token = unk;
  ASSIGN_OR_RETURN(config.continuing_subword_prefix, optional_string("continuing_subword_prefix"));
  ASSIGN_OR_RETURN(config.end_of_word_suffix, optional_string("end_of_word_suffix"));
  ASSIGN_OR_RETURN(config.fuse_unk, GetBool(j, "fuse_unk", false, "BPE model"));
  ASSIGN_OR_RETURN(config.byte_fallback, GetBool(j, "byte_fallback", false, "BPE model"));
  ASSIGN_OR_RETURN(config.ignore_merges, GetBool(j, "ignore_merges", false, "BPE model"));
  auto model = BpeModel::Create(std::move(config));
  if (!model.ok()) return Invalid("BPE model", std::string(model.status().message()));
  return model;
}

absl::StatusOr<std::vector<AddedToken>> ParseAddedTokens(const Json& root) {
  std::vector<AddedToken> out;
  auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return out;
  if (!it->is_array()) return Invalid("added_tokens", "must be an array");
  for (const Json& t : *it) {
    constexpr std::string_view kWhere = "added_tokens";
    if (!t.is_object()) return Invalid(kWhere, "each entry must be an object");
    AddedToken token;
    auto id = t.find("id");
    if (id == t.end()) return Invalid(kWhere, "'id' must be an integer");
    ASSIGN_OR_RETURN(token.id, TokenId(*id, kWhere));
    ASSIGN_OR_RETURN(token.content, GetString(t, "content", kWhere));
    ASSIGN_OR_RETURN(token.special, GetBool(t, "special", false, kWhere));
    ASSIGN_OR_RETURN(token.single_word, GetBool(t, "single_word", false, kWhere));
    ASSIGN_OR_RETURN(token.lstrip, GetBool(t, "lstrip", false, kWhere));
    ASSIGN_OR_RETURN(token.rstrip, GetBool(t, "rstrip", false, kWhere));
    ASSIGN_OR_RETURN(token.normalized, GetBool(t, "normalized", !token.special, kWhere));
    out.push_back(std::move(token));
  }
  return out;
}

// The first special added token whose content is one of `names`.
std::optional<int32_t> FindNamedToken(const AddedVocabulary& added,
                                      std::initializer_list<std::string_view> names) {
  for (std::string_view name : names) {
    for (const AddedToken& t : added.tokens()) {
      if (t.special && t.content == name) return t.id;
    }
  }
  return std::nullopt;
}

}  // namespace

class TokenizerBuilder {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Build(const Json& root,
                                                          const LoadOptions& options);
};

absl::StatusOr<std::unique_ptr<Tokenizer>> TokenizerBuilder::Build(const Json& root,
                                                                   const LoadOptions& options) {
  if (!root.is_object()) return Invalid("top level", "must be an object");
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  if (auto it = root.find("normalizer"); it != root.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(tok->normalizer_, ParseNormalizer(*it));
  }
  bool byte_level = false;
  if (auto it = root.find("pre_tokenizer"); it != root.end() && !it->is_null()) {
    std::vector<std::string> types;
    ASSIGN_OR_RETURN(tok->pre_tokenizer_, ParsePreTokenizer(*it, &types));
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] != "ByteLevel") continue;
      // The model then works on raw bytes; a later step would see mapped characters.
      if (i + 1 != types.size()) {
        return Invalid("pre_tokenizer",
                       absl::StrCat("unsupported: ByteLevel followed by ", types[i + 1]));
      }
      byte_level = true;
    }
  }
  auto model = root.find("model");
  if (model == root.end()) return Invalid("top level", "'model' is missing");
  ASSIGN_OR_RETURN(tok->model_, ParseModel(*model, byte_level));
  if (auto it = root.find("post_processor"); it != root.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(tok->post_processor_, ParsePostProcessor(*it));
  }
  if (auto it = root.find("decoder"); it != root.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(tok->decoder_, ParseDecoder(*it));
    tok->decoder_->Prepare(/*fused_before=*/false, tok->stream_traits_.get());
  }
  ASSIGN_OR_RETURN(std::vector<AddedToken> added, ParseAddedTokens(root));
  int32_t max_id = tok->model_->id_limit() - 1;
  for (const AddedToken& t : added) max_id = std::max(max_id, t.id);
  tok->vocab_size_ = max_id + 1;
  tok->added_ = std::make_unique<AddedVocabulary>(std::move(added), tok->normalizer_.get());

  if (tok->stream_traits_->byte_fallback) {
    tok->byte_fallback_token_.resize(static_cast<size_t>(tok->vocab_size_));
    uint8_t b;
    for (int32_t id = 0; id < tok->vocab_size_; ++id) {
      tok->byte_fallback_token_[id] = ParseByteToken(tok->IdToToken(id), &b);
    }
  }

  if (dynamic_cast<const ByteLevelDecoder*>(tok->decoder_.get()) != nullptr) {
    tok->byte_level_bytes_.resize(static_cast<size_t>(tok->vocab_size_));
    for (int32_t id = 0; id < tok->vocab_size_; ++id) {
      const std::string_view token = tok->IdToToken(id);
      std::string& bytes = tok->byte_level_bytes_[id];
      // As the decoder does: a token outside the alphabet contributes its own bytes.
      if (!ByteLevelToBytes(token, &bytes)) bytes.assign(token);
    }
  }

  // BOS/EOS: what the post-processor puts around a sequence, else well-known names.
  if (tok->post_processor_ != nullptr) {
    const std::vector<int32_t> prefix = tok->post_processor_->Prefix();
    const std::vector<int32_t> suffix = tok->post_processor_->Suffix();
    if (prefix.size() == 1) tok->bos_id_ = prefix[0];
    if (suffix.size() == 1) tok->eos_id_ = suffix[0];
  }
  if (!tok->bos_id_) {
    tok->bos_id_ =
        FindNamedToken(*tok->added_, {"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"});
  }
  if (!tok->eos_id_) {
    tok->eos_id_ =
        FindNamedToken(*tok->added_, {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"});
  }
  if (options.bos_id) tok->bos_id_ = options.bos_id;
  if (options.eos_id) tok->eos_id_ = options.eos_id;
  return tok;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json,
                                                               const LoadOptions& options) {
  Json root = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Invalid("top level", "not valid JSON");
  try {
    return TokenizerBuilder::Build(root, options);
  } catch (const Json::exception& e) {
    // Defensive: no nlohmann exception may cross the API.
    return Invalid("top level", e.what());
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path,
                                                               const LoadOptions& options) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  auto tok = FromJson(buffer.str(), options);
  if (!tok.ok()) {
    return absl::Status(tok.status().code(), absl::StrCat(path, ": ", tok.status().message()));
  }
  return tok;
}

}  // namespace spanserve::tokenizer
