"""Plain dataclasses for what the server answers, built from the spanserve.v1 messages.

Each has ``from_proto`` (the generated message in, the dataclass out); the client returns
only these, so callers never handle protobuf objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional, Union

from spanserve.v1 import spanserve_pb2 as pb


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation: role "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class TokenLogprob:
    """A candidate token at one position: its id, logprob and display text."""

    token_id: int
    logprob: float
    text: str = ""

    @classmethod
    def from_proto(cls, m: pb.TokenLogprob) -> "TokenLogprob":
        return cls(token_id=m.token_id, logprob=m.logprob, text=m.text)


@dataclass(frozen=True)
class PositionLogprobs:
    """One generated position: the chosen token, its logprob and the top alternatives."""

    token_id: int
    logprob: float
    top: List[TokenLogprob] = field(default_factory=list)

    @classmethod
    def from_proto(cls, m: pb.PositionLogprobs) -> "PositionLogprobs":
        return cls(token_id=m.token_id, logprob=m.logprob,
                   top=[TokenLogprob.from_proto(t) for t in m.top])


@dataclass(frozen=True)
class Timings:
    """Server-side seconds of one request (queue, time to first token, prefill, decode)."""

    queue_s: float = 0.0
    ttft_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    e2e_s: float = 0.0

    @classmethod
    def from_proto(cls, m: pb.Timings) -> "Timings":
        return cls(queue_s=m.queue_s, ttft_s=m.ttft_s, prefill_s=m.prefill_s,
                   decode_s=m.decode_s, e2e_s=m.e2e_s)


_FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
}


@dataclass(frozen=True)
class FinalInfo:
    """How a generation ended; carried by the last chunk.

    ``finish_reason`` is ``"stop"`` (EOS, a stop token id or a stop string; which one is in
    ``stop_token_id`` / ``stop_string``) or ``"length"`` (max_tokens, or the context is full).
    """

    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    cached_prompt_tokens: int = 0
    num_preemptions: int = 0
    stop_token_id: Optional[int] = None
    stop_string: Optional[str] = None
    timings: Timings = field(default_factory=Timings)

    @classmethod
    def from_proto(cls, m: pb.FinalInfo) -> "FinalInfo":
        return cls(
            finish_reason=_FINISH_REASONS.get(m.finish_reason, "unspecified"),
            prompt_tokens=m.prompt_tokens,
            generated_tokens=m.generated_tokens,
            cached_prompt_tokens=m.cached_prompt_tokens,
            num_preemptions=m.num_preemptions,
            stop_token_id=m.stop_token_id if m.HasField("stop_token_id") else None,
            stop_string=m.stop_string if m.HasField("stop_string") else None,
            timings=Timings.from_proto(m.timings),
        )


@dataclass(frozen=True)
class GenerateChunk:
    """One streamed delta of a generation.

    Concatenating every chunk's ``token_ids`` (``text``) gives the whole output's ids
    (text); ``logprobs`` has one entry per token when logprobs were asked for; ``final`` is
    set on the last chunk only.
    """

    request_id: int
    text: str
    token_ids: List[int]
    logprobs: List[PositionLogprobs] = field(default_factory=list)
    final: Optional[FinalInfo] = None

    @classmethod
    def from_proto(cls, m: pb.GenerateChunk) -> "GenerateChunk":
        return cls(
            request_id=m.request_id,
            text=m.text,
            token_ids=list(m.token_ids),
            logprobs=[PositionLogprobs.from_proto(p) for p in m.logprobs],
            final=FinalInfo.from_proto(m.final) if m.HasField("final") else None,
        )


@dataclass(frozen=True)
class Completion:
    """A whole generation: every chunk of a stream put together."""

    request_id: int
    text: str
    token_ids: List[int]
    logprobs: List[PositionLogprobs]
    final: Optional[FinalInfo]

    @property
    def finish_reason(self) -> Optional[str]:
        """``"stop"`` or ``"length"``; None if the stream ended without a final chunk."""
        return self.final.finish_reason if self.final else None


@dataclass(frozen=True)
class ContinuationScore:
    """The log-likelihood of one continuation given the context (``Client.score``).

    ``logprob`` is the sum of ``token_logprobs`` (one per continuation token, in order);
    ``is_greedy`` tells whether every token was the model's argmax at its position.
    """

    logprob: float
    is_greedy: bool
    num_tokens: int
    token_logprobs: List[float]

    @classmethod
    def from_proto(cls, m: pb.ContinuationScore) -> "ContinuationScore":
        return cls(logprob=m.logprob, is_greedy=m.is_greedy, num_tokens=m.num_tokens,
                   token_logprobs=list(m.token_logprobs))


@dataclass(frozen=True)
class Tokenized:
    """Token ids and each id's vocabulary string (``Client.tokenize``)."""

    token_ids: List[int]
    tokens: List[str]

    @classmethod
    def from_proto(cls, m: pb.TokenizeResponse) -> "Tokenized":
        return cls(token_ids=list(m.token_ids), tokens=list(m.tokens))


