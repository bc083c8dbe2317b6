"""lm-evaluation-harness integration: the ``spanserve`` model and a CLI that knows it.

Importing this package registers ``SpanServeLM`` as lm-eval's model ``spanserve`` (needs
the ``lm-eval`` package, 0.4.x), so in Python::

    import lm_eval
    import spanserve.lm_eval  # noqa: F401  (registers "spanserve")
    lm_eval.simple_evaluate(model="spanserve", model_args="target=127.0.0.1:50051",
                            tasks=["hellaswag"])

and on the command line ``spanserve-lm-eval`` (or ``python -m spanserve.lm_eval``) is
lm-eval's own CLI with the model registered::

    spanserve-lm-eval --model spanserve --model_args target=127.0.0.1:50051 --tasks hellaswag
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from spanserve.lm_eval.adapter import SpanServeLM

__all__ = ["SpanServeLM", "main"]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Runs lm-eval's CLI (``lm_eval.__main__.cli_evaluate``) with ``spanserve``
    registered; ``argv`` replaces the command-line arguments when given."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0] if sys.argv else "spanserve-lm-eval", *argv]
    cli_evaluate()
