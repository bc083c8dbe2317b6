// spanserve-server: serves one or more models over gRPC (proto/spanserve/v1) with the
// standard health and reflection services.
//
// Lifecycle: listen at once with health NOT_SERVING; load and warm the models one after
// another (each with its own engine and KV pool); health turns SERVING once the default
// model (the first listed) is ready — the others may still be loading, and calls naming
// them answer UNAVAILABLE until they are. A model that fails to load is logged, reported
// by GetModelInfo, and calls naming it answer FAILED_PRECONDITION with its error; the other
// models keep serving (if the default model fails, the server exits with status 1).
// Loading itself is model_loading.h; this file reads the flags and runs the server.
// On SIGTERM/SIGINT: NOT_SERVING, new calls get UNAVAILABLE, in-flight calls get
// --drain_grace_s to finish, the rest are cancelled, exit 0.
#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/container/flat_hash_set.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"
#include "runtime/engine/block_manager.h"
#include "runtime/engine/engine.h"
#include "runtime/loader/model_source.h"
#include "runtime/model/model.h"
#include "server/http_front.h"
#include "server/model_loading.h"
#include "server/service.h"

ABSL_FLAG(std::string, config, "",
          "JSON file of flag values ({\"listen\": \"0.0.0.0:50051\", ...}); \"model\" may also "
          "be a list of \"[NAME=]PATH\" strings or {\"name\": ..., \"path\": ...} objects; flags "
          "given on the command line win");
ABSL_FLAG(std::string, model, "models/spanserve-span-12l",
          "the served models: a comma-separated list of [NAME=]PATH, each PATH a model "
          "directory (config.json, model.safetensors, tokenizer.json) or a .gguf file; NAME "
          "defaults to the directory / file name. The first is the default model");
ABSL_FLAG(std::string, device, "cpu",
          "compute device: cpu, cuda (the CUDA backend, plugin libspanserve_cuda.so: needs an "
          "NVIDIA GPU, its driver, and the CUDA runtime and cuBLAS libraries), or auto (cuda "
          "when all of that is present, else cpu)");
ABSL_FLAG(int, threads, 0,
          "model compute threads, the calling thread included; at most the CPUs this process "
          "may use (affinity, cgroup CPU limit); 0: all of those");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "gRPC bind address host:port (port 0 picks a free one; see --port_file)");
ABSL_FLAG(std::string, metrics_address, "",
          "serve Prometheus text on http://<this>/metrics (host:port; empty: off)");
ABSL_FLAG(double, metrics_expert_window_s, 60,
          "MoE balance gauges (spanserve_moe_layer_balancedness / _load_cv) cover this many "
          "seconds");
ABSL_FLAG(int, metrics_max_expert_series, 4096,
          "above this many MoE layers x experts, export spanserve_moe_layer_tokens_total per "
          "layer instead of spanserve_moe_expert_tokens_total per expert");
ABSL_FLAG(int, metrics_poll_interval_ms, 1000,
          "refresh engine metrics this often (a scrape refreshes them too)");
ABSL_FLAG(int, residual_rms_every_n_steps, 0,
          "every N engine steps record each block's output RMS as spanserve_residual_rms "
          "(0: off)");
ABSL_FLAG(std::string, port_file, "", "write the bound port here once listening");
ABSL_FLAG(std::string, http_address, "",
          "serve the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
          "/v1/models, /tokenize, /detokenize, /health) on host:port, beside gRPC and with "
          "its auth, TLS, limits and drain (empty: off; port 0 picks a free one, see "
          "--http_port_file)");
ABSL_FLAG(int, http_threads, 256,
          "HTTP connections served at once (each open connection, streaming or idle "
          "keep-alive, holds one thread)");
ABSL_FLAG(std::string, allowed_origins, "*",
          "CORS: the web origins (scheme://host[:port], comma-separated) whose pages may call "
          "the HTTP front from a browser, or * for any, as vLLM's --allowed-origins (empty: "
          "no CORS headers, and preflights are not answered)");
