"""``spanserve.Client``: every SpanServe call, typed, over one gRPC channel."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from spanserve._types import (
    ChatMessage,
    Completion,
    ContinuationScore,
    ExpertLoad,
    GenerateChunk,
    MessageLike,
    ModelInfo,
    PositionLogprobs,
    Tokenized,
)
from spanserve.errors import SpanServeError
from spanserve.v1 import spanserve_pb2 as pb
from spanserve.v1 import spanserve_pb2_grpc as pb_grpc

#: A prompt: text (tokenized by the server) or token ids.
PromptLike = Union[str, Sequence[int]]

#: The sampling keywords ``generate`` and ``chat`` take: spanserve.v1.SamplingParams (vLLM
#: semantics; unset ones keep the server's default).
SAMPLING_FIELDS = frozenset(pb.SamplingParams.DESCRIPTOR.fields_by_name)

_UNSET: Any = object()


def _prompt(prompt: PromptLike, add_special_tokens: Optional[bool] = None) -> pb.Prompt:
    """A spanserve.v1.Prompt from text or token ids."""
    if isinstance(prompt, pb.Prompt):
        return prompt
    if isinstance(prompt, str):
        p = pb.Prompt(text=prompt)
    elif isinstance(prompt, (bytes, bytearray)):
        raise TypeError("prompt: pass text as str, not bytes")
    else:
        p = pb.Prompt(token_ids=pb.TokenIds(ids=[int(i) for i in prompt]))
    if add_special_tokens is not None:
        p.add_special_tokens = add_special_tokens
    return p


def _chat(messages: Iterable[MessageLike], add_generation_prompt: Optional[bool],
          chat_template_kwargs: Optional[Mapping[str, Any]] = None,
          tools: Optional[Sequence[Mapping[str, Any]]] = None,
          continue_final_message: Optional[bool] = None) -> pb.Chat:
    """A spanserve.v1.Chat from ChatMessage, {"role", "content"} dicts (OpenAI's: with
    "tool_calls", "tool_call_id", "name" too) or (role, content) pairs."""
    chat = pb.Chat()
    if chat_template_kwargs:
        chat.chat_template_kwargs = json.dumps(dict(chat_template_kwargs))
    if tools:
        chat.tools = json.dumps(list(tools))
    for m in messages:
        if isinstance(m, ChatMessage):
            chat.messages.add(role=m.role, content=m.content)
        elif isinstance(m, Mapping):
            out = chat.messages.add(role=m["role"], content=m.get("content") or "")
            if m.get("tool_calls"):
                out.tool_calls = json.dumps(list(m["tool_calls"]))
            out.tool_call_id = m.get("tool_call_id") or ""
            out.name = m.get("name") or ""
        else:
            role, content = m
            chat.messages.add(role=role, content=content)
    if continue_final_message:
        chat.continue_final_message = True
        if add_generation_prompt is None:
            add_generation_prompt = False
    if add_generation_prompt is not None:
        chat.add_generation_prompt = add_generation_prompt
    return chat


def _sampling(sampling: Mapping[str, Any]) -> pb.SamplingParams:
    """spanserve.v1.SamplingParams from keywords; None values are left unset."""
    unknown = set(sampling) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling parameter(s) {sorted(unknown)}; "
                        f"expected some of {sorted(SAMPLING_FIELDS)}")
    params = pb.SamplingParams()
    for name, value in sampling.items():
        if value is None:
            continue
        if name in ("stop", "stop_token_ids", "guided_choice", "allowed_token_ids", "bad_words"):
            if isinstance(value, (str, int)):
                value = [value]
            getattr(params, name).extend(value)
        elif name == "logit_bias":  # {token id: bias}; a JSON-style str key is taken too
            getattr(params, name).update({int(k): float(v) for k, v in value.items()})
        elif name == "response_format" and isinstance(value, str):  # "json_object", ...
            params.response_format = pb.ResponseFormat.Value(
                value if value.startswith("RESPONSE_FORMAT_") else
                "RESPONSE_FORMAT_" + value.upper())
        elif name == "json_schema":  # a schema (dict, its keys' order kept) or its JSON text
            params.json_schema = value if isinstance(value, str) else json.dumps(value)
            if "response_format" not in sampling:
                params.response_format = pb.RESPONSE_FORMAT_JSON_SCHEMA
        else:
            setattr(params, name, value)
    return params


class GenerateStream(Iterator[GenerateChunk]):
    """The chunks of one Generate call, as they arrive.

    Iterate it for ``GenerateChunk`` s, or call ``collect()`` (or ``text()``) to wait for
    the whole output. ``request_id`` is known after the first chunk; ``cancel()`` ends the
    call (the server frees the request within one engine step). A failure while streaming
    raises ``SpanServeError``.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._chunks: List[GenerateChunk] = []
        self._done = False
        self.request_id: Optional[int] = None

    def __iter__(self) -> "GenerateStream":
        return self

    def __next__(self) -> GenerateChunk:
        if self._done:
            raise StopIteration
        try:
            message = next(self._call)
        except StopIteration:
            self._done = True
            raise
        except grpc.RpcError as e:
            self._done = True
            raise SpanServeError.from_rpc_error(e) from None
        chunk = GenerateChunk.from_proto(message)
        if self.request_id is None:
            self.request_id = chunk.request_id
        self._chunks.append(chunk)
        return chunk

    @property
    def chunks(self) -> List[GenerateChunk]:
        """The chunks received so far."""
        return list(self._chunks)

    def collect(self) -> Completion:
        """Waits for the rest of the stream; every chunk (seen or not) put together."""
        for _ in self:
            pass
        logprobs: List[PositionLogprobs] = []
        for c in self._chunks:
            logprobs.extend(c.logprobs)
        return Completion(
            request_id=self.request_id or 0,
            text="".join(c.text for c in self._chunks),
            token_ids=[i for c in self._chunks for i in c.token_ids],
            logprobs=logprobs,
            final=self._chunks[-1].final if self._chunks else None,
        )

    def text(self) -> str:
        """Waits for the rest of the stream and returns the whole generated text."""
        return self.collect().text

    def cancel(self) -> None:
        """Cancels the call; iterating further raises SpanServeError(CANCELLED)."""
        self._call.cancel()


