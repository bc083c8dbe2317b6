#include "server/http_front.h"

#include <dirent.h>
#include <malloc.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "common/text.h"
#include "nlohmann/json.hpp"
#include "server/calls.h"
#include "server/convert.h"
#include "server/openai_api.h"
#include "server/responses_api.h"
#include "server/tcp_bytes.h"

namespace spanserve::server {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// How often a handler waiting on the engine looks whether its client is still there.
constexpr std::chrono::milliseconds kPollInterval(100);

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(DumpJson(body), "application/json");
}

void SendError(httplib::Response& res, const absl::Status& status) {
  SendJson(res, HttpStatusFor(status.code()), OpenAIError(status));
}

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ---- the connection's socket, to see a client leave while its request waits ----

// The first of this process's TCP sockets whose local port is `local_port` and for which
// pred(fd) holds; -1 when none.
template <typename Pred>
int FindSocket(int local_port, Pred pred) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    int fd = 0;
    if (!absl::SimpleAtoi(entry->d_name, &fd)) continue;
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0) continue;
    if (local.ss_family != AF_INET && local.ss_family != AF_INET6) continue;
    char port[NI_MAXSERV];
    if (getnameinfo(reinterpret_cast<sockaddr*>(&local), len, nullptr, 0, port, sizeof(port),
                    NI_NUMERICSERV) == 0 &&
        std::atoi(port) == local_port && pred(fd)) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

// cpp-httplib hands handlers no socket; the connection is found by its two ports (and the
// peer's address) among the process's sockets. TLS connections name theirs.
int ConnectionFd(const httplib::Request& req) {
  if (req.ssl != nullptr) return SSL_get_fd(req.ssl);
  return FindSocket(req.local_port, [&req](int fd) {
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    char host[NI_MAXHOST];
    char port[NI_MAXSERV];
    return getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == 0 &&
           getnameinfo(reinterpret_cast<sockaddr*>(&peer), len, host, sizeof(host), port,
                       sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) == 0 &&
           std::atoi(port) == req.remote_port && req.remote_addr == host;
  });
}

constexpr int kFdUnknown = -2;  // not looked up yet: only a request that waits needs it

// The peer closed the connection (or it broke). Data the client pipelined is not a close.
bool ClientGone(int fd) {
  if (fd < 0) return false;
  pollfd p{.fd = fd, .events = POLLRDHUP, .revents = 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

// ---- engine outputs of every choice of one HTTP request, in arrival order ----

struct Event {
  int choice = 0;
  engine::RequestOutput output;
};

class Fanout {
 public:
  // Engine thread.
  using Orphan = std::function<void(const engine::FinalInfo&)>;

  // Engine thread.
  void Push(int choice, engine::RequestOutput&& output) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (orphan_) {
        if (output.final) orphan_(*output.final);
        return;
      }
      events_.push_back({choice, std::move(output)});
    }
    cv_.notify_one();
  }
  // The handler is done with the outputs: finals still to come (and queued ones) go to
  // `orphan` (the request log and metrics count every engine request once).
  void Close(Orphan orphan) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Event& e : events_) {
      if (e.output.final) orphan(*e.output.final);
    }
    events_.clear();
    orphan_ = std::move(orphan);
  }
  std::vector<Event> Wait(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [this] { return !events_.empty(); });
    std::vector<Event> out(std::make_move_iterator(events_.begin()),
                           std::make_move_iterator(events_.end()));
    events_.clear();
    return out;
  }
  void AddStream(std::shared_ptr<engine::RequestStream> stream) {
    std::lock_guard<std::mutex> lock(mu_);
    streams_.push_back(std::move(stream));
  }
  void CancelAll() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& s : streams_) s->Cancel();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  std::vector<std::shared_ptr<engine::RequestStream>> streams_;
  Orphan orphan_;
};

// One call counted in flight (the drain waits for it) for as long as this lives.
class InFlight {
 public:
  explicit InFlight(SpanServeService* service) : service_(service) { service_->CallStarted(); }
  ~InFlight() { service_->CallFinished(); }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  SpanServeService* const service_;
};

// ---- one request's choices and their JSON ----

struct LogprobEntry {
  int32_t token = 0;
  std::optional<float> logprob;  // unset: the prompt's first token (no context)
  std::vector<engine::TokenLogprob> top;
};

struct Choice {
  int index = 0;
  int prompt_index = 0;
  std::vector<int32_t> prompt_ids;  // echo and return_token_ids only
  std::string prompt_text;          // echo only
  // vLLM's prompt_logprobs: the prompt's positions after the first (not streamed).
  std::vector<engine::PositionLogprobs> prompt_logprobs;
  std::vector<int32_t> token_ids;  // return_token_ids, not streamed: the generated ids
  std::string text;                // non-streaming: all of it
  std::vector<LogprobEntry> logprobs;
  int64_t text_offset = 0;  // bytes of text so far (logprobs' text_offset)
  bool started = false;     // its first output was seen
  std::optional<engine::FinalInfo> final;
  // Tool calling: bytes of `text` (which then holds all of the output, streaming too) sent
  // as content so far, and the calls read out of it at the end.
  size_t streamed = 0;
  std::optional<ToolCallOutput> tools;
  // A reasoning model's <think> text, split from `text` (ServedModel::split_reasoning).
  std::optional<ReasoningSplitter> splitter;
  std::string reasoning;
};

class Exchange {
 public:
  Exchange(SpanServeService* service, ServedModel* model, OpenAIRequest request,
           std::string client_request_id, int64_t max_logprobs)
      : service_(service),
        model_(model),
        request_(std::move(request)),
        chat_(request_.endpoint == OpenAIEndpoint::kChatCompletions),
        client_request_id_(std::move(client_request_id)),
        public_id_(service->NewPublicRequestId()),
        id_(absl::StrFormat("%s-%016x", chat_ ? "chatcmpl" : "cmpl", public_id_)),
        created_(UnixNow()),
        tool_format_(model->chat_template().ok() ? model->chat_template()->tool_call_format()
                                                 : chat::ToolCallFormat::kNone),
        reads_tools_(chat_ && ReadsToolCalls(request_, tool_format_)),
        fanout_(std::make_shared<Fanout>()),
        max_logprobs_(max_logprobs) {}

  ~Exchange() {
    fanout_->CancelAll();
    fanout_->Close([service = service_, model = model_, rpc = Rpc(), public_id = public_id_,
                    client_id = client_request_id_](const engine::FinalInfo& final) {
      LogRequestFinished(*service, *model, rpc, final, public_id, client_id,
                         absl::CancelledError("the client went away"));
    });
  }

