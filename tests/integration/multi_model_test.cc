// End-to-end tests of several models in one spanserve-server and of chat prompts: the real
// binary on a loopback port, a real gRPC client (issue 7).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "server_process.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::testing {
namespace {

namespace v1 = spanserve::v1;
using std::chrono::milliseconds;
using std::chrono::seconds;

const std::string kSource = SPANSERVE_SOURCE_DIR;
const std::string kDense = kSource + "/models/spanserve-span-12l";
const std::string kMoe = kSource + "/models/spanserve-span-moe-12l";

// SmolLM2-135M-Instruct's chat template (its GGUF's tokenizer.chat_template), as JSON.
constexpr char kChatMlTemplateJson[] =
    R"("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")";
// Llama-2's [INST] template: a family the server does not format.
constexpr char kLlama2TemplateJson[] =
    R"("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")";

struct StreamResult {
  grpc::Status status;
  std::vector<int32_t> ids;
  std::string text;
  uint64_t request_id = 0;
  v1::FinalInfo final;
};

StreamResult RunGenerate(v1::SpanServe::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(120));
  StreamResult result;
  auto reader = stub.Generate(&context, request);
  v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) {
    result.ids.insert(result.ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    result.text += chunk.text();
    result.request_id = chunk.request_id();
    if (chunk.has_final()) result.final = chunk.final();
  }
  result.status = reader->Finish();
  return result;
}

v1::GenerateRequest Greedy(const std::string& model, const std::string& prompt, int max_tokens) {
  v1::GenerateRequest r;
  r.set_model(model);
  r.mutable_prompt()->set_text(prompt);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  return r;
}

v1::ModelInfo Info(v1::SpanServe::Stub& stub, const std::string& model = "") {
  grpc::ClientContext context;
  v1::GetModelInfoRequest request;
  request.set_model(model);
  v1::ModelInfo info;
  const grpc::Status status = stub.GetModelInfo(&context, request, &info);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return info;
}

// Waits until no model of the server is still loading.
v1::ModelInfo WaitForLoads(v1::SpanServe::Stub& stub) {
  const auto deadline = std::chrono::steady_clock::now() + seconds(120);
  v1::ModelInfo info;
  while (std::chrono::steady_clock::now() < deadline) {
    info = Info(stub);
    bool loading = false;
    for (const v1::ModelInfo& m : info.models()) loading |= m.state() == v1::MODEL_STATE_LOADING;
    if (!loading) break;
    std::this_thread::sleep_for(milliseconds(20));
  }
  return info;
}

grpc::Status Tokenize(v1::SpanServe::Stub& stub, const v1::TokenizeRequest& request,
                      std::vector<int32_t>* ids) {
  grpc::ClientContext context;
  v1::TokenizeResponse response;
  const grpc::Status status = stub.Tokenize(&context, request, &response);
  ids->assign(response.token_ids().begin(), response.token_ids().end());
  return status;
}

// A model directory that is the bundled dense model plus a tokenizer_config.json holding
// `template_json` as its chat template.
std::string ModelWithChatTemplate(const std::string& name, const std::string& template_json) {
  const std::string dir = MakeTempDir(name);
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.json"}) {
    EXPECT_EQ(symlink((kDense + "/" + file).c_str(), (dir + "/" + file).c_str()), 0);
  }
  std::ofstream(dir + "/tokenizer_config.json")
      << R"({"bos_token": null, "eos_token": "<|endoftext|>", "chat_template": )" << template_json
      << "}\n";
  return dir;
}

v1::Chat* AddMessage(v1::Chat* chat, const std::string& role, const std::string& content) {
  v1::ChatMessage* m = chat->add_messages();
  m->set_role(role);
  m->set_content(content);
  return chat;
}

