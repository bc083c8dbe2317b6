#include "common/cgroup.h"

#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace spanserve {

namespace {

// `root` + `path` and every ancestor of `path` up to `root` itself.
void AddGroupAndAncestors(const std::string& root, std::string path,
                          std::vector<std::string>* dirs) {
  while (true) {
    dirs->push_back(root + (path == "/" ? std::string() : path));
    if (path.empty() || path == "/") return;
    path = path.substr(0, path.rfind('/'));
  }
}

}  // namespace

std::vector<std::string> CgroupDirs(std::string_view controller) {
  std::vector<std::string> dirs;
  std::ifstream self("/proc/self/cgroup");
  std::string line;
  while (std::getline(self, line)) {
    // "0::/path" (v2) or "N:cpu,cpuacct:/path" (v1, mounted as /sys/fs/cgroup/cpu,cpuacct).
    const std::vector<std::string> fields = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (fields.size() != 3) continue;
    if (fields[0] == "0" && fields[1].empty()) {
      AddGroupAndAncestors("/sys/fs/cgroup", fields[2], &dirs);
      continue;
    }
    const std::vector<std::string> names = absl::StrSplit(fields[1], ',');
    for (const std::string& name : names) {
      if (name == controller) AddGroupAndAncestors("/sys/fs/cgroup/" + fields[1], fields[2], &dirs);
    }
  }
  return dirs;
}

std::optional<double> ReadCgroupNumber(const std::string& path, int index) {
  std::ifstream in(path);
  std::string word;
  for (int i = 0; i <= index; ++i) {
    if (!(in >> word)) return std::nullopt;
  }
  double value = 0;
  if (!absl::SimpleAtod(word, &value)) return std::nullopt;  // "max": no limit
  return value;
}

}  // namespace spanserve
