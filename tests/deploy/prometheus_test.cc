// The real server watched the way operators watch it: Debian's prometheus scrapes the real
// spanserve-server (with deploy/prometheus/alerts.yml loaded) and its HTTP API must show
// the workload exactly; and a scrape of the MoE model must export every name that
// deploy/metrics.txt promises (the names the dashboard and the alerts query).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "http_client.h"
#include "server_process.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::testing {
namespace {

namespace v1 = spanserve::v1;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Json = nlohmann::json;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Polls `ready` every 100 ms until it holds or `timeout` passes.
bool PollUntil(const std::function<bool()>& ready, milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(milliseconds(100));
  }
  return ready();
}

// Debian's prometheus on a free loopback port with its own config and TSDB directory;
// stopped (TERM, then KILL) and its directory removed when this goes away.
class PrometheusProcess {
 public:
  // `scrape_configs`: the YAML list under scrape_configs; `rule_file`: "" or a rules file.
  PrometheusProcess(const std::string& scrape_configs, const std::string& rule_file) {
    if (!std::filesystem::exists(PROMETHEUS_BIN)) {
      throw std::runtime_error(std::string("no prometheus binary at '") + PROMETHEUS_BIN +
                               "' (Debian package prometheus; scripts/setup installs it)");
    }
    dir_ = MakeTempDir("prometheus");
    port_ = FreePort();
    std::ofstream(dir_ + "/prometheus.yml")
        << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        << (rule_file.empty() ? "" : "rule_files:\n  - " + rule_file + "\n") << "scrape_configs:\n"
        << scrape_configs;
    std::vector<std::string> argv = {PROMETHEUS_BIN, "--config.file=" + dir_ + "/prometheus.yml",
                                     "--storage.tsdb.path=" + dir_ + "/data",
                                     "--web.listen-address=127.0.0.1:" + std::to_string(port_),
                                     "--log.level=warn"};
    pid_ = fork();
    if (pid_ == 0) {
      FILE* log = std::fopen((dir_ + "/log").c_str(), "w");
      dup2(fileno(log), 1);
      dup2(fileno(log), 2);
      std::vector<char*> cargv;
      for (auto& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      execv(cargv[0], cargv.data());
      _exit(127);
    }
    const bool ready = PollUntil(
        [&] {
          int status = 0;
          if (pid_ > 0 && waitpid(pid_, &status, WNOHANG) == pid_) pid_ = -1;
          return pid_ < 0 || HttpGet(port_, "/-/ready").status == 200;
        },
        seconds(60));
    if (pid_ < 0 || !ready) {
      const std::string why = pid_ < 0 ? "exited" : "was not ready within 60 s";
      const std::string message = "prometheus " + why + ":\n" + log();
      Stop();
      std::error_code ignored;
      std::filesystem::remove_all(dir_, ignored);
      throw std::runtime_error(message);
    }
  }
  ~PrometheusProcess() {
    Stop();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  PrometheusProcess(const PrometheusProcess&) = delete;
  PrometheusProcess& operator=(const PrometheusProcess&) = delete;

  // GET `path` of the HTTP API; the parsed JSON, or null on any failure.
  Json Api(const std::string& target) const {
    const HttpResponse response = HttpGet(port_, target);
    if (response.status != 200) return nullptr;
    Json json = Json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    return json.is_discarded() ? Json(nullptr) : json;
  }
  // The value of an instant query that yields one sample; nullopt if none (yet).
  std::optional<double> Query(const std::string& promql) const {
    const Json json = Api("/api/v1/query?query=" + UrlEncode(promql));
    if (json.is_null() || json.value("status", "") != "success") return std::nullopt;
    const Json& result = json["data"]["result"];
    if (!result.is_array() || result.size() != 1) return std::nullopt;
    return std::stod(result[0]["value"][1].get<std::string>());
  }
  std::string log() const { return ReadFile(dir_ + "/log"); }

 private:
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    const bool exited =
        PollUntil([&] { return waitpid(pid_, nullptr, WNOHANG) == pid_; }, seconds(10));
    if (!exited) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }

  pid_t pid_ = -1;
  int port_ = 0;
  std::string dir_;
};

// Runs one greedy request that generates exactly `max_tokens`; its final info.
v1::FinalInfo Generate(v1::SpanServe::Stub& stub, const std::string& prompt, int max_tokens) {
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text(prompt);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(120));
  auto reader = stub.Generate(&context, r);
  v1::GenerateChunk chunk;
  v1::FinalInfo final;
  while (reader->Read(&chunk)) {
    if (chunk.has_final()) final = chunk.final();
  }
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return final;
}

