"""What a translating dialect gives the relay: a `Translator` of the neurons' chat chunks into its own events.

The neurons speak OpenAI; a dialect that does not (Anthropic's Messages, OpenAI's
Responses) hands `proxy.relay_translated` a translator, and the relay does the
rest the same way for every dialect: read the SSE stream back into chunks, pass
keep-alives on, end at `[DONE]`, end with an error event on a failure, record
the first output and the usage.

A wait (a cold load, a queue, a long prefill) is filled with keep-alives. Agents
drop a stream after 300 s without an event their SDK yields (Claude Code asks
again without streaming, Codex starts over), and neither a ping nor an SSE
comment is one. So past `progress_after` seconds without an event a keep-alive
is an event of the answer itself, one that changes nothing the client keeps:
`ProgressClock` is that rule, and each translator says what its progress event is.
"""

from __future__ import annotations

import time
from typing import Protocol

from neuron.shared.errors import ApiError


class Translator(Protocol):
    """One answer's translation, chunk by chunk; each method returns the bytes to send the client."""

    started: bool  # whether the answer's opening events went out (a long cold load may send them early)

    def start(self, prompt_tokens: int | None = None) -> bytes:
        """The answer's opening events, with the prompt's size where the dialect tells it up front."""

    def feed(self, chunk: dict) -> bytes:
        """One chat completion chunk."""

    def finish(self) -> bytes:
        """The end of a whole answer."""

    def fail(self, err: ApiError) -> bytes:
        """The end of an answer cut short by `err`."""

    def keepalive(self, progress_after: float) -> bytes:
        """What one keep-alive of a wait becomes (see `ProgressClock`)."""

    @property
    def usage(self) -> dict | None:
        """The answer's usage in the neurons' terms (prompt_tokens, completion_tokens), None if none came."""


class ProgressClock:
    """The progress rule the translators share: a keep-alive is the dialect's plain one until `progress_after`
    seconds passed since the client's last event, then the dialect's `progress` event."""

    plain: bytes  # the keep-alive that is not progress: a ping, a comment

    def __init__(self, now: float | None = None):
        # From the request on, as a client's idle timer runs from its send.
        self.last_event = time.monotonic() if now is None else now

    def sent(self, now: float | None = None) -> None:
        """The client was sent an event."""
        self.last_event = time.monotonic() if now is None else now

    def keepalive(self, progress_after: float, now: float | None = None) -> bytes:
        now = time.monotonic() if now is None else now
        if now - self.last_event < progress_after:
            return self.plain
        out = self.progress(now)
        self.last_event = now
        return out

    def progress(self, now: float) -> bytes:
        """An event of the answer that tells the client it goes on (the dialect's own)."""
        raise NotImplementedError