TEST(MultiModelTest, EachModelAnswersWhenNamedAndTheFirstIsTheDefault) {
  ServerProcess server({"--model=dense=" + kDense + ",moe=" + kMoe});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const v1::ModelInfo info = WaitForLoads(*stub);
  ASSERT_EQ(info.models_size(), 2);
  EXPECT_EQ(info.name(), "dense");
  EXPECT_TRUE(info.is_default());
  EXPECT_FALSE(info.is_moe());
  EXPECT_EQ(info.models(0).name(), "dense");
  EXPECT_EQ(info.models(1).name(), "moe");
  EXPECT_FALSE(info.models(1).is_default());
  for (const v1::ModelInfo& m : info.models()) {
    EXPECT_EQ(m.state(), v1::MODEL_STATE_READY) << m.name() << ": " << m.error();
    EXPECT_EQ(m.models_size(), 0);
    EXPECT_GT(m.kv_blocks_total(), 0);
  }
  EXPECT_TRUE(Info(*stub, "moe").is_moe());

  const std::string prompt = "In the beginning God created";
  const StreamResult dense = RunGenerate(*stub, Greedy("dense", prompt, 24));
  const StreamResult moe = RunGenerate(*stub, Greedy("moe", prompt, 24));
  const StreamResult unnamed = RunGenerate(*stub, Greedy("", prompt, 24));
  ASSERT_TRUE(dense.status.ok()) << dense.status.error_message();
  ASSERT_TRUE(moe.status.ok()) << moe.status.error_message();
  ASSERT_TRUE(unnamed.status.ok()) << unnamed.status.error_message();
  EXPECT_EQ(dense.ids.size(), 24u);
  EXPECT_EQ(moe.ids.size(), 24u);
  EXPECT_NE(dense.ids, moe.ids) << "the two models must give different greedy outputs";
  EXPECT_EQ(unnamed.ids, dense.ids);
  EXPECT_EQ(unnamed.text, dense.text);
  // Request ids are unique across the models' engines.
  EXPECT_NE(dense.request_id, moe.request_id);
  EXPECT_NE(unnamed.request_id, moe.request_id);
  EXPECT_NE(unnamed.request_id, dense.request_id);

  // Expert load is per model.
  {
    grpc::ClientContext context;
    v1::GetExpertLoadRequest request;
    request.set_model("moe");
    v1::ExpertLoad load;
    ASSERT_TRUE(stub->GetExpertLoad(&context, request, &load).ok());
    EXPECT_GT(load.layers_size(), 0);
  }
  {
    grpc::ClientContext context;
    v1::ExpertLoad load;
    ASSERT_TRUE(stub->GetExpertLoad(&context, v1::GetExpertLoadRequest(), &load).ok());
    EXPECT_EQ(load.layers_size(), 0);
    EXPECT_EQ(load.note(), "dense model: no experts");
  }

  // Abort by the id a request of the second model got.
  v1::GenerateRequest long_request = Greedy("moe", prompt, 2000);
  long_request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, long_request);
  v1::GenerateChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  {
    grpc::ClientContext abort_context;
    v1::AbortRequest abort;
    abort.set_request_id(chunk.request_id());
    v1::AbortResponse response;
    ASSERT_TRUE(stub->Abort(&abort_context, abort, &response).ok());
    EXPECT_TRUE(response.aborted());
  }
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  // Draining covers every engine: SIGTERM, then exit 0.
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(seconds(30)), std::optional<int>(0)) << server.log();
}