ABSL_FLAG(int64_t, max_response_logprobs, spanserve::server::kDefaultMaxResponseLogprobs,
          "the most logprob entries (tokens and their alternatives) one HTTP response that is "
          "not streamed may hold, all kept until it is written (about 60 bytes each); a "
          "request that would pass it is a 400 naming logprobs (streamed responses hold only "
          "each event's)");
ABSL_FLAG(int, http_header_timeout_s, 10,
          "an HTTP request's headers must be in within this many seconds of its connection "
          "opening (or of the previous response on it); a connection that takes longer (a "
          "client trickling header lines to hold a thread) is closed");
ABSL_FLAG(std::string, http_port_file, "", "write the bound HTTP port here once listening");
ABSL_FLAG(int64_t, kv_cache_bytes, 0,
          "KV memory of all models together in bytes, split evenly between the models that "
          "load (0: --kv_cache_memory_fraction of available memory)");
ABSL_FLAG(double, kv_cache_memory_fraction, 0.1,
          "KV memory of all models together as a fraction of MemAvailable at start-up, split "
          "evenly between the models that load");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "element type of the cached K and V: auto or f32 (exact), or bf16 (half the memory "
          "per token and half the attention reads; each cached value rounded to bf16)");
ABSL_FLAG(std::string, compute_dtype, "auto",
          "activations in products with bf16 weight matrices: auto or f32 (exact), or bf16 "
          "(rounded to bf16 for the CPU's bf16 dot products, AVX512_BF16: about twice the "
          "batched decode and prefill rate)");
ABSL_FLAG(bool, int8_dot, false,
          "activations quantized to 8-bit blocks for integer dot products with Q8_0/Q4_0/Q4_1/"
          "Q5_0/Q5_1/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_NL GGUF weights: faster quantized decode, not "
          "bit-exact");
ABSL_FLAG(std::string, reasoning_parser, "none",
          "chat answers of reasoning models: none (the <think> text stays in content), auto "
          "(split where the model's chat template writes </think>), or deepseek_r1 / qwen3 "
          "(split for every model): the thinking goes to reasoning_content");
ABSL_FLAG(int, num_kv_blocks, 0,
          "KV pool size in blocks of each model (wins over the byte sizes if > 0)");
ABSL_FLAG(int, max_num_seqs, 64, "most sequences in one engine step");
ABSL_FLAG(int, max_batched_tokens, 1024, "most tokens in one engine step");
ABSL_FLAG(int, max_model_len, 0, "context length (0: the model's)");
ABSL_FLAG(int, max_waiting_requests, 1024,
          "queue limit: requests waiting beyond this get RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain; with --tls_key enables TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key");
ABSL_FLAG(std::string, auth_token, "",
          "if set, calls must carry 'authorization: Bearer <token>' (health and reflection "
          "stay open for probes)");
ABSL_FLAG(std::string, auth_token_file, "", "read the bearer token from this file");
ABSL_FLAG(int, max_message_bytes, 16 << 20, "largest gRPC message received or sent");
ABSL_FLAG(int, max_metadata_bytes, 8 << 10,
          "largest metadata (headers) of a call, keys + values + 32 bytes an entry; a call "
          "over it answers RESOURCE_EXHAUSTED alone (the transport takes up to 9 MiB, so an "
          "oversized call never ends the other calls on its connection)");
ABSL_FLAG(double, drain_grace_s, 30.0,
          "on SIGTERM/SIGINT: seconds in-flight calls get to finish before being cancelled");
ABSL_FLAG(double, debug_load_delay_s, 0,
          "testing aid: wait this long before loading the models (health stays NOT_SERVING)");

