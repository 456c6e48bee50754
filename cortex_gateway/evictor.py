"""Which loaded models to unload from a node to make room: a pure function of a snapshot.

Never a pinned model, never a model with requests in flight or queued.
`lru` takes the least recently used first; `priority` the lowest priority
first, then the least recently used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """A model loaded on the node, as the evictor sees it."""

    model: str
    memory_mb: float
    last_used: float
    priority: int = 100
    pinned: bool = False
    busy: bool = False  # in flight or queued


def evictable(residents: list[Resident]) -> list[Resident]:
    return [r for r in residents if not r.pinned and not r.busy]


def eviction_order(residents: list[Resident], strategy: str) -> list[Resident]:
    if strategy == "priority":
        return sorted(evictable(residents), key=lambda r: (r.priority, r.last_used, r.model))
    return sorted(evictable(residents), key=lambda r: (r.last_used, r.model))


def choose_victims(residents: list[Resident], need_mb: float, strategy: str) -> list[Resident] | None:
    """The fewest models, in strategy order, whose memory covers `need_mb`; None if impossible."""
    if need_mb <= 0:
        return []
    victims, freed = [], 0.0
    for resident in eviction_order(residents, strategy):
        victims.append(resident)
        freed += resident.memory_mb
        if freed >= need_mb:
            return victims
    return None
