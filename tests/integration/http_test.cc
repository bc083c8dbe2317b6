// The OpenAI-compatible HTTP front (server/http_front.h) through a real HTTP client
// (cpp-httplib's) against the real binary: the same answers as gRPC, SSE streaming, prompt
// logprobs equal to Score, OpenAI-shaped errors with the right statuses, clients that
// disconnect or misbehave, drain and TLS.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/str_format.h"
#include "http_client.h"
#include "nlohmann/json.hpp"
#include "server_process.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::testing {
namespace {

namespace v1 = spanserve::v1;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

// A server with the HTTP front on a free port.
struct HttpServer {
  explicit HttpServer(std::vector<std::string> args = {}, bool wait_serving = true)
      : http_port(FreePort()), server(WithHttp(std::move(args), http_port), wait_serving) {}
  static std::vector<std::string> WithHttp(std::vector<std::string> args, int port) {
    args.push_back("--http_address=127.0.0.1:" + std::to_string(port));
    return args;
  }
  httplib::Client Client() const {
    httplib::Client c("127.0.0.1", http_port);
    c.set_read_timeout(120, 0);
    return c;
  }
  std::unique_ptr<v1::SpanServe::Stub> Stub() const {
    return v1::SpanServe::NewStub(server.Channel());
  }
  // Waits until no model is still loading (SERVING needs the default model only).
  void WaitForModels() const {
    const auto stub = Stub();
    const auto deadline = std::chrono::steady_clock::now() + seconds(120);
    while (std::chrono::steady_clock::now() < deadline) {
      grpc::ClientContext context;
      v1::ModelInfo info;
      if (!stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok()) return;
      bool loading = false;
      for (const v1::ModelInfo& m : info.models()) loading |= m.state() == v1::MODEL_STATE_LOADING;
      if (!loading) return;
      std::this_thread::sleep_for(milliseconds(20));
    }
  }
  int http_port;
  ServerProcess server;
};

struct Answer {
  int status = 0;
  json body;
  std::string raw;
};

Answer Post(httplib::Client& client, const std::string& path, const json& body,
            const httplib::Headers& headers = {}) {
  Answer a;
  auto res = client.Post(path, headers, body.dump(), "application/json");
  if (!res) return a;
  a.status = res->status;
  a.raw = res->body;
  a.body = json::parse(res->body, nullptr, false);
  return a;
}

Answer PostRaw(httplib::Client& client, const std::string& path, const std::string& body) {
  Answer a;
  auto res = client.Post(path, body, "application/json");
  if (!res) return a;
  a.status = res->status;
  a.raw = res->body;
  a.body = json::parse(res->body, nullptr, false);
  return a;
}

// Completions bodies ("And God said" plus `fields`) each refused with a 400 naming `param`,
// its message containing `message`.
void ExpectRefusals(httplib::Client& client,
                    const std::vector<std::tuple<json, std::string, std::string>>& refusals) {
  for (const auto& [fields, param, message] : refusals) {
    json body = {{"prompt", "And God said"}};
    body.update(fields);
    const Answer refused = Post(client, "/v1/completions", body);
    EXPECT_EQ(refused.status, 400) << refused.raw;
    EXPECT_EQ(refused.body["error"]["param"], param) << refused.raw;
    EXPECT_NE(refused.body["error"]["message"].get<std::string>().find(message), std::string::npos)
        << refused.raw;
  }
}

// The events of an SSE body ("data: ..." lines), [DONE] included as the string.
std::vector<std::string> SseData(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    out.push_back(body.substr(pos + 6, end - pos - 6));
    pos = end;
  }
  return out;
}

std::string GrpcGreedyText(v1::SpanServe::Stub& stub, const std::string& prompt, int max_tokens) {
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text(prompt);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  grpc::ClientContext context;
  auto reader = stub.Generate(&context, r);
  std::string text;
  v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) text += chunk.text();
  EXPECT_TRUE(reader->Finish().ok());
  return text;
}

// A Generate call's whole text and how it ended.
grpc::Status GrpcGenerate(v1::SpanServe::Stub& stub, const v1::GenerateRequest& r,
                          std::string* text) {
  grpc::ClientContext context;
  auto reader = stub.Generate(&context, r);
  v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) *text += chunk.text();
  return reader->Finish();
}

// A streamed completion's text: its first choice's deltas joined.
std::string StreamedCompletionText(httplib::Client& client, json body) {
  body["stream"] = true;
  auto res = client.Post("/v1/completions", body.dump(), "application/json");
  EXPECT_TRUE(res);
  std::string joined;
  if (!res) return joined;
  for (const std::string& e : SseData(res->body)) {
    if (e != "[DONE]") joined += json::parse(e)["choices"][0]["text"].get<std::string>();
  }
  return joined;
}

