#include "server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"

namespace spanserve::testing {

std::string DefaultModelDir() {
  return std::string(SPANSERVE_SOURCE_DIR) + "/models/spanserve-span-12l";
}

namespace {

// Every directory MakeTempDir made, removed when the test binary exits (kept when
// SPANSERVE_KEEP_TEST_DIRS is set, to read a server's log after a failure).
class TempDirs {
 public:
  ~TempDirs() {
    if (std::getenv("SPANSERVE_KEEP_TEST_DIRS") != nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& dir : dirs_) {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
  }
  void Add(std::string dir) {
    std::lock_guard<std::mutex> lock(mu_);
    dirs_.push_back(std::move(dir));
  }

 private:
  std::mutex mu_;
  std::vector<std::string> dirs_;
};

TempDirs& AllTempDirs() {
  static TempDirs dirs;
  return dirs;
}

}  // namespace

int64_t RssKb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

std::string MakeTempDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const char* base = std::getenv("TEST_TMPDIR");
  std::string dir = std::string(base ? base : "/tmp") + "/spanserve_it_" +
                    std::to_string(getpid()) + "_" + std::to_string(counter++) + "_" + name;
  mkdir(dir.c_str(), 0700);
  AllTempDirs().Add(dir);
  return dir;
}

ServerProcess::ServerProcess(std::vector<std::string> args, bool wait_serving, bool default_model) {
  dir_ = MakeTempDir("server");
  const std::string port_file = dir_ + "/port";
  std::vector<std::string> argv = {SPANSERVE_SERVER_BIN, "--listen=127.0.0.1:0",
                                   "--port_file=" + port_file, "--threads=1",
                                   "--kv_cache_bytes=67108864"};
  if (default_model) argv.push_back("--model=" + DefaultModelDir());
  argv.insert(argv.end(), args.begin(), args.end());
  pid_ = fork();
  if (pid_ == 0) {
    const int fd = open((dir_ + "/log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(port_file);
    if (in >> port_ && port_ > 0) break;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("spanserve-server exited early:\n" + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (port_ <= 0) throw std::runtime_error("spanserve-server did not bind:\n" + log());
  if (wait_serving && !WaitForHealth("SERVING", std::chrono::seconds(120))) {
    throw std::runtime_error("spanserve-server never became SERVING:\n" + log());
  }
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    // SIGTERM first: the server drains and exits, so a sanitizer build gets to run its
    // exit-time checks (LeakSanitizer); SIGKILL if it does not go within 10 s.
    kill(pid_, SIGTERM);
    if (!Wait(std::chrono::seconds(10)).has_value() && pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // A sanitizer's report in the server's log fails the test that ran it, whatever the
  // test itself saw.
  const std::string text = log();
  for (const char* marker : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                             "WARNING: ThreadSanitizer", "runtime error:"}) {
    if (text.find(marker) != std::string::npos) {
      std::fprintf(stderr, "spanserve-server reported '%s':\n%s\n", marker, text.c_str());
      std::abort();
    }
  }
}

std::shared_ptr<grpc::Channel> ServerProcess::Channel() const {
  // gRPC shares connections between channels to one address through a process-wide pool,
  // with exponential reconnect backoff up to 120 s: one refused attempt could then hide a
  // server that came up a moment later from every later channel. Each channel here keeps
  // its own connection and retries quickly.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address(), grpc::InsecureChannelCredentials(), args);
}

std::string ServerProcess::Health(const std::string& service) const {
  auto stub = grpc::health::v1::Health::NewStub(Channel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return "error " + std::to_string(status.error_code());
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

bool ServerProcess::WaitForHealth(const std::string& status,
                                  std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (Health() == status) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

void ServerProcess::Signal(int signal_number) const {
  if (pid_ > 0) kill(pid_, signal_number);
}

std::optional<int> ServerProcess::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (pid_ > 0 && std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return std::nullopt;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return std::nullopt;
}

std::string ServerProcess::log() const {
  std::ifstream in(dir_ + "/log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace spanserve::testing
