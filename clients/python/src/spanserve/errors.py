"""The one exception type the client raises for a failed call."""

from __future__ import annotations

import grpc


class SpanServeError(Exception):
    """A call the server (or the transport) failed.

    Attributes:
        code: the gRPC status code, e.g. ``grpc.StatusCode.INVALID_ARGUMENT`` (the server
            names the offending field in the message), ``RESOURCE_EXHAUSTED`` (queue full:
            retry later), ``UNAVAILABLE`` (loading, draining or unreachable),
            ``UNAUTHENTICATED``, ``NOT_FOUND`` (unknown model), ``DEADLINE_EXCEEDED``.
        message: the status message (gRPC's "details").
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code: grpc.StatusCode = code
        self.message: str = message

    @property
    def code_name(self) -> str:
        """The code's name, e.g. ``"INVALID_ARGUMENT"``."""
        return self.code.name

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "SpanServeError":
        """Wraps a grpcio error (a ``grpc.Call``) into a ``SpanServeError``."""
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else None
        return cls(code or grpc.StatusCode.UNKNOWN, details or str(error))