  // Builds every choice's engine request and submits them; on an error nothing stays in
  // the engine.
  absl::Status Submit() {
    const int n = request_.n;
    std::vector<engine::Request> built;
    int64_t echo_logprobs = 0;
    for (size_t p = 0; p < request_.prompts.size(); ++p) {
      const v1::GenerateRequest& proto = request_.prompts[p];
      ASSIGN_OR_RETURN(engine::Request base, OpenAIEngineRequest(request_, p, *model_));
      // DeepSeek-R1's generation prompt opens <think>: its output starts in the reasoning.
      // A constrained output (JSON mode, a schema, a forced tool call) has no room for
      // thinking: it is all content.
      const bool split = chat_ && model_->split_reasoning() &&
                         base.sampling.response_format == engine::ResponseFormat::kText;
      const bool starts_in_reasoning =
          split &&
          PromptEndsInReasoning(DecodeIds(std::vector<int32_t>(
              base.prompt.end() - std::min<size_t>(base.prompt.size(), 16), base.prompt.end())));
      for (int j = 0; j < n; ++j) {
        Choice& c = choices_.emplace_back();
        c.index = static_cast<int>(p) * n + j;
        c.prompt_index = static_cast<int>(p);
        if (split) c.splitter.emplace(starts_in_reasoning);
        if (request_.echo || request_.return_token_ids) c.prompt_ids = base.prompt;
        if (request_.echo) {
          // A truncated prompt echoes what was kept of it.
          c.prompt_text =
              proto.prompt().has_text() && !proto.sampling().has_truncate_prompt_tokens()
                  ? proto.prompt().text()
                  : DecodeIds(base.prompt);
        }
        if (request_.echo && request_.logprobs && !request_.stream) {
          // Known now, before any work: the echoed prompts' entries alone, at the least
          // (the first token has none; each other has its logprob and the alternatives,
          // and the token itself among them if it is not one).
          echo_logprobs +=
              1 + static_cast<int64_t>(base.prompt.size() - 1) * (1 + *request_.logprobs);
          if (echo_logprobs > max_logprobs_) {
            return ParamError("logprobs", TooManyLogprobs("the echoed prompts' logprobs"));
          }
        }
        if (request_.prompt_logprobs) {
          // vLLM's prompt_logprobs likewise (never streamed).
          echo_logprobs +=
              1 + static_cast<int64_t>(base.prompt.size() - 1) * (1 + *request_.prompt_logprobs);
          if (echo_logprobs > max_logprobs_) {
            return ParamError("prompt_logprobs", TooManyLogprobs("the prompts' logprobs"));
          }
        }
        engine::Request r = j + 1 < n ? base : std::move(base);
        // n samples of one prompt with one seed would be n copies.
        if (j > 0 && r.sampling.seed) r.sampling.seed = *r.sampling.seed + j;
        built.push_back(std::move(r));
      }
    }
    for (size_t i = 0; i < built.size(); ++i) {
      built[i].on_output = [fanout = fanout_, i](engine::RequestOutput&& out) {
        fanout->Push(static_cast<int>(i), std::move(out));
      };
      absl::StatusOr<engine::RequestHandle> handle = model_->engine().Submit(std::move(built[i]));
      if (!handle.ok()) {
        fanout_->CancelAll();
        return handle.status();
      }
      fanout_->AddStream(handle->stream);
      ++submitted_;
    }
    return absl::OkStatus();
  }

  int remaining() const { return submitted_ - finished_; }
  const std::string& id() const { return id_; }
  int64_t created() const { return created_; }
  const std::string& model_name() const { return model_->name(); }
  const absl::Status& error() const { return error_; }
  Fanout& fanout() { return *fanout_; }

  // Folds engine outputs into the choices; with `stream`, returns them as SSE events.
  std::string Apply(std::vector<Event>& events, bool stream) {
    std::string sse;
    for (Event& e : events) {
      Choice& c = choices_[e.choice];
      json delta_logprobs;
      std::string delta_text;
      const bool first = !c.started;
      c.started = true;
      if (first && request_.echo) {
        delta_text = c.prompt_text;
        if (request_.logprobs && !c.prompt_ids.empty()) {
          std::vector<LogprobEntry> entries;
          entries.push_back({c.prompt_ids[0], std::nullopt, {}});
          for (const engine::PositionLogprobs& lp : e.output.prompt_logprobs) {
            // The engine may have computed more alternatives, for prompt_logprobs.
            const size_t top = std::min<size_t>(lp.top.size(), *request_.logprobs);
            entries.push_back({lp.token, lp.logprob, {lp.top.begin(), lp.top.begin() + top}});
          }
          AddLogprobs(c, entries, stream ? &delta_logprobs : nullptr, /*prompt=*/true);
        }
      }
      if (first && request_.prompt_logprobs) c.prompt_logprobs = e.output.prompt_logprobs;
      if (request_.return_token_ids && !stream) {
        c.token_ids.insert(c.token_ids.end(), e.output.token_ids.begin(), e.output.token_ids.end());
      }
      delta_text += e.output.text;
      if (request_.logprobs) {
        std::vector<LogprobEntry> entries;
        for (const engine::PositionLogprobs& lp : e.output.logprobs) {
          entries.push_back({lp.token, lp.logprob, lp.top});
        }
        AddLogprobs(c, entries, stream ? &delta_logprobs : nullptr, /*prompt=*/false);
      }
      std::string reasoning_delta;
      if (c.splitter) {
        std::string content_delta;
        c.splitter->Feed(delta_text, &reasoning_delta, &content_delta);
        if (e.output.final) c.splitter->Finish(&reasoning_delta, &content_delta);
        delta_text = std::move(content_delta);
        if (!stream) c.reasoning += reasoning_delta;
      }
      if (!stream || reads_tools_) c.text += delta_text;
      if (stream && reads_tools_) {
        // Content goes out up to where a tool call may begin; the calls go at the end.
        const size_t upto =
            std::max(c.streamed, StreamableToolText(c.text, c.streamed, request_, tool_format_));
        delta_text = c.text.substr(c.streamed, upto - c.streamed);
        c.streamed = upto;
      }
      std::optional<std::string> finish;
      json tool_calls_delta;
      if (e.output.final) {
        Finish(c, *e.output.final);
        if (reads_tools_) {
          c.tools = ParseToolCalls(c.text, request_, tool_format_);
          if (c.tools->calls.empty()) {
            delta_text += c.text.substr(c.streamed);  // none after all: the rest is content
            c.streamed = c.text.size();
          } else {
            tool_calls_delta = ToolCalls(c, /*with_index=*/true);
          }
        }
        if (error_.ok()) finish = FinishReason(c);
      }
      if (stream && error_.ok()) {
        if (first && chat_)
          sse += SseEvent(ChunkChoice(c, json{{"role", "assistant"}, {"content", ""}},
                                      json(nullptr), std::nullopt));
        if (!tool_calls_delta.is_null()) {
          sse += SseEvent(ChunkChoice(c, json{{"tool_calls", std::move(tool_calls_delta)}},
                                      json(nullptr), std::nullopt));
        }
        if (!delta_text.empty() || !reasoning_delta.empty() || !delta_logprobs.is_null() ||
            finish) {
          json delta = json(delta_text);
          if (chat_) {
            delta = json::object();
            if (!reasoning_delta.empty()) delta["reasoning_content"] = std::move(reasoning_delta);
            if (!delta_text.empty()) delta["content"] = std::move(delta_text);
          }
          json chunk = ChunkChoice(c, std::move(delta), std::move(delta_logprobs), finish);
          if (request_.return_token_ids) {
            // vLLM's: each chunk's ids, the prompt's with the first.
            json& choice = chunk["choices"][0];
            choice["token_ids"] = e.output.token_ids;
            if (first) (chat_ ? chunk : choice)["prompt_token_ids"] = c.prompt_ids;
          }
          sse += SseEvent(chunk);
        } else if (request_.return_token_ids && !e.output.token_ids.empty()) {
          // Ids whose text is held back (a stop string may begin) go out as they come.
          json chunk =
              ChunkChoice(c, chat_ ? json::object() : json(""), json(nullptr), std::nullopt);
          json& choice = chunk["choices"][0];
          choice["token_ids"] = e.output.token_ids;
          if (first) (chat_ ? chunk : choice)["prompt_token_ids"] = c.prompt_ids;
          sse += SseEvent(chunk);
        }
      }
    }
    return sse;
  }

  // The last events of a stream: an error, or usage when asked for; then [DONE].
  std::string StreamEnd() const {
    std::string sse;
    if (!error_.ok()) {
      sse += absl::StrCat("data: ", DumpJson(OpenAIError(error_)), "\n\n");
    } else if (request_.include_usage) {
      json chunk = ChunkHeader();
      chunk["choices"] = json::array();
      chunk["usage"] = Usage();
      sse += absl::StrCat("data: ", DumpJson(chunk), "\n\n");
    }
    sse += "data: [DONE]\n\n";
    return sse;
  }

