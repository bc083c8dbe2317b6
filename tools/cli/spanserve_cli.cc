// spanserve-cli: the offline front end of the runtime. Loads a model directory and
//   generate    greedy-generates from a text prompt, streaming the text, and prints tokens/s;
//   perplexity  scores a text file (non-overlapping windows, as tools/train/eval_perplexity.py);
//   expert-load runs a text through an MoE model and prints the tokens routed to each expert
//               of each layer, with each layer's balancedness (mean/max) and coefficient
//               of variation;
//   info        prints the model's configuration and size.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "runtime/loader/model_source.h"
#include "runtime/model/model.h"
#include "runtime/model/perplexity.h"
#include "runtime/tokenizer/streaming.h"
#include "runtime/tokenizer/tokenizer.h"

ABSL_FLAG(std::string, model, "models/spanserve-span-12l", "model directory or .gguf file");
ABSL_FLAG(std::string, prompt, "In the beginning", "generate: the prompt text");
ABSL_FLAG(int, max_tokens, 64, "generate: tokens to generate");
ABSL_FLAG(std::string, text, "", "perplexity: the text file to score");
ABSL_FLAG(int, window, 256, "perplexity: tokens per scored window");
ABSL_FLAG(int, threads, 0, "compute threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu",
          "compute device: cpu, cuda (the CUDA backend plugin, libspanserve_cuda.so), or auto");
ABSL_FLAG(std::string, compute_dtype, "auto",
          "activations in products with bf16 weights: auto or f32 (exact), or bf16 (AVX512_BF16 "
          "dot products)");
ABSL_FLAG(bool, int8_dot, false,
          "activations quantized to 8-bit blocks for integer dot products with Q8_0/Q4_0/Q4_1/"
          "Q5_0/Q5_1/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_NL GGUF weights: faster quantized decode, not "
          "bit-exact");

namespace spanserve {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Resident set size of this process in MiB (Linux), or -1.
double RssMiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

struct Loaded {
  std::unique_ptr<model::Model> model;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
};

// The model and its tokenizer (through LoadModelSource: a directory or a .gguf file).
absl::StatusOr<Loaded> LoadAll(bool need_tokenizer = true) {
  const std::string path = absl::GetFlag(FLAGS_model);
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(const DType compute_dtype,
                   model::ParseF32OrBf16(absl::GetFlag(FLAGS_compute_dtype), "compute_dtype"));
  ASSIGN_OR_RETURN(loader::ModelSource source,
                   loader::LoadModelSource(path, {.device = absl::GetFlag(FLAGS_device),
                                                  .num_threads = absl::GetFlag(FLAGS_threads),
                                                  .compute_dtype = compute_dtype,
                                                  .int8_dot = absl::GetFlag(FLAGS_int8_dot)}));
  if (need_tokenizer && source.tokenizer == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(path, " has no tokenizer"));
  }
  Loaded l{std::move(source.model), std::move(source.tokenizer)};
  std::fprintf(stderr, "loaded %s (%s): %s, %d layers, %.2fM parameters, in %.3f s; RSS %.0f MiB\n",
               path.c_str(), source.format.c_str(),
               std::string(model::NormPlacementName(l.model->config().norm_placement)).c_str(),
               l.model->config().num_layers, l.model->num_parameters() / 1e6,
               Seconds(t0, Clock::now()), RssMiB());
  return l;
}

// Blocks 0..n-1 for one sequence of up to `tokens` tokens.
std::vector<int32_t> ContiguousTable(int64_t tokens, int32_t block_size) {
  std::vector<int32_t> t((tokens + block_size - 1) / block_size);
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>(i);
  return t;
}

absl::Status Generate() {
  ASSIGN_OR_RETURN(Loaded l, LoadAll());
  const model::ModelConfig& c = l.model->config();
  ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                   l.tokenizer->Encode(absl::GetFlag(FLAGS_prompt), /*add_special_tokens=*/true));
  if (ids.empty()) return absl::InvalidArgumentError("the prompt encodes to no tokens");
  const int64_t max_len =
      std::min<int64_t>(c.MaxPositions(), ids.size() + absl::GetFlag(FLAGS_max_tokens));
  if (static_cast<int64_t>(ids.size()) >= max_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prompt has ", ids.size(), " tokens; the context holds ", max_len));
  }
  constexpr int32_t kBlock = 16;
  const std::vector<int32_t> table = ContiguousTable(max_len, kBlock);
  ASSIGN_OR_RETURN(auto cache, model::KvCache::Create(l.model->backend(), c, kBlock,
                                                      static_cast<int32_t>(table.size())));
  model::ForwardWorkspace ws(l.model->backend());
  std::vector<float> logits(c.vocab_size);
  tokenizer::StreamingDetokenizer detok(*l.tokenizer, /*skip_special_tokens=*/true);
  std::cout << absl::GetFlag(FLAGS_prompt) << std::flush;

  const auto t0 = Clock::now();
  model::SequenceInput s{ids, 0, table, model::LogitsMode::kLast};
  RETURN_IF_ERROR(l.model->Forward({&s, 1}, *cache, ws, logits.data()));
  const auto t1 = Clock::now();
  const int64_t prompt_tokens = ids.size();
  int64_t generated = 0;
  while (static_cast<int64_t>(ids.size()) < max_len) {
    const int32_t next =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    ids.push_back(next);
    ++generated;
    std::cout << detok.Add(next) << std::flush;
    if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), next) != c.eos_token_ids.end() ||
        static_cast<int64_t>(ids.size()) >= max_len) {
      break;
    }
    s = {std::span<const int32_t>(&ids.back(), 1), static_cast<int32_t>(ids.size() - 1), table,
         model::LogitsMode::kLast};
    RETURN_IF_ERROR(l.model->Forward({&s, 1}, *cache, ws, logits.data()));
  }
  std::cout << detok.Flush() << "\n";
  const auto t2 = Clock::now();
  std::fprintf(stderr,
               "prompt %lld tokens in %.3f s (%.1f tokens/s); generated %lld tokens in %.3f s "
               "(%.1f tokens/s)\n",
               static_cast<long long>(prompt_tokens), Seconds(t0, t1),
               prompt_tokens / Seconds(t0, t1), static_cast<long long>(generated), Seconds(t1, t2),
               generated / std::max(Seconds(t1, t2), 1e-9));
  return absl::OkStatus();
}