v1::ModelInfo Info(v1::SpanServe::Stub& stub) {
  grpc::ClientContext context;
  v1::ModelInfo info;
  EXPECT_TRUE(stub.GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  return info;
}

bool WaitIdle(v1::SpanServe::Stub& stub, seconds timeout = seconds(10)) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    const v1::ModelInfo info = Info(stub);
    if (info.num_requests_running() == 0 && info.num_requests_waiting() == 0 &&
        info.kv_blocks_used() == 0) {
      return true;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  return false;
}

// A raw TCP connection to the HTTP port, for clients no library would be.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

void SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

// GET /health on a new connection, read to the connection's end: the answer and the seconds
// it took from the request.
std::pair<std::string, double> TimedHealth(int port, int timeout_s) {
  const int fd = Connect(port);
  if (fd < 0) return {"", 0};
  timeval tv{.tv_sec = timeout_s, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const auto t0 = std::chrono::steady_clock::now();
  SendAll(fd, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  std::string got;
  char buf[1024];
  for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) got.append(buf, n);
  close(fd);
  return {got, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

// Expects the server to have closed `fd` (or to close it within `timeout_s`) with no answer,
// then closes it here.
void ExpectCutOff(int fd, int timeout_s) {
  timeval tv{.tv_sec = timeout_s, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[256];
  EXPECT_LE(recv(fd, buf, sizeof(buf), 0), 0);
  close(fd);
}

std::string HttpRequestText(int port, const std::string& body) {
  return "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

TEST(HttpTest, CompletionsAnswerAsGrpcGenerateDoes) {
  HttpServer s;
  auto client = s.Client();
  auto stub = s.Stub();
  const Answer a = Post(client, "/v1/completions",
                        {{"prompt", "And God said"}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.body["object"], "text_completion");
  EXPECT_EQ(a.body["model"], "spanserve-span-12l");
  ASSERT_EQ(a.body["choices"].size(), 1u);
  EXPECT_EQ(a.body["choices"][0]["text"], GrpcGreedyText(*stub, "And God said", 12));
  EXPECT_EQ(a.body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(a.body["usage"]["completion_tokens"], 12);
  EXPECT_EQ(a.body["usage"]["total_tokens"].get<int>(),
            a.body["usage"]["prompt_tokens"].get<int>() + 12);

  // A batch of prompts (text and token ids) with n choices each: index = prompt * n + j.
  const Answer b = Post(client, "/v1/completions",
                        {{"prompt", json::array({"And God said", "In the beginning"})},
                         {"n", 2},
                         {"max_tokens", 4},
                         {"temperature", 0.8},
                         {"seed", 7}});
  ASSERT_EQ(b.status, 200) << b.raw;
  ASSERT_EQ(b.body["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(b.body["choices"][i]["index"], i);
  const Answer again = Post(client, "/v1/completions",
                            {{"prompt", json::array({"And God said", "In the beginning"})},
                             {"n", 2},
                             {"max_tokens", 4},
                             {"temperature", 0.8},
                             {"seed", 7}});
  EXPECT_EQ(again.body["choices"], b.body["choices"]);  // seeded: reproducible

  const Answer ids =
      Post(client, "/v1/completions",
           {{"prompt", json::array({10, 20, 30})}, {"max_tokens", 2}, {"temperature", 0}});
  ASSERT_EQ(ids.status, 200) << ids.raw;
  EXPECT_EQ(ids.body["usage"]["prompt_tokens"], 3);

  // Stop strings end the text before the match; stop_reason says which.
  const std::string full = a.body["choices"][0]["text"];
  const std::string stop = full.substr(full.size() / 2, 3);
  const Answer stopped =
      Post(client, "/v1/completions",
           {{"prompt", "And God said"}, {"max_tokens", 12}, {"temperature", 0}, {"stop", stop}});
  ASSERT_EQ(stopped.status, 200);
  EXPECT_EQ(stopped.body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(stopped.body["choices"][0]["stop_reason"], stop);
  EXPECT_EQ(stopped.body["choices"][0]["text"], full.substr(0, full.find(stop)));

  // logit_bias, OpenAI's {"token id": bias}: a token pulled up by 100 is every greedy token (a
  // bias past 100 is clamped to it, as vLLM does); an id outside the vocabulary, a key that is
  // no id, or a value that is no number is a 400 naming the field.
  const Answer tok = Post(client, "/tokenize", {{"prompt", " the"}, {"add_special_tokens", false}});
  ASSERT_EQ(tok.status, 200) << tok.raw;
  const int the = tok.body["tokens"].back().get<int>();
  const Answer thrice = Post(client, "/detokenize", {{"tokens", json::array({the, the, the})}});
  ASSERT_EQ(thrice.status, 200) << thrice.raw;
  for (double bias : {100.0, 1e9}) {
    const Answer forced = Post(client, "/v1/completions",
                               {{"prompt", "And God said"},
                                {"max_tokens", 3},
                                {"temperature", 0},
                                {"logit_bias", {{std::to_string(the), bias}}}});
    ASSERT_EQ(forced.status, 200) << forced.raw;
    EXPECT_EQ(forced.body["choices"][0]["text"], thrice.body["prompt"]) << bias;
  }
  for (const json& bad_bias : {json{{"999999999", 1}}, json{{"the", 1}}, json{{"-3", 1}},
                               json{{std::to_string(the), "up"}}, json::array({the})}) {
    const Answer refused =
        Post(client, "/v1/completions",
             {{"prompt", "And God said"}, {"max_tokens", 2}, {"logit_bias", bad_bias}});
    EXPECT_EQ(refused.status, 400) << refused.raw;
    EXPECT_EQ(refused.body["error"]["param"], "logit_bias") << refused.raw;
  }
}

// response_format {"type": "json_object"} (OpenAI's JSON mode): a choice that stops is a
// JSON object, one that max_tokens cuts is a prefix of one (a JSON parser runs out of input,
// nothing sooner), streamed or not; json_schema and unknown types are a 400 naming the field.
TEST(HttpTest, JsonModeAnswersJsonObjects) {
  HttpServer s;
  auto client = s.Client();
  const auto check = [](const std::string& text, const std::string& finish) {
    if (finish == "stop") {
      json parsed;
      ASSERT_NO_THROW(parsed = json::parse(text)) << text;
      EXPECT_TRUE(parsed.is_object()) << text;
      return;
    }
    EXPECT_EQ(finish, "length") << text;
    try {
      const json parsed = json::parse(text);
      ADD_FAILURE() << "a cut output parses: " << parsed.dump();
    } catch (const json::parse_error& e) {
      EXPECT_EQ(e.byte, text.size() + 1) << e.what() << "\n" << text;
    }
  };
  int stopped = 0;
  for (int max_tokens : {12, 160}) {
    const Answer a = Post(client, "/v1/completions",
                          {{"prompt", "And God said"},
                           {"max_tokens", max_tokens},
                           {"temperature", 0.8},
                           {"seed", 11},
                           {"n", 8},
                           {"response_format", {{"type", "json_object"}}}});
    ASSERT_EQ(a.status, 200) << a.raw;
    ASSERT_EQ(a.body["choices"].size(), 8u);
    for (const json& choice : a.body["choices"]) {
      const std::string text = choice["text"];
      const std::string finish = choice["finish_reason"];
      check(text, finish);
      stopped += finish == "stop" ? 1 : 0;
    }
  }
  EXPECT_GT(stopped, 0) << "no choice closed its object";
  // Streamed, greedy: the pieces join into the same kind of text.
  auto res = client.Post("/v1/completions",
                         json{{"prompt", "And God said"},
                              {"max_tokens", 40},
                              {"temperature", 0},
                              {"stream", true},
                              {"response_format", {{"type", "json_object"}}}}
                             .dump(),
                         "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  std::string text, finish;
  for (const std::string& data : SseData(res->body)) {
    if (data == "[DONE]") break;
    const json e = json::parse(data);
    text += e["choices"][0]["text"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  check(text, finish);
  // Without the constraint the same request is not JSON.
  const Answer plain = Post(client, "/v1/completions",
                            {{"prompt", "And God said"}, {"max_tokens", 8}, {"temperature", 0}});
  ASSERT_EQ(plain.status, 200) << plain.raw;
  EXPECT_NE(plain.body["choices"][0]["text"].get<std::string>().substr(0, 1), "{");
  for (const json& bad : {json{{"type", "json_schema"}, {"json_schema", {{"name", "x"}}}},
                          json{{"type", "yaml"}}, json("json_object"), json::object()}) {
    const Answer refused =
        Post(client, "/v1/completions", {{"prompt", "And God said"}, {"response_format", bad}});
    EXPECT_EQ(refused.status, 400) << refused.raw;
    EXPECT_EQ(refused.body["error"]["param"], "response_format") << refused.raw;
  }
}

// Structured outputs: every choice that stops is a text the schema accepts, its keys in the
// schema's order (the body's order, which a parsed body would have sorted).
// vLLM's guided_choice (and structured_outputs {"choice"}): every answer is one of the
// strings, sampled or greedy, whole or streamed, over HTTP and gRPC; bad lists are refused.
TEST(HttpTest, GuidedChoiceAnswersOneOfTheStrings) {
  HttpServer s;
  auto client = s.Client();
  const std::vector<std::string> choices = {"Let there be light", "Let us make man", "Behold",
                                            "Behold, the man"};
  const auto is_choice = [&](const std::string& text) {
    return std::find(choices.begin(), choices.end(), text) != choices.end();
  };
  std::set<std::string> seen;
  for (const char* key : {"guided_choice", "structured_outputs"}) {
    json body = {{"prompt", "And God said"},
                 {"n", 8},
                 {"temperature", 1.5},
                 {"seed", 11},
                 {"max_tokens", 64}};
    if (std::string(key) == "guided_choice") {
      body["guided_choice"] = choices;
    } else {
      body["structured_outputs"] = {{"choice", choices}};
    }
    const Answer a = Post(client, "/v1/completions", body);
    ASSERT_EQ(a.status, 200) << a.raw;
    for (const json& c : a.body["choices"]) {
      EXPECT_TRUE(is_choice(c["text"])) << c["text"];
      EXPECT_EQ(c["finish_reason"], "stop") << c["text"];
      seen.insert(c["text"].get<std::string>());
    }
    // Streamed: the deltas join into one of the strings too.
    body["n"] = 1;
    body["stream"] = true;
    auto res = client.Post("/v1/completions", body.dump(), "application/json");
    ASSERT_TRUE(res);
    std::string joined;
    for (const std::string& e : SseData(res->body)) {
      if (e != "[DONE]") joined += json::parse(e)["choices"][0]["text"].get<std::string>();
    }
    EXPECT_TRUE(is_choice(joined)) << joined;
  }
  EXPECT_GE(seen.size(), 2u);  // sampled, not one forced answer
  // ignore_eos: "Behold" may not end the output, so it goes on to the longer choice.
  const Answer longer = Post(client, "/v1/completions",
                             {{"prompt", "And God said"},
                              {"guided_choice", {"Behold", "Behold, the man"}},
                              {"ignore_eos", true},
                              {"temperature", 0},
                              {"max_tokens", 64}});
  ASSERT_EQ(longer.status, 200) << longer.raw;
  EXPECT_EQ(longer.body["choices"][0]["text"], "Behold, the man");
  // gRPC: SamplingParams.guided_choice.
  auto stub = s.Stub();
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text("And God said");
  r.mutable_sampling()->set_max_tokens(64);
  r.mutable_sampling()->set_seed(3);
  for (const std::string& c : choices) r.mutable_sampling()->add_guided_choice(c);
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, r);
  std::string text;
  v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) text += chunk.text();
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(is_choice(text)) << text;
  // Refused: an empty list, a non-string, an empty string, beside JSON mode, other
  // structured_outputs.
  for (const json& bad :
       {json{{"guided_choice", json::array()}}, json{{"guided_choice", {1, 2}}},
        json{{"guided_choice", {"a", ""}}},
        json{{"guided_choice", {"a"}}, {"response_format", {{"type", "json_object"}}}},
        json{{"structured_outputs", {{"structural_tag", "x"}}}}}) {
    json body = bad;
    body["prompt"] = "x";
    const Answer a = Post(client, "/v1/completions", body);
    EXPECT_EQ(a.status, 400) << bad;
  }
}

TEST(HttpTest, JsonSchemaAnswersTextsTheSchemaAccepts) {
  HttpServer s;
  auto client = s.Client();
  const std::string schema =
      R"({"type": "object", "properties": {"zeta": {"type": "integer"},
          "alpha": {"enum": ["light", "dark", null]},
          "mid": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2}},
          "required": ["zeta", "alpha", "mid"], "additionalProperties": false})";
  const auto check = [](const std::string& text, const std::string& finish) {
    if (finish != "stop") {
      EXPECT_EQ(finish, "length") << text;
      return false;
    }
    nlohmann::ordered_json doc;
    EXPECT_NO_THROW(doc = nlohmann::ordered_json::parse(text)) << text;
    std::vector<std::string> keys;
    for (auto it = doc.begin(); it != doc.end(); ++it) keys.push_back(it.key());
    EXPECT_EQ(keys, (std::vector<std::string>{"zeta", "alpha", "mid"})) << text;
    EXPECT_TRUE(doc["zeta"].is_number_integer()) << text;
    EXPECT_TRUE(doc["alpha"].is_null() || doc["alpha"] == "light" || doc["alpha"] == "dark")
        << text;
    EXPECT_TRUE(doc["mid"].is_array() && doc["mid"].size() <= 2) << text;
    for (const auto& m : doc["mid"]) EXPECT_TRUE(m.is_string() && m.size() <= 5) << text;
    return true;
  };
  int stopped = 0;
  for (const std::string& field :
       {R"("response_format": {"type": "json_schema", "json_schema": {"name": "t", "strict": true,
            "schema": )" +
            schema + "}}",
        R"("guided_json": )" + schema}) {
    const std::string body = R"({"prompt": "And God said", "max_tokens": 400,
        "temperature": 0.8, "seed": 5, "n": 6, )" +
                             field + "}";
    auto res = client.Post("/v1/completions", body, "application/json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    const json a = json::parse(res->body);
    ASSERT_EQ(a["choices"].size(), 6u);
    for (const json& choice : a["choices"]) {
      stopped += check(choice["text"], choice["finish_reason"]) ? 1 : 0;
    }
  }
  EXPECT_GT(stopped, 4) << "too few choices completed their object";
  // Refusals name the field and the keyword.
  const std::vector<std::tuple<json, std::string, std::string>> refusals = {
      {json{{"response_format",
             {{"type", "json_schema"},
              {"json_schema",
               {{"name", "x"}, {"schema", {{"type", "string"}, {"pattern", "(?!a)"}}}}}}}},
       "response_format", "\"pattern\" at offset 0: "},
      {json{{"guided_json", {{"type", "integer"}}}}, "guided_json", "bare number"},
      {json{{"guided_json", "{\"type\": "}}, "guided_json", "not valid JSON"},
      {json{{"guided_json", json::object()}, {"response_format", {{"type", "json_object"}}}},
       "guided_json", "beside"},
  };
  ExpectRefusals(client, refusals);
}

TEST(HttpTest, GuidedRegexAnswersTextsThatMatch) {
  HttpServer s;
  auto client = s.Client();
  const std::string pattern = R"([A-Z][a-z]{1,8} (?:is|was) (?:[1-9]\d{0,2}|zero)\.)";
  const std::regex re(pattern, std::regex::ECMAScript);
  std::set<std::string> seen;
  for (const char* key : {"guided_regex", "structured_outputs"}) {
    json body = {{"prompt", "And God said"},
                 {"n", 8},
                 {"temperature", 1.5},
                 {"seed", 4},
                 {"max_tokens", 64}};
    if (std::string(key) == "guided_regex") {
      body["guided_regex"] = pattern;
    } else {
      body["structured_outputs"] = {{"regex", pattern}};
    }
    const Answer a = Post(client, "/v1/completions", body);
    ASSERT_EQ(a.status, 200) << a.raw;
    for (const json& c : a.body["choices"]) {
      const std::string text = c["text"];
      EXPECT_TRUE(std::regex_match(text, re)) << text;
      EXPECT_EQ(c["finish_reason"], "stop") << text;
      seen.insert(text);
    }
    // Streamed: the deltas join into a match too.
    body["n"] = 1;
    const std::string joined = StreamedCompletionText(client, body);
    EXPECT_TRUE(std::regex_match(joined, re)) << joined;
  }
  EXPECT_GE(seen.size(), 4u);  // sampled, not one forced answer
  // ignore_eos: "Behold" may not end the output, so it goes on to the longer match.
  const Answer longer = Post(client, "/v1/completions",
                             {{"prompt", "And God said"},
                              {"guided_regex", "Behold(?:, the man)?"},
                              {"ignore_eos", true},
                              {"temperature", 0},
                              {"max_tokens", 64}});
  ASSERT_EQ(longer.status, 200) << longer.raw;
  EXPECT_EQ(longer.body["choices"][0]["text"], "Behold, the man");
  // gRPC: SamplingParams.guided_regex.
  auto stub = s.Stub();
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text("And God said");
  r.mutable_sampling()->set_max_tokens(64);
  r.mutable_sampling()->set_seed(3);
  r.mutable_sampling()->set_guided_regex(pattern);
  {
    std::string text;
    ASSERT_TRUE(GrpcGenerate(*stub, r, &text).ok());
    EXPECT_TRUE(std::regex_match(text, re)) << text;
  }
  {
    r.mutable_sampling()->set_guided_regex("a(?<=a)");
    std::string text;
    const grpc::Status st = GrpcGenerate(*stub, r, &text);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("sampling.guided_regex: at offset 1"), std::string::npos)
        << st.error_message();
  }
  // Refused, naming the field: what the syntax does not serve, a non-string, beside another
  // constraint.
  const std::vector<std::tuple<json, std::string, std::string>> refusals = {
      {json{{"guided_regex", "(a)\\1"}}, "guided_regex", "at offset 3"},
      {json{{"guided_regex", "a{2,1}"}}, "guided_regex", "offset"},
      {json{{"guided_regex", 5}}, "guided_regex", "must be a string"},
      {json{{"structured_outputs", {{"regex", "(?i)a"}}}}, "structured_outputs", "offset"},
      {json{{"guided_regex", "a"}, {"guided_choice", {"a"}}}, "guided_regex", "beside"},
      {json{{"guided_regex", "a"}, {"response_format", {{"type", "json_object"}}}}, "guided_regex",
       "beside"},
      {json{{"guided_regex", "a"}, {"structured_outputs", {{"regex", "b"}}}}, "structured_outputs",
       "beside"},
  };
  ExpectRefusals(client, refusals);
}

// GBNF guided decoding: vLLM's guided_grammar (and structured_outputs {"grammar"}) and
// llama.cpp's `grammar` answer sentences of the grammar, sampled or streamed; gRPC's
// SamplingParams.guided_grammar too; bad grammars are refused saying where.
TEST(HttpTest, GuidedGrammarAnswersSentences) {
  HttpServer s;
  auto client = s.Client();
  const std::string grammar = R"gbnf(root     ::= sentence (" " sentence){0,2}
sentence ::= subject " " verb " " object "."
subject  ::= "God" | "The " noun
noun     ::= "light" | "earth" | "waters"   # what there is
verb     ::= "saw" | "made" | "divided"
object   ::= ( "the " noun
             | "it" )
)gbnf";
  const std::string s1 =
      "(?:God|The (?:light|earth|waters)) (?:saw|made|divided) (?:the "
      "(?:light|earth|waters)|it)\\.";
  const std::regex re("(?:" + s1 + ")(?: " + s1 + "){0,2}");
  std::set<std::string> seen;
  for (const char* key : {"guided_grammar", "grammar", "structured_outputs"}) {
    json body = {{"prompt", "And God said"},
                 {"n", 8},
                 {"temperature", 1.5},
                 {"seed", 4},
                 {"max_tokens", 64}};
    if (std::string(key) == "structured_outputs") {
      body["structured_outputs"] = {{"grammar", grammar}};
    } else {
      body[key] = grammar;
    }
    const Answer a = Post(client, "/v1/completions", body);
    ASSERT_EQ(a.status, 200) << a.raw;
    for (const json& c : a.body["choices"]) {
      const std::string text = c["text"];
      EXPECT_TRUE(std::regex_match(text, re)) << text;
      EXPECT_EQ(c["finish_reason"], "stop") << text;
      seen.insert(text);
    }
    body["n"] = 1;
    const std::string joined = StreamedCompletionText(client, body);
    EXPECT_TRUE(std::regex_match(joined, re)) << joined;
  }
  EXPECT_GE(seen.size(), 4u);
  // ignore_eos: the output goes on until nothing may follow, three sentences.
  const Answer longer = Post(client, "/v1/completions",
                             {{"prompt", "And God said"},
                              {"guided_grammar", grammar},
                              {"ignore_eos", true},
                              {"temperature", 0},
                              {"max_tokens", 96}});
  ASSERT_EQ(longer.status, 200) << longer.raw;
  const std::string three = longer.body["choices"][0]["text"];
  EXPECT_TRUE(std::regex_match(three, re)) << three;
  EXPECT_EQ(std::count(three.begin(), three.end(), '.'), 3) << three;
  // A recursive grammar no regular expression holds: balanced parentheses.
  const Answer nested = Post(
      client, "/v1/completions",
      {{"prompt", "And God said"},
       {"guided_grammar", "root ::= \"(((\" inner \")))\"\ninner ::= \"(\" inner \")\" | \"x\""},
       {"temperature", 1.0},
       {"seed", 2},
       {"n", 4},
       {"max_tokens", 32}});
  ASSERT_EQ(nested.status, 200) << nested.raw;
  for (const json& c : nested.body["choices"]) {
    const std::string text = c["text"];
    if (c["finish_reason"] != "stop") continue;
    const size_t open = text.find_first_not_of('(');
    ASSERT_NE(open, std::string::npos) << text;
    EXPECT_GE(open, 3u) << text;
    EXPECT_EQ(text, std::string(open, '(') + "x" + std::string(open, ')')) << text;
  }
  // gRPC: SamplingParams.guided_grammar.
  auto stub = s.Stub();
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text("And God said");
  r.mutable_sampling()->set_max_tokens(64);
  r.mutable_sampling()->set_seed(3);
  r.mutable_sampling()->set_guided_grammar(grammar);
  {
    std::string text;
    ASSERT_TRUE(GrpcGenerate(*stub, r, &text).ok());
    EXPECT_TRUE(std::regex_match(text, re)) << text;
  }
  {
    r.mutable_sampling()->set_guided_grammar("root ::= root \"a\" | \"a\"");
    std::string text;
    const grpc::Status st = GrpcGenerate(*stub, r, &text);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("guided_grammar"), std::string::npos) << st.error_message();
  }
  ExpectRefusals(
      client,
      {{{{"guided_grammar", "root ::= \"a\" ("}}, "guided_grammar", "1:"},
       {{{"guided_grammar", "root ::= thing"}}, "guided_grammar", "thing"},
       {{{"guided_grammar", "root ::= root \"a\" | \"a\""}}, "guided_grammar", "left-recursive"},
       {{{"guided_grammar", "start: \"a\""}}, "guided_grammar", ""},
       {{{"guided_grammar", 5}}, "guided_grammar", "must be a string"},
       {{{"grammar", "root ::= \"a\""}, {"guided_grammar", "root ::= \"b\""}}, "grammar", "beside"},
       {{{"guided_grammar", "root ::= \"a\""}, {"guided_regex", "a"}}, "guided_grammar", "beside"},
       {{{"structured_outputs", {{"grammar", 1}}}}, "structured_outputs", "must be a string"}});
}

TEST(HttpTest, JsonSchemaPatternsFormatsAndBoundsHold) {
  HttpServer s;
  auto client = s.Client();
  const json schema = {{"type", "object"},
                       {"properties",
                        {{"code", {{"type", "string"}, {"pattern", "^[A-Z]{3}-\\d{4}$"}}},
                         {"when", {{"type", "string"}, {"format", "date"}}},
                         {"id", {{"type", "string"}, {"format", "uuid"}}},
                         {"score", {{"type", "integer"}, {"minimum", 1}, {"maximum", 10}}},
                         {"share", {{"type", "number"}, {"minimum", 0}, {"exclusiveMaximum", 1}}}}},
                       {"required", {"code", "when", "id", "score", "share"}}};
  const json body = {
      {"prompt", "And God said"},
      {"n", 6},
      {"temperature", 1.0},
      {"seed", 9},
      {"max_tokens", 300},
      {"response_format",
       {{"type", "json_schema"}, {"json_schema", {{"name", "t"}, {"schema", schema}}}}}};
  const Answer a = Post(client, "/v1/completions", body);
  ASSERT_EQ(a.status, 200) << a.raw;
  int stopped = 0;
  for (const json& c : a.body["choices"]) {
    const std::string text = c["text"];
    if (c["finish_reason"] != "stop") continue;
    ++stopped;
    const json doc = json::parse(text);
    EXPECT_TRUE(std::regex_match(doc["code"].get<std::string>(), std::regex(R"([A-Z]{3}-\d{4})")))
        << text;
    EXPECT_TRUE(std::regex_match(doc["when"].get<std::string>(),
                                 std::regex(R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))")))
        << text;
    EXPECT_TRUE(std::regex_match(doc["id"].get<std::string>(),
                                 std::regex("[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")))
        << text;
    EXPECT_TRUE(doc["score"].is_number_integer() && doc["score"] >= 1 && doc["score"] <= 10)
        << text;
    EXPECT_TRUE(doc["share"].get<double>() >= 0 && doc["share"].get<double>() < 1) << text;
  }
  EXPECT_GE(stopped, 3);
}

// The bundled dense model with a real chat template from tests/data/chat/jinja_goldens.json.
std::string BundledModelWithTemplate(const std::string& template_name) {
  const std::string source = SPANSERVE_SOURCE_DIR;
  std::ifstream in(source + "/tests/data/chat/jinja_goldens.json");
  const json goldens = json::parse(in);
  std::string tmpl;
  for (const json& t : goldens["templates"]) {
    if (t["name"] == template_name) tmpl = t["template"];
  }
  EXPECT_FALSE(tmpl.empty()) << template_name;
  const std::string dir = MakeTempDir("tools");
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.json"}) {
    EXPECT_EQ(symlink((source + "/models/spanserve-span-12l/" + file).c_str(),
                      (dir + "/" + file).c_str()),
              0);
  }
  std::ofstream(dir + "/tokenizer_config.json") << json{
      {"bos_token", nullptr},
      {"eos_token", "<|endoftext|>"},
      {"chat_template", tmpl}}.dump();
  return dir;
}

// vLLM's extras for sampling and output: include_stop_str_in_output, skip_special_tokens,
// allowed_token_ids, bad_words, truncate_prompt_tokens, return_tokens_as_token_ids, and
// chat's continue_final_message; over gRPC the same sampling fields.
TEST(HttpTest, VllmExtrasAnswerAsVllmDoes) {
  HttpServer s({"--model=qwen=" + BundledModelWithTemplate("Qwen-Qwen2.5-7B-Instruct")});
  auto client = s.Client();
  const auto complete = [&](const json& fields) {
    json body = {
        {"prompt", "And God said"}, {"max_tokens", 16}, {"temperature", 0}, {"ignore_eos", true}};
    if (!fields.is_null()) body.update(fields);
    const Answer a = Post(client, "/v1/completions", body);
    EXPECT_EQ(a.status, 200) << a.raw;
    return a.body;
  };
  // A choice's token ids, from logprobs with return_tokens_as_token_ids.
  const auto ids_of = [](const json& choice) {
    std::vector<int32_t> ids;
    for (const json& t : choice["logprobs"]["tokens"]) {
      const std::string s = t;
      EXPECT_EQ(s.rfind("token_id:", 0), 0u) << s;
      ids.push_back(std::stoi(s.substr(9)));
    }
    return ids;
  };
  const auto tokenize = [&](const json& body) {
    const Answer a = Post(client, "/tokenize", body);
    EXPECT_EQ(a.status, 200) << a.raw;
    return a.body["tokens"].get<std::vector<int32_t>>();
  };
  const auto detokenize = [&](const std::vector<int32_t>& ids) {
    const Answer a = Post(client, "/detokenize", {{"tokens", ids}});
    EXPECT_EQ(a.status, 200) << a.raw;
    return a.body["prompt"].get<std::string>();
  };
  const std::string base = complete({})["choices"][0]["text"];
  ASSERT_GE(base.size(), 12u);

  // return_tokens_as_token_ids: the ids are the text's.
  const json as_ids = complete({{"logprobs", 1}, {"return_tokens_as_token_ids", true}});
  const std::vector<int32_t> base_ids = ids_of(as_ids["choices"][0]);
  EXPECT_EQ(base_ids.size(), 16u);
  EXPECT_EQ(detokenize(base_ids), base);
  for (const auto& [key, value] : as_ids["choices"][0]["logprobs"]["top_logprobs"][0].items()) {
    EXPECT_EQ(key.rfind("token_id:", 0), 0u) << key;
  }

  // include_stop_str_in_output: the stop string stays, what follows it does not; streamed too.
  const std::string stop = base.substr(4, 5);
  const size_t at = base.find(stop);
  EXPECT_EQ(complete({{"stop", stop}})["choices"][0]["text"], base.substr(0, at));
  EXPECT_EQ(complete({{"stop", stop}, {"include_stop_str_in_output", true}})["choices"][0]["text"],
            base.substr(0, at + stop.size()));
  EXPECT_EQ(StreamedCompletionText(client, {{"prompt", "And God said"},
                                            {"max_tokens", 16},
                                            {"temperature", 0},
                                            {"stop", stop},
                                            {"include_stop_str_in_output", true}}),
            base.substr(0, at + stop.size()));

  // skip_special_tokens false writes <|endoftext|> (id 0); an EOS that stops the output is
  // written only with include_stop_str_in_output.
  EXPECT_EQ(complete({{"allowed_token_ids", {0}}, {"max_tokens", 3}})["choices"][0]["text"], "");
  EXPECT_EQ(complete({{"allowed_token_ids", {0}},
                      {"max_tokens", 3},
                      {"skip_special_tokens", false}})["choices"][0]["text"],
            "<|endoftext|><|endoftext|><|endoftext|>");
  for (const bool include : {false, true}) {
    const json eos = complete({{"allowed_token_ids", {0}},
                               {"ignore_eos", false},
                               {"skip_special_tokens", false},
                               {"include_stop_str_in_output", include}});
    EXPECT_EQ(eos["choices"][0]["finish_reason"], "stop");
    EXPECT_EQ(eos["choices"][0]["text"], include ? "<|endoftext|>" : "");
    EXPECT_EQ(eos["usage"]["completion_tokens"], 1);
  }

  // allowed_token_ids: sampled choices keep to them.
  const std::vector<int32_t> allowed = {base_ids[0], base_ids[1], base_ids[2], 100, 200, 300};
  const json sampled = complete({{"allowed_token_ids", allowed},
                                 {"temperature", 1.5},
                                 {"seed", 5},
                                 {"n", 4},
                                 {"logprobs", 0},
                                 {"return_tokens_as_token_ids", true}});
  std::set<int32_t> drawn;
  for (const json& c : sampled["choices"]) {
    for (int32_t id : ids_of(c)) {
      EXPECT_NE(std::find(allowed.begin(), allowed.end(), id), allowed.end()) << id;
      drawn.insert(id);
    }
  }
  EXPECT_GE(drawn.size(), 3u);

  // bad_words: the greedy output's first word, alone or after a space, never comes again.
  std::string word = base.substr(0, base.find(' ', 1));
  word.erase(0, word.find_first_not_of(' '));
  ASSERT_FALSE(word.empty());
  const json banned = complete({{"bad_words", {word}},
                                {"max_tokens", 32},
                                {"logprobs", 0},
                                {"return_tokens_as_token_ids", true}});
  const std::vector<int32_t> out = ids_of(banned["choices"][0]);
  EXPECT_NE(banned["choices"][0]["text"], complete({{"max_tokens", 32}})["choices"][0]["text"]);
  for (const std::string& form : {word, " " + word}) {
    const std::vector<int32_t> seq = tokenize({{"prompt", form}, {"add_special_tokens", false}});
    ASSERT_FALSE(seq.empty());
    EXPECT_EQ(std::search(out.begin(), out.end(), seq.begin(), seq.end()), out.end()) << form;
  }

  // truncate_prompt_tokens: the prompt's last N tokens, as if only they were sent.
  const std::string text = "In the beginning God created the heaven and the earth. And the earth";
  const std::vector<int32_t> all = tokenize({{"prompt", text}});
  ASSERT_GT(all.size(), 8u);
  const json cut = complete({{"prompt", text}, {"truncate_prompt_tokens", 6}});
  EXPECT_EQ(cut["usage"]["prompt_tokens"], 6);
  EXPECT_EQ(
      cut["choices"][0]["text"],
      complete({{"prompt", std::vector<int32_t>(all.end() - 6, all.end())}})["choices"][0]["text"]);
  EXPECT_EQ(complete({{"prompt", text}, {"truncate_prompt_tokens", -1}})["usage"]["prompt_tokens"],
            all.size());
  // Echoed, a truncated prompt is what was kept of it.
  EXPECT_EQ(
      complete(
          {{"prompt", text}, {"truncate_prompt_tokens", 6}, {"echo", true}})["choices"][0]["text"],
      detokenize(std::vector<int32_t>(all.end() - 6, all.end())) +
          cut["choices"][0]["text"].get<std::string>());

  // continue_final_message: the assistant's message is left open and continued.
  const json messages =
      json::array({{{"role", "user"}, {"content", "Who made the light?"}},
                   {{"role", "assistant"}, {"content", "The light was made by"}}});
  const std::vector<int32_t> open = tokenize(
      {{"messages", messages}, {"continue_final_message", true}, {"add_generation_prompt", false}});
  const std::string rendered = detokenize(open);
  const std::string tail = "<|im_start|>assistant\nThe light was made by";
  EXPECT_EQ(rendered.substr(rendered.size() - std::min(rendered.size(), tail.size())), tail)
      << rendered;
  for (const json& extra : {json{{"add_generation_prompt", false}}, json::object()}) {
    json body = {{"messages", messages},
                 {"continue_final_message", true},
                 {"max_tokens", 12},
                 {"temperature", 0}};
    body.update(extra);
    const Answer chat = Post(client, "/v1/chat/completions", body);
    ASSERT_EQ(chat.status, 200) << chat.raw;
    EXPECT_EQ(
        chat.body["choices"][0]["message"]["content"],
        complete(
            {{"prompt", open}, {"max_tokens", 12}, {"ignore_eos", false}})["choices"][0]["text"]);
  }

  // prompt_logprobs: the prompt's logprobs as echo's, with each token's rank; return_token_ids:
  // the prompt's and the output's ids, whole or streamed.
  const std::vector<int32_t> prompt_ids = tokenize({{"prompt", "And God said"}});
  const json scored = complete({{"prompt_logprobs", 2}, {"return_token_ids", true}});
  const json echoed = complete({{"echo", true}, {"logprobs", 2}});
  const json& pl = scored["choices"][0]["prompt_logprobs"];
  ASSERT_EQ(pl.size(), prompt_ids.size()) << scored;
  EXPECT_TRUE(pl[0].is_null());
  for (size_t i = 1; i < prompt_ids.size(); ++i) {
    const json& own = pl[i][std::to_string(prompt_ids[i])];
    EXPECT_FLOAT_EQ(own["logprob"].get<float>(),
                    echoed["choices"][0]["logprobs"]["token_logprobs"][i].get<float>());
    EXPECT_GE(own["rank"].get<int>(), 1);
    int ranked = 0;
    for (const auto& [id, entry] : pl[i].items()) {
      EXPECT_LE(entry["logprob"].get<float>(), 0.0f);
      if (entry["rank"] == 1 || entry["rank"] == 2) ++ranked;
      EXPECT_EQ(entry["decoded_token"], detokenize({std::stoi(id)}));
    }
    EXPECT_EQ(ranked, 2) << pl[i];
  }
  EXPECT_EQ(scored["choices"][0]["prompt_token_ids"].get<std::vector<int32_t>>(), prompt_ids);
  EXPECT_EQ(scored["choices"][0]["token_ids"].get<std::vector<int32_t>>(), base_ids);
  {
    json body = {
        {"prompt", "And God said"}, {"max_tokens", 16}, {"temperature", 0}, {"ignore_eos", true},
        {"return_token_ids", true}, {"stream", true},   {"stop", "zzz"}};
    auto res = client.Post("/v1/completions", body.dump(), "application/json");
    ASSERT_TRUE(res);
    std::vector<int32_t> streamed_ids;
    bool prompt_seen = false;
    for (const std::string& e : SseData(res->body)) {
      if (e == "[DONE]") continue;
      const json choice = json::parse(e)["choices"][0];
      for (int32_t id : choice["token_ids"]) streamed_ids.push_back(id);
      if (choice.contains("prompt_token_ids")) {
        EXPECT_FALSE(prompt_seen);
        prompt_seen = true;
        EXPECT_EQ(choice["prompt_token_ids"].get<std::vector<int32_t>>(), prompt_ids);
      }
    }
    EXPECT_TRUE(prompt_seen);
    EXPECT_EQ(streamed_ids, base_ids);
  }
  {
    // Chat: the prompt's fields once, in the response.
    const Answer chat = Post(client, "/v1/chat/completions",
                             {{"messages", json::array({{{"role", "user"}, {"content", "Hi"}}})},
                              {"max_tokens", 4},
                              {"prompt_logprobs", 1},
                              {"return_token_ids", true}});
    ASSERT_EQ(chat.status, 200) << chat.raw;
    const std::vector<int32_t> chat_prompt =
        chat.body["prompt_token_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(chat.body["prompt_logprobs"].size(), chat_prompt.size());
    EXPECT_EQ(chat.body["usage"]["prompt_tokens"], chat_prompt.size());
    EXPECT_EQ(chat.body["choices"][0]["token_ids"].size(),
              chat.body["usage"]["completion_tokens"].get<size_t>());
  }

  // Refusals, each naming its field.
  ExpectRefusals(
      client,
      {{{{"prompt_logprobs", 1}, {"stream", true}}, "prompt_logprobs", "stream"},
       {{{"prompt_logprobs", 21}}, "prompt_logprobs", "[0, 20]"},
       {{{"return_token_ids", "yes"}}, "return_token_ids", "true or false"},
       {{{"allowed_token_ids", json::array()}}, "allowed_token_ids", "empty"},
       {{{"allowed_token_ids", {5, 1 << 20}}}, "allowed_token_ids", "token ids"},
       {{{"bad_words", {"ok", " \t"}}}, "bad_words", "blank"},
       {{{"truncate_prompt_tokens", 0}}, "truncate_prompt_tokens", "-1 or in"},
       {{{"truncate_prompt_tokens", 1 << 20}}, "truncate_prompt_tokens", "max_model_len"},
       {{{"include_stop_str_in_output", "yes"}}, "include_stop_str_in_output", "true or false"},
       {{{"skip_special_tokens", 1}}, "skip_special_tokens", "true or false"}});
  const Answer both = Post(
      client, "/v1/chat/completions",
      {{"messages", messages}, {"continue_final_message", true}, {"add_generation_prompt", true}});
  EXPECT_EQ(both.status, 400) << both.raw;
  EXPECT_EQ(both.body["error"]["param"], "continue_final_message") << both.raw;
  const Answer empty_last =
      Post(client, "/v1/chat/completions",
           {{"messages", json::array({{{"role", "user"}, {"content", "Hi"}},
                                      {{"role", "assistant"}, {"content", " "}}})},
            {"continue_final_message", true}});
  EXPECT_EQ(empty_last.status, 400) << empty_last.raw;
  EXPECT_EQ(empty_last.body["error"]["param"], "continue_final_message") << empty_last.raw;

  // gRPC: the same fields on SamplingParams.
  auto stub = s.Stub();
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text("And God said");
  r.mutable_sampling()->set_max_tokens(2);
  r.mutable_sampling()->set_ignore_eos(true);
  r.mutable_sampling()->add_allowed_token_ids(0);
  r.mutable_sampling()->set_skip_special_tokens(false);
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, r);
  std::string streamed;
  std::vector<int32_t> ids;
  v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) {
    streamed += chunk.text();
    ids.insert(ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 0}));
  EXPECT_EQ(streamed, "<|endoftext|><|endoftext|>");
  // continue_final_message without a message to continue: refused, not read past the end.
  v1::GenerateRequest none;
  none.mutable_prompt()->mutable_chat()->set_continue_final_message(true);
  none.mutable_prompt()->mutable_chat()->set_add_generation_prompt(false);
  std::string nothing;
  EXPECT_EQ(GrpcGenerate(*stub, none, &nothing).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// OpenAI tool calling on a model whose template is Qwen2.5's (Hermes <tool_call> blocks):
// the tools reach the prompt in the client's key order, a named or required tool_choice
// answers tool_calls whose arguments the function's schema accepts, streaming or not, and a
// follow-up conversation renders the calls and their results.
TEST(HttpTest, ToolCallsAsOpenAIAnswersThem) {
  HttpServer s({"--model=qwen=" + BundledModelWithTemplate("Qwen-Qwen2.5-7B-Instruct")});
  auto client = s.Client();
  const std::string tools = R"([{"type": "function", "function": {"name": "get_weather",
      "description": "The weather in a city.", "parameters": {"type": "object", "properties":
      {"unit": {"enum": ["celsius", "fahrenheit"]}, "city": {"type": "string", "maxLength": 12}},
      "required": ["unit", "city"], "additionalProperties": false}}},
      {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
      "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"]}}}])";
  const std::string messages = R"([{"role": "user", "content": "Weather in Paris?"}])";
  const auto post = [&](const std::string& extra) {
    const std::string body = R"({"messages": )" + messages + R"(, "tools": )" + tools +
                             R"(, "max_tokens": 200, "temperature": 0.8, "seed": 3)" + extra + "}";
    auto res = client.Post("/v1/chat/completions", body, "application/json");
    Answer a;
    if (!res) return a;
    a.status = res->status;
    a.raw = res->body;
    a.body = json::parse(res->body, nullptr, false);
    return a;
  };
  const auto check_weather = [](const json& call) {
    EXPECT_EQ(call["type"], "function");
    EXPECT_TRUE(call["id"].is_string() && call["id"].get<std::string>().rfind("call_", 0) == 0);
    EXPECT_EQ(call["function"]["name"], "get_weather");
    const json args = json::parse(call["function"]["arguments"].get<std::string>(), nullptr, false);
    ASSERT_TRUE(args.is_object()) << call.dump();
    EXPECT_TRUE(args["unit"] == "celsius" || args["unit"] == "fahrenheit") << call.dump();
    EXPECT_TRUE(args["city"].is_string() && args["city"].get<std::string>().size() <= 12);
    EXPECT_EQ(args.size(), 2u);
  };

  // The tools are in the prompt, keys in the client's order (unit before city).
  {
    auto res =
        client.Post("/tokenize",
                    R"({"model": "qwen", "messages": )" + messages + R"(, "tools": )" + tools + "}",
                    "application/json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    const json ids = json::parse(res->body)["tokens"];
    const Answer text = Post(client, "/detokenize", {{"model", "qwen"}, {"tokens", ids}});
    const std::string prompt = text.body["prompt"];
    EXPECT_NE(prompt.find("<tools>"), std::string::npos) << prompt;
    EXPECT_NE(prompt.find("\"name\": \"get_weather\""), std::string::npos) << prompt;
    EXPECT_LT(prompt.find("\"unit\""), prompt.find("\"city\"")) << prompt;
  }

  // Named: every choice calls it, with arguments its schema accepts; finish "stop" as OpenAI's.
  const Answer named =
      post(R"(, "n": 4, "tool_choice": {"type": "function", "function": {"name": "get_weather"}})");
  ASSERT_EQ(named.status, 200) << named.raw;
  ASSERT_EQ(named.body["choices"].size(), 4u);
  int completed = 0;
  for (const json& choice : named.body["choices"]) {
    if (choice["finish_reason"] == "length") continue;
    ++completed;
    EXPECT_EQ(choice["finish_reason"], "stop");
    EXPECT_TRUE(choice["message"]["content"].is_null()) << choice.dump();
    ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u) << choice.dump();
    check_weather(choice["message"]["tool_calls"][0]);
  }
  EXPECT_GE(completed, 3) << named.raw;

  // Required, one call at most: finish "tool_calls", the call one of the tools.
  const Answer required =
      post(R"(, "n": 4, "tool_choice": "required", "parallel_tool_calls": false)");
  ASSERT_EQ(required.status, 200) << required.raw;
  int called = 0;
  for (const json& choice : required.body["choices"]) {
    if (choice["finish_reason"] == "length") continue;
    EXPECT_EQ(choice["finish_reason"], "tool_calls") << choice.dump();
    ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u) << choice.dump();
    const json& call = choice["message"]["tool_calls"][0];
    if (call["function"]["name"] == "get_weather") check_weather(call);
    EXPECT_TRUE(call["function"]["name"] == "get_weather" ||
                call["function"]["name"] == "get_time");
    ++called;
  }
  EXPECT_GE(called, 3) << required.raw;

  // Streaming: no content, one delta with the call (index, id, name, arguments), then finish.
  const Answer streamed = post(
      R"(, "stream": true, "tool_choice": {"type": "function", "function": {"name": "get_weather"}})");
  ASSERT_EQ(streamed.status, 200) << streamed.raw;
  int deltas = 0;
  std::string finish;
  for (const std::string& data : SseData(streamed.raw)) {
    if (data == "[DONE]") break;
    const json chunk = json::parse(data);
    const json& choice = chunk["choices"][0];
    if (choice["delta"].contains("content")) {
      EXPECT_EQ(choice["delta"]["content"], "") << data;
    }
    if (choice["delta"].contains("tool_calls")) {
      ++deltas;
      EXPECT_EQ(choice["delta"]["tool_calls"][0]["index"], 0);
      if (!choice["finish_reason"].is_null()) ADD_FAILURE() << data;
      check_weather(choice["delta"]["tool_calls"][0]);
    }
    if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"];
  }
  EXPECT_EQ(deltas, 1) << streamed.raw;
  EXPECT_EQ(finish, "stop") << streamed.raw;

  // A follow-up: the call (arguments as JSON text, as OpenAI clients send them) and its
  // result render as the template writes them, the arguments as an object.
  {
    const std::string follow_up = R"({"model": "qwen", "tools": )" + tools + R"(, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"unit\": \"celsius\", \"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"}]})";
    auto res = client.Post("/tokenize", follow_up, "application/json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    const Answer text = Post(client, "/detokenize",
                             {{"model", "qwen"}, {"tokens", json::parse(res->body)["tokens"]}});
    const std::string prompt = text.body["prompt"];
    EXPECT_NE(prompt.find("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": "
                          "\"celsius\", \"city\": \"Paris\"}}\n</tool_call>"),
              std::string::npos)
        << prompt;
    EXPECT_NE(prompt.find("<tool_response>\n21 degrees\n</tool_response>"), std::string::npos)
        << prompt;
  }

  // Refusals name the field.
  const std::vector<std::tuple<std::string, std::string, std::string>> refusals = {
      {R"(, "tool_choice": {"type": "function", "function": {"name": "nope"}})", "tool_choice",
       "not among the tools"},
      {R"(, "tool_choice": "sometimes")", "tool_choice", "must be"},
      {R"(, "tool_choice": "required", "response_format": {"type": "json_object"})", "tool_choice",
       "cannot be combined"},
      {R"(, "functions": [{"name": "f"}])", "functions", "deprecated"},
  };
  for (const auto& [extra, param, message] : refusals) {
    const Answer refused = post(extra);
    EXPECT_EQ(refused.status, 400) << refused.raw;
    EXPECT_EQ(refused.body["error"]["param"], param) << refused.raw;
    EXPECT_NE(refused.body["error"]["message"].get<std::string>().find(message), std::string::npos)
        << refused.raw;
  }
  const Answer bad_tool = Post(
      client, "/v1/chat/completions",
      json{{"messages", json::parse(messages)}, {"tools", json::array({{{"type", "retrieval"}}})}});
  EXPECT_EQ(bad_tool.status, 400) << bad_tool.raw;
  EXPECT_EQ(bad_tool.body["error"]["param"], "tools[0]") << bad_tool.raw;
}