class Client:
    """A SpanServe client over one gRPC channel (thread-safe: share it between threads).

    Args:
        target: ``host:port`` of the server.
        token: bearer token for servers started with ``--auth_token``; sent as
            ``authorization: Bearer <token>`` metadata on every call.
        tls: use TLS (system roots unless ``root_certs`` is given).
        root_certs: PEM CA certificates (bytes, or a path to a PEM file) to verify the
            server with; implies ``tls``.
        timeout: default deadline of each call in seconds (None: no deadline); every method
            takes ``timeout=`` to override it.
        model: default ``model`` of every request ("" : the server's default model).
        options: extra grpc channel options, e.g. ``[("grpc.max_receive_message_length",
            64 << 20)]``.

    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        token: Optional[str] = None,
        tls: bool = False,
        root_certs: Union[bytes, str, None] = None,
        timeout: Optional[float] = 60.0,
        *,
        model: str = "",
        options: Optional[Sequence[Tuple[str, Any]]] = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.model = model
        opts = list(options or [])
        if root_certs is not None or tls:
            if isinstance(root_certs, str):
                with open(root_certs, "rb") as f:
                    root_certs = f.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certs)
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        else:
            self._channel = grpc.insecure_channel(target, options=opts)
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ())
        self._stub = pb_grpc.SpanServeStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def channel(self) -> grpc.Channel:
        """The underlying grpc channel (for the raw stubs in ``spanserve.v1``)."""
        return self._channel

    def _timeout(self, timeout: Any) -> Optional[float]:
        return self.timeout if timeout is _UNSET else timeout

    def _model(self, model: Optional[str]) -> str:
        return self.model if model is None else model

    def _unary(self, method: Any, request: Any, timeout: Any) -> Any:
        try:
            return method(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise SpanServeError.from_rpc_error(e) from None

    # -- Generate -----------------------------------------------------------------------

    def _generate(self, prompt: pb.Prompt, model: Optional[str], priority: int,
                  client_request_id: str, timeout: Any,
                  sampling: Mapping[str, Any]) -> GenerateStream:
        request = pb.GenerateRequest(
            prompt=prompt, sampling=_sampling(sampling), priority=priority,
            client_request_id=client_request_id, model=self._model(model))
        call = self._stub.Generate(request, timeout=self._timeout(timeout),
                                   metadata=self._metadata)
        return GenerateStream(call)

    def generate(
        self,
        prompt: PromptLike,
        *,
        model: Optional[str] = None,
        add_special_tokens: Optional[bool] = None,
        priority: int = 0,
        client_request_id: str = "",
        timeout: Any = _UNSET,
        **sampling: Any,
    ) -> GenerateStream:
        """Streams a generation for ``prompt`` (text, or a sequence of token ids).

        ``sampling`` keywords are spanserve.v1.SamplingParams fields (vLLM semantics):
        ``max_tokens`` [16], ``temperature`` [1.0; 0 is greedy], ``top_k``, ``top_p``,
        ``min_p``, ``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``,
        ``seed``, ``min_tokens``, ``ignore_eos``, ``stop`` (strings), ``stop_token_ids``,
        ``logprobs`` (N: each token's logprob and its N best alternatives), ``logit_bias``
        ({token id: bias in [-100, 100]}, added before the penalties), ``response_format``
        ("json_object": OpenAI's JSON mode, the output a JSON object; "text"),
        ``json_schema`` (a JSON Schema, a dict or its text: the output a JSON text it
        accepts; docs/API.md lists the keywords compiled), ``guided_choice`` (strings: the
        output is one of them), ``guided_regex`` (a regular expression the whole output
        matches), ``guided_grammar`` (a GBNF grammar the whole output is a sentence of),
        and vLLM's ``include_stop_str_in_output``, ``skip_special_tokens`` [True],
        ``allowed_token_ids``, ``bad_words`` and ``truncate_prompt_tokens``. Unknown names
        raise TypeError; server-side validation errors raise SpanServeError while iterating.

        Returns:
            A ``GenerateStream``: iterate it for chunks, or ``.collect()`` / ``.text()``.
        """
        return self._generate(_prompt(prompt, add_special_tokens), model, priority,
                              client_request_id, timeout, sampling)

    def complete(self, prompt: PromptLike, **kwargs: Any) -> Completion:
        """``generate(prompt, **kwargs).collect()``: the whole output at once."""
        return self.generate(prompt, **kwargs).collect()

    def chat(
        self,
        messages: Iterable[MessageLike],
        *,
        add_generation_prompt: Optional[bool] = None,
        chat_template_kwargs: Optional[Mapping[str, Any]] = None,
        tools: Optional[Sequence[Mapping[str, Any]]] = None,
        continue_final_message: Optional[bool] = None,
        model: Optional[str] = None,
        priority: int = 0,
        client_request_id: str = "",
        timeout: Any = _UNSET,
        **sampling: Any,
    ) -> GenerateStream:
        """Streams the assistant's answer to a conversation.

        ``messages``: ``ChatMessage`` s, ``{"role": ..., "content": ...}`` dicts or
        ``(role, content)`` pairs (roles system / user / assistant). The server formats them
        with the model's chat template (a model without one answers INVALID_ARGUMENT) and
        stops at the end-of-turn token. ``chat_template_kwargs``: extra template variables,
        e.g. ``{"enable_thinking": False}``; ``tools``: OpenAI function tools the template
        presents to the model (the answer is text: constrain it with ``json_schema`` if need
        be). ``continue_final_message``: the last message (an assistant's start) is left
        open and the model goes on with it, with no generation prompt. ``sampling`` as in
        ``generate``.
        """
        prompt = pb.Prompt(chat=_chat(messages, add_generation_prompt, chat_template_kwargs,
                                      tools, continue_final_message))
        return self._generate(prompt, model, priority, client_request_id, timeout, sampling)

    # -- Score, Tokenize, Detokenize -----------------------------------------------------

    def score(
        self,
        context: Union[PromptLike, Sequence[MessageLike]],
        continuations: Sequence[PromptLike],
        *,
        model: Optional[str] = None,
        add_special_tokens: Optional[bool] = None,
        timeout: Any = _UNSET,
    ) -> List[ContinuationScore]:
        """Log-likelihood of each continuation given the context (one Score call).

        ``context``: text, token ids, or chat messages (a list of dicts / ChatMessage).
        ``continuations``: text or token ids; at most 256 a call. The server tokenizes text
        pairs as lm-evaluation-harness's ``_encode_pair`` does (trailing whitespace of the
        context moves into the continuation, whose tokens come from the joint encoding;
        no special tokens unless ``add_special_tokens``); an empty context is the prefix
        token (BOS, else EOS). docs/API.md has the whole rule.

        Returns:
            One ``ContinuationScore`` per continuation, in order.
        """
        request = pb.ScoreRequest(model=self._model(model))
        if (not isinstance(context, (str, bytes)) and len(context) > 0
                and not isinstance(context[0], int)):
            request.context.chat.CopyFrom(_chat(context, None))  # type: ignore[arg-type]
        else:
            request.context.CopyFrom(_prompt(context, add_special_tokens))  # type: ignore
        for c in continuations:
            request.continuations.append(_prompt(c))
        response = self._unary(self._stub.Score, request, timeout)
        return [ContinuationScore.from_proto(s) for s in response.scores]

    def tokenize(
        self,
        text: Optional[str] = None,
        *,
        chat: Optional[Sequence[MessageLike]] = None,
        add_special_tokens: Optional[bool] = None,
        model: Optional[str] = None,
        timeout: Any = _UNSET,
    ) -> Tokenized:
        """Token ids (and vocabulary strings) of ``text``, or of ``chat`` messages as a
        Generate with that chat prompt would run them. Exactly one of the two."""
        if (text is None) == (chat is None):
            raise TypeError("tokenize: pass exactly one of text and chat")
        request = pb.TokenizeRequest(model=self._model(model))
        if text is not None:
            request.text = text
        else:
            request.chat.CopyFrom(_chat(chat or [], None))
        if add_special_tokens is not None:
            request.add_special_tokens = add_special_tokens
        return Tokenized.from_proto(self._unary(self._stub.Tokenize, request, timeout))

    def detokenize(
        self,
        token_ids: Sequence[int],
        *,
        skip_special_tokens: Optional[bool] = None,
        model: Optional[str] = None,
        timeout: Any = _UNSET,
    ) -> str:
        """The text of ``token_ids`` (special tokens skipped unless told otherwise)."""
        request = pb.DetokenizeRequest(token_ids=list(token_ids), model=self._model(model))
        if skip_special_tokens is not None:
            request.skip_special_tokens = skip_special_tokens
        return self._unary(self._stub.Detokenize, request, timeout).text

    # -- models, health, expert load, abort ------------------------------------------------

    def models(self, model: Optional[str] = None, *, timeout: Any = _UNSET) -> ModelInfo:
        """GetModelInfo: the named (or default) model, with ``.models`` listing every
        served model (the default first), its state, limits and KV usage."""
        request = pb.GetModelInfoRequest(model=self._model(model))
        return ModelInfo.from_proto(self._unary(self._stub.GetModelInfo, request, timeout))

    model_info = models

    def expert_load(self, model: Optional[str] = None, *,
                    timeout: Any = _UNSET) -> ExpertLoad:
        """Tokens routed to each expert of each MoE layer (empty for dense models)."""
        request = pb.GetExpertLoadRequest(model=self._model(model))
        return ExpertLoad.from_proto(self._unary(self._stub.GetExpertLoad, request, timeout))

    def abort(self, request_id: int, *, timeout: Any = _UNSET) -> bool:
        """Cancels a running Generate by its request id; False if unknown or finished."""
        request = pb.AbortRequest(request_id=request_id)
        return self._unary(self._stub.Abort, request, timeout).aborted

    def health(self, service: str = "", *, timeout: Any = _UNSET) -> str:
        """grpc.health.v1 Check: ``"SERVING"`` once the default model is loaded and warm,
        ``"NOT_SERVING"`` while loading or draining. ``service``: "" (the server) or
        ``"spanserve.v1.SpanServe"``. Unreachable servers raise SpanServeError."""
        response = self._unary(self._health.Check,
                               health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_serving(self, timeout: float = 60.0, poll_s: float = 0.05) -> None:
        """Polls ``health()`` until SERVING; raises SpanServeError(DEADLINE_EXCEEDED) with
        the last status or error after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                last = self.health(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except SpanServeError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                raise SpanServeError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"{self.target} not SERVING after {timeout} s: {last}")
            time.sleep(poll_s)