std::string Sum(const std::string& metric) { return "sum(" + metric + ")"; }

TEST(PrometheusTest, RealPrometheusScrapesTheServerAndSeesTheWorkload) {
  const int metrics_port = FreePort();
  ServerProcess server({"--metrics_address=127.0.0.1:" + std::to_string(metrics_port)});
  PrometheusProcess prometheus(
      "  - job_name: spanserve\n    static_configs:\n      - targets: ['127.0.0.1:" +
          std::to_string(metrics_port) + "']\n",
      std::string(SPANSERVE_SOURCE_DIR) + "/deploy/prometheus/alerts.yml");

  // The target is up and the deployed alert rules loaded.
  std::string targets;
  ASSERT_TRUE(PollUntil(
      [&] {
        const Json json = prometheus.Api("/api/v1/targets");
        targets = json.dump();
        if (json.is_null()) return false;
        const Json& active = json["data"]["activeTargets"];
        return active.size() == 1 && active[0].value("health", "") == "up";
      },
      seconds(30)))
      << "the server's target never came up in Prometheus: " << targets << "\n"
      << prometheus.log();
  const Json rules = prometheus.Api("/api/v1/rules");
  ASSERT_FALSE(rules.is_null());
  std::set<std::string> alerts;
  for (const Json& group : rules["data"]["groups"]) {
    for (const Json& rule : group["rules"]) alerts.insert(rule.value("name", ""));
  }
  EXPECT_EQ(alerts,
            (std::set<std::string>{"SpanServeTargetDown", "SpanServeRequestQueueGrowing",
                                   "SpanServeTimeToFirstTokenP99High", "SpanServeKvCacheNearlyFull",
                                   "SpanServeMoeExpertImbalance"}));

  // A known workload: every request generates exactly kMaxTokens.
  constexpr int kRequests = 6;
  constexpr int kMaxTokens = 5;
  auto stub = v1::SpanServe::NewStub(server.Channel());
  int prompt_tokens = 0;
  for (int i = 0; i < kRequests; ++i) {
    const v1::FinalInfo final =
        Generate(*stub, i % 2 ? "And God said" : "In the beginning", kMaxTokens);
    ASSERT_EQ(final.generated_tokens(), kMaxTokens);
    prompt_tokens += final.prompt_tokens();
  }
  const std::map<std::string, double> expected = {
      {Sum("spanserve_request_success_total"), kRequests},
      {Sum("spanserve_request_success_total{finished_reason=\"length\"}"), kRequests},
      {Sum("spanserve_generation_tokens_total"), kRequests * kMaxTokens},
      {Sum("spanserve_prompt_tokens_total"), prompt_tokens},
      {Sum("spanserve_time_to_first_token_seconds_count"), kRequests},
      {Sum("spanserve_e2e_request_latency_seconds_count"), kRequests},
      {"up{job=\"spanserve\"}", 1},
  };
  for (const auto& [promql, value] : expected) {
    std::optional<double> got;
    EXPECT_TRUE(PollUntil(
        [&] {
          got = prometheus.Query(promql);
          return got == value;
        },
        seconds(30)))
        << promql << ": Prometheus says " << (got ? std::to_string(*got) : "nothing")
        << ", the workload says " << value;
  }
  // Every query of the Grafana dashboard is valid PromQL for this Prometheus (with its
  // variables as Grafana fills them), and the latency panels show the workload.
  const Json dashboard = Json::parse(
      ReadFile(std::string(SPANSERVE_SOURCE_DIR) + "/deploy/grafana/dashboards/spanserve.json"));
  int queries = 0;
  for (const Json& panel : dashboard["panels"]) {
    for (const Json& target : panel.value("targets", Json::array())) {
      std::string expr = target.value("expr", "");
      for (const auto& [var, value] : std::vector<std::pair<std::string, std::string>>{
               {"$model_name", ".*"}, {"$__rate_interval", "1m"}}) {
        for (size_t at; (at = expr.find(var)) != std::string::npos;) {
          expr.replace(at, var.size(), value);
        }
      }
      const Json json = prometheus.Api("/api/v1/query?query=" + UrlEncode(expr));
      EXPECT_FALSE(json.is_null()) << panel.value("title", "") << ": Prometheus rejects " << expr;
      ++queries;
    }
  }
  EXPECT_GT(queries, 20);
  // The dashboard's TTFT panel query yields a finite latency.
  const std::optional<double> p99 = prometheus.Query(
      "histogram_quantile(0.99, sum by (le) (increase("
      "spanserve_time_to_first_token_seconds_bucket[1m])))");
  ASSERT_TRUE(p99.has_value());
  EXPECT_GT(*p99, 0.0);
  EXPECT_LT(*p99, 60.0);
}

