"""Cold loads carried out: one load per model (single-flight) and the queue of loads waiting for room (the
rules are `cortex_gateway.swaps`'; one attempt, its plan, evictions and load, `cortex_gateway.load_attempt`'s).

A cold load first plans at once. When only busy models (or residencies) stand in the way, it joins the
waiting queue, which one task serves: each time room may have changed (a model of the gateway's going idle
on a node, a poll, a load or unload, a residency ending) it tries the waiting loads one at a time, by
priority then oldest first, so the oldest gets the room; it then renews the victims the still-waiting
ones claim. It holds no slot and no lock while it waits, and gives a load up at `[scheduling] max_wait_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from cortex_gateway import swaps
from cortex_gateway.errors import no_capacity
from cortex_gateway.fleet import Node
from cortex_gateway.load_attempt import LoadAttempts, MustWait

if TYPE_CHECKING:
    from cortex_gateway.lifecycle import Lifecycle

log = logging.getLogger("cortex.gateway.lifecycle")


class _Waiter:
    def __init__(self, entry: swaps.Waiting, exclude: frozenset[str]):
        self.entry, self.exclude = entry, exclude
        self.result: asyncio.Future = asyncio.get_running_loop().create_future()
        self.why = ""


class ColdLoads:
    """The cold loads of one gateway: `get` a node for a model loaded nowhere (or only where it yields)."""

    def __init__(self, lifecycle: Lifecycle):
        self.lc = lifecycle
        self.attempts = LoadAttempts(lifecycle)
        self._loads: dict[str, asyncio.Future] = {}
        # model -> the ranks (swaps.RANKS) of the requests awaiting its cold load: their count is shown by
        # /admin/status, the best orders the waiting queue
        self._joined: dict[str, list[int]] = {}
        self._waiting: dict[str, _Waiter] = {}
        self._server: asyncio.Task | None = None
        self.claims: list[swaps.Claim] = []  # victims that take no new requests until evicted (swaps.claim)
        self._resident_since: dict[tuple[str, str], float] = {}  # (node, model) -> the swap there that keeps it
        # Placed for waiting requests that are not in flight yet (their tasks resume after this one moves on):
        # counted busy until one of its requests ends there, or the node has been polled twice since (no request
        # came: they left). Without it the next waiting load could evict the model its requests are about to use.
        self._fresh: dict[tuple[str, str], int] = {}

    # -- what the lifecycle's views read ------------------------------------------
    def pending(self) -> set[str]:
        return set(self._loads)

    def waiting(self) -> dict[str, tuple[float, int]]:
        """Models whose load waits for room -> (seconds since its first request, requests waiting for it)."""
        now = time.monotonic()
        return {m: (now - w.entry.since, len(self._joined.get(m, ()))) for m, w in self._waiting.items()}

    def resident_on(self, node: str, models, now: float) -> frozenset[str]:
        """Of `models` on `node`, those within their residency."""
        since = {m: at for (n, m), at in self._resident_since.items() if n == node and m in models}
        return swaps.protected(since, now, self.lc.config.scheduling.min_residency_s)

    def claimed_on(self, model: str) -> frozenset[str]:
        """The nodes where `model` yields: requests for it wait for its return instead of going there."""
        return swaps.holding_claimed(model, self.claims)

    def fresh_on(self, node: str) -> frozenset[str]:
        return frozenset(m for (n, m) in self._fresh if n == node)

    def request_ended(self, node: str, model: str) -> None:
        self._fresh.pop((node, model), None)

    def polled(self, node: str) -> None:
        for key in [k for k in self._fresh if k[0] == node]:
            self._fresh[key] += 1
            if self._fresh[key] >= 2:
                del self._fresh[key]

    def unloaded(self, node: str, model: str) -> None:
        self._resident_since.pop((node, model), None)
        self.claims = [c for c in self.claims if (c.node, c.victim) != (node, model)]

    # -- a request's cold load --------------------------------------------------------
    async def get(self, model: str, exclude: frozenset[str], priority: str = "normal") -> Node:
        """The node `model` is loaded on for this request: one load per model, every request joining it; the
        request's `priority` (its key's) counts in the order the waiting loads are tried."""
        pending = self._loads.get(model)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loads[model] = pending
            asyncio.get_running_loop().create_task(self._cold_load(model, exclude, pending))
        timeout = self.lc.config.load_timeout_s
        rank = swaps.RANKS.get(priority, swaps.RANKS["normal"])
        self._joined.setdefault(model, []).append(rank)
        try:
            return await asyncio.wait_for(asyncio.shield(pending), timeout)
        except TimeoutError:
            raise no_capacity(f"loading model {model!r} took longer than {timeout:g}s; retry shortly",
                              retry_after=10) from None
        finally:
            self._joined[model].remove(rank)
            if not self._joined[model]:
                del self._joined[model]

    async def _cold_load(self, model: str, exclude: frozenset[str], done: asyncio.Future) -> None:
        try:
            node = await self._place(model, exclude)
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiter
            if not done.done():
                done.set_exception(exc)
            done.exception()  # mark retrieved: waiters may all have timed out
        else:
            if not done.done():
                done.set_result(node)
        finally:
            self._loads.pop(model, None)

    async def _place(self, model: str, exclude: frozenset[str]) -> Node:
        """Plan and load at once, or join the waiting queue while only busy models stand in the way. While
        loads wait, a new one joins the queue behind them without trying: room that appears is theirs first."""
        if not self._waiting:
            try:
                node = await self.attempts.once(model, exclude, self.claimed_on(model))
            except MustWait as why:
                return await self._join_queue(model, exclude, str(why))
            self.lc.metrics.cold_load_wait_seconds.labels(model).observe(0.0)
            return node
        result = self._join_queue(model, exclude, "other models' loads are waiting for room before it")
        self.lc.wake_waiting()  # tried in its turn at once: it may fit somewhere without waiting
        return await result

    def _join_queue(self, model: str, exclude: frozenset[str], why: str) -> asyncio.Future:
        max_wait = self.lc.config.scheduling.max_wait_s
        now = time.monotonic()
        waiter = _Waiter(swaps.Waiting(model, now, now + max_wait), exclude)
        waiter.why = why
        self._waiting[model] = waiter
        self.lc.fleet.event("cold_load_waits", model=model, max_wait_s=max_wait)
        self.lc.metrics.cold_load_waits.labels(model).inc()
        self._renew_claims()
        if self._server is None:
            self._server = asyncio.get_running_loop().create_task(self._serve_waiting())
        return waiter.result

    # -- the waiting queue ------------------------------------------------------------
    async def _serve_waiting(self) -> None:
        """Until no load waits: on each change, try the waiting loads oldest first; then wait for the next."""
        try:
            while self._waiting:
                changed = self.lc.room_changed  # before trying: a change from now on ends the wait below
                try:
                    await self._pass()
                except Exception:  # noqa: BLE001 - the queue must outlive any one bad answer; deadlines still hold
                    log.exception("a pass over the waiting cold loads failed")
                if self._waiting:
                    left = min(w.entry.deadline for w in self._waiting.values()) - time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), max(left, 0.0))
        finally:
            self._server = None
            for waiter in self._waiting.values():  # cancelled (the gateway stopping): nobody is left waiting
                if not waiter.result.done():
                    waiter.result.cancel()

    async def _pass(self) -> None:
        """Try every waiting load, oldest first, then renew the claims of those still waiting."""
        for entry in self._in_turn():
            if (waiter := self._waiting.get(entry.model)) is not None and not await self._try_waiting(waiter):
                break  # the room it found is about to free: the loads behind it must not take it first
        self._renew_claims()

    def _in_turn(self) -> list[swaps.Waiting]:
        """The waiting loads in the order they are tried: by their requests' best priority, aged one class per
        quarter of max_wait_s (as the neuron's queue ages its waiters), then oldest first."""
        entries = [replace(w.entry, rank=min(self._joined.get(m) or [w.entry.rank])) for m, w in self._waiting.items()]
        return swaps.turn_order(entries, time.monotonic(), self.lc.config.scheduling.max_wait_s / 4)

    async def _try_waiting(self, waiter: _Waiter) -> bool:
        """One try; False when a node refused a victim the gateway counted idle: its request is ending there, and
        the pass stops so that this load, not one behind it, gets the room at the next change (a poll)."""
        model = waiter.entry.model
        try:
            node = await self.attempts.once(model, waiter.exclude, self.claimed_on(model))
        except MustWait as why:
            waiter.why = str(why)
            if time.monotonic() < waiter.entry.deadline:
                return not why.refused
            max_wait = self.lc.config.scheduling.max_wait_s
            self._settle(waiter, exc=no_capacity(
                f"{why}; waited {max_wait:g}s ([scheduling] max_wait_s) for one to go idle", retry_after=10))
        except BaseException as exc:  # noqa: BLE001 - delivered to the waiting requests
            self._settle(waiter, exc=exc)
        else:
            self._fresh[(node.name, model)] = 0
            residency = self.lc.config.scheduling.min_residency_s
            if residency > 0:  # the node keeps its working set; the residency's end may be what another load needs
                now = time.monotonic()
                for kept in swaps.working_set(model, self.lc.view(node), time.time(), residency):
                    self._resident_since[(node.name, kept)] = now
                asyncio.get_running_loop().call_later(residency, self.lc.wake_waiting)
            self._settle(waiter, node=node)
        return True

    def _settle(self, waiter: _Waiter, node: Node | None = None, exc: BaseException | None = None) -> None:
        model = waiter.entry.model
        self._waiting.pop(model, None)
        self.claims = [c for c in self.claims if c.model != model]
        self.lc.metrics.cold_load_wait_seconds.labels(model).observe(time.monotonic() - waiter.entry.since)
        if waiter.result.done():
            return
        if exc is not None:
            waiter.result.set_exception(exc)
            waiter.result.exception()  # retrieved: its requests may have left
        else:
            waiter.result.set_result(node)
            log.info("cold load of %s served after waiting %.1fs", model, time.monotonic() - waiter.entry.since)

    def _renew_claims(self) -> None:
        """Keep the claims of loads still waiting; a waiting load without one claims busy victims past their
        residency (oldest load first, so two never claim the same victim)."""
        kept = [c for c in self.claims if c.model in self._waiting and self._still_loaded(c)]
        snapshot = self.lc.snapshot()
        lc = self.lc
        low_only = self.lc.serving_only_low()
        for entry in self._in_turn():
            if any(c.model == entry.model for c in kept):
                continue
            profile = lc.config.models.get(entry.model)
            new = swaps.claim(entry.model, snapshot, kept, strategy=lc.config.strategy,
                              loadable_anywhere=bool(profile and (profile.path or profile.source)), pinned=lc.pins,
                              priorities=lc.priorities(),
                              exclude=self._waiting[entry.model].exclude | self.claimed_on(entry.model),
                              low_only=low_only)
            for c in new:
                log.info("%s on %s takes no new requests until it is swapped for %s (waiting since %.1fs ago)",
                         c.victim, c.node, c.model, time.monotonic() - entry.since)
            kept += new
        self.claims = kept

    def _still_loaded(self, c: swaps.Claim) -> bool:
        node = self.lc.fleet.nodes.get(c.node)
        return node is not None and node.has_loaded(c.victim)
