// Tokenizer throughput: encode MB/s on one thread (cold and warm word cache), decode and
// streaming detokenization rates, and multi-thread encode scaling. A timing program, not a
// test; tools/tokenizer/bench_tokenizer.py runs it beside Hugging Face `tokenizers` on the
// same text and docs/TOKENIZER.md records the figures.
//
//   spanserve_tokenizer_bench --tokenizer=tests/data/tokenizers/smollm2/tokenizer.json
//       [--text=FILE (one input per line) | --inputs=FILE.jsonl.gz] [--passes=5] [--threads=2]
//
// Prints one human-readable line per measurement and a final JSON line.
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/tokenizer/streaming.h"
#include "runtime/tokenizer/tokenizer.h"

namespace {

using spanserve::tokenizer::StreamingDetokenizer;
using spanserve::tokenizer::Tokenizer;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

bool ReadGzip(const std::string& path, std::string* out) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out->append(buf, n);
  gzclose(f);
  return true;
}

std::vector<std::string> SplitLines(const std::string& all) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\n', start);
    if (end == std::string::npos) end = all.size();
    lines.push_back(all.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::string Flag(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind(prefix, 0) == 0) return a.substr(prefix.size());
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string tokenizer_path =
      Flag(argc, argv, "tokenizer", "tests/data/tokenizers/smollm2/tokenizer.json");
  const std::string text_path = Flag(argc, argv, "text", "");
  const std::string inputs_path =
      Flag(argc, argv, "inputs", "tests/data/tokenizers/inputs.jsonl.gz");
  const int passes = std::max(2, std::atoi(Flag(argc, argv, "passes", "5").c_str()));
  const int threads = std::max(1, std::atoi(Flag(argc, argv, "threads", "2").c_str()));

  std::vector<std::string> inputs;
  if (!text_path.empty()) {
    std::ifstream in(text_path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", text_path.c_str());
      return 1;
    }
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    inputs = SplitLines(all);
  } else {
    std::string all;
    if (!ReadGzip(inputs_path, &all)) {
      std::fprintf(stderr, "cannot read %s\n", inputs_path.c_str());
      return 1;
    }
    for (const std::string& line : SplitLines(all)) {
      inputs.push_back(nlohmann::json::parse(line).get<std::string>());
    }
  }
  size_t bytes = 0;
  for (const std::string& s : inputs) bytes += s.size();
  const double mb = static_cast<double>(bytes) / 1e6;

  const auto load_start = Clock::now();
  auto loaded = Tokenizer::FromFile(tokenizer_path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  const double load_s = Seconds(load_start, Clock::now());
  const Tokenizer& tok = **loaded;
  std::printf("tokenizer %s: loaded in %.3f s; %zu inputs, %.3f MB\n", tokenizer_path.c_str(),
              load_s, inputs.size(), mb);

  // Encode, one thread: the first pass fills the word cache, later passes hit it.
  std::vector<std::vector<int32_t>> ids(inputs.size());
  double cold_s = 0, warm_s = 1e30;
  size_t tokens = 0;
  for (int p = 0; p < passes; ++p) {
    const auto t0 = Clock::now();
    for (size_t i = 0; i < inputs.size(); ++i) ids[i] = *tok.Encode(inputs[i], false);
    const double s = Seconds(t0, Clock::now());
    if (p == 0) {
      cold_s = s;
    } else {
      warm_s = std::min(warm_s, s);
    }
  }
  for (const auto& v : ids) tokens += v.size();
  std::printf("encode 1 thread: cold %.2f MB/s, warm %.2f MB/s (%.0f tokens/s)\n", mb / cold_s,
              mb / warm_s, tokens / warm_s);

  double decode_s = 1e30;
  size_t decoded_bytes = 0;
  for (int p = 0; p < passes; ++p) {
    decoded_bytes = 0;
    const auto t0 = Clock::now();
    for (const auto& v : ids) decoded_bytes += tok.Decode(v, false).size();
    decode_s = std::min(decode_s, Seconds(t0, Clock::now()));
  }
  std::printf("decode 1 thread: %.2f MB/s of text (%.0f tokens/s)\n",
              decoded_bytes / 1e6 / decode_s, tokens / decode_s);

  double stream_s = 1e30;
  for (int p = 0; p < passes; ++p) {
    const auto t0 = Clock::now();
    size_t n = 0;
    for (const auto& v : ids) {
      StreamingDetokenizer stream(tok, false);
      for (int32_t id : v) n += stream.Add(id).size();
      n += stream.Flush().size();
    }
    stream_s = std::min(stream_s, Seconds(t0, Clock::now()));
    if (n != decoded_bytes)
      std::fprintf(stderr, "streamed %zu bytes, decoded %zu\n", n, decoded_bytes);
  }
  std::printf("streaming detokenizer: %.0f tokens/s (%.2f us/token)\n", tokens / stream_s,
              1e6 * stream_s / tokens);

  // Encode with `threads` threads sharing the tokenizer (the gRPC handler case).
  double mt_s = 1e30;
  for (int p = 0; p < passes; ++p) {
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        for (size_t i = t; i < inputs.size(); i += threads) (void)tok.Encode(inputs[i], false);
      });
    }
    for (auto& th : pool) th.join();
    mt_s = std::min(mt_s, Seconds(t0, Clock::now()));
  }
  std::printf("encode %d threads: %.2f MB/s (%.2fx one thread)\n", threads, mb / mt_s,
              warm_s / mt_s);

  nlohmann::json result = {{"tokenizer", tokenizer_path},
                           {"bytes", bytes},
                           {"tokens", tokens},
                           {"load_s", load_s},
                           {"encode_cold_mb_s", mb / cold_s},
                           {"encode_warm_mb_s", mb / warm_s},
                           {"decode_tokens_s", tokens / decode_s},
                           {"stream_tokens_s", tokens / stream_s},
                           {"threads", threads},
                           {"encode_threads_mb_s", mb / mt_s}};
  std::printf("%s\n", result.dump().c_str());
  return 0;
}
