"""Log lines for the daemons: readable by default (rich on a terminal), or one JSON object per line.

Every line about a request carries its id (see neuron.shared.request_context), on the gateway and the
neuron alike, so one request can be followed from one log into the other.
"""

from __future__ import annotations

import logging
import os
import sys

import click

log_format_option = click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
                                 show_default=True, help="json: one JSON object per line, for log shippers.")


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """One handler on the root logger for every line the process writes: cortex's own, llama.cpp's (routed
    to a logger by the backend), and Python's warnings (a library's FutureWarning), which would otherwise
    be written raw to stderr, two lines each, in no format."""
    from neuron.shared.request_context import JsonFormatter, RequestIdFilter, TextFormatter

    logging.captureWarnings(True)
    if fmt == "json":
        # Progress bars (transformers' "Loading weights") redraw a line for a terminal: no shipper parses them.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, rich_tracebacks=False)
        handler.setFormatter(TextFormatter(with_time=False))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(TextFormatter())
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