  // The response's text: each choice's JSON is built and written in turn (a long one's
  // logprobs are most of the response, and its JSON several times its text), so only one
  // choice's is held at a time; the keys come in nlohmann's order ("choices" first), as one
  // json written whole would have them.
  std::string ResponseText() const {
    std::string text = "{\"choices\":[";
    for (const Choice& c : choices_) {
      if (&c != &choices_.front()) text += ',';
      text += DumpJson(ChoiceJson(c));
    }
    text += "],";
    text += std::string_view(DumpJson(ResponseFields())).substr(1);
    return text;
  }
  // The same response whole, as JSON (for /v1/responses, which has one choice).
  json ResponseJson() const {
    json response = ResponseFields();
    response["choices"] = json::array();
    for (const Choice& c : choices_) response["choices"].push_back(ChoiceJson(c));
    return response;
  }

 private:
  // The response's fields but its choices.
  json ResponseFields() const {
    json fields = {{"id", id_},
                   {"object", chat_ ? "chat.completion" : "text_completion"},
                   {"created", created_},
                   {"model", model_->name()},
                   {"usage", Usage()}};
    // vLLM's chat has the prompt's fields once, in the response; completions in each choice.
    if (chat_ && !choices_.empty()) {
      if (request_.prompt_logprobs) fields["prompt_logprobs"] = PromptLogprobs(choices_[0]);
      if (request_.return_token_ids) fields["prompt_token_ids"] = choices_[0].prompt_ids;
    }
    return fields;
  }
  // vLLM's prompt_logprobs: null for the first token, then for each position its token's and
  // the alternatives' {"logprob", "rank", "decoded_token"}, keyed by token id.
  json PromptLogprobs(const Choice& c) const {
    json out = json::array({nullptr});
    for (const engine::PositionLogprobs& lp : c.prompt_logprobs) {
      json position = json::object();
      const size_t top = std::min<size_t>(lp.top.size(), *request_.prompt_logprobs);
      for (size_t k = 0; k < top; ++k) {
        position[std::to_string(lp.top[k].token)] = {{"logprob", lp.top[k].logprob},
                                                     {"rank", k + 1},
                                                     {"decoded_token", TokenText(lp.top[k].token)}};
      }
      position[std::to_string(lp.token)] = {
          {"logprob", lp.logprob}, {"rank", lp.rank}, {"decoded_token", TokenText(lp.token)}};
      out.push_back(std::move(position));
    }
    return out;
  }
  json ChoiceJson(const Choice& c) const {
    json choice = {{"index", c.index},
                   {"finish_reason", FinishReason(c)},
                   {"stop_reason", StopReason(*c.final)}};
    if (chat_) {
      choice["message"] = {{"role", "assistant"}, {"content", c.text}};
      if (model_->split_reasoning()) {
        choice["message"]["reasoning_content"] =
            c.reasoning.empty() ? json(nullptr) : json(c.reasoning);
      }
      if (c.tools && !c.tools->calls.empty()) {
        choice["message"]["content"] = c.tools->content ? json(*c.tools->content) : json(nullptr);
        choice["message"]["tool_calls"] = ToolCalls(c, /*with_index=*/false);
      }
      choice["logprobs"] =
          request_.logprobs ? json{{"content", ChatLogprobs(c.logprobs)}} : json(nullptr);
    } else {
      choice["text"] = c.text;
      json lp = nullptr;
      if (request_.logprobs) {
        lp = CompletionLogprobsInit();
        int64_t offset = 0;
        AppendCompletionLogprobs(c.logprobs, &offset, &lp);
      }
      choice["logprobs"] = std::move(lp);
      if (request_.prompt_logprobs) choice["prompt_logprobs"] = PromptLogprobs(c);
      if (request_.return_token_ids) choice["prompt_token_ids"] = c.prompt_ids;
    }
    if (request_.return_token_ids) choice["token_ids"] = c.token_ids;
    return choice;
  }

  std::string DecodeIds(const std::vector<int32_t>& ids) const {
    const tokenizer::Tokenizer* tok = model_->tokenizer();
    return tok == nullptr ? std::string() : tok->Decode(ids, /*skip_special_tokens=*/false);
  }
  std::string TokenText(int32_t id) const {
    const tokenizer::Tokenizer* tok = model_->tokenizer();
    if (tok == nullptr || request_.tokens_as_ids) return absl::StrCat("token_id:", id);
    return tok->Decode(std::span<const int32_t>(&id, 1), /*skip_special_tokens=*/false);
  }

  void Finish(Choice& c, const engine::FinalInfo& final) {
    c.final = final;
    ++finished_;
    absl::Status status = FinishStatus(final);
    if (!status.ok() && final.reason == engine::FinishReason::kCancelled && service_->draining()) {
      status = absl::UnavailableError(
          "the server shut down before the request finished; retry on another replica");
    }
    if (!status.ok() && error_.ok()) {
      error_ = status;
      fanout_->CancelAll();  // the others would be answered in vain
    }
    LogRequestFinished(*service_, *model_, Rpc(), final, public_id_, client_request_id_, status);
  }

  const char* Rpc() const { return chat_ ? "OpenAI.ChatCompletions" : "OpenAI.Completions"; }

  // "length", "tool_calls" when the model chose to call tools (a named tool_choice, as
  // OpenAI's, says "stop"), else "stop".
  std::string FinishReason(const Choice& c) const {
    if (c.final->reason == engine::FinishReason::kLength) return "length";
    if (c.tools && !c.tools->calls.empty() &&
        request_.tool_choice != OpenAIRequest::ToolChoice::kNamed) {
      return "tool_calls";
    }
    return "stop";
  }
  // The choice's tool calls as OpenAI writes them; in a stream's delta each has its index.
  json ToolCalls(const Choice& c, bool with_index) const {
    json calls = json::array();
    for (size_t k = 0; k < c.tools->calls.size(); ++k) {
      json call = {{"id", ToolCallId(c.index, k)},
                   {"type", "function"},
                   {"function",
                    {{"name", c.tools->calls[k].first}, {"arguments", c.tools->calls[k].second}}}};
      if (with_index) call["index"] = k;
      calls.push_back(std::move(call));
    }
    return calls;
  }
  // OpenAI's form, "call_" and 24 hex digits, unique in the server's run; for a Mistral
  // template, whose conversations refuse any other, 9 letters and digits.
  std::string ToolCallId(int index, size_t k) const {
    if (tool_format_ != chat::ToolCallFormat::kMistral) {
      return absl::StrFormat("call_%016x%04x%04x", public_id_, index, k);
    }
    // splitmix64 of the same three numbers, in base 62.
    uint64_t z = public_id_ * 0x10000u + static_cast<uint64_t>(index) * 0x100u + k;
    z += 0x9e3779b97f4a7c15u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    z ^= z >> 31;
    static constexpr char kDigits[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    std::string id(9, '0');
    for (char& ch : id) {
      ch = kDigits[z % 62];
      z /= 62;
    }
    return id;
  }
  static json StopReason(const engine::FinalInfo& final) {
    if (final.stop_string) return *final.stop_string;
    if (final.stop_token) return *final.stop_token;
    return nullptr;
  }

  // OpenAI's usage; prompt_tokens_details.cached_tokens: the prompt tokens the prefix cache
  // served (the first choice's, where n > 1, as prompt_tokens counts each prompt once).
  json Usage() const {
    int64_t prompt = 0;
    int64_t cached = 0;
    int64_t completion = 0;
    int last_prompt = -1;
    for (const Choice& c : choices_) {
      if (!c.final) continue;
      if (c.prompt_index != last_prompt) {  // once a prompt
        prompt += c.final->prompt_tokens;
        cached += c.final->cached_prompt_tokens;
      }
      last_prompt = c.prompt_index;
      completion += c.final->generated_tokens;
    }
    return {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"total_tokens", prompt + completion},
            {"prompt_tokens_details", {{"cached_tokens", cached}}}};
  }

