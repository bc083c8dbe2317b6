// spanserve-client: a command-line client for spanserve-server.
//   spanserve-client generate --prompt "And God said" --max_tokens 32
//   spanserve-client chat --system "Be brief." --user "What is the capital of France?"
//   spanserve-client chat "user:Hi" "assistant:Hello! How can I help?" "user:Tell me a joke"
//   spanserve-client score --context "In the beginning God" --continuations " created| said"
//   spanserve-client tokenize --text "..." | detokenize --ids 1,2,3 | info | expert-load
//   spanserve-client models | health
// --model NAME picks one of the server's models (default: the server's default model).
// Streams generated text to stdout; --json prints every response message as JSON instead.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051", "server address host:port");
ABSL_FLAG(std::string, token, "", "bearer token, if the server wants one");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA certificate: connect with TLS, trusting this CA");
ABSL_FLAG(std::string, tls_server_name, "", "TLS: expected server name (default: the host)");
ABSL_FLAG(double, timeout_s, 60, "call deadline in seconds");
ABSL_FLAG(bool, json, false, "print response messages as JSON");
ABSL_FLAG(std::string, model, "", "the model to use (see `models`); empty: the server's default");
ABSL_FLAG(std::string, system, "", "chat: system message (empty: the template's default, if any)");
ABSL_FLAG(std::string, user, "",
          "chat: the last user message (after any ROLE:TEXT turns given as arguments)");
ABSL_FLAG(std::string, prompt, "And God said", "generate: prompt text");
ABSL_FLAG(int, max_tokens, 32, "generate: tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "generate: sampling temperature (0: greedy)");
ABSL_FLAG(int, top_k, 0, "generate: top-k (0: off)");
ABSL_FLAG(double, top_p, 1.0, "generate: top-p");
ABSL_FLAG(int, logprobs, -1, "generate: alternatives per token (-1: no logprobs)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "generate: stop strings");
ABSL_FLAG(bool, json_object, false,
          "generate / chat: JSON mode, the output a JSON object (response_format json_object)");
ABSL_FLAG(std::string, json_schema, "",
          "generate / chat: structured outputs, the output a JSON text this JSON Schema accepts "
          "(its text, or @FILE)");
ABSL_FLAG(std::string, guided_regex, "",
          "generate / chat: the output matches this regular expression (vLLM's guided_regex)");
ABSL_FLAG(std::string, guided_grammar, "",
          "generate / chat: the output is a sentence of this GBNF grammar (root rule `root`); "
          "@FILE reads it from FILE");
ABSL_FLAG(std::string, context, "", "score: context text");
ABSL_FLAG(std::string, continuations, "", "score: continuations, separated by '|'");
ABSL_FLAG(std::string, text, "", "tokenize: text");
ABSL_FLAG(std::vector<std::string>, ids, {}, "detokenize: token ids");
ABSL_FLAG(uint64_t, request_id, 0, "abort: request id");

namespace {

namespace v1 = spanserve::v1;

std::string ReadFileOrDie(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::string s;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) s.append(buf, n);
  std::fclose(f);
  return s;
}

std::shared_ptr<grpc::Channel> MakeChannel() {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  grpc::ChannelArguments args;
  if (const std::string ca = absl::GetFlag(FLAGS_tls_ca); !ca.empty()) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = ReadFileOrDie(ca);
    creds = grpc::SslCredentials(options);
    if (const std::string name = absl::GetFlag(FLAGS_tls_server_name); !name.empty()) {
      args.SetSslTargetNameOverride(name);
    }
  }
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(absl::GetFlag(FLAGS_address), creds, args);
}

void Prepare(grpc::ClientContext* context) {
  context->set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000)));
  if (const std::string token = absl::GetFlag(FLAGS_token); !token.empty()) {
    context->AddMetadata("authorization", "Bearer " + token);
  }
}

void PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  std::printf("%s\n", json.c_str());
}

int Report(const grpc::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "error: %d %s\n", static_cast<int>(status.error_code()),
               status.error_message().c_str());
  return 1;
}

// A flag's value "@FILE" is replaced by FILE's contents; false (after saying so) when it
// cannot be read.
bool ReadAtFile(const char* what, std::string* value) {
  if (value->empty() || (*value)[0] != '@') return true;
  std::ifstream in(value->substr(1), std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "error: cannot read the %s file %s\n", what, value->c_str() + 1);
    return false;
  }
  value->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

