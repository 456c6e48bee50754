"""Which of the nodes that have a model loaded should serve a request: the one likely to hold its prefix.

A pure score over what the router already has (each candidate's busy count) and what the prefix map knows
(`cortex_gateway.prefix_map`: per node, how many leading blocks of the request it was last sent, and the
node a session hint last went to). The node with the deepest match wins, a session hint standing in when no
prefix matches (a prefix match is evidence of what was sent there; a hint is the client's word for a
session, whose turns may not share a prefix); ties go to the least busy. The preferred node is passed over
when its busy count exceeds the least busy node's by more than `margin`: a cached prefix saves its prefill,
a queue costs whole requests. No match: the least busy, as without affinity.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    node: str
    reason: str  # for the debug log: "prefix 3 blocks", "session hint", "least busy", "... but busier by N"


def pick(busy: dict[str, int], depths: dict[str, int], hinted: str | None, margin: int) -> Choice | None:
    """The node for a request among `busy` (candidate -> in flight and queued), or None when there is none.

    `depths`: per node, the deepest matching block of the request's prefix; `hinted`: the node its session
    hint last went to. Nodes in either that are not candidates are ignored."""
    if not busy:
        return None
    least = min(busy, key=lambda n: (busy[n], n))
    preferred, why = _preferred(busy, depths, hinted)
    if preferred is None:
        return Choice(least, "least busy")
    over = busy[preferred] - busy[least]
    if over > margin:
        return Choice(least, f"{why} on {preferred} but busier by {over}")
    return Choice(preferred, why)


def _preferred(busy: dict[str, int], depths: dict[str, int], hinted: str | None) -> tuple[str | None, str]:
    matched = {n: d for n, d in depths.items() if n in busy and d > 0}
    if matched:
        best = max(matched.values())
        node = min((n for n, d in matched.items() if d == best), key=lambda n: (busy[n], n))
        return node, f"prefix {best} block{'s' if best != 1 else ''}"
    if hinted in busy:
        return hinted, "session hint"
    return None, ""
