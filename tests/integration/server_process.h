// Runs the real spanserve-server binary on a free loopback port for an integration test,
// and gives the test gRPC channels to it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

namespace spanserve::testing {

// Whether this build runs under ASan or TSan: a process's RSS is then mostly the sanitizer's
// shadow memory and quarantine, so RSS bounds are asserted only without one (LeakSanitizer
// checks the server at its exit instead).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitizedBuild = true;
#else
inline constexpr bool kSanitizedBuild = false;
#endif

// The resident set of process `pid` in kB (VmRSS); -1 if it cannot be read.
int64_t RssKb(pid_t pid);

// The bundled model with a tokenizer: what the server serves in these tests.
std::string DefaultModelDir();
// A fresh directory under the test's temporary directory.
std::string MakeTempDir(const std::string& name);

class ServerProcess {
 public:
  // Starts spanserve-server with --listen=127.0.0.1:0 plus `args`, waits until it has bound
  // its port and, if `wait_serving`, until health says SERVING. With `default_model` the
  // command line starts with --model=DefaultModelDir() (a later --model wins).
  explicit ServerProcess(std::vector<std::string> args, bool wait_serving = true,
                         bool default_model = true);
  // Kills the server if it still runs.
  ~ServerProcess();

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::shared_ptr<grpc::Channel> Channel() const;
  // SERVING, NOT_SERVING, ... or the RPC's error; `service` "" is the whole server.
  std::string Health(const std::string& service = "") const;
  bool WaitForHealth(const std::string& status, std::chrono::milliseconds timeout) const;
  void Signal(int signal_number) const;
  // Waits for the process to exit; its exit code, or nullopt on timeout / abnormal exit.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  std::string log() const;  // stdout + stderr so far

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  std::string dir_;
};

}  // namespace spanserve::testing
