"""A streaming client with Claude Code's stream idle watchdog, for the tests of long waits (issue 21, item 3).

Claude Code (2.1.x) aborts a stream that goes CLAUDE_STREAM_IDLE_TIMEOUT_MS (300 s, which the variable
can only raise) without an event, and falls back to a non-streaming request that prefills the prompt
again. Its timer is reset by each event `@anthropic-ai/sdk`'s Stream yields: the SDK yields events by
their SSE name (message_start, content_block_*, message_delta, message_stop), drops `ping`
(`if (sse.event === 'ping') continue;`), and never sees comments or unnamed events; Claude Code itself
also skips `ping` before it resets the timer. `AgentStream` reads the raw SSE and applies that rule
with a small limit, so a test can hold the answer back for longer than the limit without sleeping.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import threading
import time
from collections.abc import Callable

from anthropic.lib.streaming._messages import accumulate_event

SDK_YIELDS = frozenset({"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                        "message_delta", "message_stop"})
CLAUDE_CODE_HEADERS = {"Content-Type": "application/json", "anthropic-version": "2023-06-01",
                       "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
                       "x-api-key": "unused", "User-Agent": "claude-cli/2.1.197 (external, cli)"}
_END = object()


class IdleAbort(AssertionError):
    """The client's watchdog fired: Claude Code would have aborted this stream."""


class AgentStream:
    """One streaming POST; a reader thread turns its bytes into (event name, data) pairs as they arrive."""

    def __init__(self, url: str, path: str, body: dict):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=300)
        self.conn.connect()
        self.sock = self.conn.sock  # http.client may let go of it once the answer's head is read
        self.started = time.monotonic()  # Claude Code arms its timer before it sends
        self.status: int | None = None
        self.items: queue.Queue = queue.Queue()
        self.closing = False
        self.names: list[str] = []  # every event seen, pings included, for failure messages
        self._thread = threading.Thread(target=self._read, args=(path, body), daemon=True)
        self._thread.start()

    def _read(self, path: str, body: dict) -> None:
        try:
            self.conn.request("POST", path, json.dumps(body), CLAUDE_CODE_HEADERS)
            resp = self.conn.getresponse()
            self.status = resp.status
            if resp.status != 200:
                raise AssertionError(f"status {resp.status}: {resp.read()[:2000]!r}")
            name, data = None, []
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and (name or data):
                    self.items.put((name, json.loads("\n".join(data)) if data else None))
                    name, data = None, []
        except Exception as exc:  # noqa: BLE001 - a reset, or http.client's errors on a socket closed under it
            if not self.closing:
                self.items.put(exc)
        finally:
            self.items.put(_END)

    def events(self, idle_limit: float, on_tick: Callable[[float], None] = lambda elapsed: None) -> list:
        """The events the SDK would yield, up to message_stop; IdleAbort once `idle_limit` passes without one.

        `on_tick(seconds since the request)` is called between arrivals (a test releases its hold there)."""
        last, out = self.started, []
        while True:
            try:
                item = self.items.get(timeout=0.05)
            except queue.Empty:
                item = None
            now = time.monotonic()
            if now - last > idle_limit:
                raise IdleAbort(f"{now - last:.1f}s without an event the SDK yields (limit {idle_limit}s); "
                                f"events so far: {self._summary()}")
            if item is None:
                on_tick(now - self.started)
                continue
            if item is _END or isinstance(item, Exception):
                raise AssertionError(f"the stream ended before message_stop ({item!r}): {self._summary()}")
            name, data = item
            self.names.append(name or "(unnamed)")
            if name == "error":
                raise AssertionError(f"an error event: {data}")
            if name in SDK_YIELDS:
                last = now
                out.append(data)
                if name == "message_stop":
                    return out

    def _summary(self) -> str:
        counts: list[list] = []
        for name in self.names:
            if counts and counts[-1][0] == name:
                counts[-1][1] += 1
            else:
                counts.append([name, 1])
        return ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts)

    def close(self) -> None:
        """Leave as a client does: the connection goes, whatever was still to come."""
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()
        self._thread.join(30)


def final_message(events: list[dict]):
    """The message as the anthropic SDK's MessageStream accumulates these events."""
    snapshot, bufs = None, {}
    for event in events:
        if event["type"] != "message_stop":
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    return snapshot