// A Mistral template refuses tool-call ids that are not 9 letters and digits: the ids the
// server gives for such a model come back through the template in the next turn.
TEST(HttpTest, MistralToolCallIdsSurviveTheNextTurn) {
  HttpServer s({"--model=" + BundledModelWithTemplate("mistralai-Mistral-Nemo-Instruct-2407")});
  auto client = s.Client();
  const json tools = json::parse(R"([{"type": "function", "function": {"name": "get_time",
      "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}},
      "required": ["zone"]}}}])");
  json messages = json::array({{{"role", "user"}, {"content", "Time in Paris?"}}});
  const Answer a =
      Post(client, "/v1/chat/completions",
           {{"messages", messages},
            {"tools", tools},
            {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}},
            {"max_tokens", 60},
            {"temperature", 0}});
  ASSERT_EQ(a.status, 200) << a.raw;
  const json& message = a.body["choices"][0]["message"];
  ASSERT_TRUE(message.contains("tool_calls")) << a.raw;
  const std::string id = message["tool_calls"][0]["id"];
  ASSERT_EQ(id.size(), 9u) << id;
  for (char c : id) EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(c))) << id;
  messages.push_back(message);
  messages.push_back({{"role", "tool"}, {"tool_call_id", id}, {"content", "12:00"}});
  const Answer ids = Post(client, "/tokenize", {{"messages", messages}, {"tools", tools}});
  ASSERT_EQ(ids.status, 200) << ids.raw;
  const Answer text = Post(client, "/detokenize", {{"tokens", ids.body["tokens"]}});
  const std::string prompt = text.body["prompt"];
  EXPECT_NE(prompt.find("\"id\": \"" + id + "\""), std::string::npos) << prompt;
  EXPECT_NE(prompt.find("\"call_id\": \"" + id + "\"}[/TOOL_RESULTS]"), std::string::npos)
      << prompt;
  const Answer next = Post(client, "/v1/chat/completions",
                           {{"messages", messages}, {"tools", tools}, {"max_tokens", 4}});
  EXPECT_EQ(next.status, 200) << next.raw;
}