  static json CompletionLogprobsInit() {
    return {{"tokens", json::array()},
            {"token_logprobs", json::array()},
            {"top_logprobs", json::array()},
            {"text_offset", json::array()}};
  }
  void AppendCompletionLogprobs(const std::vector<LogprobEntry>& entries, int64_t* offset,
                                json* out) const {
    for (const LogprobEntry& e : entries) {
      const std::string text = TokenText(e.token);
      (*out)["tokens"].push_back(text);
      (*out)["token_logprobs"].push_back(e.logprob ? json(*e.logprob) : json(nullptr));
      if (!e.logprob) {
        (*out)["top_logprobs"].push_back(nullptr);
      } else {
        // The alternatives, then the token itself unless one of them has its text.
        json top = json::object();
        for (const engine::TokenLogprob& t : e.top) {
          const std::string key = TokenText(t.token);
          if (!top.contains(key)) top[key] = t.logprob;
        }
        if (!top.contains(text)) top[text] = *e.logprob;
        (*out)["top_logprobs"].push_back(std::move(top));
      }
      (*out)["text_offset"].push_back(*offset);
      *offset += static_cast<int64_t>(text.size());
    }
  }
  // OpenAI's `bytes`: the token's own bytes (a token holding part of a multi-byte character
  // has its part, not U+FFFD), so that consecutive tokens' bytes join into their text.
  json TokenBytes(int32_t id, const std::string& text) const {
    const tokenizer::Tokenizer* tok = model_->tokenizer();
    const std::string raw = tok != nullptr && !request_.tokens_as_ids ? tok->TokenBytes(id) : text;
    json b = json::array();
    for (unsigned char ch : raw) b.push_back(static_cast<int>(ch));
    return b;
  }
  json ChatLogprobs(const std::vector<LogprobEntry>& entries) const {
    json content = json::array();
    for (const LogprobEntry& e : entries) {
      const std::string text = TokenText(e.token);
      json top = json::array();
      for (const engine::TokenLogprob& t : e.top) {
        const std::string alt = TokenText(t.token);
        top.push_back(
            {{"token", alt}, {"logprob", t.logprob}, {"bytes", TokenBytes(t.token, alt)}});
      }
      content.push_back({{"token", text},
                         {"logprob", e.logprob.value_or(0.0f)},
                         {"bytes", TokenBytes(e.token, text)},
                         {"top_logprobs", std::move(top)}});
    }
    return content;
  }

  // Non-streaming: kept on the choice. Streaming: written into *delta as well.
  std::string TooManyLogprobs(absl::string_view what) const {
    return absl::StrCat(what, " pass ", max_logprobs_,
                        " entries (tokens and alternatives), the most one response that is not "
                        "streamed holds (--max_response_logprobs); stream it (\"stream\": "
                        "true), or ask for fewer prompts, choices, tokens or alternatives");
  }

  void AddLogprobs(Choice& c, const std::vector<LogprobEntry>& entries, json* delta, bool prompt) {
    if (delta == nullptr) {
      // Kept until the response is written: bounded (kMaxResponseLogprobs).
      for (const LogprobEntry& e : entries) response_logprobs_ += 1 + e.top.size();
      if (response_logprobs_ > max_logprobs_) {
        if (error_.ok()) {
          error_ = ParamError("logprobs", TooManyLogprobs("the response's logprobs"));
          fanout_->CancelAll();
        }
        return;
      }
      c.logprobs.insert(c.logprobs.end(), entries.begin(), entries.end());
      return;
    }
    (void)prompt;
    if (chat_) {
      json content = ChatLogprobs(entries);
      if (delta->is_null()) *delta = {{"content", json::array()}};
      for (json& e : content) (*delta)["content"].push_back(std::move(e));
    } else {
      if (delta->is_null()) *delta = CompletionLogprobsInit();
      AppendCompletionLogprobs(entries, &c.text_offset, delta);
    }
  }

