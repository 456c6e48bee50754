"""Continuous batching for llama.cpp: every running request of a model in one `llama_decode` per step.

One context per model holds `slots` sequences in a unified KV cache (they share
the context's cells, as llama-server's `--kv-unified` does). Each step, on the
device thread, builds one batch: the next token of every decoding sequence,
then a bounded chunk of prompt tokens of sequences still prefilling (chunked
prefill: a long prompt never stalls the running streams for more than one
chunk). After the decode each sequence that has logits samples with its own
llama.cpp sampler chain, in C. A sequence leaves the batch the step it finishes
or its client goes away; a waiting request joins at the next step.

A slot keeps the KV of its last sequence when it ends. A new request takes the
free slot whose cached tokens share the longest prefix with its prompt and
recomputes only the rest (prefix reuse: earlier turns of a chat, a shared system
prompt, tool definitions); how many it reused is reported as cached tokens.
Idle slots' cells are given up first when the shared cache fills.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from neuron.engine.generation import DeviceFault, TextAssembler
from neuron.engine.worker import SLICE_SECONDS, Channel
from neuron.openai_schema import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class BatchRequest:
    """One generation asked of the batcher; its deltas go to `channel`."""

    prompt: list[int]
    params: SamplingParams
    forced: list[int] | None
    text: TextAssembler
    channel: Channel
    delay_s: float = 0.0  # injected slowness per token (fault injection)
    fail_after: int | None = None  # injected device fault after this many tokens


@dataclass
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens in the KV cache at positions 0..n-1
    last_used: float = 0.0
    active: _Sequence | None = None


@dataclass
class _Sequence:
    req: BatchRequest
    slot: _Slot
    sampler: object
    pending: list[int]  # prompt tokens not in the KV cache yet
    next_token: int | None = None  # sampled, to be decoded next step
    generated: int = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class LlamaBatcher:
    """The scheduler of one model's context; `run` is its job on the device thread."""

    def __init__(self, llama_cpp, model, ctx, slots: int, chunk: int, make_sampler):
        self.llama_cpp, self.model, self.ctx = llama_cpp, model, ctx
        self.chunk = chunk
        self.make_sampler = make_sampler
        self.slots = [_Slot(i) for i in range(slots)]
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(chunk + slots, 0, 1)
        self.closed = False
        self.steps = 0  # for metrics: decode steps run
        self._waiting: deque[BatchRequest] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    # -- the event loop's side ------------------------------------------------------------------
    def submit(self, req: BatchRequest, worker) -> None:
        with self._lock:
            self._waiting.append(req)
            if self._scheduled:
                return
            self._scheduled = True
        worker.submit(self)

    def running(self) -> int:
        return sum(1 for s in self.slots if s.active is not None)

    # -- the device thread's side ---------------------------------------------------------------
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
        """One decode of every running sequence; False when there is nothing to run."""
        self._admit()
        for seq in [s.active for s in self.slots if s.active is not None]:
            if seq.req.channel.cancelled:
                self._retire(seq)
        running = [s.active for s in self.slots if s.active is not None]
        if not running:
            return False
        try:
            self._decode_and_sample(running)
        except DeviceFault as exc:
            self._fail_all(exc)
        return True

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    return
                free = [s for s in self.slots if s.active is None]
                if not free:
                    return
                req = self._waiting.popleft()
            if req.channel.cancelled:
                req.channel.end()
                continue
            self._start(req, free)

    def _start(self, req: BatchRequest, free: list[_Slot]) -> None:
        slot = max(free, key=lambda s: (common_prefix(s.cached, req.prompt), -s.last_used))
        keep = min(common_prefix(slot.cached, req.prompt), len(req.prompt) - 1)  # the last one yields logits
        self.llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1)
        del slot.cached[keep:]
        req.text.stats.cached_tokens = keep
        slot.active = _Sequence(req, slot, self.make_sampler(req.params), req.prompt[keep:])

    def _decode_and_sample(self, running: list[_Sequence]) -> None:
        entries, ret = self._decode(running, with_prefill=True)
        if ret == 1:  # no room in the shared KV cache: give up idle slots' cached prefixes
            self._drop_idle_caches()
            entries, ret = self._decode(running, with_prefill=True)
        if ret == 1 and any(seq.pending for _, seq, _ in entries):
            entries, ret = self._decode(running, with_prefill=False)  # decode only; prefill waits
        if ret == 1:  # still full with decodes alone: the longest sequence ends, as at its context's end
            longest = max(running, key=lambda s: len(s.slot.cached))
            longest.req.text.finish_reason = "length"
            self._retire(longest)
            return
        if ret != 0:
            raise DeviceFault(f"llama_decode failed with status {ret}")
        self.steps += 1
        for index, seq, tokens in entries:
            seq.slot.cached.extend(tokens)
            if seq.next_token is not None:  # a decoding sequence: its one token is in
                seq.next_token = None
            else:  # a prefilling one: that much of its prompt is in
                del seq.pending[:len(tokens)]
            if index >= 0:
                self._sample(seq, index)

    def _decode(self, running: list[_Sequence], with_prefill: bool):
        entries = self._fill_batch(running, with_prefill)
        return entries, self.llama_cpp.llama_decode(self.ctx, self.batch)

    def _fill_batch(self, running: list[_Sequence], with_prefill: bool) -> list[tuple[int, _Sequence, list[int]]]:
        """Fill the llama_batch; per sequence: (batch index of its logits or -1, sequence, tokens added).

        Nothing about a sequence changes here: a decode that finds no room is simply tried again."""
        batch, entries, n = self.batch, [], 0

        def add(seq: _Sequence, tokens: list[int], logits_last: bool) -> None:
            nonlocal n
            base = len(seq.slot.cached)
            for i, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, base + i, 1
                batch.seq_id[n][0] = seq.slot.seq_id
                batch.logits[n] = logits_last and i == len(tokens) - 1
                n += 1
            entries.append((n - 1 if logits_last else -1, seq, tokens))

        for seq in running:
            if seq.next_token is not None:
                add(seq, [seq.next_token], True)
        budget = self.chunk if with_prefill else 0
        for seq in running:
            if seq.pending and budget > 0:
                take = seq.pending[:budget]
                budget -= len(take)
                add(seq, take, len(take) == len(seq.pending))
        batch.n_tokens = n
        return entries

    def _drop_idle_caches(self) -> None:
        for slot in self.slots:
            if slot.active is None and slot.cached:
                self.llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, 0, -1)
                slot.cached.clear()

    def _sample(self, seq: _Sequence, index: int) -> None:
        req = seq.req
        forced = req.forced[seq.generated] if req.forced is not None and seq.generated < len(req.forced) else None
        if forced is None:
            token = self.llama_cpp.llama_sampler_sample(seq.sampler, self.ctx, index)
        else:
            token = forced
            self.llama_cpp.llama_sampler_accept(seq.sampler, token)
        seq.generated += 1
        if req.delay_s:
            time.sleep(req.delay_s)
        if req.fail_after is not None and seq.generated > req.fail_after:
            raise DeviceFault("injected device fault (CORTEX_FAULT_INJECTION)")
        delta, done = req.text.feed(token)
        if delta is not None:
            req.channel.push(delta)
        if done:
            self._retire(seq)
        else:
            seq.next_token = token

    def _retire(self, seq: _Sequence) -> None:
        """The sequence leaves the batch; its slot keeps the KV of what was decoded, for reuse."""
        for delta in seq.req.text.finish():
            seq.req.channel.push(delta)
        seq.req.channel.end()
        self.llama_cpp.llama_sampler_free(seq.sampler)
        seq.slot.active = None
        seq.slot.last_used = time.monotonic()

    def _fail_all(self, exc: BaseException) -> None:
        for slot in self.slots:
            if slot.active is not None:
                slot.active.req.channel.fail(exc)
                self.llama_cpp.llama_sampler_free(slot.active.sampler)
                slot.active = None
            slot.cached.clear()
        if not self.closed:
            self.llama_cpp.llama_memory_clear(self.memory, True)
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for req in waiting:
            req.channel.fail(exc)

    def close(self) -> None:
        """On the device thread: fail what is left and free the batch (the context is the backend's)."""
        self._fail_all(DeviceFault("the model was unloaded"))
        self.closed = True
        self.llama_cpp.llama_batch_free(self.batch)


def bias_array(llama_cpp, logit_bias: dict[int, float], n_vocab: int):
    items = [(t, b) for t, b in logit_bias.items() if 0 <= t < n_vocab]
    array = (llama_cpp.llama_logit_bias * len(items))()
    for i, (token, bias) in enumerate(items):
        array[i].token, array[i].bias = token, bias
    return ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_logit_bias)), len(items)
