"""Reading a neuron's SSE stream back into events, for the dialects that translate it.

The neurons' streams carry `data:` events and two kinds of comment: keep-alives
(`: keep-alive`, sent while a prompt waits or prefills) and the usage comment
(`: cortex-usage {...}`). A translating dialect must pass keep-alives on in its
own form (Anthropic's `ping`), or a client with stall detection gives up during
a long prefill.
"""

from __future__ import annotations

KEEPALIVE_COMMENT = b": keep-alive"


class SSEReader:
    """Splits upstream bytes into complete events: each `data:` payload, and each comment line whole."""

    def __init__(self):
        self.buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Payloads of `data:` lines, and comment lines as they are (they start with b":")."""
        self.buffer += chunk
        *events, self.buffer = self.buffer.split(b"\n\n")
        out = []
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    out.append(line[5:].strip())
                elif line.startswith(b":"):
                    out.append(line)
        return out


def is_keepalive(payload: bytes) -> bool:
    return payload.startswith(KEEPALIVE_COMMENT)
