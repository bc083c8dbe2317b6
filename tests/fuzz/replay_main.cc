// A driver that replays a fuzz target's committed seed corpus without libFuzzer, so the
// ordinary (gcc) test builds run every seed as a regression test: the release stage, and the
// ASan + UBSan stage under the sanitizers (tests/fuzz/CMakeLists.txt, ctest FuzzCorpus.*).
// Fuzzing itself, which needs clang's libFuzzer, is scripts/fuzz.
//
// Usage: fuzz_<target>_replay [--max_len=N] PATH...   (a PATH is a file or a folder of
// files). Each input is cut to --max_len bytes (default 8192, scripts/fuzz's -max_len) as
// libFuzzer cuts a corpus it loads. A broken invariant aborts (SPANSERVE_CHECK), which fails
// the test; so does a sanitizer report.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

bool ReadFile(const std::filesystem::path& path, size_t max_len, std::vector<uint8_t>& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (out.size() > max_len) out.resize(max_len);
  return !in.bad();
}

}  // namespace

int main(int argc, char** argv) {
  size_t max_len = 8192;
  std::vector<std::filesystem::path> inputs;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.rfind("--max_len=", 0) == 0) {
      max_len = std::strtoull(argv[i] + 10, nullptr, 10);
      continue;
    }
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(arg, ec)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
      if (ec) {
        std::fprintf(stderr, "replay: cannot list %s: %s\n", argv[i], ec.message().c_str());
        return 2;
      }
      std::sort(files.begin(), files.end());
      inputs.insert(inputs.end(), files.begin(), files.end());
    } else if (std::filesystem::is_regular_file(arg, ec)) {
      inputs.emplace_back(arg);
    } else {
      std::fprintf(stderr, "replay: no such file or folder: %s\n", argv[i]);
      return 2;
    }
  }
  if (inputs.empty()) {
    std::fprintf(stderr, "replay: no inputs (usage: %s [--max_len=N] PATH...)\n", argv[0]);
    return 2;
  }
  std::vector<uint8_t> data;
  for (const auto& path : inputs) {
    if (!ReadFile(path, max_len, data)) {
      std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
      return 2;
    }
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", path.c_str(), data.size());
    // As libFuzzer does, the target gets an allocation of exactly the input's size, so a
    // read past its end is caught by ASan.
    auto copy = std::make_unique<uint8_t[]>(data.size());
    std::copy(data.begin(), data.end(), copy.get());
    LLVMFuzzerTestOneInput(copy.get(), data.size());
  }
  std::printf("replay: %zu inputs, no failure\n", inputs.size());
  return 0;
}
