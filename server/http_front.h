// The OpenAI-compatible HTTP front (--http_address), in the gRPC server's process and on the
// same service: the same models and engines, the same admission (auth as
// `Authorization: Bearer`, draining, header size), validation (bodies become the service's
// own requests at the edge, server/openai_api.h, and take gRPC's path to the engine), the
// same request log, metrics and drain accounting. On cpp-httplib (Debian's
// libcpp-httplib-dev), with TLS from the same --tls_cert / --tls_key as gRPC.
//
//   POST /v1/completions        prompt(s) as text or token ids; stream (SSE), echo, logprobs
//   POST /v1/chat/completions   messages through the model's chat template; stream (SSE)
//   GET  /v1/models             the ready models
//   POST /tokenize, /detokenize as vLLM's server
//   GET  /health                200 once the default model serves, 503 before and while draining
//
// Errors answer {"error": {"message", "type", "param", "code"}} with the HTTP status of the
// gRPC code (openai_api.h). A client that disconnects cancels its requests (the engine frees
// their KV blocks at its next step). Each connection holds one of --http_threads threads
// while it is open; bodies over --max_message_bytes answer 413.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/request.h"
#include "server/openai_api.h"
#include "server/served_model.h"
#include "server/service.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace spanserve::server {

// The engine request for prompt `p` of an OpenAI request, as the HTTP front submits it (each
// of its n choices is a copy, with its own seed): gRPC's ToEngineRequest (with max_tokens 0
// allowed under echo), echo's prompt logprobs and the structured-outputs schema. The errors
// are INVALID_ARGUMENT (and gRPC's for an over-long prompt) naming the field.
absl::StatusOr<engine::Request> OpenAIEngineRequest(const OpenAIRequest& request, size_t p,
                                                    const ServedModel& model);

struct HttpFrontOptions {
  std::string address;  // host:port; port 0 picks a free one
  // Both set: HTTPS with this PEM certificate chain and key.
  std::string tls_cert;
  std::string tls_key;
  int threads = 256;  // connections served at once
  int64_t max_body_bytes = 16 << 20;
  int read_timeout_s = 30;       // a client silent this long mid-request is dropped
  int keep_alive_timeout_s = 5;  // an idle kept-alive connection is closed after this
  // A request's headers must be in within this many seconds of its connection opening (or of
  // the previous response on it being written); a connection that takes longer (a client
  // trickling header lines to hold a thread) is closed.
  int header_timeout_s = 10;
  // CORS (as vLLM's --allowed-origins): the origins whose pages may call from a browser, "*"
  // for any; empty: no CORS headers and no preflight answers.
  std::vector<std::string> allowed_origins;
  // The most logprob entries one response that is not streamed may hold (see
  // kDefaultMaxResponseLogprobs); a request that would pass it is a 400 naming logprobs, at
  // once when its echoed prompts alone pass it. At least 1.
  int64_t max_response_logprobs = kDefaultMaxResponseLogprobs;
};

class HttpFront {
 public:
  // Binds and starts serving on its own threads. The service must outlive the front.
  static absl::StatusOr<std::unique_ptr<HttpFront>> Start(SpanServeService* service,
                                                          const HttpFrontOptions& options);
  ~HttpFront();  // Stop()
  HttpFront(const HttpFront&) = delete;
  HttpFront& operator=(const HttpFront&) = delete;

  int port() const { return port_; }
  // Stops accepting and waits for the connections' threads (requests in flight have been
  // drained or cancelled by then: the service's drain runs first).
  void Stop();

 private:
  HttpFront(SpanServeService* service, std::unique_ptr<httplib::Server> server);
  void Routes();

  // Slow senders: every second the watcher closes the connections whose request headers are
  // not in header_timeout_s after the connection opened or its last response was written
  // (but not those whose bytes wait unread while no thread reads them: they wait for a
  // thread), and those that have sent more than kMaxHeaderBytes of a request's headers (a
  // client sending header lines without end, fast enough that some always wait unread, would
  // otherwise grow the server's memory without bound). While more connections
  // are open than there are threads (idle ones hold threads others wait for: a flood of
  // connections that send nothing, or that trickle headers), that limit is
  // kPressedHeaderTimeout instead for connections not yet served a response (kept-alive ones,
  // which a client's pool reuses, keep theirs).
  // HeadersIn (the headers of a request are in) and Done (its response is written) keep the
  // connections' states, by peer ("address:port").
  static constexpr std::chrono::seconds kPressedHeaderTimeout{1};
  // A connection that has sent more than this of a request's headers (a request line and
  // header lines of up to 8 KiB each, which cpp-httplib keeps without a total bound) is reset
  // at the watcher's next scan.
  static constexpr uint64_t kMaxHeaderBytes = 64 << 10;
  void Watch();
  void HeadersIn(const std::string& peer);
  void Done(const std::string& peer);

  SpanServeService* const service_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  int64_t max_body_bytes_ = 0;                // HttpFrontOptions::max_body_bytes
  int header_timeout_s_ = 10;                 // HttpFrontOptions::header_timeout_s
  int threads_ = 256;                         // HttpFrontOptions::threads
  std::vector<std::string> allowed_origins_;  // HttpFrontOptions::allowed_origins
  int64_t max_response_logprobs_ = kDefaultMaxResponseLogprobs;  // HttpFrontOptions
  bool stopped_ = false;
  struct Connection {
    bool busy = false;    // between a request's headers and its response written
    bool served = false;  // a response was written on it (kept alive since)
    // Busy since (its headers), or idle since (opened, or its last response written).
    std::chrono::steady_clock::time_point since;
    // The watcher's: bytes read from the socket (TcpBytesRead) when it first saw this idle
    // period (`base_since` is the `since` they belong to), and at its last scan.
    std::optional<uint64_t> read_base;
    std::chrono::steady_clock::time_point base_since;
    std::optional<uint64_t> read_last;
  };
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool watch_stop_ = false;
  std::map<std::string, Connection> connections_;
  std::thread watcher_;
};

}  // namespace spanserve::server