  json ChunkHeader() const {
    return {{"id", id_},
            {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", model_->name()}};
  }
  json ChunkChoice(const Choice& c, json delta, json logprobs,
                   const std::optional<std::string>& finish) const {
    json choice = {{"index", c.index}};
    choice[chat_ ? "delta" : "text"] = std::move(delta);
    choice["logprobs"] = std::move(logprobs);
    choice["finish_reason"] = finish ? json(*finish) : json(nullptr);
    if (finish) choice["stop_reason"] = StopReason(*c.final);
    json chunk = ChunkHeader();
    chunk["choices"] = json::array({std::move(choice)});
    return chunk;
  }
  static std::string SseEvent(const json& chunk) {
    return absl::StrCat("data: ", DumpJson(chunk), "\n\n");
  }

  SpanServeService* const service_;
  ServedModel* const model_;
  const OpenAIRequest request_;
  const bool chat_;
  const std::string client_request_id_;
  const uint64_t public_id_;
  const std::string id_;
  const int64_t created_;
  const chat::ToolCallFormat tool_format_;
  const bool reads_tools_;  // the output is read for tool calls
  // Shared with the engine's callbacks, which may outlive the exchange.
  std::shared_ptr<Fanout> fanout_;
  std::vector<Choice> choices_;
  int submitted_ = 0;
  int finished_ = 0;
  const int64_t max_logprobs_;     // HttpFrontOptions::max_response_logprobs
  int64_t response_logprobs_ = 0;  // kept in choices_ (not streamed)
  absl::Status error_;
};

int64_t HeaderBytes(const httplib::Request& req) {
  int64_t bytes = 0;
  for (const auto& [key, value] : req.headers) bytes += key.size() + value.size() + 32;
  return bytes;
}

absl::Status AdmitHttp(const SpanServeService& service, const httplib::Request& req) {
  std::optional<std::string> authorization;
  if (req.has_header("Authorization")) authorization = req.get_header_value("Authorization");
  return service.Admit(authorization ? &*authorization : nullptr, HeaderBytes(req));
}

absl::StatusOr<json> ParseBody(const httplib::Request& req) { return ParseOpenAIBody(req.body); }

// Shared by the streaming provider and its releaser: the exchange, the in-flight count.
struct StreamState {
  StreamState(SpanServeService* service, std::unique_ptr<Exchange> exchange,
              const httplib::Request& req)
      : in_flight(service), exchange(std::move(exchange)), req(req) {}
  bool ClientLeft() {
    if (fd == kFdUnknown) fd = ConnectionFd(req);
    return ClientGone(fd);
  }
  InFlight in_flight;
  std::unique_ptr<Exchange> exchange;
  const httplib::Request& req;  // lives until the response is written
  int fd = kFdUnknown;
  bool ended = false;
  std::optional<ResponsesStream> responses;  // /v1/responses: its events
};

// `responses`: the request came to /v1/responses and `text` is the chat body it became; its
// errors name its own fields, and its answer is a Response object or the Responses events.
void Completions(SpanServeService* service, OpenAIEndpoint endpoint, int64_t max_logprobs,
                 const httplib::Request& req, httplib::Response& res,
                 const ResponsesRequest* responses = nullptr) {
  const auto send_error = [&res, responses](const absl::Status& s) {
    SendError(res, responses != nullptr ? ResponsesError(s) : s);
  };
  // A Responses request was admitted before it was read.
  if (responses == nullptr) {
    if (absl::Status s = AdmitHttp(*service, req); !s.ok()) return send_error(s);
  }
  const std::string_view text =
      responses != nullptr ? std::string_view(responses->chat_body) : std::string_view(req.body);
  absl::StatusOr<json> body = ParseOpenAIBody(text);
  if (!body.ok()) return send_error(body.status());
  absl::StatusOr<OpenAIRequest> request = ParseOpenAIRequest(*body, endpoint, text);
  if (!request.ok()) return send_error(request.status());
  absl::StatusOr<ServedModel*> model = service->ReadyModel(request->model);
  if (!model.ok()) return send_error(model.status());
  const bool stream = request->stream;
  auto in_flight = std::make_unique<InFlight>(service);
  auto exchange = std::make_unique<Exchange>(service, *model, *std::move(request),
                                             req.get_header_value("X-Request-Id"), max_logprobs);
  if (absl::Status s = exchange->Submit(); !s.ok()) return send_error(s);
  if (!stream) {
    int fd = kFdUnknown;
    // Looked at every kPollInterval whether tokens arrive or not: a long generation gives
    // events all the time, and must still end when its client does.
    auto next_check = std::chrono::steady_clock::now() + kPollInterval;
    while (exchange->remaining() > 0) {
      std::vector<Event> events = exchange->fanout().Wait(kPollInterval);
      if (const auto now = std::chrono::steady_clock::now(); now >= next_check) {
        next_check = now + kPollInterval;
        if (fd == kFdUnknown) fd = ConnectionFd(req);
        if (ClientGone(fd)) {
          exchange->fanout().CancelAll();  // the engine frees their blocks at its next step
          res.status = 499;
          return;
        }
      }
      if (!events.empty()) exchange->Apply(events, /*stream=*/false);
    }
    if (!exchange->error().ok()) return send_error(exchange->error());
    res.status = 200;
    res.body = responses != nullptr
                   ? DumpJson(ResponseFromChat(exchange->ResponseJson(), *responses))
                   : exchange->ResponseText();
    res.set_header("Content-Type", "application/json");
    return;
  }

  auto state = std::make_shared<StreamState>(service, std::move(exchange), req);
  if (responses != nullptr) state->responses.emplace(*responses);
  in_flight.reset();  // the stream's state counts it from here
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [state](size_t, httplib::DataSink& sink) {
        Exchange& x = *state->exchange;
        if (state->ended) return false;
        if (state->responses && !state->responses->started()) {
          // The Responses stream opens at once, before the first token.
          const std::string opening = state->responses->Start(x.id(), x.created(), x.model_name());
          if (!sink.write(opening.data(), opening.size())) {
            x.fanout().CancelAll();
            return false;
          }
        }
        std::vector<Event> events = x.fanout().Wait(kPollInterval);
        if (events.empty()) {
          if (state->ClientLeft()) {
            x.fanout().CancelAll();
            return false;
          }
          return true;  // called again: waits again
        }
        std::string sse = x.Apply(events, /*stream=*/true);
        if (x.remaining() == 0 || !x.error().ok()) {
          sse += x.StreamEnd();
          state->ended = true;
        }
        if (state->responses) sse = state->responses->Translate(sse);
        if (!sse.empty() && !sink.write(sse.data(), sse.size())) {
          x.fanout().CancelAll();  // the client went away
          return false;
        }
        if (state->ended) sink.done();
        return true;
      },
      [state](bool) { state->exchange->fanout().CancelAll(); });
}

int32_t MaxModelLen(const ServedModel& model) { return model.engine().info().max_model_len; }

// Debian's cpp-httplib (a compiled library: its CPPHTTPLIB_LISTEN_BACKLOG is fixed at 5)
// listens with a backlog of 5: a burst of new connections (64 clients at once) overflows
// it, the kernel drops SYNs and clients retry a second later. Listening again on the bound
// socket widens the queue (Linux allows it); the socket is the one of this process that
// listens on `port`.
void WidenListenBacklog(int port) {
  const int fd = FindSocket(port, [](int fd) {
    int listening = 0;
    socklen_t len = sizeof(listening);
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening;
  });
  if (fd >= 0) listen(fd, SOMAXCONN);
}

// Set by a handler of this thread's request whose connection must end after the response (the
// logger, which runs once it is written, shuts the connection down).
thread_local bool close_after_response = false;

// The peer of a connected socket ("address:port"), or nothing.
std::optional<std::string> PeerOf(int fd) {
  sockaddr_storage peer{};
  socklen_t peer_len = sizeof(peer);
  char host[NI_MAXHOST];
  char port[NI_MAXSERV];
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
      getnameinfo(reinterpret_cast<sockaddr*>(&peer), peer_len, host, sizeof(host), port,
                  sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return std::nullopt;
  }
  return absl::StrCat(host, ":", port);
}

// Whether bytes the client sent wait unread in the socket: no thread reads the connection yet
// (one that does takes each byte as it comes, a slow client's included). Also right for TLS,
// whose bytes cannot be looked into.
bool BytesWaiting(int fd) {
  char byte;
  return recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

// A served model as /v1/models lists it (OpenAI's model object).
json ModelEntry(const ServedModel& model) {
  const auto ready = std::chrono::duration_cast<std::chrono::seconds>(
      (model.ready_time() - std::chrono::steady_clock::now()) +
      std::chrono::system_clock::now().time_since_epoch());
  return {{"id", model.name()},      {"object", "model"},    {"created", ready.count()},
          {"owned_by", "spanserve"}, {"root", model.path()}, {"max_model_len", MaxModelLen(model)}};
}

// A large request or response (an echo of many prompts' logprobs is a JSON document of a
// hundred megabytes and more, built node by node) leaves the freed pages in the C allocator's
// arena of the HTTP thread that served it, and each thread has its own: without giving them
// back, resident memory grows by about one such exchange per thread that ever served one.
// After a large exchange the trimming thread returns every arena's free pages to the system
// (malloc_trim), once per burst.
class Trimmer {
 public:
  static constexpr size_t kAfterBytes = 1 << 20;

  static Trimmer& Get() {
    static Trimmer* trimmer = new Trimmer();  // never destroyed: its thread outlives main
    return *trimmer;
  }
  void Request() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      wanted_ = true;
    }
    cv_.notify_one();
  }

 private:
  Trimmer() {
    std::thread([this] { Run(); }).detach();
  }
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return wanted_; });
      wanted_ = false;
      lock.unlock();
      // Let the burst end (and the response's own buffers go) first.
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      malloc_trim(0);
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool wanted_ = false;
};

}  // namespace

HttpFront::HttpFront(SpanServeService* service, std::unique_ptr<httplib::Server> server)
    : service_(service), server_(std::move(server)) {}

HttpFront::~HttpFront() { Stop(); }

void HttpFront::Stop() {
  if (stopped_) return;
  stopped_ = true;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    watch_stop_ = true;
  }
  watch_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

void HttpFront::HeadersIn(const std::string& peer) {
  std::lock_guard<std::mutex> lock(watch_mu_);
  Connection& c = connections_[peer];
  c.busy = true;
  c.since = std::chrono::steady_clock::now();
}

void HttpFront::Done(const std::string& peer) {
  std::lock_guard<std::mutex> lock(watch_mu_);
  Connection& c = connections_[peer];
  c.busy = false;
  c.served = true;
  c.since = std::chrono::steady_clock::now();
}