// --reasoning_parser=auto: a model whose template writes </think> (QwQ's opens <think> in its
// generation prompt, Qwen3's opens none, or a closed one when thinking is off) answers its
// thinking in reasoning_content, streamed or not; a template without </think> answers as before.
TEST(HttpTest, ReasoningGoesToReasoningContent) {
  HttpServer s({"--model=qwq=" + BundledModelWithTemplate("Qwen-QwQ-32B") +
                    ",qwen3=" + BundledModelWithTemplate("Qwen-Qwen3-0.6B") +
                    ",qwen25=" + BundledModelWithTemplate("Qwen-Qwen2.5-7B-Instruct"),
                "--reasoning_parser=auto"});
  s.WaitForModels();
  auto client = s.Client();
  const json messages = json::array({{{"role", "user"}, {"content", "Why is the sky blue?"}}});
  // The greedy text of the chat's own prompt, through completions (no splitting there).
  const auto completion = [&](const std::string& model, const json& kwargs) {
    json tokenize = {{"model", model}, {"messages", messages}};
    if (!kwargs.is_null()) tokenize["chat_template_kwargs"] = kwargs;
    const Answer ids = Post(client, "/tokenize", tokenize);
    EXPECT_EQ(ids.status, 200) << ids.raw;
    const Answer a = Post(client, "/v1/completions",
                          {{"model", model},
                           {"prompt", ids.body["tokens"]},
                           {"max_tokens", 24},
                           {"temperature", 0},
                           {"add_special_tokens", false}});
    EXPECT_EQ(a.status, 200) << a.raw;
    return a.body["choices"][0]["text"].get<std::string>();
  };
  const auto chat = [&](const std::string& model, const json& kwargs, bool stream) {
    json body = {{"model", model},
                 {"messages", messages},
                 {"max_tokens", 24},
                 {"temperature", 0},
                 {"stream", stream}};
    if (!kwargs.is_null()) body["chat_template_kwargs"] = kwargs;
    return Post(client, "/v1/chat/completions", body);
  };
  // The concatenated reasoning_content and content deltas of a stream.
  const auto streamed = [](const Answer& a) {
    std::pair<std::string, std::string> out;
    for (const std::string& event : SseData(a.raw)) {
      if (event == "[DONE]") break;
      const json delta = json::parse(event)["choices"][0]["delta"];
      if (delta.contains("reasoning_content")) out.first += delta["reasoning_content"];
      if (delta.contains("content")) out.second += delta["content"];
    }
    return out;
  };

  // QwQ: the prompt ends in "<think>\n", so the output is thinking (the toy model never
  // closes it): all of it in reasoning_content, none in content.
  const std::string qwq_text = completion("qwq", nullptr);
  ASSERT_EQ(qwq_text.find("</think>"), std::string::npos) << qwq_text;
  ASSERT_FALSE(qwq_text.empty());
  {
    const Answer a = chat("qwq", nullptr, false);
    ASSERT_EQ(a.status, 200) << a.raw;
    const json& message = a.body["choices"][0]["message"];
    EXPECT_EQ(message["reasoning_content"], qwq_text) << a.raw;
    EXPECT_EQ(message["content"], "") << a.raw;
    const Answer st = chat("qwq", nullptr, true);
    ASSERT_EQ(st.status, 200) << st.raw;
    EXPECT_EQ(streamed(st), std::make_pair(qwq_text, std::string())) << st.raw;
  }
  // A constrained output has no thinking, even where the prompt opened it: all content.
  {
    const Answer a = Post(client, "/v1/chat/completions",
                          {{"model", "qwq"},
                           {"messages", messages},
                           {"max_tokens", 100},  // past the whitespace JSON mode allows first
                           {"temperature", 0},
                           {"response_format", {{"type", "json_object"}}}});
    ASSERT_EQ(a.status, 200) << a.raw;
    const json& message = a.body["choices"][0]["message"];
    EXPECT_TRUE(message["reasoning_content"].is_null()) << a.raw;
    const std::string content = message["content"];
    const size_t first = content.find_first_not_of(" \t\r\n");
    ASSERT_NE(first, std::string::npos) << a.raw;
    EXPECT_EQ(content[first], '{') << a.raw;
  }
  // Qwen3 opens no <think> in its prompt, and with enable_thinking false closes one: an
  // output that does not start with <think> is all content, reasoning_content null.
  for (const json& kwargs : {json(nullptr), json{{"enable_thinking", false}}}) {
    const std::string text = completion("qwen3", kwargs);
    ASSERT_NE(text.rfind("<think>", 0), 0u) << text;
    const Answer a = chat("qwen3", kwargs, false);
    ASSERT_EQ(a.status, 200) << a.raw;
    const json& message = a.body["choices"][0]["message"];
    EXPECT_TRUE(message["reasoning_content"].is_null()) << a.raw;
    EXPECT_EQ(message["content"], text) << a.raw;
    EXPECT_EQ(streamed(chat("qwen3", kwargs, true)), std::make_pair(std::string(), text));
  }
  // Qwen2.5's template writes no </think>: no reasoning_content field at all.
  {
    const Answer a = chat("qwen25", nullptr, false);
    ASSERT_EQ(a.status, 200) << a.raw;
    EXPECT_FALSE(a.body["choices"][0]["message"].contains("reasoning_content")) << a.raw;
    EXPECT_EQ(a.body["choices"][0]["message"]["content"], completion("qwen25", nullptr));
  }
}