namespace spanserve::server {
namespace {

// --allowed_origins: comma-separated, each trimmed; blanks dropped.
std::vector<std::string> AllowedOrigins(const std::string& flag) {
  std::vector<std::string> out;
  for (absl::string_view origin : absl::StrSplit(flag, ',')) {
    origin = absl::StripAsciiWhitespace(origin);
    if (!origin.empty()) out.emplace_back(origin);
  }
  return out;
}

constexpr char kServiceName[] = "spanserve.v1.SpanServe";
// The transport's metadata limit (GRPC_ARG_MAX_METADATA_SIZE): see where it is set.
constexpr int kTransportMetadataBytes = 9 << 20;

void Log(const std::string& message) {
  std::fprintf(stderr, "spanserve-server: %s\n", message.c_str());
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The config file's "model" may be a list of "[name=]path" strings or {"name", "path"}
// objects; this turns it into --model's comma-separated form.
absl::StatusOr<std::string> ModelListFromJson(const nlohmann::json& list) {
  std::vector<std::string> entries;
  for (size_t i = 0; i < list.size(); ++i) {
    const nlohmann::json& entry = list[i];
    if (entry.is_string()) {
      entries.push_back(entry.get<std::string>());
    } else if (entry.is_object() && entry.contains("path") && entry["path"].is_string()) {
      const std::string name = entry.value("name", std::string());
      entries.push_back(name.empty() ? entry["path"].get<std::string>()
                                     : absl::StrCat(name, "=", entry["path"].get<std::string>()));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("[", i, "]: expected \"[name=]path\" or {\"name\": ..., \"path\": ...}"));
    }
  }
  return absl::StrJoin(entries, ",");
}

// --model: "[name=]path,[name=]path,...". Names must be unique and non-empty.
absl::StatusOr<std::vector<ModelSpec>> ParseModelList(const std::string& flag) {
  std::vector<ModelSpec> specs;
  absl::flat_hash_set<std::string> names;
  for (absl::string_view entry : absl::StrSplit(flag, ',', absl::SkipWhitespace())) {
    entry = absl::StripAsciiWhitespace(entry);
    ModelSpec spec;
    if (const size_t eq = entry.find('='); eq != absl::string_view::npos) {
      spec.name = std::string(absl::StripAsciiWhitespace(entry.substr(0, eq)));
      spec.path = std::string(absl::StripAsciiWhitespace(entry.substr(eq + 1)));
    } else {
      spec.path = std::string(entry);
      spec.name = loader::DefaultModelName(spec.path);
    }
    if (spec.path.empty() || spec.name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--model: '", entry, "': expected [NAME=]PATH with both non-empty"));
    }
    if (!names.insert(spec.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--model: the name '", spec.name, "' is given twice; name the models: NAME=PATH"));
    }
    specs.push_back(std::move(spec));
  }
  if (specs.empty()) return absl::InvalidArgumentError("--model: no model given");
  return specs;
}

// Applies --config before the command line is parsed, so command-line flags override it.
absl::Status ApplyConfigFile(int argc, char** argv) {
  std::string path;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (absl::StartsWith(arg, "--config=")) path = std::string(arg.substr(9));
    if ((arg == "--config" || arg == "-config") && i + 1 < argc) path = argv[i + 1];
  }
  if (path.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  for (const auto& [key, value] : json.items()) {
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(key);
    if (flag == nullptr || key == "config") {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unknown flag '", key, "'"));
    }
    std::string text_value = value.is_string() ? value.get<std::string>() : value.dump();
    if (key == "model" && value.is_array()) {
      absl::StatusOr<std::string> list = ModelListFromJson(value);
      if (!list.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": model: ", list.status().message()));
      }
      text_value = *std::move(list);
    }
    std::string error;
    if (!flag->ParseFrom(text_value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", key, ": ", error));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials() {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert);
  const std::string key = absl::GetFlag(FLAGS_tls_key);
  if (cert.empty() && key.empty()) return grpc::InsecureServerCredentials();
  if (cert.empty() || key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  grpc::SslServerCredentialsOptions options;
  ASSIGN_OR_RETURN(std::string cert_pem, ReadFile(cert));
  ASSIGN_OR_RETURN(std::string key_pem, ReadFile(key));
  options.pem_key_cert_pairs.push_back({key_pem, cert_pem});
  return grpc::SslServerCredentials(options);
}

// What every model loads with. engine.kv_cache_bytes is the KV memory budget of all
// models together (bytes, or a fraction of MemAvailable read once, before any model
// loads), which the loader splits; --num_kv_blocks, when given, is each model's own block
// count.
absl::StatusOr<ModelLoadOptions> LoadOptionsFromFlags(const std::string& device,
                                                      int64_t free_device_bytes) {
  ModelLoadOptions options;
  options.device = device;
  engine::EngineOptions& o = options.engine;
  ASSIGN_OR_RETURN(o.kv_cache_dtype,
                   engine::ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype)));
  // Parsed here so that a misspelling stops the server at start-up, not each model's load.
  ASSIGN_OR_RETURN(options.compute_dtype,
                   model::ParseF32OrBf16(absl::GetFlag(FLAGS_compute_dtype), "compute_dtype"));
  options.int8_dot = absl::GetFlag(FLAGS_int8_dot);
  ASSIGN_OR_RETURN(options.reasoning, ParseReasoningParser(absl::GetFlag(FLAGS_reasoning_parser)));
  options.num_threads = absl::GetFlag(FLAGS_threads);
  o.num_kv_blocks = absl::GetFlag(FLAGS_num_kv_blocks);
  if (o.num_kv_blocks <= 0) {
    ASSIGN_OR_RETURN(
        const int64_t total,
        engine::KvPoolBytes(absl::GetFlag(FLAGS_kv_cache_bytes),
                            absl::GetFlag(FLAGS_kv_cache_memory_fraction), free_device_bytes));
    o.kv_cache_bytes = total;
  }
  o.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  o.max_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens);
  o.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  o.max_waiting_requests = absl::GetFlag(FLAGS_max_waiting_requests);
  o.residual_rms_every_n_steps = absl::GetFlag(FLAGS_residual_rms_every_n_steps);
  return options;
}

// Writes `port` to `path` (if not empty), then renames, so a reader never sees a partial
// number.
void WritePortFile(const std::string& path, int port) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << port << "\n";
  std::rename(tmp.c_str(), path.c_str());
}

// Blocks SIGTERM/SIGINT in every thread (call before any thread starts) so that only
// WaitForSignal sees them.
sigset_t BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

int Run(const sigset_t& signals) {
  // The device, resolved and checked before anything starts: a missing GPU, driver or
  // plugin stops the server here, saying which.
  std::string device = absl::GetFlag(FLAGS_device);
  int64_t free_device_bytes = -1;
  if (device != "cpu") {
    absl::StatusOr<std::unique_ptr<kernels::Backend>> probe =
        kernels::CreateBackend(device, {.num_threads = 1});
    if (!probe.ok()) {
      Log(absl::StrCat("--device=", device, ": ", probe.status().message()));
      return 2;
    }
    device = std::string(kernels::DeviceName((*probe)->device()));
    free_device_bytes = (*probe)->FreeDeviceMemoryBytes();
  }
  std::string token = absl::GetFlag(FLAGS_auth_token);
  if (const std::string path = absl::GetFlag(FLAGS_auth_token_file); !path.empty()) {
    absl::StatusOr<std::string> t = ReadFile(path);
    if (!t.ok()) {
      Log(t.status().ToString());
      return 2;
    }
    token = std::string(absl::StripAsciiWhitespace(*t));
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = ServerCredentials();
  if (!creds.ok()) {
    Log(creds.status().ToString());
    return 2;
  }

  if (absl::GetFlag(FLAGS_max_response_logprobs) < 1) {
    Log(absl::StrCat("--max_response_logprobs must be at least 1, got ",
                     absl::GetFlag(FLAGS_max_response_logprobs)));
    return 2;
  }
  absl::StatusOr<std::vector<ModelSpec>> specs = ParseModelList(absl::GetFlag(FLAGS_model));
  if (!specs.ok()) {
    Log(std::string(specs.status().message()));
    return 2;
  }
  absl::StatusOr<ModelLoadOptions> load_options = LoadOptionsFromFlags(device, free_device_bytes);
  if (!load_options.ok()) {
    Log(load_options.status().ToString());
    return 2;
  }
  ServiceOptions service_options{
      .models = *specs,
      .device = device,
      .auth_token = token,
      .max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs),
      .max_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens),
      .max_waiting_requests = absl::GetFlag(FLAGS_max_waiting_requests),
      .max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes),
      .max_metadata_bytes = absl::GetFlag(FLAGS_max_metadata_bytes),
  };
  std::unique_ptr<ServerMetrics> metrics;
  if (const std::string addr = absl::GetFlag(FLAGS_metrics_address); !addr.empty()) {
    absl::StatusOr<std::unique_ptr<ServerMetrics>> m = ServerMetrics::Start(
        addr, MetricsOptions{
                  .expert_window_s = absl::GetFlag(FLAGS_metrics_expert_window_s),
                  .max_expert_series = absl::GetFlag(FLAGS_metrics_max_expert_series),
                  .poll_interval_ms = absl::GetFlag(FLAGS_metrics_poll_interval_ms),
              });
    if (!m.ok()) {
      Log(m.status().ToString());
      return 1;
    }
    metrics = *std::move(m);
    std::printf("spanserve-server: metrics on http://%s/metrics\n", addr.c_str());
    service_options.metrics = metrics.get();
  }
  SpanServeService service(service_options);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), *creds, &port);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.SetMaxSendMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  // gRPC before 1.53 (Debian 12 ships 1.51) ends the whole HTTP/2 connection, every call
  // on it, when one call's metadata passes this transport limit. So it is set far above
  // --max_metadata_bytes, which the service checks per call, and above the 8 MiB that
  // Envoy (the usual pooling proxy) can forward at most: only a client that sends more
  // than 9 MiB of headers on its own connection can end that connection.
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, kTransportMetadataBytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    Log(absl::StrCat("cannot listen on ", absl::GetFlag(FLAGS_listen)));
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(false);
  health->SetServingStatus(kServiceName, false);
  const std::string listen = absl::GetFlag(FLAGS_listen);
  const std::string address = absl::StrCat(listen.substr(0, listen.rfind(':')), ":", port);
  std::printf("spanserve-server: gRPC on %s (%s)\n", address.c_str(),
              creds.ok() && !absl::GetFlag(FLAGS_tls_cert).empty() ? "TLS" : "plaintext");
  std::fflush(stdout);
  // The HTTP front: the same service, so the same models, auth, limits and drain.
  std::unique_ptr<HttpFront> http;
  if (const std::string addr = absl::GetFlag(FLAGS_http_address); !addr.empty()) {
    absl::StatusOr<std::unique_ptr<HttpFront>> h = HttpFront::Start(
        &service, HttpFrontOptions{
                      .address = addr,
                      .tls_cert = absl::GetFlag(FLAGS_tls_cert),
                      .tls_key = absl::GetFlag(FLAGS_tls_key),
                      .threads = absl::GetFlag(FLAGS_http_threads),
                      .max_body_bytes = absl::GetFlag(FLAGS_max_message_bytes),
                      .header_timeout_s = absl::GetFlag(FLAGS_http_header_timeout_s),
                      .allowed_origins = AllowedOrigins(absl::GetFlag(FLAGS_allowed_origins)),
                      .max_response_logprobs = absl::GetFlag(FLAGS_max_response_logprobs),
                  });
    if (!h.ok()) {
      Log(h.status().ToString());
      server->Shutdown();
      return 1;
    }
    http = *std::move(h);
    std::printf("spanserve-server: HTTP (OpenAI API) on %s:%d (%s)\n",
                addr.substr(0, addr.rfind(':')).c_str(), http->port(),
                absl::GetFlag(FLAGS_tls_cert).empty() ? "plaintext" : "TLS");
    std::fflush(stdout);
  }
  WritePortFile(absl::GetFlag(FLAGS_port_file), port);
  if (http) WritePortFile(absl::GetFlag(FLAGS_http_port_file), http->port());

  // Load and warm up the models in turn, while health says NOT_SERVING (until the default
  // model is ready). health_mu orders the loader's SERVING against the drain's NOT_SERVING.
  std::mutex health_mu;
  std::atomic<bool> stop_loading{false};
  // The default model failed to load: the server can never be ready, so it exits non-zero
  // (a supervisor restarts it and shows why) instead of staying NOT_SERVING for ever.
  std::atomic<bool> default_failed{false};
  const ModelLoadHooks hooks{
      .on_model_ready =
          [&](ServedModel& model) {
            if (metrics) metrics->WatchEngine(model.name(), &model.engine());
          },
      .on_default_ready =
          [&] {
            std::lock_guard<std::mutex> lock(health_mu);
            if (!service.draining()) {
              health->SetServingStatus(true);
              health->SetServingStatus(kServiceName, true);
            }
          },
      .on_default_failed =
          [&] {
            default_failed.store(true);
            kill(getpid(), SIGTERM);  // wakes the sigwait below: drain (nothing runs) and exit
          },
  };
  std::thread loading([&] {
    std::this_thread::sleep_for(
        std::chrono::duration<double>(absl::GetFlag(FLAGS_debug_load_delay_s)));
    LoadServedModels(service.models(), *load_options, stop_loading, hooks);
  });

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  if (!default_failed.load()) {
    Log(absl::StrCat("signal ", signal_number, ": draining (grace ",
                     absl::GetFlag(FLAGS_drain_grace_s), " s)"));
  }
  stop_loading.store(true);
  {
    std::lock_guard<std::mutex> lock(health_mu);
    service.StartDraining();
    health->SetServingStatus(false);
    health->SetServingStatus(kServiceName, false);
  }
  const auto grace_end = std::chrono::steady_clock::now() +
                         std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                             std::chrono::duration<double>(absl::GetFlag(FLAGS_drain_grace_s)));
  while (service.num_in_flight() > 0 && std::chrono::steady_clock::now() < grace_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (int n = service.num_in_flight(); n > 0) {
    Log(absl::StrCat("grace period over: cancelling ", n, " calls"));
  }
  // A model being loaded finishes loading first; no other one starts.
  loading.join();
  // Cancels what is left in the engines; each such call then ends with CANCELLED.
  service.ShutdownEngines();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server.reset();
  if (http) http->Stop();
  // The poller reads the engines, which the service owns: stop it before they go.
  if (metrics) metrics->StopPolling();
  if (default_failed.load()) {
    Log("exiting with status 1: the default model failed to load");
    return 1;
  }
  Log("drained; exiting");
  return 0;
}

}  // namespace
}  // namespace spanserve::server