_MODEL_STATES = {
    pb.MODEL_STATE_LOADING: "LOADING",
    pb.MODEL_STATE_READY: "READY",
    pb.MODEL_STATE_FAILED: "FAILED",
}


@dataclass(frozen=True)
class ModelInfo:
    """One served model (GetModelInfo), plus at the top level the list of all of them.

    ``state`` is ``"LOADING"``, ``"READY"`` or ``"FAILED"`` (then ``error`` says why); what
    describes the loaded model is set only when READY. ``models`` lists every served model,
    the default first (empty in the entries themselves).
    """

    name: str
    model_path: str
    state: str
    error: str = ""
    is_default: bool = False
    format: str = ""
    architecture: str = ""
    norm_placement: str = ""
    is_moe: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    num_layers: int = 0
    hidden_size: int = 0
    vocab_size: int = 0
    num_parameters: int = 0
    eos_token_ids: List[int] = field(default_factory=list)
    max_model_len: int = 0
    max_num_seqs: int = 0
    max_batched_tokens: int = 0
    max_waiting_requests: int = 0
    kv_block_size: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_cache_bytes: int = 0
    kv_cache_usage_ratio: float = 0.0
    kv_cache_dtype: str = ""
    compute_dtype: str = ""
    num_requests_running: int = 0
    num_requests_waiting: int = 0
    device: str = ""
    chat_template_family: str = ""
    chat_template_error: str = ""
    models: List["ModelInfo"] = field(default_factory=list)

    @classmethod
    def from_proto(cls, m: pb.ModelInfo) -> "ModelInfo":
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "state":
                values["state"] = _MODEL_STATES.get(m.state, "UNSPECIFIED")
            elif f.name == "models":
                values["models"] = [ModelInfo.from_proto(x) for x in m.models]
            elif f.name == "eos_token_ids":
                values["eos_token_ids"] = list(m.eos_token_ids)
            else:
                values[f.name] = getattr(m, f.name)
        return cls(**values)


@dataclass(frozen=True)
class LayerExpertLoad:
    """Tokens routed to each expert of one MoE layer."""

    layer: int
    tokens: List[int]


@dataclass(frozen=True)
class ExpertLoad:
    """Per-layer expert routing counts since ``window_s`` seconds ago (empty when dense)."""

    layers: List[LayerExpertLoad]
    window_s: float
    note: str = ""

    @classmethod
    def from_proto(cls, m: pb.ExpertLoad) -> "ExpertLoad":
        return cls(layers=[LayerExpertLoad(layer=x.layer, tokens=list(x.tokens))
                           for x in m.layers],
                   window_s=m.window_s, note=m.note)


#: What ``Client.chat`` accepts as one message.
MessageLike = Union[ChatMessage, dict, tuple]
