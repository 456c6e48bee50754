"""Continuous batching, the part every backend shares: who is waiting, who runs, who leaves.

A backend that batches (llama.cpp, torch) subclasses `BatchScheduler` with how
to start a sequence in a slot and how to run one step for all running
sequences. The scheduler is a job on the model's device thread: each `run`
does steps for one slice and gives the device back, so models sharing a device
take turns step by step. A request waits (FIFO) for a free slot, joins at the
next step, and leaves the step it finishes, fails, or its client goes away
(`channel.cancelled`), prefill included.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from neuron.engine.drafts import Drafter
from neuron.engine.generation import DeviceFault, TextAssembler
from neuron.engine.worker import SLICE_SECONDS, Channel
from neuron.server.openai_schema import SamplingParams
from neuron.shared.speculative import SpecConfig


@dataclass
class BatchRequest:
    """One generation asked of a batcher; its deltas go to `channel`."""

    prompt: list[int]
    params: SamplingParams
    forced: list[int] | None
    text: TextAssembler
    channel: Channel
    delay_s: float = 0.0  # injected slowness per token (fault injection)
    prefill_delay_s: float = 0.0  # injected slowness per prefill step (fault injection)
    fail_after: int | None = None  # injected device fault after this many tokens
    follows: BatchRequest | None = None  # another choice of the same request, whose prompt this one can share
    constraint: Any = None  # a TokenConstraint (neuron.engine.constraints): the grammar the output must match
    prediction: list[int] | None = None  # the request's predicted output (OpenAI's `prediction`), tokenised

    @property
    def wants_logits(self) -> bool:
        """The step's logits are needed outside the sampler: for logprobs, or to mask them."""
        return self.params.logprobs is not None or self.constraint is not None


@dataclass
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV the slot holds, positions 0..n-1
    last_used: float = 0.0
    active: Sequence | None = None
    kept: Any = None  # the backend's cache of `cached`, when it keeps one outside the batch (torch)


@dataclass
class Sequence:
    req: BatchRequest
    slot: Slot
    sampler: Any
    pending: list[int]  # prompt tokens not computed yet
    next_token: int | None = None  # sampled, to be fed next step
    generated: int = 0
    state: Any = None  # the backend's own (a torch row's cache)
    drafter: Any = None  # its drafts (neuron.engine.drafts.Drafter), when it speculates


def answer_room(seq: Sequence) -> int:
    """Draft tokens the sequence's answer still has room for after its next token."""
    return seq.req.text.max_new - seq.generated - 1