int main(int argc, char** argv) {
  // The C allocator gives each thread that allocates concurrently an arena, up to 8 per core,
  // and an arena keeps the pages freed in it: the HTTP front's threads, each serving now and
  // then a response of a hundred megabytes, would hold that much each, for good. A few arenas
  // do (the compute loops allocate nothing), and the HTTP front returns free pages after large
  // exchanges (malloc_trim). MALLOC_ARENA_MAX, when set, wins.
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) {
    mallopt(M_ARENA_MAX, std::clamp(spanserve::AvailableCpus(), 2, 8));
  }
  // Every connection is a file descriptor. The soft limit is often 1,024 (systemd's default),
  // which about a thousand clients with idle keep-alive connections would exhaust, and
  // connections past it wait unaccepted; the hard limit is what the operator allows, so
  // the soft one is raised to it (as nginx's worker_rlimit_nofile and Go's runtime do).
  if (rlimit files{}; getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  const sigset_t signals = spanserve::server::BlockShutdownSignals();
  // --help lists this file's flags (absl matches by program name, which has a dash).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "server_main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(
      "Serves a SpanServe model over gRPC (spanserve.v1.SpanServe, grpc.health.v1.Health, "
      "server reflection).\nUsage: spanserve-server --model=[NAME=]PATH[,...] --listen=HOST:PORT "
      "[flags]");
  if (absl::Status s = spanserve::server::ApplyConfigFile(argc, argv); !s.ok()) {
    std::fprintf(stderr, "spanserve-server: --config: %s\n", s.ToString().c_str());
    return 2;
  }
  absl::ParseCommandLine(argc, argv);
  return spanserve::server::Run(signals);
}
