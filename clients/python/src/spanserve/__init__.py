"""Python client for SpanServe, the gRPC LLM-serving server.

    >>> import spanserve
    >>> with spanserve.Client("127.0.0.1:50051") as client:
    ...     print(client.complete("In the beginning", max_tokens=8, temperature=0).text)

`spanserve.Client` wraps every `spanserve.v1.SpanServe` call and grpc.health.v1; results
are the dataclasses below; a failed call raises `SpanServeError` with the gRPC code. The
lm-evaluation-harness adapter lives in `spanserve.lm_eval` (needs the `lm-eval` package),
the raw generated stubs in `spanserve.v1`.
"""

from spanserve._types import (
    ChatMessage,
    Completion,
    ContinuationScore,
    ExpertLoad,
    FinalInfo,
    GenerateChunk,
    LayerExpertLoad,
    ModelInfo,
    PositionLogprobs,
    Timings,
    Tokenized,
    TokenLogprob,
)
from spanserve.client import Client, GenerateStream
from spanserve.errors import SpanServeError

__version__ = "0.1.0"

__all__ = [
    "ChatMessage",
    "Client",
    "Completion",
    "ContinuationScore",
    "ExpertLoad",
    "FinalInfo",
    "GenerateChunk",
    "GenerateStream",
    "LayerExpertLoad",
    "ModelInfo",
    "PositionLogprobs",
    "SpanServeError",
    "Timings",
    "TokenLogprob",
    "Tokenized",
    "__version__",
]
