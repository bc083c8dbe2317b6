"""The lm-evaluation-harness model ``spanserve``: a SpanServe server as an ``lm_eval`` LM.

Request types and the RPCs that answer them:

* ``loglikelihood`` — ``Score``. Requests sharing a context go into one Score call (at most
  256 continuations each), context and continuation as text: the server applies the
  harness's tokenization rule itself (``_encode_pair``: trailing whitespace of the context
  moves into the continuation, whose tokens come from the joint encoding; an empty context
  is the prefix token, BOS else EOS; docs/API.md). A pair too long for the model's context
  is tokenized here (Tokenize) and its context left-truncated, as the harness's HF model
  does.
* ``loglikelihood_rolling`` — ``Score`` on token ids: the text is tokenized without special
  tokens and cut into the harness's own rolling windows
  (``lm_eval.utils.get_rolling_token_windows`` with the prefix token, context_len=1, the
  window as long as the server's context allows); each window is one Score call and the
  document's log-likelihood is their sum. Score rather than Generate with prompt logprobs:
  it returns exactly the continuation tokens' logprobs, in float64 sums, with no token
  generated.
* ``generate_until`` — ``Generate``: ``until`` → ``stop``, ``max_gen_toks`` → ``max_tokens``
  (default 256), greedy (temperature 0) unless ``do_sample`` is true; ``temperature``,
  ``top_p``, ``top_k``, ``min_p``, ``seed``, ``repetition_penalty``,
  ``presence_penalty``, ``frequency_penalty`` pass through. A prompt that would not leave
  room for max_tokens is tokenized and left-truncated.

Calls run ``max_concurrency`` at a time on a thread pool over one gRPC channel.

model_args: ``target`` (host:port), ``model`` (the server-side model name; empty: the
default), ``token`` (bearer token), ``max_concurrency`` [8], ``tls`` / ``root_certs``,
``timeout`` [600 s a call], ``add_bos_token`` (unset: the server's rule for text),
``max_length`` (unset: the server's max_model_len), ``max_gen_toks`` [256].
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from tqdm import tqdm

# Stands for the prefix token in rolling windows until it is sent (as an empty context).
_SERVER_PREFIX = -1

try:  # lm-eval >= 0.4.9 registers its own models lazily, and only when its registry is
    # empty: register them first, or registering ours would hide them.
    import lm_eval.models  # noqa: F401
except ImportError:  # pragma: no cover - older 0.4.x import torch there
    pass
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from spanserve.client import Client

log = logging.getLogger(__name__)

#: Continuations per Score call (the server's limit).
MAX_SCORE_CONTINUATIONS = 256
#: Sampling keys of gen_kwargs passed to Generate unchanged.
_PASSTHROUGH = ("temperature", "top_p", "top_k", "min_p", "seed", "repetition_penalty",
                "presence_penalty", "frequency_penalty")
#: gen_kwargs keys HF-style tasks carry that mean nothing to the server.
_IGNORED = ("do_sample", "num_beams", "early_stopping", "use_cache")

T = TypeVar("T")


def _as_bool(value: Any) -> Optional[bool]:
    if value is None or isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@register_model("spanserve")
class SpanServeLM(LM):
    """lm-evaluation-harness LM backed by a SpanServe server (see the module docstring)."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        model: Optional[str] = None,
        token: Optional[str] = None,
        max_concurrency: int = 8,
        tls: Any = False,
        root_certs: Optional[str] = None,
        timeout: float = 600.0,
        add_bos_token: Any = None,
        max_length: Optional[int] = None,
        max_gen_toks: int = 256,
        batch_size: Any = None,
        max_batch_size: Any = None,
        device: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            log.warning("spanserve: ignoring unknown model_args %s", sorted(kwargs))
        self.target = str(target)
        self.model_name = "" if model is None else str(model)
        self.max_concurrency = max(1, int(max_concurrency))
        self.add_bos_token = _as_bool(add_bos_token)
        self.max_gen_toks = int(max_gen_toks)
        self.client = Client(self.target, token=None if token is None else str(token),
                             tls=bool(_as_bool(tls)), root_certs=root_certs,
                             timeout=float(timeout), model=self.model_name)
        info = self.client.models()
        if info.state != "READY":
            raise RuntimeError(f"spanserve: model '{info.name}' at {self.target} is "
                               f"{info.state}: {info.error}")
        self.info = info
        # Tokens a Score or Generate prompt may hold: one position stays for the token the
        # engine always computes.
        self.max_length = int(max_length) if max_length else info.max_model_len - 1
        self._prefix: Optional[int] = None
        self._prefix_lock = threading.Lock()
        #: Score and Generate calls made (for tests and logs).
        self.num_score_calls = 0
        self.num_generate_calls = 0
        self._count_lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------

    def _map(self, fn: Callable[[T], Any], items: Sequence[T]) -> List[Any]:
        """fn over items on max_concurrency threads; results in the items' order."""
        if self.max_concurrency == 1 or len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(fn, items))

    def _score(self, context: Any, continuations: Sequence[Any],
               add_special_tokens: Optional[bool] = None) -> List[Any]:
        with self._count_lock:
            self.num_score_calls += 1
        return self.client.score(context, continuations, add_special_tokens=add_special_tokens)

    @property
    def prefix_token_id(self) -> int:
        """The token that conditions the first token of a text (the harness's rule): BOS if
        the server's tokenizer adds one to text, else the model's first EOS id."""
        with self._prefix_lock:
            if self._prefix is None:
                plain = self.client.tokenize("a", add_special_tokens=False).token_ids
                special = self.client.tokenize("a", add_special_tokens=True).token_ids
                if len(special) > len(plain) and special[-len(plain):] == plain:
                    self._prefix = special[0]
                elif self.info.eos_token_ids:
                    self._prefix = self.info.eos_token_ids[0]
                else:
                    raise RuntimeError("spanserve: the model has neither BOS nor EOS ids")
            return self._prefix

    def _context_special(self) -> Optional[bool]:
        return self.add_bos_token

    # -- loglikelihood --------------------------------------------------------------------

    def loglikelihood(self, requests: List[Any], disable_tqdm: bool = False
                      ) -> List[Tuple[float, bool]]:
        """(logprob, is_greedy) of each (context, continuation) through Score calls that
        share a context."""
        pairs: List[Tuple[str, str]] = [tuple(r.args) for r in requests]  # type: ignore
        results: List[Optional[Tuple[float, bool]]] = [None] * len(pairs)
        # Long pairs go one by one through token ids; the rest grouped by context.
        groups: "OrderedDict[str, List[int]]" = OrderedDict()
        long_pairs: List[int] = []
        for i, (ctx, cont) in enumerate(pairs):
            if len(ctx.encode()) + len(cont.encode()) + 1 > self.max_length:
                long_pairs.append(i)  # bytes >= tokens: only these can be too long
            else:
                groups.setdefault(ctx, []).append(i)
        calls: List[Tuple[str, List[int]]] = []
        for ctx, idx in groups.items():
            for start in range(0, len(idx), MAX_SCORE_CONTINUATIONS):
                calls.append((ctx, idx[start:start + MAX_SCORE_CONTINUATIONS]))
        progress = tqdm(total=len(pairs), disable=disable_tqdm or self.rank != 0,
                        desc="spanserve loglikelihood")

        def run_group(call: Tuple[str, List[int]]) -> None:
            ctx, idx = call
            conts = [pairs[i][1] for i in idx]
            # An empty context is the server's prefix token (the harness's rule).
            scores = self._score(ctx, conts, self._context_special())
            for i, s in zip(idx, scores):
                results[i] = (s.logprob, s.is_greedy)
            progress.update(len(idx))

        def run_long(i: int) -> None:
            ctx, cont = pairs[i]
            # No context ids: the server puts its prefix token there.
            ctx_ids = ([] if ctx == "" else self.client.tokenize(
                ctx, add_special_tokens=self._context_special()).token_ids)
            cont_ids = self.client.tokenize(cont, add_special_tokens=False).token_ids
            cont_ids = cont_ids[-self.max_length:]
            keep = max(1, self.max_length - len(cont_ids))
            if len(cont_ids) >= self.max_length:  # nothing of the context fits
                ctx_ids, cont_ids = cont_ids[:1], cont_ids[1:]
                keep = 1
            s = self._score(ctx_ids[-keep:], [cont_ids])[0]
            results[i] = (s.logprob, s.is_greedy)
            progress.update(1)

        jobs: List[Tuple[str, Any]] = [("group", c) for c in calls]
        jobs += [("long", i) for i in long_pairs]
        self._map(lambda job: run_group(job[1]) if job[0] == "group" else run_long(job[1]),
                  jobs)
        progress.close()
        for (ctx, cont), res in zip(pairs, results):
            self.cache_hook.add_partial("loglikelihood", (ctx, cont), res)
        return results  # type: ignore[return-value]

    # -- loglikelihood_rolling --------------------------------------------------------------

    def rolling_windows(self, text: str) -> List[Tuple[List[int], List[int]]]:
        """The harness's disjoint rolling windows of ``text`` for this server: (context ids,
        continuation ids), each pair at most ``max_length`` tokens together."""
        ids = self.client.tokenize(text, add_special_tokens=False).token_ids
        windows = lm_utils.get_rolling_token_windows(
            token_list=ids, prefix_token=_SERVER_PREFIX,
            max_seq_len=self.max_length - 1, context_len=1)
        # The first window's context is the prefix token alone: sent as no context, the
        # server puts its own there (BOS, else EOS: HFLM.prefix_token_id).
        return [([] if list(c) == [_SERVER_PREFIX] else list(c), list(t))
                for c, t in (lm_utils.make_disjoint_window(w) for w in windows)]

    def loglikelihood_rolling(self, requests: List[Any], disable_tqdm: bool = False
                              ) -> List[float]:
        """The log-likelihood of each whole text, summed over rolling windows (Score)."""
        texts = [r.args[0] for r in requests]
        progress = tqdm(total=len(texts), disable=disable_tqdm or self.rank != 0,
                        desc="spanserve loglikelihood_rolling")
        windows = self._map(self.rolling_windows, texts)
        jobs = [(d, w) for d, ws in enumerate(windows) for w in ws]
        scores = self._map(lambda job: self._score(job[1][0], [job[1][1]])[0].logprob, jobs)
        totals = [0.0] * len(texts)
        for (d, _), s in zip(jobs, scores):
            totals[d] += s
        progress.update(len(texts))
        progress.close()
        for text, total in zip(texts, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    # -- generate_until ----------------------------------------------------------------------

    def sampling_for(self, gen_kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """Generate's sampling keywords for one request's gen_kwargs (see the module doc)."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        if isinstance(until, str):
            until = [until]
        sampling: Dict[str, Any] = {
            "stop": [u for u in (until or []) if u],
            "max_tokens": int(kwargs.pop("max_gen_toks", kwargs.pop("max_tokens",
                                                                    self.max_gen_toks))),
        }
        do_sample = _as_bool(kwargs.pop("do_sample", False))
        for key in _PASSTHROUGH:
            if key in kwargs:
                sampling[key] = kwargs.pop(key)
        if not do_sample:
            sampling["temperature"] = 0.0
        elif "temperature" not in sampling:
            sampling["temperature"] = 1.0
        for key in _IGNORED:
            kwargs.pop(key, None)
        if kwargs:
            log.warning("spanserve: ignoring gen_kwargs %s", sorted(kwargs))
        return sampling

    def generate_until(self, requests: List[Any], disable_tqdm: bool = False) -> List[str]:
        """Greedy (unless do_sample) generation of each context up to a stop string."""
        args = [tuple(r.args[:2]) for r in requests]
        progress = tqdm(total=len(args), disable=disable_tqdm or self.rank != 0,
                        desc="spanserve generate_until")

        def run(item: Tuple[str, Dict[str, Any]]) -> str:
            context, gen_kwargs = item
            sampling = self.sampling_for(gen_kwargs)
            sampling["max_tokens"] = max(1, min(sampling["max_tokens"], self.max_length - 1))
            prompt: Any = context
            if len(context.encode()) + sampling["max_tokens"] > self.max_length:
                ids = self.client.tokenize(
                    context, add_special_tokens=self._context_special()).token_ids
                keep = self.max_length - sampling["max_tokens"]
                if len(ids) > keep:
                    prompt = ids[-keep:]
            with self._count_lock:
                self.num_generate_calls += 1
            text = self.client.generate(prompt, add_special_tokens=(
                self._context_special() if isinstance(prompt, str) else None),
                **sampling).text()
            for stop in sampling["stop"]:  # the server drops the match; keep the harness's
                text = text.split(stop)[0]  # rule for anything before it anyway
            progress.update(1)
            return text

        out = self._map(run, args)
        progress.close()
        for (context, gen_kwargs), text in zip(args, out):
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    # -- misc --------------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        """Identifies the tokenizer in lm-eval's request-cache fingerprints."""
        return f"spanserve:{self.info.name}:{self.info.model_path}"