def prefill_chunk(on_gpu: bool) -> int:
    """Prompt tokens per step: bounds how long running streams wait while a long prompt prefills."""
    return 512 if on_gpu else 64


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class BatchScheduler:
    """Waiting requests, slots, and the step loop; subclasses run the steps."""

    def __init__(self, slots: int, chunk: int):
        self.chunk = chunk
        self.slots = [Slot(i) for i in range(slots)]
        self.closed = False
        self.steps = 0  # decode steps run, for metrics
        self.speculative: SpecConfig | None = None  # the model's own drafts (prompt lookup); predictions need none
        self.can_draft = False  # the backend verifies drafts (and can take back the cache of rejected ones)
        self.drafted = self.draft_accepted = 0  # draft tokens verified and kept, over the model's life
        self._waiting: deque[BatchRequest] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    # -- to implement ----------------------------------------------------------------------------
    def _begin(self, req: BatchRequest, free: list[Slot]) -> Sequence:
        """Put the request in one of the free slots (reusing what a slot has cached, if it can)."""
        raise NotImplementedError

    def _decode_and_sample(self, running: list[Sequence]) -> None:
        """One forward step for every running sequence; call `_emit` with each token sampled."""
        raise NotImplementedError

    def _release(self, seq: Sequence) -> None:
        """Free what the sequence held beyond its slot's cache (its sampler)."""

    def _reset(self) -> None:
        """Drop every cache after a failure."""

    # -- the event loop's side -------------------------------------------------------------------
    def submit(self, req: BatchRequest, worker) -> None:
        with self._lock:
            self._waiting.append(req)
            if self._scheduled:
                return
            self._scheduled = True
        worker.submit(self)

    def running(self) -> int:
        return sum(1 for s in self.slots if s.active is not None)

    # -- the device thread's side ----------------------------------------------------------------
    def run(self) -> bool:
        """Steps for one slice; True (finished) once nothing is running or waiting."""
        deadline = time.monotonic() + SLICE_SECONDS
        while True:
            if self.closed:
                self._fail_all(DeviceFault("the model was unloaded"))
            elif self._step():
                if time.monotonic() >= deadline:
                    return False
                continue
            with self._lock:
                if not self._waiting or self.closed:
                    self._scheduled = False
                    return True

    def _step(self) -> bool:
        # Leavers first: a request sent again after its client left finds the slot (and what it cached) free.
        for seq in [s.active for s in self.slots if s.active is not None]:
            if seq.req.channel.cancelled:
                self._retire(seq)
        self._admit()
        running = [s.active for s in self.slots if s.active is not None]
        if not running:
            return False
        slow = max((seq.req.prefill_delay_s for seq in running if seq.pending), default=0.0)
        try:
            self._decode_and_sample(running)
        except DeviceFault as exc:
            self._fail_all(exc)
        if slow:
            time.sleep(slow)
        return True

    def _admit(self) -> None:
        while True:
            with self._lock:
                free = [s for s in self.slots if s.active is None]
                if not self._waiting or not free:
                    return
                req = self._waiting.popleft()
            if req.channel.cancelled:
                req.channel.end()
                continue
            seq = self._begin(req, free)
            seq.slot.active = seq

    def _prefix_source(self, req: BatchRequest, free: list[Slot]) -> tuple[Slot, Sequence | None, int]:
        """The slot for `req`, the running sequence to copy its prompt's prefix from (None: the slot's own
        cache serves), and how many of its prompt tokens are already computed there.

        A free slot's cache is reused in place. A running sequence's is copied (into the least recently
        used free slot) when it holds more of the prompt: the same prompt sent again at once, by a client
        whose first stream was abandoned mid-prefill before the node noticed, starts from what that one
        computed instead of from nothing."""
        slot = max(free, key=lambda s: (self._reusable(s, req.prompt), -s.last_used))
        own = self._reusable(slot, req.prompt)
        running = [s.active for s in self.slots if s.active is not None]
        donor = max(running, key=lambda seq: common_prefix(seq.slot.cached, req.prompt), default=None)
        shared = common_prefix(donor.slot.cached, req.prompt) if donor is not None else 0
        if shared > own:
            return min(free, key=lambda s: s.last_used), donor, shared
        return slot, None, own

    def _reusable(self, slot: Slot, prompt: list[int]) -> int:
        """Prompt tokens a free slot's cache holds (a backend that may have let its cache go says so)."""
        return common_prefix(slot.cached, prompt)

    def drafter_for(self, req: BatchRequest) -> Drafter | None:
        """The request's drafts: its prediction, the model's prompt lookup, both or neither."""
        if not self.can_draft or req.prediction is None and self.speculative is None:
            return None
        return Drafter(req.prompt, req.prediction, self.speculative)

    def _emit(self, seq: Sequence, token: int, logprob=None) -> None:
        """A token sampled for `seq`: its text goes out; the sequence ends or feeds it next step."""
        req = seq.req
        seq.generated += 1
        if seq.drafter is not None:
            seq.drafter.emitted(token)
        if req.delay_s:
            time.sleep(req.delay_s)
        if req.fail_after is not None and seq.generated > req.fail_after:
            raise DeviceFault("injected device fault (CORTEX_FAULT_INJECTION)")
        delta, done = req.text.feed(token, logprob)
        if delta is not None:
            req.channel.push(delta)
        if done:
            self._retire(seq)
        else:
            seq.next_token = token

    def forced_token(self, seq: Sequence) -> int | None:
        forced = seq.req.forced
        return forced[seq.generated] if forced is not None and seq.generated < len(forced) else None

    def _retire(self, seq: Sequence) -> None:
        """The sequence leaves the batch; its slot keeps what it cached, for reuse."""
        if seq.drafter is not None:
            seq.req.text.stats.drafted(seq.drafter)
        for delta in seq.req.text.finish():
            seq.req.channel.push(delta)
        seq.req.channel.end()
        self._release(seq)
        seq.slot.active = None
        seq.slot.last_used = time.monotonic()

    def _fail_all(self, exc: BaseException) -> None:
        for slot in self.slots:
            if slot.active is not None:
                slot.active.req.channel.fail(exc)
                self._release(slot.active)
                slot.active = None
            slot.cached.clear()
        if not self.closed:
            self._reset()
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            req.channel.fail(exc)

    def close(self) -> None:
        """On the device thread, before the model is freed: fail whatever is left."""
        self._fail_all(DeviceFault("the model was unloaded"))
        self.closed = True