// OpenAI's Responses API on the chat path: the same text as chat, a reasoning model's thinking
// as a reasoning item, a forced function call as a function_call item, streamed as typed
// events (each "event:" line naming its data's type, sequence numbers from 0 in order) that
// add up to the same response; what is not served is refused naming the Responses field.
TEST(HttpTest, ResponsesAnswerAsChatDoes) {
  HttpServer s({"--model=qwq=" + BundledModelWithTemplate("Qwen-QwQ-32B") +
                    ",qwen25=" + BundledModelWithTemplate("Qwen-Qwen2.5-7B-Instruct"),
                "--reasoning_parser=auto"});
  s.WaitForModels();
  auto client = s.Client();
  const std::string question = "Why is the sky blue?";
  // The events of a Responses stream, checked for their framing.
  const auto events = [](const Answer& a) {
    std::vector<json> out;
    size_t pos = 0;
    while ((pos = a.raw.find("event: ", pos)) != std::string::npos) {
      const size_t eol = a.raw.find('\n', pos);
      const std::string type = a.raw.substr(pos + 7, eol - pos - 7);
      EXPECT_EQ(a.raw.compare(eol + 1, 6, "data: "), 0) << a.raw;
      const size_t end = a.raw.find("\n\n", eol);
      out.push_back(json::parse(a.raw.substr(eol + 7, end - eol - 7)));
      EXPECT_EQ(out.back()["type"], type);
      EXPECT_EQ(out.back()["sequence_number"], out.size() - 1);
      pos = end;
    }
    EXPECT_EQ(a.raw.find("[DONE]"), std::string::npos);
    return out;
  };

  // Reasoning: QwQ's prompt opens <think>, and the toy model never closes it.
  const Answer chat = Post(client, "/v1/chat/completions",
                           {{"model", "qwq"},
                            {"messages", {{{"role", "user"}, {"content", question}}}},
                            {"max_tokens", 24},
                            {"temperature", 0}});
  ASSERT_EQ(chat.status, 200) << chat.raw;
  const std::string thinking = chat.body["choices"][0]["message"]["reasoning_content"];
  ASSERT_FALSE(thinking.empty());
  const json ask = {
      {"model", "qwq"}, {"input", question}, {"max_output_tokens", 24}, {"temperature", 0}};
  const Answer whole = Post(client, "/v1/responses", ask);
  ASSERT_EQ(whole.status, 200) << whole.raw;
  const json& r = whole.body;
  EXPECT_EQ(r["object"], "response");
  EXPECT_EQ(r["status"], "incomplete") << whole.raw;
  EXPECT_EQ(r["incomplete_details"]["reason"], "max_output_tokens");
  ASSERT_EQ(r["output"].size(), 2u) << whole.raw;
  EXPECT_EQ(r["output"][0]["type"], "reasoning");
  EXPECT_EQ(r["output"][0]["content"][0]["text"], thinking);
  EXPECT_EQ(r["output"][1]["type"], "message");
  EXPECT_EQ(r["output"][1]["content"][0]["text"], "");
  EXPECT_EQ(r["usage"]["output_tokens"], 24);
  EXPECT_EQ(r["usage"]["input_tokens"], chat.body["usage"]["prompt_tokens"]);

  json streamed_ask = ask;
  streamed_ask["stream"] = true;
  const Answer st = Post(client, "/v1/responses", streamed_ask);
  ASSERT_EQ(st.status, 200) << st.raw;
  const std::vector<json> evs = events(st);
  ASSERT_GE(evs.size(), 4u) << st.raw;
  EXPECT_EQ(evs[0]["type"], "response.created");
  EXPECT_EQ(evs[0]["response"]["status"], "in_progress");
  EXPECT_EQ(evs[1]["type"], "response.in_progress");
  EXPECT_EQ(evs.back()["type"], "response.incomplete");
  std::string deltas;
  for (const json& e : evs) {
    if (e["type"] == "response.reasoning_text.delta") deltas += e["delta"];
  }
  EXPECT_EQ(deltas, thinking);
  const json& final = evs.back()["response"];
  ASSERT_EQ(final["output"].size(), 2u) << st.raw;
  EXPECT_EQ(final["output"][0]["content"], r["output"][0]["content"]);
  EXPECT_EQ(final["output"][1]["content"], r["output"][1]["content"]);
  EXPECT_EQ(final["usage"]["input_tokens"], r["usage"]["input_tokens"]);
  EXPECT_EQ(final["usage"]["output_tokens"], r["usage"]["output_tokens"]);

  // A forced function call, whole and streamed.
  const json city = {{"type", "string"}, {"maxLength", 12}};
  const json parameters = {
      {"type", "object"}, {"properties", {{"city", city}}}, {"required", json::array({"city"})}};
  const json tool = {{"type", "function"}, {"name", "get_weather"}, {"parameters", parameters}};
  json call_ask = {{"model", "qwen25"},
                   {"input", json::array({{{"role", "user"}, {"content", "Weather in Paris?"}}})},
                   {"tools", json::array({tool})},
                   {"tool_choice", {{"type", "function"}, {"name", "get_weather"}}},
                   {"max_output_tokens", 60},
                   {"temperature", 0}};
  const Answer called = Post(client, "/v1/responses", call_ask);
  ASSERT_EQ(called.status, 200) << called.raw;
  ASSERT_EQ(called.body["output"].size(), 1u) << called.raw;
  const json& call = called.body["output"][0];
  EXPECT_EQ(call["type"], "function_call");
  EXPECT_EQ(call["name"], "get_weather");
  EXPECT_TRUE(json::parse(call["arguments"].get<std::string>())["city"].is_string()) << call;
  EXPECT_EQ(called.body["tools"][0], tool);
  call_ask["stream"] = true;
  const Answer call_st = Post(client, "/v1/responses", call_ask);
  ASSERT_EQ(call_st.status, 200) << call_st.raw;
  bool done = false;
  for (const json& e : events(call_st)) {
    if (e["type"] != "response.function_call_arguments.done") continue;
    EXPECT_EQ(e["arguments"], call["arguments"]);
    EXPECT_EQ(e["name"], "get_weather");
    done = true;
  }
  EXPECT_TRUE(done) << call_st.raw;

  // Refusals name the Responses field.
  const std::vector<std::pair<json, std::string>> bad = {
      {{{"max_output_tokens", 4}}, "input"},
      {{{"input", {{{"role", "user"}, {"content", {{{"type", "input_image"}}}}}}}}, "input"},
      {{{"input", {{{"role", "robot"}, {"content", "x"}}}}}, "input"},
      {{{"input", "x"}, {"tools", {{{"type", "web_search"}}}}}, "tools"},
      {{{"input", "x"}, {"previous_response_id", "resp_1"}}, "previous_response_id"},
      {{{"input", "x"}, {"text", {{"format", {{"type", "grammar"}}}}}}, "text.format"},
      {{{"input", "x"}, {"max_output_tokens", 0}}, "max_output_tokens"},
      {{{"input", "x"}, {"background", true}}, "background"},
  };
  for (const auto& [fields, param] : bad) {
    json body = fields;
    body["model"] = "qwen25";
    const Answer a = Post(client, "/v1/responses", body);
    EXPECT_EQ(a.status, 400) << body << a.raw;
    EXPECT_EQ(a.body["error"]["param"], param) << body << a.raw;
  }
  EXPECT_EQ(PostRaw(client, "/v1/responses", "{\"input\": ").status, 400);
}