void HttpFront::Watch() {
  const auto timeout = std::chrono::seconds(header_timeout_s_);
  const auto pressed_timeout = std::min<std::chrono::seconds>(timeout, kPressedHeaderTimeout);
  std::unique_lock<std::mutex> lock(watch_mu_);
  // Every second; four times a second while connections outnumber the threads.
  std::chrono::milliseconds period(1000);
  while (!watch_cv_.wait_for(lock, period, [this] { return watch_stop_; })) {
    lock.unlock();
    // The HTTP port's connected sockets, their peers and the bytes read from each (scanned
    // without the lock).
    struct Socket {
      int fd;
      std::string peer;
      std::optional<uint64_t> read;
    };
    std::vector<Socket> sockets;
    FindSocket(port_, [&sockets](int fd) {
      int listening = 0;
      socklen_t len = sizeof(listening);
      if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || listening) {
        return false;
      }
      if (std::optional<std::string> peer = PeerOf(fd)) {
        sockets.push_back({fd, *peer, TcpBytesRead(fd)});
      }
      return false;  // every one
    });
    const auto now = std::chrono::steady_clock::now();
    // More connections than threads: some wait for one, so the idle go sooner.
    const bool pressed = sockets.size() > static_cast<size_t>(threads_);
    const auto limit = pressed ? pressed_timeout : timeout;
    period = std::chrono::milliseconds(pressed ? 250 : 1000);
    lock.lock();
    // Each connection's state (one first seen now is idle since now), with the bytes read in
    // its idle period: those of the next request's headers.
    std::map<std::string, Connection> seen;
    for (const Socket& s : sockets) {
      auto it = connections_.find(s.peer);
      Connection c;
      if (it != connections_.end()) {
        c = it->second;
      } else {
        // New since the last scan, and no request's headers came in on it: all it has sent
        // is headers.
        c.since = now;
        c.base_since = now;
        if (s.read) c.read_base = 0;
      }
      if (!c.busy && (!c.read_base || c.base_since != c.since)) {
        c.read_base = s.read;
        c.base_since = c.since;
      }
      seen[s.peer] = c;
    }
    // Why a connection is to be closed, if it is: its headers are late, or too long. One whose
    // bytes wait unread while no thread has read any since the last scan waits for a thread
    // (all busy), not on its client: it is not late. Kept-alive connections (a client's pool
    // reuses them) keep the header timeout.
    enum class Cut { kNo, kLate, kLong };
    const auto overdue = [&](const Socket& s) {
      auto live = connections_.find(s.peer);
      const Connection& c = seen[s.peer];
      if (c.busy || (live != connections_.end() && live->second.busy)) return Cut::kNo;
      if (live != connections_.end() && live->second.since != c.since) return Cut::kNo;
      if (s.read && c.read_base && *s.read > *c.read_base + kMaxHeaderBytes) return Cut::kLong;
      const bool reading = s.read && c.read_last && *s.read > *c.read_last;
      if (now - c.since > (c.served ? timeout : limit) && (reading || !BytesWaiting(s.fd))) {
        return Cut::kLate;
      }
      return Cut::kNo;
    };
    std::vector<std::pair<const Socket*, Cut>> candidates;
    for (const Socket& s : sockets) {
      if (const Cut cut = overdue(s); cut != Cut::kNo) candidates.emplace_back(&s, cut);
    }
    std::set<std::string> closed;
    if (!candidates.empty()) {
      // A thread may have taken a waiting connection's bytes just before the scan and not yet
      // read its headers through: after a moment, those whose headers came in are spared.
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      lock.lock();
      int late = 0, long_headers = 0;
      std::string late_peer, long_peer;  // the first of each
      for (const auto& [s, cut] : candidates) {
        // Still overdue (its headers did not come in meanwhile: overdue reads the live state),
        // and the descriptor still holds that connection (not closed and its number reused).
        if (overdue(*s) == Cut::kNo || PeerOf(s->fd) != s->peer) continue;
        if (cut == Cut::kLong) {
          // Reset once its thread closes it, rather than leave the kernel holding what the
          // client still sends (a closed socket with a full window) until FIN_WAIT2 times out.
          const linger reset{.l_onoff = 1, .l_linger = 0};
          setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
        }
        shutdown(s->fd, SHUT_RDWR);
        closed.insert(s->peer);
        int& count = cut == Cut::kLong ? long_headers : late;
        if (count++ == 0) (cut == Cut::kLong ? long_peer : late_peer) = s->peer;
      }
      // One line a scan, however many (a flood of connections).
      if (late > 0) {
        std::fprintf(stderr,
                     "spanserve-server: closed %d HTTP connection%s without request headers "
                     "within %d s%s (%s%s)\n",
                     late, late > 1 ? "s" : "", static_cast<int>(limit.count()),
                     pressed ? ", more connections being open than --http_threads" : "",
                     late_peer.c_str(), late > 1 ? ", ..." : "");
      }
      if (long_headers > 0) {
        std::fprintf(stderr,
                     "spanserve-server: closed %d HTTP connection%s sending more than %d KiB of "
                     "request headers (%s%s)\n",
                     long_headers, long_headers > 1 ? "s" : "",
                     static_cast<int>(kMaxHeaderBytes >> 10), long_peer.c_str(),
                     long_headers > 1 ? ", ..." : "");
        // Their headers' memory goes back to the system, not only to the threads' arenas.
        Trimmer::Get().Request();
      }
    }
    std::map<std::string, Connection> alive;
    for (const Socket& s : sockets) {
      if (closed.contains(s.peer)) continue;
      // The live state (HeadersIn / Done may have run since), with the watcher's byte counts.
      const Connection& scanned = seen[s.peer];
      auto live = connections_.find(s.peer);
      Connection c = live != connections_.end() ? live->second : scanned;
      if (c.since == scanned.since) {
        c.read_base = scanned.read_base;
        c.base_since = scanned.base_since;
      }
      c.read_last = s.read;
      alive.emplace(s.peer, c);
    }
    // A busy connection the scan missed (accepted after it) stays; one busy for an hour
    // without a response written is forgotten (its entry would otherwise stay for good).
    for (const auto& [peer, c] : connections_) {
      if (c.busy && now - c.since < std::chrono::hours(1)) alive.emplace(peer, c);
    }
    connections_ = std::move(alive);
  }
}

absl::StatusOr<std::unique_ptr<HttpFront>> HttpFront::Start(SpanServeService* service,
                                                            const HttpFrontOptions& options) {
  const size_t colon = options.address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(options.address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_address: '", options.address, "': expected HOST:PORT"));
  }
  std::string host = options.address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::unique_ptr<httplib::Server> server;
  if (!options.tls_cert.empty() || !options.tls_key.empty()) {
    auto tls =
        std::make_unique<httplib::SSLServer>(options.tls_cert.c_str(), options.tls_key.c_str());
    if (!tls->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat("--http_address: cannot use --tls_cert ",
                                                     options.tls_cert, " / --tls_key ",
                                                     options.tls_key, " for HTTPS"));
    }
    server = std::move(tls);
  } else {
    server = std::make_unique<httplib::Server>();
  }
  const int threads = std::max(2, options.threads);
  server->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server->set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  server->set_read_timeout(options.read_timeout_s, 0);
  server->set_write_timeout(options.read_timeout_s, 0);
  server->set_keep_alive_timeout(options.keep_alive_timeout_s);
  server->set_keep_alive_max_count(1000);
  // Each SSE event is a small write: with Nagle's algorithm on, a kept-alive connection
  // (an SDK's pooled one) waits for the client's delayed ACK before each event.
  server->set_tcp_nodelay(true);
  std::unique_ptr<HttpFront> front(new HttpFront(service, std::move(server)));
  front->max_body_bytes_ = options.max_body_bytes;
  front->header_timeout_s_ = std::max(1, options.header_timeout_s);
  front->threads_ = threads;
  front->allowed_origins_ = options.allowed_origins;
  front->max_response_logprobs_ = std::max<int64_t>(1, options.max_response_logprobs);
  front->Routes();
  if (port == 0) {
    port = front->server_->bind_to_any_port(host);
    if (port <= 0)
      return absl::UnavailableError(absl::StrCat("cannot listen on ", options.address));
  } else if (!front->server_->bind_to_port(host, port)) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.address));
  }
  front->port_ = port;
  WidenListenBacklog(port);
  httplib::Server* s = front->server_.get();
  front->thread_ = std::thread([s] { s->listen_after_bind(); });
  HttpFront* f = front.get();
  front->watcher_ = std::thread([f] { f->Watch(); });
  return front;
}