absl::Status Perplexity() {
  ASSIGN_OR_RETURN(Loaded l, LoadAll());
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(absl::GetFlag(FLAGS_text)));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                   l.tokenizer->Encode(text, /*add_special_tokens=*/false));
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(const model::PerplexityResult r,
                   model::ScorePerplexity(*l.model, ids, absl::GetFlag(FLAGS_window)));
  const double secs = Seconds(t0, Clock::now());
  std::printf("{\"tokens_scored\": %lld, \"nll_sum\": %.6f, \"perplexity\": %.6f}\n",
              static_cast<long long>(r.tokens_scored), r.nll_sum, r.perplexity);
  std::fprintf(stderr, "scored %lld tokens in %.3f s (%.0f tokens/s)\n",
               static_cast<long long>(r.tokens_scored), secs, r.tokens_scored / secs);
  return absl::OkStatus();
}

absl::Status ExpertLoadReport() {
  ASSIGN_OR_RETURN(Loaded l, LoadAll());
  if (!l.model->config().is_moe()) {
    return absl::FailedPreconditionError("expert-load needs an MoE model");
  }
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(absl::GetFlag(FLAGS_text)));
  ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                   l.tokenizer->Encode(text, /*add_special_tokens=*/false));
  l.model->ResetExpertLoad();
  ASSIGN_OR_RETURN(const model::PerplexityResult r,
                   model::ScorePerplexity(*l.model, ids, absl::GetFlag(FLAGS_window)));
  const model::ExpertLoad& load = l.model->expert_load();
  const int experts = l.model->config().moe.num_experts;
  std::printf("tokens %lld, top-%d; tokens routed to each expert (once per top-k slot)\nlayer",
              static_cast<long long>(ids.size()), l.model->config().moe.top_k);
  for (int e = 0; e < experts; ++e) std::printf(" %8s", absl::StrCat("e", e).c_str());
  std::printf("  balance     cv\n");
  for (size_t i = 0; i < load.layer_ids.size(); ++i) {
    const std::vector<int64_t>& t = load.tokens[i];
    double sum = 0, max = 0, sq = 0;
    for (int64_t v : t) sum += v, max = std::max<double>(max, v), sq += double(v) * v;
    const double mean = sum / experts;
    const double cv = mean > 0 ? std::sqrt(std::max(0.0, sq / experts - mean * mean)) / mean : 0;
    std::printf("%5d", load.layer_ids[i]);
    for (int64_t v : t) std::printf(" %8lld", static_cast<long long>(v));
    std::printf("  %7.3f %6.3f\n", max > 0 ? mean / max : 0.0, cv);
  }
  (void)r;
  return absl::OkStatus();
}

absl::Status Info() {
  ASSIGN_OR_RETURN(Loaded l, LoadAll(/*need_tokenizer=*/false));
  const model::ModelConfig& c = l.model->config();
  std::printf(
      "model_type %s\nplacement %s\nlayers %d\nhidden %d\nheads %d/%d (head_dim %d)\n"
      "vocab %d\nexperts %d (top-%d)\nparameters %lld\nweight_bytes %lld\n",
      c.model_type.c_str(), std::string(model::NormPlacementName(c.norm_placement)).c_str(),
      c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size,
      c.moe.num_experts, c.moe.top_k, static_cast<long long>(l.model->num_parameters()),
      static_cast<long long>(l.model->weight_bytes()));
  return absl::OkStatus();
}

}  // namespace
}  // namespace spanserve

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "spanserve-cli generate|perplexity|expert-load|info --model DIR|FILE.gguf [--prompt TEXT | "
      "--text "
      "FILE]");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const std::string command = args[1];
  absl::Status status;
  if (command == "generate") {
    status = spanserve::Generate();
  } else if (command == "perplexity") {
    status = spanserve::Perplexity();
  } else if (command == "expert-load") {
    status = spanserve::ExpertLoadReport();
  } else if (command == "info") {
    status = spanserve::Info();
  } else {
    std::fprintf(stderr, "unknown command '%s'; usage: %s\n", command.c_str(),
                 absl::ProgramUsageMessage().data());
    return 2;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "error: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
