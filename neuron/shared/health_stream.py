"""The node's health as a stream: one long-lived GET per gateway instead of a poll every interval.

A gateway that polls a thousand idle nodes every two seconds spends most of its CPU asking questions
whose answer has not changed; a 304 is cheaper than a 200 but still a whole HTTP exchange. On
`GET /health/stream` the node sends its health (the body of GET /health) as an event at once and again
whenever it changes, and a comment every `heartbeat_s` while nothing does, so the gateway still learns
within a heartbeat that a silent node has gone (its read times out) and, when the node stops, at once (the
stream ends). Polls stay the fallback: a node older than this stream answers it 404 and is polled as before.

This module is the wire format, shared by the neuron that writes it, the gateway that reads it and the
benchmarks' simulated nodes, so the three cannot drift.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from neuron.shared.protocol import Health

PATH = "/health/stream"
HEARTBEAT_PARAM = "heartbeat_s"
DEFAULT_HEARTBEAT_S = 2.0
MIN_HEARTBEAT_S, MAX_HEARTBEAT_S = 0.05, 300.0
PING = b": ping\n\n"
_EVENT = b"event: health\ndata: "


def frame(body: bytes) -> bytes:
    """One health event around a /health body (orjson's output holds no newline)."""
    return _EVENT + body + b"\n\n"


async def read_events(lines: AsyncIterator[bytes]) -> AsyncIterator[Health | None]:
    """The stream's events as they come: a Health for each health event, None for each heartbeat.

    `lines` is the response body line by line (aiohttp's `resp.content` iterates so). An event's data may
    span several `data:` lines, as SSE allows; one without data is skipped."""
    data: list[bytes] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield Health.from_dict(orjson.loads(b"\n".join(data)))
                data = []
        elif line.startswith(b":"):
            yield None
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))

