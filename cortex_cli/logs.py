"""Log lines for the daemons: readable by default (rich on a terminal), or one JSON object per line.

Every line about a request carries its id (see neuron.request_context), on the gateway and the
neuron alike, so one request can be followed from one log into the other.
"""

from __future__ import annotations

import logging
import sys

import click

log_format_option = click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
                                 show_default=True, help="json: one JSON object per line, for log shippers.")


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    from neuron.request_context import JsonFormatter, RequestIdFilter, TextFormatter

    if fmt == "json":
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