int Generate(v1::SpanServe::Stub& stub, v1::GenerateRequest request) {
  request.set_model(absl::GetFlag(FLAGS_model));
  v1::SamplingParams* s = request.mutable_sampling();
  s->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  s->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  s->set_top_k(absl::GetFlag(FLAGS_top_k));
  s->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  if (absl::GetFlag(FLAGS_logprobs) >= 0) s->set_logprobs(absl::GetFlag(FLAGS_logprobs));
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) s->add_stop(stop);
  if (absl::GetFlag(FLAGS_json_object)) s->set_response_format(v1::RESPONSE_FORMAT_JSON_OBJECT);
  if (std::string schema = absl::GetFlag(FLAGS_json_schema); !schema.empty()) {
    if (!ReadAtFile("schema", &schema)) return 2;
    s->set_response_format(v1::RESPONSE_FORMAT_JSON_SCHEMA);
    s->set_json_schema(std::move(schema));
  }
  s->set_guided_regex(absl::GetFlag(FLAGS_guided_regex));
  if (std::string grammar = absl::GetFlag(FLAGS_guided_grammar); !grammar.empty()) {
    if (!ReadAtFile("grammar", &grammar)) return 2;
    s->set_guided_grammar(std::move(grammar));
  }
  grpc::ClientContext context;
  Prepare(&context);
  std::unique_ptr<grpc::ClientReader<v1::GenerateChunk>> reader = stub.Generate(&context, request);
  v1::GenerateChunk chunk;
  v1::FinalInfo final;
  while (reader->Read(&chunk)) {
    if (absl::GetFlag(FLAGS_json)) {
      PrintJson(chunk);
    } else {
      std::fputs(chunk.text().c_str(), stdout);
      std::fflush(stdout);
    }
    if (chunk.has_final()) final = chunk.final();
  }
  const grpc::Status status = reader->Finish();
  if (status.ok() && !absl::GetFlag(FLAGS_json)) {
    std::printf("\n[%s: %d prompt + %d generated tokens, TTFT %.1f ms, %.1f ms total]\n",
                v1::FinishReason_Name(final.finish_reason()).c_str(), final.prompt_tokens(),
                final.generated_tokens(), final.timings().ttft_s() * 1e3,
                final.timings().e2e_s() * 1e3);
  }
  return Report(status);
}

template <typename Request, typename Response, typename Method>
int Unary(v1::SpanServe::Stub& stub, const Request& request, Method method) {
  grpc::ClientContext context;
  Prepare(&context);
  Response response;
  const grpc::Status status = (stub.*method)(&context, request, &response);
  if (status.ok()) PrintJson(response);
  return Report(status);
}

// chat [ROLE:TEXT ...]: --system first, then the turns given as arguments, then --user.
int Chat(v1::SpanServe::Stub& stub, const std::vector<char*>& turns) {
  v1::GenerateRequest request;
  v1::Chat* chat = request.mutable_prompt()->mutable_chat();
  auto add = [chat](absl::string_view role, absl::string_view content) {
    v1::ChatMessage* m = chat->add_messages();
    m->set_role(std::string(role));
    m->set_content(std::string(content));
  };
  if (const std::string system = absl::GetFlag(FLAGS_system); !system.empty())
    add("system", system);
  for (absl::string_view turn : turns) {
    const size_t colon = turn.find(':');
    if (colon == absl::string_view::npos) {
      std::fprintf(stderr, "chat: '%s' is not ROLE:TEXT (e.g. user:Hi)\n",
                   std::string(turn).c_str());
      return 2;
    }
    add(turn.substr(0, colon), turn.substr(colon + 1));
  }
  if (const std::string user = absl::GetFlag(FLAGS_user); !user.empty()) add("user", user);
  return Generate(stub, std::move(request));
}

