"""What `cortex neuron` and `cortex serve` do with an error the user can fix before serving.

A `StartupError` (a bad config, a port in use, a GPU that is not there, a local neuron that did
not start) is one line and exit status 2, as click's own usage errors are. Nothing else is
caught: a crash while serving keeps its traceback, so it can be reported and fixed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click


class StartupFailed(click.ClickException):
    exit_code = 2


@contextlib.contextmanager
def startup_errors() -> Iterator[None]:
    from neuron.shared.config_fields import StartupError

    try:
        yield
    except StartupError as exc:
        raise StartupFailed(str(exc)) from None