// deploy/metrics.txt: "name type [when]"; when = moe (MoE models only), capped (only
// when per-expert series are capped) or opt-in (needs --residual_rms_every_n_steps).
struct ListedMetric {
  std::string type;
  std::string when;
};

std::map<std::string, ListedMetric> ReadMetricsList(const std::string& path) {
  std::map<std::string, ListedMetric> out;
  std::istringstream in(ReadFile(path));
  for (std::string line; std::getline(in, line);) {
    line = line.substr(0, line.find('#'));
    std::istringstream fields(line);
    std::string name;
    ListedMetric m;
    if (fields >> name >> m.type) {
      fields >> m.when;
      out[name] = m;
    }
  }
  return out;
}

std::set<std::string> ReadNames(const std::string& path) {
  std::set<std::string> out;
  std::istringstream in(ReadFile(path));
  for (std::string line; std::getline(in, line);) {
    line = line.substr(0, line.find('#'));
    std::istringstream fields(line);
    std::string name;
    if (fields >> name) out.insert(name);
  }
  return out;
}

// Whether the server binary knows `flag` (its --helpfull lists every flag).
bool ServerHasFlag(const std::string& flag) {
  FILE* pipe = popen((std::string(SPANSERVE_SERVER_BIN) + " --helpfull 2>&1").c_str(), "r");
  std::string help;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) help.append(buf, n);
  pclose(pipe);
  return help.find("-" + flag) != std::string::npos;
}

TEST(PrometheusTest, ServerExportsEveryMetricTheDeploymentQueries) {
  const std::string deploy = std::string(SPANSERVE_SOURCE_DIR) + "/deploy";
  const std::map<std::string, ListedMetric> listed = ReadMetricsList(deploy + "/metrics.txt");
  const std::set<std::string> pending = ReadNames(deploy + "/metrics_pending.txt");
  ASSERT_GT(listed.size(), 10u);
  const bool residual_flag = ServerHasFlag("residual_rms_every_n_steps");

  const int metrics_port = FreePort();
  std::vector<std::string> args = {
      "--model=" + std::string(SPANSERVE_SOURCE_DIR) + "/models/spanserve-span-moe-12l",
      "--metrics_address=127.0.0.1:" + std::to_string(metrics_port)};
  if (residual_flag) args.push_back("--residual_rms_every_n_steps=1");
  ServerProcess server(args);
  auto stub = v1::SpanServe::NewStub(server.Channel());
  for (int i = 0; i < 2; ++i) Generate(*stub, "And God said", 4);

  // Names and types from the scrape's "# TYPE" lines; the engine gauges are polled, so
  // wait until the workload's counters show.
  std::map<std::string, std::string> exported;
  std::string text;
  PollUntil(
      [&] {
        text = HttpGet(metrics_port, "/metrics").body;
        return text.find("spanserve_request_success_total{") != std::string::npos;
      },
      seconds(10));
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    char name[256], type[64];
    if (std::sscanf(line.c_str(), "# TYPE %255s %63s", name, type) == 2) exported[name] = type;
  }

  std::vector<std::string> missing, wrong_type, stale_pending;
  for (const auto& [name, m] : listed) {
    const auto it = exported.find(name);
    if (pending.count(name)) {
      if (it != exported.end()) stale_pending.push_back(name);
      continue;
    }
    if (m.when == "capped" || (m.when == "opt-in" && !residual_flag)) continue;
    if (it == exported.end()) {
      missing.push_back(name);
    } else if (it->second != m.type) {
      wrong_type.push_back(name + " (" + it->second + ", listed " + m.type + ")");
    }
  }
  for (const std::string& name : pending) {
    if (!listed.count(name)) stale_pending.push_back(name + " (not in metrics.txt)");
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += "\n  " + s;
    return out;
  };
  EXPECT_TRUE(missing.empty()) << "deploy/metrics.txt lists names the server does not export:"
                               << join(missing) << "\nscrape:\n"
                               << text;
  EXPECT_TRUE(wrong_type.empty()) << "exported with another type:" << join(wrong_type);
  EXPECT_TRUE(stale_pending.empty())
      << "the server now exports these; delete them from deploy/metrics_pending.txt so the "
         "check requires them:"
      << join(stale_pending);
}

}  // namespace
}  // namespace spanserve::testing