TEST(HttpTest, StreamingIsServerSentEventsEndingInDoneWithUsage) {
  HttpServer s;
  auto client = s.Client();
  const json request = {{"prompt", "And God said"},
                        {"max_tokens", 10},
                        {"temperature", 0},
                        {"stream", true},
                        {"stream_options", {{"include_usage", true}}}};
  auto res = client.Post("/v1/completions", request.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  const std::vector<std::string> events = SseData(res->body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    ASSERT_EQ(e["object"], "text_completion");
    text += e["choices"][0]["text"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(finish, "length");
  const json usage = json::parse(events[events.size() - 2]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 10);
  json plain = request;
  plain.erase("stream");
  plain.erase("stream_options");
  EXPECT_EQ(Post(client, "/v1/completions", plain).body["choices"][0]["text"], text);
}

// Each streamed event leaves as the engine makes it, on a kept-alive connection too. A
// client that sent a request delays its ACKs (up to 40 ms on Linux); with Nagle's algorithm
// on, the server would hold every small event behind the unacknowledged one before it, so
// the events after the first would arrive together about 40 ms later (measured with
// TCP_NODELAY off: two reads a request, a 40-41 ms gap, against 0.3-0.5 ms gaps with it on).
// The best of the five kept-alive requests is judged: a stall is in every request, noise is
// not.
TEST(HttpTest, AKeptAliveConnectionStreamsWithoutAckStalls) {
  HttpServer s;
  const int fd = Connect(s.http_port);
  ASSERT_GE(fd, 0);
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  timeval timeout{.tv_sec = 60, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  constexpr int kTokens = 32;
  const std::string request = HttpRequestText(s.http_port, json{{"prompt", "And God said"},
                                                                {"max_tokens", kTokens},
                                                                {"temperature", 0},
                                                                {"ignore_eos", true},
                                                                {"stream", true}}
                                                               .dump());
  double smallest_gap = 1e9;
  int events_seen = 0;
  for (int i = 0; i < 6; ++i) {
    SendAll(fd, request);
    std::string received;
    std::vector<std::chrono::steady_clock::time_point> reads;
    char buf[65536];
    // The chunked body's last chunk ends the response.
    while (received.find("data: [DONE]") == std::string::npos || !received.ends_with("0\r\n\r\n")) {
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      ASSERT_GT(n, 0) << "the connection ended or timed out after: " << received;
      reads.push_back(std::chrono::steady_clock::now());
      received.append(buf, static_cast<size_t>(n));
    }
    ASSERT_TRUE(received.starts_with("HTTP/1.1 200")) << received;
    events_seen = static_cast<int>(SseData(received).size());
    // The first request opens the connection (where Linux acknowledges at once); the
    // others reuse it.
    if (i == 0) continue;
    double largest_gap = 0;
    for (size_t r = 1; r < reads.size(); ++r) {
      largest_gap =
          std::max(largest_gap, std::chrono::duration<double>(reads[r] - reads[r - 1]).count());
    }
    smallest_gap = std::min(smallest_gap, largest_gap);
  }
  close(fd);
  EXPECT_GE(events_seen, kTokens / 2);
  EXPECT_LT(smallest_gap, 0.025) << "every kept-alive request had a pause of " << smallest_gap * 1e3
                                 << " ms or more between two reads";
}

// A burst of new connections (64 clients starting at once) is accepted at once: a short
// listen queue drops SYNs that the clients resend only a second later.
TEST(HttpTest, ABurstOfNewConnectionsIsAcceptedAtOnce) {
  HttpServer s;
  constexpr int kClients = 128;
  std::atomic<bool> go{false};
  std::vector<double> connect_s(kClients, -1);
  std::vector<int> fds(kClients, -1);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      while (!go.load()) std::this_thread::yield();
      const auto t0 = std::chrono::steady_clock::now();
      fds[i] = Connect(s.http_port);
      connect_s[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  double slowest = 0;
  for (int i = 0; i < kClients; ++i) {
    EXPECT_GE(fds[i], 0);
    slowest = std::max(slowest, connect_s[i]);
    if (fds[i] >= 0) close(fds[i]);
  }
  EXPECT_LT(slowest, 0.9) << "a SYN was dropped and resent";
  auto client = s.Client();
  auto res = client.Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

// lm-evaluation-harness's local-completions loglikelihood: echo + logprobs over
// context + continuation; the continuation's logprobs must be what Score gives.
TEST(HttpTest, EchoLogprobsEqualScore) {
  HttpServer s;
  auto client = s.Client();
  auto stub = s.Stub();
  auto ids_of = [&](const std::string& text) {
    v1::TokenizeRequest r;
    r.set_text(text);
    v1::TokenizeResponse out;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->Tokenize(&ctx, r, &out).ok());
    return std::vector<int32_t>(out.token_ids().begin(), out.token_ids().end());
  };
  const std::vector<int32_t> context = ids_of("In the beginning God created");
  const std::vector<int32_t> continuation = ids_of(" the heaven and the earth");
  ASSERT_FALSE(context.empty());
  ASSERT_FALSE(continuation.empty());
  v1::ScoreRequest score;
  for (int32_t id : context) score.mutable_context()->mutable_token_ids()->add_ids(id);
  auto* cont = score.add_continuations()->mutable_token_ids();
  for (int32_t id : continuation) cont->add_ids(id);
  v1::ScoreResponse scored;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Score(&ctx, score, &scored).ok());
  }
  json prompt = json::array();
  for (int32_t id : context) prompt.push_back(id);
  for (int32_t id : continuation) prompt.push_back(id);
  for (int max_tokens : {0, 1}) {
    const Answer a = Post(client, "/v1/completions",
                          {{"prompt", prompt},
                           {"max_tokens", max_tokens},
                           {"echo", true},
                           {"logprobs", 1},
                           {"temperature", 0}});
    ASSERT_EQ(a.status, 200) << a.raw;
    const json& lp = a.body["choices"][0]["logprobs"];
    ASSERT_EQ(lp["token_logprobs"].size(), prompt.size() + max_tokens);
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    EXPECT_TRUE(lp["top_logprobs"][0].is_null());
    double sum = 0;
    bool greedy = true;
    for (size_t i = context.size(); i < prompt.size(); ++i) {
      const double v = lp["token_logprobs"][i];
      sum += v;
      EXPECT_FLOAT_EQ(v, scored.scores(0).token_logprobs(i - context.size()));
      double best = -1e30;
      for (const auto& [k, alt] : lp["top_logprobs"][i].items())
        best = std::max(best, alt.get<double>());
      greedy = greedy && v == best;
    }
    EXPECT_NEAR(sum, scored.scores(0).logprob(), 1e-5);
    EXPECT_EQ(greedy, scored.scores(0).is_greedy());
    EXPECT_EQ(a.body["usage"]["completion_tokens"], max_tokens);
  }
  // max_tokens 0 is for scoring only.
  EXPECT_EQ(Post(client, "/v1/completions", {{"prompt", "x"}, {"max_tokens", 0}}).status, 400);
}

// A response that is not streamed keeps its logprobs until it is written: at most
// --max_response_logprobs entries (tokens and alternatives). Echoed prompts that alone pass
// it are refused before any work, generated tokens that pass it as they come (nothing stays
// in the engine); a streamed response is not bounded by it, each event holding its own.
TEST(HttpTest, AResponsesLogprobsAreBounded) {
  HttpServer s({"--max_response_logprobs=1000"});
  auto client = s.Client();
  auto stub = s.Stub();
  const auto prompts = [](int count) {
    json prompts = json::array();
    for (int p = 0; p < count; ++p) {
      json ids = json::array();
      for (int i = 0; i < 10; ++i) ids.push_back(5 + (p * 7 + i) % 40);
      prompts.push_back(ids);
    }
    return prompts;
  };
  const auto refused = [](const Answer& a, const std::string& what) {
    EXPECT_EQ(a.status, 400) << a.raw;
    EXPECT_EQ(a.body["error"]["param"], "logprobs") << a.raw;
    const std::string message = a.body["error"]["message"];
    EXPECT_NE(message.find(what), std::string::npos) << message;
    EXPECT_NE(message.find("--max_response_logprobs"), std::string::npos) << message;
    EXPECT_NE(message.find("stream"), std::string::npos) << message;
  };
  // Each echoed prompt: its first token (no alternatives), then 9 with 5 alternatives each,
  // and the token itself where it is not among them: 55 to 64 entries.
  const json echo = {{"echo", true}, {"logprobs", 5}, {"max_tokens", 0}};
  json within = echo;
  within["prompt"] = prompts(15);  // at most 960
  const Answer ok = Post(client, "/v1/completions", within);
  ASSERT_EQ(ok.status, 200) << ok.raw;
  ASSERT_EQ(ok.body["choices"].size(), 15u);
  for (const json& c : ok.body["choices"]) {
    EXPECT_EQ(c["logprobs"]["token_logprobs"].size(), 10u);
    EXPECT_GE(c["logprobs"]["top_logprobs"][9].size(), 5u);
  }
  json over = echo;
  over["prompt"] = prompts(19);  // at least 1045
  refused(Post(client, "/v1/completions", over), "the echoed prompts' logprobs");
  over["stream"] = true;
  const Answer streamed = Post(client, "/v1/completions", over);
  ASSERT_EQ(streamed.status, 200) << streamed.raw;
  int events_with_logprobs = 0;
  for (const std::string& d : SseData(streamed.raw)) {
    if (d == "[DONE]") continue;
    const json chunk = json::parse(d);
    ASSERT_FALSE(chunk.contains("error")) << d;
    if (!chunk["choices"][0]["logprobs"].is_null()) ++events_with_logprobs;
  }
  EXPECT_EQ(events_with_logprobs, 19);

  // Generated tokens: 10 prompts echoed (at least 550, at most 640), then 20 tokens each
  // with 5 or 6 alternatives pass 1000 as they come.
  json generating = {{"prompt", prompts(10)}, {"echo", true},       {"logprobs", 5},
                     {"max_tokens", 20},      {"ignore_eos", true}, {"temperature", 0}};
  refused(Post(client, "/v1/completions", generating), "the response's logprobs");
  EXPECT_TRUE(WaitIdle(*stub));
  generating.erase("logprobs");
  const Answer plain = Post(client, "/v1/completions", generating);
  ASSERT_EQ(plain.status, 200) << plain.raw;
  EXPECT_EQ(plain.body["usage"]["completion_tokens"], 200);
}

// Request framing is checked once the headers are in, without waiting for a body: a
// Content-Length over --max_message_bytes is a 413, a malformed or twice-given one a 400, a POST
// with no length a 411, one with both a length and a Transfer-Encoding a 400, a coding other
// than chunked a 501, each answered at once, and the connection closed after.
TEST(HttpTest, BadFramingIsAnsweredAtOnce) {
  HttpServer s({"--max_message_bytes=65536"});
  const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n";
  const std::string body = R"({"prompt":"Hi","max_tokens":1})";
  const struct {
    std::string request;
    std::string status;
  } cases[] = {
      {head + "Content-Length: 70000\r\n\r\n", "413"},
      {head + "Content-Length: 99999999999999999999999\r\n\r\n", "413"},
      {head + "Content-Length: -5\r\n\r\n" + body, "400"},
      {head + "Content-Length: " + std::to_string(body.size()) + "\r\nContent-Length: 3\r\n\r\n" +
           body,
       "400"},
      {head + "\r\n" + body, "411"},
      // Framed twice (a proxy might take the length, this server the chunks: smuggling).
      {head + "Content-Length: " + std::to_string(body.size()) +
           "\r\nTransfer-Encoding: chunked\r\n\r\n" + absl::StrFormat("%x\r\n", body.size()) +
           body + "\r\n0\r\n\r\n",
       "400"},
      // A coding other than chunked would have the body read to the connection's end.
      {head + "Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "501"},
      {head + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "501"},
      // Control characters in a header (RFC 9110 5.5: a NUL or a bare CR is refused).
      {head + "X-A: a" + '\0' + "b\r\nContent-Length: 2\r\n\r\n{}", "400"},
      {head + "X-A: a\rb\r\nContent-Length: 2\r\n\r\n{}", "400"},
      {head + "X-A: a\x01"
              "b\r\nContent-Length: 2\r\n\r\n{}",
       "400"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.request);
    const int fd = Connect(s.http_port);
    ASSERT_GE(fd, 0);
    timeval tv{.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    SendAll(fd, c.request);
    const auto t0 = std::chrono::steady_clock::now();
    std::string got;
    char buf[4096];
    for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) got.append(buf, n);  // to the close
    close(fd);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 4.0);
    EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 " + c.status) << got;
    EXPECT_NE(got.find("\"error\""), std::string::npos) << got;
  }
  auto client = s.Client();
  EXPECT_EQ(Post(client, "/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 1}}).status, 200);
}

// A client that sends header lines without end, faster than they are read, is cut off once it
// has sent more than 64 KiB of them. cpp-httplib keeps every header line it reads (each up to
// 8 KiB, with no bound on their number), and bytes waiting unread used to spare a connection
// from the header timeout: one such client grew the server from 85 to 938 MB in 15 s, never cut
// off.
TEST(HttpTest, EndlessHeaderLinesAreCutOff) {
  HttpServer s;
  const int fd = Connect(s.http_port);
  ASSERT_GE(fd, 0);
  timeval tv{.tv_sec = 0, .tv_usec = 200000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  std::string lines;
  for (int i = 0; i < 1000; ++i) {
    lines += "X-" + std::to_string(i) + ": " + std::string(100, 'a') + "\r\n";
  }
  SendAll(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n");
  const auto t0 = std::chrono::steady_clock::now();
  const auto elapsed = [&t0] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  bool cut = false;
  size_t sent = 0;  // of `lines`, so that every line goes whole
  while (!cut && elapsed() < 10.0) {
    const ssize_t n = send(fd, lines.data() + sent, lines.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent = (sent + static_cast<size_t>(n)) % lines.size();
    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      cut = true;  // reset by the server
    }
  }
  const double waited = elapsed();
  close(fd);
  EXPECT_TRUE(cut) << "still sending headers after " << waited << " s";
  EXPECT_LT(waited, 6.0);
  const std::string got = TimedHealth(s.http_port, 10).first;
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 200") << got;
}

// Clients that trickle header lines to hold the HTTP threads (slowloris) are cut off once their
// headers are not in after --http_header_timeout_s, and a request queued behind them is
// served then.
TEST(HttpTest, SlowHeadersAreCutOffAndTheQueuedRequestServed) {
  HttpServer s({"--http_threads=2", "--http_header_timeout_s=2"});
  std::vector<int> slow;
  for (int i = 0; i < 2; ++i) {
    const int fd = Connect(s.http_port);
    ASSERT_GE(fd, 0);
    SendAll(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n");
    slow.push_back(fd);
  }
  std::atomic<bool> trickling{true};
  std::thread trickle([&] {
    while (trickling.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      for (int fd : slow) SendAll(fd, "X-A: b\r\n");
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the slow ones hold both threads
  const auto [got, waited] = TimedHealth(s.http_port, 15);
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 200") << got;
  EXPECT_LT(waited, 8.0);
  trickling = false;
  trickle.join();
  for (int slow_fd : slow) ExpectCutOff(slow_fd, 2);  // no response was ever due
}

// Connections that send nothing, more of them than there are HTTP threads (a flood, or
// clients holding many idle connections), hold every thread and queue the others. While
// connections outnumber the threads, the watcher gives those not yet served a response 1 s
// instead of --http_header_timeout_s (10 s), so a request waits about that long, not ten
// (before this, with 3,000 idle connections against the default 256 threads, a request
// waited 12.9 s).
TEST(HttpTest, AFloodOfIdleConnectionsDelaysARequestBriefly) {
  HttpServer s({"--http_threads=4"});
  std::vector<int> idle;
  for (int i = 0; i < 64; ++i) {
    const int fd = Connect(s.http_port);
    ASSERT_GE(fd, 0);
    if (i % 2 == 0) SendAll(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n");  // and no more
    idle.push_back(fd);
  }
  const auto [got, waited] = TimedHealth(s.http_port, 30);
  EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 200") << got;
  EXPECT_LT(waited, 6.0);
  for (int idle_fd : idle) ExpectCutOff(idle_fd, 5);  // by then, or soon after
}

// Each connection is a file descriptor: the server raises its soft limit on them (often
// 1,024) to the hard one, so a thousand idle connections do not stop it accepting (HTTP or
// gRPC) or opening files.
TEST(HttpTest, TheServerRaisesItsOpenFilesLimitToTheHardOne) {
  rlimit ours{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &ours), 0);
  if (ours.rlim_max <= 256) GTEST_SKIP() << "hard limit " << ours.rlim_max;
  rlimit low = ours;
  low.rlim_cur = 256;  // inherited by the server
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  HttpServer s;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &ours), 0);
  std::ifstream limits("/proc/" + std::to_string(s.server.pid()) + "/limits");
  std::string line;
  std::string found;
  while (std::getline(limits, line)) {
    if (line.starts_with("Max open files")) found = line;
  }
  const std::string hard =
      ours.rlim_max == RLIM_INFINITY ? "unlimited" : std::to_string(ours.rlim_max);
  EXPECT_TRUE(std::regex_search(found, std::regex("Max open files +" + hard + " +" + hard + " ")))
      << found;
}

// Scoring generates nothing, so a prompt may fill the whole context: echo with max_tokens 0 over
// HTTP and Score over gRPC take exactly max_model_len tokens (and no more); a request that
// generates needs one position more.
TEST(HttpTest, ScoringMayFillTheWholeContext) {
  HttpServer s({"--max_model_len=64"});
  auto client = s.Client();
  auto stub = s.Stub();
  json prompt = json::array();
  for (int i = 0; i < 64; ++i) prompt.push_back(5 + i % 40);
  const json body = {{"prompt", prompt}, {"echo", true}, {"logprobs", 1}, {"temperature", 0}};
  json scoring = body;
  scoring["max_tokens"] = 0;
  const Answer full = Post(client, "/v1/completions", scoring);
  ASSERT_EQ(full.status, 200) << full.raw;
  EXPECT_EQ(full.body["choices"][0]["logprobs"]["token_logprobs"].size(), 64u);
  json generating = body;
  generating["max_tokens"] = 1;
  EXPECT_EQ(Post(client, "/v1/completions", generating).status, 400);
  json over = scoring;
  over["prompt"].push_back(7);
  EXPECT_EQ(Post(client, "/v1/completions", over).status, 400);

  for (const int context_len : {63, 64}) {
    v1::ScoreRequest score;
    for (int i = 0; i < context_len; ++i) score.mutable_context()->mutable_token_ids()->add_ids(5);
    score.add_continuations()->mutable_token_ids()->add_ids(9);
    v1::ScoreResponse scored;
    grpc::ClientContext ctx;
    const grpc::Status status = stub->Score(&ctx, score, &scored);
    if (context_len + 1 <= 64) {
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(scored.scores(0).num_tokens(), 1);
    } else {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_NE(status.error_message().find("context holds 64 tokens"), std::string::npos)
          << status.error_message();
    }
  }
}

// `curl -d` labels its body application/x-www-form-urlencoded. The body is read as JSON all
// the same, at any size: cpp-httplib used to parse such a body as a form and refuse one over
// 8 KiB with a 413.
TEST(HttpTest, BodiesAreJsonWhateverTheirContentTypeSays) {
  HttpServer s;
  auto client = s.Client();
  json body = {{"prompt", "And God said"}, {"max_tokens", 4}, {"temperature", 0}};
  const Answer expected = Post(client, "/v1/completions", body);
  ASSERT_EQ(expected.status, 200) << expected.raw;
  body["user"] = std::string(20000, 'x');  // ignored, as OpenAI does; the body is now 20 KB
  for (const char* type : {"application/x-www-form-urlencoded", "text/plain", "application/json"}) {
    SCOPED_TRACE(type);
    auto res = client.Post("/v1/completions", body.dump(), type);
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(json::parse(res->body)["choices"][0]["text"], expected.body["choices"][0]["text"]);
  }
  auto tokenized = client.Post("/tokenize", json{{"prompt", std::string(9000, 'a')}}.dump(),
                               "application/x-www-form-urlencoded");
  ASSERT_TRUE(tokenized);
  EXPECT_EQ(tokenized->status, 200) << tokenized->body;
}

// usage.prompt_tokens_details.cached_tokens: the prompt tokens the prefix cache served, as
// OpenAI reports them: none the first time, the prompt's whole blocks the second.
TEST(HttpTest, UsageCountsCachedPromptTokens) {
  HttpServer s;
  auto client = s.Client();
  json prompt = json::array();
  for (int i = 0; i < 40; ++i) prompt.push_back(5 + i);
  const json body = {{"prompt", prompt}, {"max_tokens", 2}, {"temperature", 0}};
  const Answer first = Post(client, "/v1/completions", body);
  ASSERT_EQ(first.status, 200) << first.raw;
  EXPECT_EQ(first.body["usage"]["prompt_tokens"], 40);
  EXPECT_EQ(first.body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  json streamed = body;
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}};
  auto res = client.Post("/v1/completions", streamed.dump(), "application/json");
  ASSERT_TRUE(res);
  const std::vector<std::string> events = SseData(res->body);
  ASSERT_GE(events.size(), 2u);
  const json usage = json::parse(events[events.size() - 2])["usage"];
  const int cached = usage["prompt_tokens_details"]["cached_tokens"];
  EXPECT_GE(cached, 16) << usage;
  EXPECT_LT(cached, 40) << usage;
  EXPECT_EQ(cached % 16, 0) << usage;
}

// CORS as vLLM answers it (--allowed_origins, "*" by default): preflights from an allowed
// origin get 204 with what they asked for, others 400; responses name the allowed origin,
// errors too; an empty list turns CORS off.
TEST(HttpTest, CorsLetsAllowedPagesCall) {
  const httplib::Headers preflight_from_a = {{"Origin", "http://a.example"},
                                             {"Access-Control-Request-Method", "POST"},
                                             {"Access-Control-Request-Headers", "authorization"}};
  httplib::Headers preflight_from_b = preflight_from_a;
  preflight_from_b.find("Origin")->second = "http://b.example";
  const std::string body = json{{"prompt", "And God said"}, {"max_tokens", 2}}.dump();
  const std::string bad_body = json{{"prompt", ""}, {"max_tokens", 2}}.dump();
  {
    HttpServer s;
    auto client = s.Client();
    auto pre = client.Options("/v1/chat/completions", preflight_from_b);
    ASSERT_TRUE(pre);
    EXPECT_EQ(pre->status, 204);
    EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Origin"), "*");
    EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Headers"), "authorization");
    EXPECT_NE(pre->get_header_value("Access-Control-Allow-Methods").find("POST"),
              std::string::npos);
    for (const std::string* b : {&body, &bad_body}) {
      auto res =
          client.Post("/v1/completions", {{"Origin", "http://b.example"}}, *b, "application/json");
      ASSERT_TRUE(res);
      EXPECT_EQ(res->status, b == &body ? 200 : 400);
      EXPECT_EQ(res->get_header_value("Access-Control-Allow-Origin"), "*");
    }
    auto no_origin = client.Post("/v1/completions", body, "application/json");
    ASSERT_TRUE(no_origin);
    EXPECT_FALSE(no_origin->has_header("Access-Control-Allow-Origin"));
  }
  {
    HttpServer s({"--allowed_origins=http://a.example, http://c.example"});
    auto client = s.Client();
    auto pre_a = client.Options("/v1/completions", preflight_from_a);
    ASSERT_TRUE(pre_a);
    EXPECT_EQ(pre_a->status, 204);
    EXPECT_EQ(pre_a->get_header_value("Access-Control-Allow-Origin"), "http://a.example");
    EXPECT_EQ(pre_a->get_header_value("Vary"), "Origin");
    auto pre_b = client.Options("/v1/completions", preflight_from_b);
    ASSERT_TRUE(pre_b);
    EXPECT_EQ(pre_b->status, 400);
    EXPECT_FALSE(pre_b->has_header("Access-Control-Allow-Origin"));
    auto from_b =
        client.Post("/v1/completions", {{"Origin", "http://b.example"}}, body, "application/json");
    ASSERT_TRUE(from_b);
    EXPECT_EQ(from_b->status, 200);
    EXPECT_FALSE(from_b->has_header("Access-Control-Allow-Origin"));
    auto from_c =
        client.Post("/v1/completions", {{"Origin", "http://c.example"}}, body, "application/json");
    ASSERT_TRUE(from_c);
    EXPECT_EQ(from_c->get_header_value("Access-Control-Allow-Origin"), "http://c.example");
  }
  {
    HttpServer s({"--allowed_origins="});
    auto client = s.Client();
    auto pre = client.Options("/v1/completions", preflight_from_a);
    ASSERT_TRUE(pre);
    EXPECT_EQ(pre->status, 404);
    auto res =
        client.Post("/v1/completions", {{"Origin", "http://a.example"}}, body, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_FALSE(res->has_header("Access-Control-Allow-Origin"));
  }
}

TEST(HttpTest, ErrorsHaveOpenAIsShapeAndTheRightStatus) {
  HttpServer s({"--auth_token=sesame", "--max_message_bytes=65536"});
  auto client = s.Client();
  const httplib::Headers auth = {{"Authorization", "Bearer sesame"}};
  auto expect_error = [](const Answer& a, int status, const std::string& param) {
    EXPECT_EQ(a.status, status) << a.raw;
    ASSERT_TRUE(a.body.is_object()) << a.raw;
    ASSERT_TRUE(a.body.contains("error")) << a.raw;
    const json& e = a.body["error"];
    EXPECT_TRUE(e["message"].is_string());
    EXPECT_TRUE(e["type"].is_string());
    EXPECT_TRUE(e.contains("code"));
    if (param.empty()) {
      EXPECT_TRUE(e["param"].is_null()) << a.raw;
    } else {
      EXPECT_EQ(e["param"], param) << a.raw;
    }
  };
  const json good = {{"prompt", "And God said"}, {"max_tokens", 2}};
  expect_error(Post(client, "/v1/completions", good), 401, "");
  expect_error(Post(client, "/v1/completions", good, {{"Authorization", "Bearer nope"}}), 401, "");
  ASSERT_EQ(Post(client, "/v1/completions", good, auth).status, 200);
  // The scheme is case-insensitive.
  ASSERT_EQ(Post(client, "/v1/completions", good, {{"Authorization", "bearer sesame"}}).status,
            200);
  json bad = good;
  bad["temperature"] = -1;
  expect_error(Post(client, "/v1/completions", bad, auth), 400, "temperature");
  bad = good;
  bad["max_tokens"] = "many";
  expect_error(Post(client, "/v1/completions", bad, auth), 400, "max_tokens");
  bad = good;
  bad["stop"] = json::array({1, 2});
  expect_error(Post(client, "/v1/completions", bad, auth), 400, "stop");
  bad = good;
  bad["prompt"] = json::array({json::array({1, 2}), 3});
  expect_error(Post(client, "/v1/completions", bad, auth), 400, "prompt");
  bad = good;
  bad["prompt"] = json::array({999999999});
  expect_error(Post(client, "/v1/completions", bad, auth), 400, "prompt");
  bad = good;
  bad.erase("prompt");
  expect_error(Post(client, "/v1/completions", bad, auth), 400, "prompt");
  bad = good;
  bad["model"] = "gpt-4";
  const Answer not_found = Post(client, "/v1/completions", bad, auth);
  expect_error(not_found, 404, "model");
  EXPECT_EQ(not_found.body["error"]["code"], "model_not_found");
  // Chat on a model without a chat template names the model.
  const Answer chat = Post(client, "/v1/chat/completions",
                           {{"messages", {{{"role", "user"}, {"content", "hi"}}}}}, auth);
  expect_error(chat, 400, "messages");
  EXPECT_NE(chat.raw.find("spanserve-span-12l"), std::string::npos);
  // Bodies: not JSON, too deep, too large.
  httplib::Client raw_client = s.Client();
  raw_client.set_default_headers(auth);
  expect_error(PostRaw(raw_client, "/v1/completions", "{\"prompt\": "), 400, "");
  expect_error(
      PostRaw(raw_client, "/v1/completions", std::string(5000, '[') + std::string(5000, ']')), 400,
      "");
  expect_error(PostRaw(raw_client, "/v1/completions", std::string(100000, ' ')), 413, "");
  expect_error(Post(client, "/v1/nothing", good, auth), 404, "");
  // Still serving.
  EXPECT_EQ(Post(client, "/v1/completions", good, auth).status, 200);
}

TEST(HttpTest, AFullQueueAnswers429) {
  HttpServer s({"--max_num_seqs=1", "--max_waiting_requests=1"});
  constexpr int kCalls = 6;
  std::vector<Answer> answers(kCalls);
  std::vector<double> seconds_taken(kCalls);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      auto c = s.Client();
      const auto start = std::chrono::steady_clock::now();
      answers[i] = Post(c, "/v1/completions",
                        {{"prompt", "And God said"}, {"max_tokens", 200}, {"ignore_eos", true}});
      seconds_taken[i] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0;
  int refused = 0;
  for (int i = 0; i < kCalls; ++i) {
    if (answers[i].status == 200) ++ok;
    if (answers[i].status == 429) {
      ++refused;
      EXPECT_EQ(answers[i].body["error"]["type"], "rate_limit_error");
      EXPECT_LT(seconds_taken[i], 1.0);  // refused at once, not after waiting
    }
  }
  EXPECT_EQ(ok + refused, kCalls);
  EXPECT_GE(ok, 1);
  EXPECT_GE(refused, 1);
}

TEST(HttpTest, AClientThatDisconnectsCancelsItsRequestAndFreesItsBlocks) {
  const int metrics_port = FreePort();
  HttpServer s({"--metrics_address=127.0.0.1:" + std::to_string(metrics_port)});
  auto stub = s.Stub();
  for (bool stream : {true, false}) {
    const int fd = Connect(s.http_port);
    ASSERT_GE(fd, 0);
    const json body = {{"prompt", "And God said"},
                       {"max_tokens", 100000},
                       {"ignore_eos", true},
                       {"stream", stream}};
    SendAll(fd, HttpRequestText(s.http_port, body.dump()));
    // Running, then the client goes.
    bool running = false;
    for (int i = 0; i < 500 && !running; ++i) {
      running = Info(*stub).num_requests_running() == 1;
      if (!running) std::this_thread::sleep_for(milliseconds(10));
    }
    ASSERT_TRUE(running) << "stream=" << stream;
    close(fd);
    EXPECT_TRUE(WaitIdle(*stub)) << "stream=" << stream;
  }
  // Both were cancelled, not run on to the end of the context while tokens kept coming.
  httplib::Client metrics("127.0.0.1", metrics_port);
  const auto scraped = metrics.Get("/metrics");
  ASSERT_TRUE(scraped);
  EXPECT_NE(scraped->body.find("spanserve_request_success_total{finished_reason=\"cancelled\","
                               "model_name=\"spanserve-span-12l\"} 2"),
            std::string::npos)
      << scraped->body;
  // And it still answers.
  auto c = s.Client();
  EXPECT_EQ(Post(c, "/v1/completions", {{"prompt", "And God said"}, {"max_tokens", 2}}).status,
            200);
}

TEST(HttpTest, MisbehavingClientsHarmNoOtherRequest) {
  HttpServer s({"--max_message_bytes=1048576"});
  // A bystander streams the whole time.
  std::string bystander_body;
  int bystander_status = 0;
  std::thread bystander([&] {
    auto c = s.Client();
    auto res = c.Post("/v1/completions",
                      json({{"prompt", "And God said"},
                            {"max_tokens", 200},
                            {"ignore_eos", true},
                            {"temperature", 0},
                            {"stream", true}})
                          .dump(),
                      "application/json");
    if (res) {
      bystander_status = res->status;
      bystander_body = res->body;
    }
  });
  // Slow-loris clients: half a request, then silence.
  std::vector<int> loris;
  for (int i = 0; i < 8; ++i) {
    const int fd = Connect(s.http_port);
    SendAll(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"pro");
    loris.push_back(fd);
  }
  // Garbage, a lying Content-Length, a huge body, wrong types, a connection cut mid-body.
  for (const std::string& junk :
       {std::string("GARBAGE\r\n\r\n"),
        std::string("POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n"),
        HttpRequestText(s.http_port, std::string(2 << 20, 'x')),
        HttpRequestText(s.http_port, "{\"prompt\": {\"a\": 1}}"),
        std::string("POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pr")}) {
    const int fd = Connect(s.http_port);
    SendAll(fd, junk);
    shutdown(fd, SHUT_WR);
    char buf[4096];
    while (recv(fd, buf, sizeof(buf), 0) > 0) {
    }
    close(fd);
  }
  // Others are served meanwhile, promptly.
  auto c = s.Client();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Post(c, "/v1/completions", {{"prompt", "In the beginning"}, {"max_tokens", 2}}).status,
            200);
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(10));
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  bystander.join();
  for (int fd : loris) close(fd);
  EXPECT_EQ(bystander_status, 200);
  const std::vector<std::string> events = SseData(bystander_body);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "[DONE]");
  int tokens_events = 0;
  for (const std::string& e : events) {
    if (e != "[DONE]" && json::parse(e)["choices"][0]["finish_reason"] == "length") ++tokens_events;
  }
  EXPECT_EQ(tokens_events, 1);
}

TEST(HttpTest, ModelsTokenizeDetokenizeAndHealth) {
  HttpServer s({"--model=spanserve-span-12l=" + DefaultModelDir() + ",moe=" + DefaultModelDir() +
                "/../spanserve-span-moe-12l"});
  auto c = s.Client();
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  const json m = json::parse(models->body);
  EXPECT_EQ(m["object"], "list");
  // The second model may still be loading; the default one is listed.
  ASSERT_GE(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "spanserve-span-12l");
  // GET /v1/models/{model}: the same entry, or a 404 in OpenAI's shape.
  auto one = c.Get("/v1/models/spanserve-span-12l");
  ASSERT_TRUE(one);
  EXPECT_EQ(one->status, 200);
  EXPECT_EQ(json::parse(one->body), m["data"][0]);
  auto none = c.Get("/v1/models/gpt-4");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 404);
  EXPECT_EQ(json::parse(none->body)["error"]["code"], "model_not_found");
  const Answer tok = Post(c, "/tokenize", {{"prompt", "And God said"}});
  ASSERT_EQ(tok.status, 200) << tok.raw;
  EXPECT_EQ(tok.body["count"], tok.body["tokens"].size());
  const Answer detok = Post(c, "/detokenize", {{"tokens", tok.body["tokens"]}});
  ASSERT_EQ(detok.status, 200) << detok.raw;
  EXPECT_EQ(detok.body["prompt"], "And God said");
  EXPECT_EQ(Post(c, "/detokenize", {{"tokens", json::array({-1})}}).status, 400);
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

TEST(HttpTest, DrainFinishesWhatRunsAndRefusesWhatComes) {
  HttpServer s({"--drain_grace_s=30"});
  auto stub = s.Stub();
  int status = 0;
  json body;
  std::thread running([&] {
    auto c = s.Client();
    const Answer a = Post(c, "/v1/completions",
                          {{"prompt", "And God said"}, {"max_tokens", 300}, {"ignore_eos", true}});
    status = a.status;
    body = a.body;
  });
  for (int i = 0; i < 500 && Info(*stub).num_requests_running() == 0; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  s.server.Signal(SIGTERM);
  // New requests are refused (503) until the front closes.
  bool refused = false;
  for (int i = 0; i < 200 && !refused; ++i) {
    auto c = s.Client();
    const Answer a = Post(c, "/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}});
    refused = a.status == 503;
    if (a.status == 0) break;  // already closed
    std::this_thread::sleep_for(milliseconds(5));
  }
  EXPECT_TRUE(refused);
  running.join();
  EXPECT_EQ(status, 200);
  EXPECT_EQ(body["usage"]["completion_tokens"], 300);
  EXPECT_EQ(s.server.Wait(seconds(60)), std::optional<int>(0));
}

TEST(HttpTest, HttpsWithTheServersCertificate) {
  const std::string dir = MakeTempDir("https");
  const std::string cmd =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
      dir + "/key.pem -out " + dir + "/cert.pem 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  HttpServer s({"--tls_cert=" + dir + "/cert.pem", "--tls_key=" + dir + "/key.pem"},
               /*wait_serving=*/false);
  httplib::SSLClient c("127.0.0.1", s.http_port);
  c.set_ca_cert_path((dir + "/cert.pem").c_str());
  c.enable_server_certificate_verification(true);
  c.set_read_timeout(60, 0);
  std::shared_ptr<httplib::Response> res;
  const auto end = std::chrono::steady_clock::now() + seconds(60);
  do {
    auto r = c.Post("/v1/completions", json({{"prompt", "And God said"}, {"max_tokens", 3}}).dump(),
                    "application/json");
    if (r) res = std::make_shared<httplib::Response>(r.value());
    if (res && res->status == 200) break;
    std::this_thread::sleep_for(milliseconds(100));
  } while (std::chrono::steady_clock::now() < end);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  // Plain HTTP is not answered.
  httplib::Client plain("127.0.0.1", s.http_port);
  plain.set_read_timeout(5, 0);
  auto r = plain.Get("/health");
  EXPECT_TRUE(!r || r->status != 200);
}

}  // namespace
}  // namespace spanserve::testing