// One line per served model.
int Models(v1::SpanServe::Stub& stub) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetModelInfoRequest request;
  v1::ModelInfo info;
  const grpc::Status status = stub.GetModelInfo(&context, request, &info);
  if (!status.ok()) return Report(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(info);
    return 0;
  }
  for (const v1::ModelInfo& m : info.models()) {
    const std::string state_name = v1::ModelState_Name(m.state());
    absl::string_view state = state_name;
    absl::ConsumePrefix(&state, "MODEL_STATE_");
    std::string line = absl::StrCat(m.name(), m.is_default() ? " (default)" : "", "  ", state);
    if (m.state() == v1::MODEL_STATE_READY) {
      absl::StrAppend(
          &line, "  ", m.architecture(), " ", m.norm_placement(), " ", m.is_moe() ? "MoE" : "dense",
          ", ", m.num_parameters(), " parameters, ", m.format(),
          ", chat: ", m.chat_template_family().empty() ? "none" : m.chat_template_family());
    } else if (m.state() == v1::MODEL_STATE_FAILED) {
      absl::StrAppend(&line, "  ", m.error());
    }
    absl::StrAppend(&line, "  ", m.model_path());
    std::printf("%s\n", line.c_str());
  }
  return 0;
}

int Health(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  Prepare(&context);
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return Report(status);
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // --help lists this file's flags (absl matches by program name, which has a dash).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "client_main.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(
      "spanserve-client <generate|chat|score|tokenize|detokenize|info|models|expert-load|abort|"
      "health> [--address=HOST:PORT] [--model=NAME] [flags]\n"
      "  chat [ROLE:TEXT ...] [--system=TEXT] [--user=TEXT]: a conversation (roles system, user, "
      "assistant), formatted with the model's chat template; the answer streams");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2 || (args.size() > 2 && std::string(args[1]) != "chat")) {
    std::fprintf(stderr, "%s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const std::string command = args[1];
  std::shared_ptr<grpc::Channel> channel = MakeChannel();
  auto stub = v1::SpanServe::NewStub(channel);
  const std::string model = absl::GetFlag(FLAGS_model);
  if (command == "generate") {
    v1::GenerateRequest r;
    r.mutable_prompt()->set_text(absl::GetFlag(FLAGS_prompt));
    return Generate(*stub, std::move(r));
  }
  if (command == "chat") return Chat(*stub, std::vector<char*>(args.begin() + 2, args.end()));
  if (command == "models") return Models(*stub);
  if (command == "health") return Health(channel);
  if (command == "score") {
    v1::ScoreRequest r;
    r.set_model(model);
    r.mutable_context()->set_text(absl::GetFlag(FLAGS_context));
    for (absl::string_view c : absl::StrSplit(absl::GetFlag(FLAGS_continuations), '|')) {
      r.add_continuations()->set_text(std::string(c));
    }
    return Unary<v1::ScoreRequest, v1::ScoreResponse>(*stub, r, &v1::SpanServe::Stub::Score);
  }
  if (command == "tokenize") {
    v1::TokenizeRequest r;
    r.set_model(model);
    r.set_text(absl::GetFlag(FLAGS_text));
    return Unary<v1::TokenizeRequest, v1::TokenizeResponse>(*stub, r,
                                                            &v1::SpanServe::Stub::Tokenize);
  }
  if (command == "detokenize") {
    v1::DetokenizeRequest r;
    r.set_model(model);
    for (const std::string& s : absl::GetFlag(FLAGS_ids)) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(s, &id)) {
        std::fprintf(stderr, "--ids: '%s' is not an integer\n", s.c_str());
        return 2;
      }
      r.add_token_ids(id);
    }
    return Unary<v1::DetokenizeRequest, v1::DetokenizeResponse>(*stub, r,
                                                                &v1::SpanServe::Stub::Detokenize);
  }
  if (command == "info") {
    v1::GetModelInfoRequest r;
    r.set_model(model);
    return Unary<v1::GetModelInfoRequest, v1::ModelInfo>(*stub, r,
                                                         &v1::SpanServe::Stub::GetModelInfo);
  }
  if (command == "expert-load") {
    v1::GetExpertLoadRequest r;
    r.set_model(model);
    return Unary<v1::GetExpertLoadRequest, v1::ExpertLoad>(*stub, r,
                                                           &v1::SpanServe::Stub::GetExpertLoad);
  }
  if (command == "abort") {
    v1::AbortRequest r;
    r.set_request_id(absl::GetFlag(FLAGS_request_id));
    return Unary<v1::AbortRequest, v1::AbortResponse>(*stub, r, &v1::SpanServe::Stub::Abort);
  }
  std::fprintf(stderr, "unknown command '%s'\n%s\n", command.c_str(),
               absl::ProgramUsageMessage().data());
  return 2;
}