void HttpFront::Routes() {
  SpanServeService* service = service_;
  httplib::Server& s = *server_;
  const int64_t max_logprobs = max_response_logprobs_;
  s.Post("/v1/completions",
         [service, max_logprobs](const httplib::Request& req, httplib::Response& res) {
           Completions(service, OpenAIEndpoint::kCompletions, max_logprobs, req, res);
         });
  s.Post("/v1/chat/completions",
         [service, max_logprobs](const httplib::Request& req, httplib::Response& res) {
           Completions(service, OpenAIEndpoint::kChatCompletions, max_logprobs, req, res);
         });
  s.Post("/v1/responses", [service, max_logprobs](const httplib::Request& req,
                                                  httplib::Response& res) {
    if (absl::Status st = AdmitHttp(*service, req); !st.ok()) return SendError(res, st);
    absl::StatusOr<ResponsesRequest> responses = ParseResponsesRequest(req.body);
    if (!responses.ok()) return SendError(res, responses.status());
    Completions(service, OpenAIEndpoint::kChatCompletions, max_logprobs, req, res, &*responses);
  });
  s.Get("/v1/models", [service](const httplib::Request& req, httplib::Response& res) {
    if (absl::Status st = AdmitHttp(*service, req); !st.ok()) return SendError(res, st);
    json data = json::array();
    for (const auto& model : service->models()) {
      if (model->state() != ModelState::kReady) continue;
      data.push_back(ModelEntry(*model));
    }
    SendJson(res, 200, {{"object", "list"}, {"data", std::move(data)}});
  });
  // OpenAI's GET /v1/models/{model}: the model's entry as /v1/models lists it.
  s.Get(R"(/v1/models/(.+))", [service](const httplib::Request& req, httplib::Response& res) {
    if (absl::Status st = AdmitHttp(*service, req); !st.ok()) return SendError(res, st);
    const std::string name = req.matches[1];
    for (const auto& model : service->models()) {
      if (model->name() != name || model->state() != ModelState::kReady) continue;
      SendJson(res, 200, ModelEntry(*model));
      return;
    }
    SendError(res, absl::NotFoundError(
                       absl::StrCat("no model named ", EchoValue(name), " is being served")));
  });
  s.Get("/health", [service](const httplib::Request&, httplib::Response& res) {
    const ServedModel& default_model = *service->models().front();
    if (service->draining()) {
      return SendError(res, absl::UnavailableError("the server is shutting down"));
    }
    if (absl::Status ready = default_model.CheckReady(); !ready.ok()) {
      return SendError(res, absl::UnavailableError(ready.message()));
    }
    res.status = 200;
    res.set_content("", "text/plain");
  });
  // /metrics on the API port too, as vLLM and TGI serve it (scrape configs and ServiceMonitors
  // written for them find it here): the text --metrics_address serves, without auth as there
  // and as /health; 404 when the server runs without metrics.
  s.Get("/metrics", [service](const httplib::Request&, httplib::Response& res) {
    const ServerMetrics* metrics = service->metrics();
    if (metrics == nullptr) {
      return SendError(
          res, absl::NotFoundError("metrics are off: start the server with --metrics_address"));
    }
    res.status = 200;
    res.set_content(metrics->ScrapeText(), "text/plain; version=0.0.4; charset=utf-8");
  });
  s.Post("/tokenize", [service](const httplib::Request& req, httplib::Response& res) {
    if (absl::Status st = AdmitHttp(*service, req); !st.ok()) return SendError(res, st);
    absl::StatusOr<json> body = ParseBody(req);
    if (!body.ok()) return SendError(res, body.status());
    v1::TokenizeRequest request;
    const json& b = *body;
    if (b.contains("model") && !b["model"].is_null()) {
      if (!b["model"].is_string()) return SendError(res, ParamError("model", "must be a string"));
      request.set_model(b["model"].get<std::string>());
    }
    if (b.contains("messages")) {
      json chat_body = b;
      chat_body.erase("prompt");
      absl::StatusOr<OpenAIRequest> parsed =
          ParseOpenAIRequest(chat_body, OpenAIEndpoint::kChatCompletions, req.body);
      if (!parsed.ok()) return SendError(res, parsed.status());
      *request.mutable_chat() = parsed->prompts.front().prompt().chat();
    } else {
      if (!b.contains("prompt") || !b["prompt"].is_string()) {
        return SendError(res, ParamError("prompt", "must be a string (or send messages)"));
      }
      request.set_text(b["prompt"].get<std::string>());
      if (b.contains("add_special_tokens")) {
        if (!b["add_special_tokens"].is_boolean()) {
          return SendError(res, ParamError("add_special_tokens", "must be true or false"));
        }
        request.set_add_special_tokens(b["add_special_tokens"].get<bool>());
      }
    }
    absl::StatusOr<ServedModel*> model = service->ReadyModel(request.model());
    if (!model.ok()) return SendError(res, model.status());
    if (absl::Status st = service->CheckTokenize(request, **model); !st.ok()) {
      return SendError(res, st);
    }
    v1::TokenizeResponse response;
    if (absl::Status st = service->DoTokenize(request, **model, &response); !st.ok()) {
      return SendError(res, st);
    }
    SendJson(res, 200,
             {{"tokens", json(std::vector<int32_t>(response.token_ids().begin(),
                                                   response.token_ids().end()))},
              {"count", response.token_ids_size()},
              {"max_model_len", MaxModelLen(**model)}});
  });
  s.Post("/detokenize", [service](const httplib::Request& req, httplib::Response& res) {
    if (absl::Status st = AdmitHttp(*service, req); !st.ok()) return SendError(res, st);
    absl::StatusOr<json> body = ParseBody(req);
    if (!body.ok()) return SendError(res, body.status());
    const json& b = *body;
    v1::DetokenizeRequest request;
    if (b.contains("model") && !b["model"].is_null()) {
      if (!b["model"].is_string()) return SendError(res, ParamError("model", "must be a string"));
      request.set_model(b["model"].get<std::string>());
    }
    if (!b.contains("tokens") || !b["tokens"].is_array()) {
      return SendError(res, ParamError("tokens", "must be a list of token ids"));
    }
    for (const json& t : b["tokens"]) {
      if (!t.is_number_integer() || t.get<int64_t>() < std::numeric_limits<int32_t>::min() ||
          t.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return SendError(res, ParamError("tokens", "must be a list of token ids"));
      }
      request.add_token_ids(static_cast<int32_t>(t.get<int64_t>()));
    }
    absl::StatusOr<ServedModel*> model = service->ReadyModel(request.model());
    if (!model.ok()) return SendError(res, model.status());
    v1::DetokenizeResponse response;
    if (absl::Status st = service->DoDetokenize(request, **model, &response); !st.ok()) {
      return SendError(res, st);
    }
    SendJson(res, 200, {{"prompt", response.text()}});
  });
  // After every exchange (the response written): a large one has the allocator's free pages
  // returned.
  s.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    Done(absl::StrCat(req.remote_addr, ":", req.remote_port));
    if (req.body.size() + res.body.size() >= Trimmer::kAfterBytes) Trimmer::Get().Request();
    if (close_after_response) {
      close_after_response = false;
      if (const int fd = ConnectionFd(req); fd >= 0) shutdown(fd, SHUT_RDWR);
    }
  });
  // CORS, as vLLM's (Starlette's) middleware answers it: a preflight (OPTIONS with Origin and
  // Access-Control-Request-Method) from an allowed origin gets 204 with the methods and the
  // headers it asked for, from another origin 400; every response to a request whose Origin is
  // allowed names it in Access-Control-Allow-Origin ("*" when any is), error answers included,
  // so a page can read them.
  if (!allowed_origins_.empty()) {
    const std::vector<std::string> origins = allowed_origins_;
    const bool any = std::find(origins.begin(), origins.end(), "*") != origins.end();
    const auto allowed = [origins, any](const httplib::Request& req) -> std::optional<std::string> {
      if (!req.has_header("Origin")) return std::nullopt;
      if (any) return std::string("*");
      const std::string origin = req.get_header_value("Origin");
      if (std::find(origins.begin(), origins.end(), origin) == origins.end()) return std::nullopt;
      return origin;
    };
    s.Options(R"(/.*)", [allowed, any](const httplib::Request& req, httplib::Response& res) {
      if (!req.has_header("Origin") || !req.has_header("Access-Control-Request-Method")) {
        res.status = 204;  // not a preflight: what may be asked here
        res.set_header("Allow", "GET, POST, OPTIONS");
        return;
      }
      if (!allowed(req)) {
        SendError(res, absl::InvalidArgumentError(absl::StrCat(
                           "the CORS origin ", EchoValue(req.get_header_value("Origin")),
                           " is not allowed (--allowed_origins)")));
        return;
      }
      res.status = 204;
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      const std::string asked = req.get_header_value("Access-Control-Request-Headers");
      if (!asked.empty()) res.set_header("Access-Control-Allow-Headers", asked);
      res.set_header("Access-Control-Max-Age", "600");
      if (!any) res.set_header("Vary", "Origin");
    });
    s.set_post_routing_handler([allowed, any](const httplib::Request& req, httplib::Response& res) {
      if (std::optional<std::string> origin = allowed(req);
          origin && !res.has_header("Access-Control-Allow-Origin")) {
        res.set_header("Access-Control-Allow-Origin", *origin);
        if (!any) res.set_header("Vary", "Origin");
      }
    });
  }
  // The framing of a request body, checked once the headers are in and before the body is read
  // (each refusal closes the connection, whose remaining bytes are not a request):
  // - several Content-Length values that differ, or one that is not a plain decimal, are a
  //   400 (a proxy in front might read the framing otherwise: request smuggling, RFC 9112
  //   §6.3);
  // - a Content-Length over --max_message_bytes is a 413 at once, without waiting for a body
  //   that would be refused anyway;
  // - a POST with neither Content-Length nor Transfer-Encoding is a 411 (its body would end
  //   only when the client closed the connection).
  const int64_t max_body = max_body_bytes_;
  s.set_pre_routing_handler([this, max_body](const httplib::Request& req, httplib::Response& res) {
    HeadersIn(absl::StrCat(req.remote_addr, ":", req.remote_port));
    // Every body here is read as JSON, whatever its Content-Type. `curl -d` sends
    // application/x-www-form-urlencoded, and for that type cpp-httplib parses the body as a
    // form after reading it and refuses one over 8 KiB with a 413 (a limit that is not
    // --max_message_bytes, and an error that names no cause). So the type is made JSON before
    // the body is read. (This hook gets the server's own request, not a const one, as const.)
    if (req.method == "POST") {
      auto& headers = const_cast<httplib::Headers&>(req.headers);
      const auto [first, last] = headers.equal_range("Content-Type");
      for (auto it = first; it != last; ++it) {
        if (absl::StartsWithIgnoreCase(absl::string_view(it->second),
                                       "application/x-www-form-urlencoded")) {
          it->second = "application/json";
        }
      }
    }
    const auto refuse = [&res](int status, const std::string& message) {
      // The connection ends once this answer is written (the logger shuts it down): what the
      // client sends after is not read (a body after an unusable length would be taken for the
      // next request).
      res.set_header("Connection", "close");
      close_after_response = true;
      json body = OpenAIError(absl::InvalidArgumentError(message));
      body["error"]["code"] = status;
      SendJson(res, status, body);
      return httplib::Server::HandlerResponse::Handled;
    };
    // A control character in a header (a NUL, a bare CR or LF: RFC 9110 5.5 has a recipient
    // refuse them, as they are a way to split or smuggle headers past a proxy); HTAB is a
    // value's whitespace.
    for (const auto& [name, value] : req.headers) {
      const auto control = [](absl::string_view text, bool tab_ok) {
        return std::any_of(text.begin(), text.end(), [tab_ok](char c) {
          const auto u = static_cast<unsigned char>(c);
          return (u < 0x20 && !(tab_ok && c == '\t')) || u == 0x7f;
        });
      };
      if (control(name, false) || control(value, true)) {
        return refuse(400, absl::StrCat("the request's header ", EchoValue(name),
                                        " holds a control character"));
      }
    }
    const size_t count = req.get_header_value_count("Content-Length");
    // A Transfer-Encoding frames the body only as cpp-httplib reads it: exactly "chunked".
    // Another coding ("gzip, chunked") would have the body read to the end of the connection,
    // and a Content-Length beside it frames the body twice, which a proxy in front might
    // read the other way (request smuggling; RFC 9112 6.3 lets a server refuse it).
    if (const size_t codings = req.get_header_value_count("Transfer-Encoding"); codings > 0) {
      const std::string coding = req.get_header_value("Transfer-Encoding", 0);
      if (codings > 1 || !absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(coding), "chunked")) {
        return refuse(501, absl::StrCat("the request's Transfer-Encoding '", coding,
                                        "' is not served (only chunked)"));
      }
      if (count > 0) {
        return refuse(400, "the request has both a Content-Length and a Transfer-Encoding");
      }
    }
    if (count == 0) {
      if (req.method == "POST" && !req.has_header("Transfer-Encoding")) {
        return refuse(411, "a POST needs a Content-Length (or a chunked Transfer-Encoding)");
      }
      return httplib::Server::HandlerResponse::Unhandled;
    }
    const std::string first = req.get_header_value("Content-Length", 0);
    bool bad = first.empty() || first.find_first_not_of("0123456789") != std::string::npos;
    for (size_t i = 1; i < count && !bad; ++i) {
      bad = req.get_header_value("Content-Length", i) != first;
    }
    if (bad) {
      return refuse(400,
                    "the request's Content-Length is malformed or given twice with different "
                    "values");
    }
    uint64_t length = 0;
    if (!absl::SimpleAtoi(first, &length) || length > static_cast<uint64_t>(max_body)) {
      return refuse(
          413, absl::StrCat("the request body (Content-Length ", first, ") is over the limit of ",
                            max_body, " bytes (--max_message_bytes)"));
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // What cpp-httplib answers itself (no route, body too large, a malformed request) in
  // OpenAI's error shape too.
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    absl::Status status;
    switch (res.status) {
      case 404:
        status = absl::NotFoundError(
            absl::StrCat("no route ", EchoValue(req.method), " ", EchoValue(req.path)));
        break;
      case 413:
        status =
            absl::InvalidArgumentError("the request body is over the limit (--max_message_bytes)");
        break;
      default:
        status =
            absl::InvalidArgumentError(absl::StrCat("malformed request (HTTP ", res.status, ")"));
    }
    json body = OpenAIError(status);
    body["error"]["code"] = res.status;
    res.set_content(DumpJson(body), "application/json");
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    SendError(res, absl::InternalError("the request failed inside the server"));
  });
}

absl::StatusOr<engine::Request> OpenAIEngineRequest(const OpenAIRequest& request, size_t p,
                                                    const ServedModel& model) {
  ASSIGN_OR_RETURN(engine::Request r, ToEngineRequest(request.prompts.at(p), model,
                                                      /*min_max_tokens=*/request.echo ? 0 : 1));
  if (request.echo && request.logprobs) r.sampling.prompt_logprobs = *request.logprobs;
  if (request.prompt_logprobs) {
    // The engine computes the most alternatives either asks for; each takes its own.
    r.sampling.prompt_logprobs =
        std::max(r.sampling.prompt_logprobs.value_or(0), *request.prompt_logprobs);
  }
  if (request.json_schema != nullptr) {
    r.sampling.response_format = engine::ResponseFormat::kJsonSchema;
    r.sampling.json_schema = request.json_schema;
  }
  if (request.regex != nullptr) {
    r.sampling.response_format = engine::ResponseFormat::kRegex;
    r.sampling.regex = request.regex;
  }
  if (request.grammar != nullptr) {
    r.sampling.response_format = engine::ResponseFormat::kGrammar;
    r.sampling.grammar = request.grammar;
  }
  return r;
}

}  // namespace spanserve::server