TEST(MultiModelTest, UnknownModelIsNotFoundListingTheServedNames) {
  ServerProcess server({"--model=dense=" + kDense + ",moe=" + kMoe});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const StreamResult generate = RunGenerate(*stub, Greedy("nope", "And God said", 4));
  EXPECT_EQ(generate.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(generate.status.error_message().find("'nope'"), std::string::npos)
      << generate.status.error_message();
  EXPECT_NE(generate.status.error_message().find("dense, moe"), std::string::npos)
      << generate.status.error_message();
  {
    grpc::ClientContext context;
    v1::GetModelInfoRequest request;
    request.set_model("nope");
    v1::ModelInfo info;
    EXPECT_EQ(stub->GetModelInfo(&context, request, &info).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::TokenizeRequest request;
    request.set_model("nope");
    request.set_text("x");
    std::vector<int32_t> ids;
    EXPECT_EQ(Tokenize(*stub, request, &ids).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext context;
    v1::ScoreRequest request;
    request.set_model("nope");
    request.mutable_context()->set_text("And God");
    request.add_continuations()->set_text(" said");
    v1::ScoreResponse response;
    EXPECT_EQ(stub->Score(&context, request, &response).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST(MultiModelTest, ABrokenGgufFailsAloneWhileTheOtherModelsServe) {
  const std::string dir = MakeTempDir("gguf");
  // A wrong magic, and a file cut short after a valid-looking header start.
  std::ofstream(dir + "/garbage.gguf") << "this is not a GGUF file at all, just some bytes";
  std::ofstream(dir + "/truncated.gguf", std::ios::binary)
      << std::string("GGUF\x03\x00\x00\x00\x10\x00", 10);
  ServerProcess server({"--model=dense=" + kDense + ",garbage=" + dir +
                        "/garbage.gguf,moe=" + kMoe + ",truncated=" + dir + "/truncated.gguf"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const v1::ModelInfo info = WaitForLoads(*stub);
  ASSERT_EQ(info.models_size(), 4);
  for (const std::string bad : {"garbage", "truncated"}) {
    const v1::ModelInfo& m = info.models(bad == "garbage" ? 1 : 3);
    EXPECT_EQ(m.name(), bad);
    EXPECT_EQ(m.state(), v1::MODEL_STATE_FAILED);
    EXPECT_NE(m.error().find(bad + ".gguf"), std::string::npos) << m.error();
    EXPECT_NE(server.log().find("model '" + bad + "'"), std::string::npos) << server.log();
    // Requests naming it get its error.
    const StreamResult r = RunGenerate(*stub, Greedy(bad, "And God said", 4));
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(r.status.error_message().find(m.error()), std::string::npos)
        << r.status.error_message();
    // GetModelInfo answers for it.
    EXPECT_EQ(Info(*stub, bad).state(), v1::MODEL_STATE_FAILED);
  }
  EXPECT_EQ(info.models(0).state(), v1::MODEL_STATE_READY);
  EXPECT_EQ(info.models(2).state(), v1::MODEL_STATE_READY);
  // The KV budget (64 MiB) is split as the models load: dense gets a quarter, garbage
  // fails and leaves its share, so moe gets half of the remaining three quarters.
  EXPECT_NEAR(
      static_cast<double>(info.models(2).kv_blocks_total()) / info.models(0).kv_blocks_total(), 1.5,
      0.01);
  for (const std::string good : {"dense", "moe", ""}) {
    const StreamResult r = RunGenerate(*stub, Greedy(good, "And God said", 6));
    EXPECT_TRUE(r.status.ok()) << good << ": " << r.status.error_message();
    EXPECT_EQ(r.ids.size(), 6u) << good;
  }
  EXPECT_EQ(server.Health(), "SERVING");
}

TEST(MultiModelTest, ConfigFileListsTheModels) {
  const std::string dir = MakeTempDir("config");
  std::ofstream(dir + "/serve.json") << R"({"model": [{"name": "first", "path": ")" << kDense
                                     << R"("}, "second=)" << kMoe << R"("]})";
  ServerProcess server({"--config=" + dir + "/serve.json"}, /*wait_serving=*/true,
                       /*default_model=*/false);
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const v1::ModelInfo info = WaitForLoads(*stub);
  ASSERT_EQ(info.models_size(), 2);
  EXPECT_EQ(info.models(0).name(), "first");
  EXPECT_EQ(info.models(1).name(), "second");
  EXPECT_TRUE(info.models(1).is_moe());
}

TEST(MultiModelTest, DuplicateNamesAreRefusedAtStartUp) {
  EXPECT_THROW(ServerProcess({"--model=a=" + kDense + ",a=" + kMoe}), std::runtime_error);
  EXPECT_THROW(ServerProcess({"--model=" + kDense + "," + kDense}), std::runtime_error);
}

TEST(ChatTest, ChatMlPromptIsFormattedWithTheTemplate) {
  const std::string dir = ModelWithChatTemplate("chatml", kChatMlTemplateJson);
  ServerProcess server({"--model=chat=" + dir + ",plain=" + kDense});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const v1::ModelInfo info = WaitForLoads(*stub);
  EXPECT_EQ(info.chat_template_family(), "chatml");
  EXPECT_NE(info.models(1).chat_template_error(), "");

  // What transformers' apply_chat_template renders for this conversation.
  const std::string golden =
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n<|im_start|>user\nAnd God said<|im_end|>\n<|im_start|>assistant\n";
  v1::TokenizeRequest text_request;
  text_request.set_text(golden);
  text_request.set_add_special_tokens(false);
  std::vector<int32_t> golden_ids;
  ASSERT_TRUE(Tokenize(*stub, text_request, &golden_ids).ok());
  ASSERT_GT(golden_ids.size(), 20u);

  v1::GenerateRequest request = Greedy("chat", "", 8);
  AddMessage(request.mutable_prompt()->mutable_chat(), "user", "And God said");
  const StreamResult r = RunGenerate(*stub, request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.final.prompt_tokens(), static_cast<int32_t>(golden_ids.size()));
  EXPECT_EQ(r.text.find("<|im_end|>"), std::string::npos) << r.text;

  // Tokenize gives the ids Generate runs on.
  v1::TokenizeRequest chat_request;
  AddMessage(chat_request.mutable_chat(), "user", "And God said");
  std::vector<int32_t> chat_ids;
  ASSERT_TRUE(Tokenize(*stub, chat_request, &chat_ids).ok());
  EXPECT_EQ(chat_ids, golden_ids);

  // With a system message the template's default one is not injected; without the
  // generation prompt the assistant header is left out.
  v1::TokenizeRequest with_system;
  AddMessage(AddMessage(with_system.mutable_chat(), "system", "Be brief."), "user", "Hi");
  with_system.mutable_chat()->set_add_generation_prompt(false);
  std::vector<int32_t> system_ids, system_golden_ids;
  ASSERT_TRUE(Tokenize(*stub, with_system, &system_ids).ok());
  text_request.set_text(
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
  ASSERT_TRUE(Tokenize(*stub, text_request, &system_golden_ids).ok());
  EXPECT_EQ(system_ids, system_golden_ids);

  // Score's context may be a conversation too; its continuation follows the assistant
  // header. The template's text is the context text, so (as lm-evaluation-harness does with
  // --apply_chat_template) the header's trailing "\n" moves into the continuation.
  {
    grpc::ClientContext context;
    v1::ScoreRequest score;
    score.set_model("chat");
    AddMessage(score.mutable_context()->mutable_chat(), "user", "And God said");
    score.add_continuations()->set_text("Let there be light");
    v1::ScoreResponse response;
    const grpc::Status status = stub->Score(&context, score, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    text_request.set_text(golden.substr(0, golden.size() - 1));
    std::vector<int32_t> header_ids;
    ASSERT_TRUE(Tokenize(*stub, text_request, &header_ids).ok());
    EXPECT_EQ(response.context_tokens(), static_cast<int32_t>(header_ids.size()));
    grpc::ClientContext text_context;
    v1::ScoreRequest as_text;
    as_text.set_model("chat");
    as_text.mutable_context()->set_text(golden);
    as_text.add_continuations()->set_text("Let there be light");
    v1::ScoreResponse text_response;
    ASSERT_TRUE(stub->Score(&text_context, as_text, &text_response).ok());
    ASSERT_EQ(response.scores_size(), 1);
    EXPECT_EQ(response.scores(0).num_tokens(), text_response.scores(0).num_tokens());
    EXPECT_NEAR(response.scores(0).logprob(), text_response.scores(0).logprob(), 1e-5);
  }

  // Bad messages name the field.
  v1::GenerateRequest bad_role = Greedy("chat", "", 4);
  AddMessage(bad_role.mutable_prompt()->mutable_chat(), "robot", "x");
  const StreamResult role = RunGenerate(*stub, bad_role);
  EXPECT_EQ(role.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(role.status.error_message().find("prompt.chat.messages[0].role"), std::string::npos)
      << role.status.error_message();
  v1::GenerateRequest empty = Greedy("chat", "", 4);
  empty.mutable_prompt()->mutable_chat();
  const StreamResult none = RunGenerate(*stub, empty);
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(none.status.error_message().find("prompt.chat.messages"), std::string::npos)
      << none.status.error_message();
  v1::TokenizeRequest both;
  both.set_text("x");
  AddMessage(both.mutable_chat(), "user", "Hi");
  std::vector<int32_t> ids;
  EXPECT_EQ(Tokenize(*stub, both, &ids).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // A model without a chat template refuses chat prompts, naming the model.
  v1::GenerateRequest plain = Greedy("plain", "", 4);
  AddMessage(plain.mutable_prompt()->mutable_chat(), "user", "Hi");
  const StreamResult no_template = RunGenerate(*stub, plain);
  EXPECT_EQ(no_template.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(no_template.status.error_message().find("'plain'"), std::string::npos)
      << no_template.status.error_message();
  EXPECT_NE(no_template.status.error_message().find("no chat template"), std::string::npos)
      << no_template.status.error_message();
}

// The bundled tokenizer has no <|im_end|>. Here it becomes an added special token sharing
// id 296 with a vocabulary token: the id the bundled dense model emits first, greedily, for
// the chat prompt below (found by trying ids; the model files are committed, so it holds).
TEST(ChatTest, TheEndOfTurnTokenStopsGenerationAndIsNotStreamed) {
  constexpr int32_t kEndOfTurnId = 296;
  const std::string dir = ModelWithChatTemplate("eot", kChatMlTemplateJson);
  std::ifstream in(kDense + "/tokenizer.json");
  nlohmann::json tokenizer = nlohmann::json::parse(in);
  tokenizer["added_tokens"].push_back({{"id", kEndOfTurnId},
                                       {"content", "<|im_end|>"},
                                       {"single_word", false},
                                       {"lstrip", false},
                                       {"rstrip", false},
                                       {"normalized", false},
                                       {"special", true}});
  ASSERT_EQ(unlink((dir + "/tokenizer.json").c_str()), 0);
  std::ofstream(dir + "/tokenizer.json") << tokenizer.dump();
  ServerProcess server({"--model=eot=" + dir});
  auto stub = v1::SpanServe::NewStub(server.Channel());

  // The template's special tokens are encoded as special tokens.
  v1::TokenizeRequest request;
  request.set_text("<|im_end|>");
  request.set_add_special_tokens(false);
  std::vector<int32_t> ids;
  ASSERT_TRUE(Tokenize(*stub, request, &ids).ok());
  EXPECT_EQ(ids, std::vector<int32_t>{kEndOfTurnId});

  v1::GenerateRequest chat = Greedy("", "", 8);
  AddMessage(chat.mutable_prompt()->mutable_chat(), "user", "And God said");
  const StreamResult stopped = RunGenerate(*stub, chat);
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  EXPECT_EQ(stopped.final.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(stopped.final.stop_token_id(), kEndOfTurnId);
  EXPECT_EQ(stopped.ids, std::vector<int32_t>{kEndOfTurnId});
  EXPECT_EQ(stopped.text, "");

  // ignore_eos lifts the end-of-turn stop too.
  chat.mutable_sampling()->set_ignore_eos(true);
  const StreamResult unstopped = RunGenerate(*stub, chat);
  ASSERT_TRUE(unstopped.status.ok()) << unstopped.status.error_message();
  EXPECT_EQ(unstopped.final.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(unstopped.ids.size(), 8u);
  EXPECT_EQ(unstopped.ids[0], kEndOfTurnId);
}

// A template of no named family (Llama-2's [INST]) serves chat through the Jinja
// interpreter; one that does not parse is reported with its line, and chat requests to that
// model answer INVALID_ARGUMENT naming it while raw text still works.
TEST(ChatTest, AnyJinjaTemplateServesAndABrokenOneNamesItsLine) {
  const std::string llama2 = ModelWithChatTemplate("llama2", kLlama2TemplateJson);
  const std::string broken =
      ModelWithChatTemplate("broken", R"("{% for m in messages %}{{ m.content }}")");
  const std::string kwargs = ModelWithChatTemplate(
      "kwargs",
      R"("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if enable_thinking is false %}/no_think{% endif %}")");
  ServerProcess server({"--model=llama2=" + llama2 + ",broken=" + broken + ",kwargs=" + kwargs});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const v1::ModelInfo info = Info(*stub);
  EXPECT_EQ(info.chat_template_family(), "jinja");
  EXPECT_EQ(info.chat_template_error(), "");

  v1::TokenizeRequest tokenize;
  tokenize.set_model("llama2");
  AddMessage(tokenize.mutable_chat(), "user", "Hi");
  AddMessage(tokenize.mutable_chat(), "assistant", "Hello");
  std::vector<int32_t> ids;
  ASSERT_TRUE(Tokenize(*stub, tokenize, &ids).ok());
  v1::DetokenizeRequest detokenize;
  detokenize.set_model("llama2");
  for (int32_t id : ids) detokenize.add_token_ids(id);
  detokenize.set_skip_special_tokens(false);
  grpc::ClientContext context;
  v1::DetokenizeResponse text;
  ASSERT_TRUE(stub->Detokenize(&context, detokenize, &text).ok());
  EXPECT_NE(text.text().find("[INST] Hi [/INST]Hello"), std::string::npos) << text.text();

  v1::GenerateRequest request = Greedy("llama2", "", 4);
  AddMessage(request.mutable_prompt()->mutable_chat(), "user", "Hi");
  EXPECT_TRUE(RunGenerate(*stub, request).status.ok());

  // chat_template_kwargs reach the template; anything but a JSON object is refused.
  WaitForLoads(*stub);
  const auto rendered = [&](const std::string& kwargs_json) -> std::string {
    v1::TokenizeRequest r;
    r.set_model("kwargs");
    AddMessage(r.mutable_chat(), "user", "Hi");
    r.mutable_chat()->set_chat_template_kwargs(kwargs_json);
    std::vector<int32_t> token_ids;
    const grpc::Status st = Tokenize(*stub, r, &token_ids);
    if (!st.ok()) return "ERROR " + st.error_message();
    v1::DetokenizeRequest d;
    d.set_model("kwargs");
    for (int32_t id : token_ids) d.add_token_ids(id);
    grpc::ClientContext c;
    v1::DetokenizeResponse out;
    EXPECT_TRUE(stub->Detokenize(&c, d, &out).ok());
    return out.text();
  };
  EXPECT_EQ(rendered(""), "<user>Hi");
  EXPECT_EQ(rendered(R"({"enable_thinking": false})"), "<user>Hi/no_think");
  EXPECT_NE(rendered("[1]").find("chat.chat_template_kwargs: must be a JSON object"),
            std::string::npos);
  EXPECT_NE(rendered(R"({"messages": []})").find("'messages' cannot be set"), std::string::npos);
  EXPECT_NE(rendered(R"({"x": )" + std::string(100000, '[') + std::string(100000, ']') + "}")
                .find("nests deeper than 64"),
            std::string::npos);

  WaitForLoads(*stub);
  const v1::ModelInfo broken_info = Info(*stub, "broken");
  EXPECT_EQ(broken_info.chat_template_family(), "");
  EXPECT_NE(broken_info.chat_template_error().find("chat template line 1"), std::string::npos)
      << broken_info.chat_template_error();
  request.set_model("broken");
  const StreamResult r = RunGenerate(*stub, request);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("'broken'"), std::string::npos)
      << r.status.error_message();
  EXPECT_NE(r.status.error_message().find("cannot be parsed"), std::string::npos)
      << r.status.error_message();
  EXPECT_TRUE(RunGenerate(*stub, Greedy("broken", "And God said", 4)).status.ok());
}

}  // namespace
}  // namespace spanserve::testing
