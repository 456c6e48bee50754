"""Continuous batching for llama.cpp: every running request of a model in one `llama_decode` per step.

One context per model holds `slots` sequences, each in a KV cache stream of its
own (not llama-server's `--kv-unified`: see `llamacpp.LlamaCppBackend`). Each step, on the
device thread, builds one batch: the next token of every decoding sequence,
then a bounded chunk of prompt tokens of sequences still prefilling (chunked
prefill: a long prompt never stalls the running streams for more than one
chunk). After the decode each sequence that has logits samples with its own
llama.cpp sampler chain, in C. A sequence leaves the batch the step it finishes
or its client goes away; a waiting request joins at the next step.

A slot keeps the KV of its last sequence when it ends, or leaves mid-prefill. A
new request takes the free slot whose cached tokens share the longest prefix
with its prompt and recomputes only the rest (prefix reuse: earlier turns of a
chat, a shared system prompt, tool definitions, an abandoned attempt); when a
running sequence holds more of its prompt, those cells are shared with it
instead. How many it reused is reported as cached tokens.

Speculative decoding (`neuron.engine.drafts`): a decoding sequence with a draft feeds its next token and the
draft in the same step, logits at each; the draft is verified by sampling each position in turn with the
sequence's own sampler, kept while it equals what was sampled, and the cells of the rest are taken back.
A model whose cache cannot take cells back (recurrent, hybrid) never drafts.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from neuron.engine.backends.llamacpp_threads import StepThreads
from neuron.engine.batching import BatchScheduler, Sequence, Slot, answer_room
from neuron.engine.generation import DeviceFault, hold_end
from neuron.engine.logprobs import logprob_of
from neuron.engine.step_cost import StepCost
from neuron.shared.speculative import MAX_DRAFT


class LlamaBatcher(BatchScheduler):
    """The scheduler of one model's llama.cpp context."""

    def __init__(self, llama_cpp, ctx, slots: int, chunk: int, make_sampler, n_vocab: int):
        super().__init__(slots, chunk)
        self.llama_cpp, self.ctx, self.make_sampler, self.n_vocab = llama_cpp, ctx, make_sampler, n_vocab
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(batch_tokens(chunk, slots), 0, 1)
        self.draft_room = draft_room(slots)
        model = llama_cpp.llama_get_model(ctx)
        self.can_draft = not (llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model))
        self.draft_model = None  # a DraftModel (llamacpp_draft), for speculative method "draft"
        self.threads = StepThreads(llama_cpp, ctx)  # the counts its steps run on, measured (thread_tuner)
        self.cost = StepCost()  # what a step costs by its size: how long a draft may be (step_cost)

    def _begin(self, req, free: list[Slot]) -> Sequence:
        leader = self._prefilling_leader(req)
        if leader is not None:  # another choice of a request still prefilling: wait, then copy its cache
            slot = min(free, key=lambda s: s.last_used)
            self.llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, 0, -1)
            slot.cached.clear()
            return Sequence(req, slot, self.make_sampler(req.params), [], state=leader, drafter=self.drafter_for(req))
        slot, donor, computed = self._prefix_source(req, free)
        keep = min(computed, len(req.prompt) - 1)  # the last one is computed again: it yields the logits
        if donor is None:
            self.llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1)
            del slot.cached[keep:]
        else:  # the donor's whole cache copied (llama.cpp copies between streams whole only), then cut to `keep`
            self.llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, 0, -1)
            self.llama_cpp.llama_memory_seq_cp(self.memory, donor.slot.seq_id, slot.seq_id, -1, -1)
            self.llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, keep, -1)
            slot.cached = req.prompt[:keep]
        req.text.stats.cached_tokens = keep
        return Sequence(req, slot, self.make_sampler(req.params), req.prompt[keep:], drafter=self.drafter_for(req))

    def _prefilling_leader(self, req) -> Sequence | None:
        if req.follows is None:
            return None
        return next((s.active for s in self.slots
                     if s.active is not None and s.active.req is req.follows and s.active.pending), None)

    def _decode_and_sample(self, running: list[Sequence]) -> None:
        for seq in running:  # a choice whose first choice left before sharing its prompt prefills on its own
            if seq.state is not None and seq.state.slot.active is not seq.state:
                seq.pending, seq.state = list(seq.req.prompt), None
        if self.draft_model is not None:
            self._model_drafts(running)
        entries, ret = self._decode(running, with_prefill=True)
        if ret == 1:  # no room: idle slots' cached prefixes go first (a vision model's images take cells too)
            self._drop_idle_caches()
            entries, ret = self._decode(running, with_prefill=True)
        if ret == 1 and any(seq.pending or len(tokens) > 1 for _, seq, tokens in entries):
            entries, ret = self._decode(running, with_prefill=False)  # decode only; prefill and drafts wait
        if ret == 1:  # still full with decodes alone: the longest sequence ends, as at its context's end
            longest = max(running, key=lambda s: len(s.slot.cached))
            longest.req.text.finish_reason = "length"
            self._retire(longest)
            return
        if ret != 0:
            raise DeviceFault(f"llama_decode failed with status {ret}")
        self.steps += 1
        for index, seq, tokens in entries:
            if seq.next_token is not None and len(tokens) > 1:  # a decoding sequence and its draft
                self._verify(seq, tokens, index - len(tokens) + 1)
                continue
            seq.slot.cached.extend(tokens)
            if seq.next_token is not None:  # a decoding sequence: its one token is in
                seq.next_token = None
            else:  # a prefilling one: that much of its prompt is in
                del seq.pending[:len(tokens)]
                if not seq.pending:
                    self._share_prompt(seq, running, index)
            if index >= 0:
                self._sample(seq, index)

    def _verify(self, seq: Sequence, tokens: list[int], first: int) -> None:
        """`tokens` (the next token, then the draft) are in the cache with logits from batch index `first`:
        sample each position in turn, keep the draft while it equals what was sampled, take the rest back."""
        draft, accepted = tokens[1:], 0
        seq.next_token = None
        seq.drafter.start_verify(draft)
        self.drafted += len(draft)  # counted before the answer can end (its client may read the metrics then)
        for i in range(len(tokens)):
            self._sample(seq, first + i)  # emits, and sets next_token, or retires the sequence
            if seq.slot.active is not seq or i == len(draft) or seq.next_token != draft[i]:
                break
            accepted += 1
            self.draft_accepted += 1
        seq.slot.cached.extend(tokens[:1 + accepted])
        if accepted < len(draft):
            self.llama_cpp.llama_memory_seq_rm(self.memory, seq.slot.seq_id, len(seq.slot.cached), -1)
        seq.drafter.verified(len(draft), accepted)

    def _decode(self, running: list[Sequence], with_prefill: bool):
        entries = self._fill_batch(running, with_prefill)
        ret = self.threads.decode(self.ctx, self.batch)
        if ret == 0 and all(seq.next_token is not None for _, seq, _ in entries):  # decoding steps only
            self.cost.observe(self.batch.n_tokens, self.threads.seconds)
        return entries, ret

    def _share_prompt(self, leader: Sequence, running: list[Sequence], index: int) -> None:
        """The other choices of `leader`'s request get a copy of its prompt's cache and sample from its logits."""
        for seq in running:
            if seq.state is leader:
                self.llama_cpp.llama_memory_seq_cp(self.memory, leader.slot.seq_id, seq.slot.seq_id, 0, -1)
                seq.slot.cached = list(leader.slot.cached)
                seq.req.text.stats.cached_tokens = len(seq.req.prompt)
                seq.state = None
                self._sample(seq, index)

    def _fill_batch(self, running: list[Sequence], with_prefill: bool) -> list[tuple[int, Sequence, list[int]]]:
        """Fill the llama_batch; per sequence: (batch index of its logits or -1, sequence, tokens added).

        Nothing about a sequence changes here: a decode that finds no room is simply tried again."""
        batch, entries, n = self.batch, [], 0

        def add(seq: Sequence, tokens: list[int], logits_last: bool, every: bool = False) -> None:
            nonlocal n
            base = len(seq.slot.cached)
            for i, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, base + i, 1
                batch.seq_id[n][0] = seq.slot.seq_id
                batch.logits[n] = every or logits_last and i == len(tokens) - 1
                n += 1
            entries.append((n - 1 if logits_last else -1, seq, tokens))

        room = self.draft_room if with_prefill else 0  # a decode short of cells drops drafts with prefill
        pays = self._pays(running, with_prefill)
        for seq in running:
            if seq.next_token is not None:
                draft = self._draft(seq, room, pays)
                room -= len(draft)
                add(seq, [seq.next_token, *draft], True, every=bool(draft))
        budget = self.chunk if with_prefill else 0
        for seq in running:
            if seq.pending and budget > 0:
                take = seq.pending[:budget]
                budget -= len(take)
                add(seq, take, len(take) == len(seq.pending))
        batch.n_tokens = n
        return entries

    def _model_drafts(self, running: list[Sequence]) -> None:
        """The draft model's drafts for the decoding sequences that want one this step, offered to each."""
        wants, pays = [], self._pays(running, True)
        for seq in running:
            if seq.next_token is not None and seq.drafter is not None:
                k = seq.drafter.model_wanted(min(self.draft_room, answer_room(seq)), pays)
                if k:
                    wants.append((seq.slot.seq_id, seq.req, seq.drafter.context(seq.req.prompt), k))
        if wants:
            drafts = self.draft_model.propose(wants)
            for seq in running:
                if seq.drafter is not None and seq.slot.seq_id in drafts:
                    seq.drafter.offered = drafts[seq.slot.seq_id]

    def _draft(self, seq: Sequence, room: int, pays) -> list[int]:
        """The sequence's draft for this step, within `room` and the tokens its answer may still have."""
        if seq.drafter is None:
            return []
        return seq.drafter.propose(min(room, answer_room(seq)), pays)

    def _pays(self, running: list[Sequence], with_prefill: bool):
        """How much of a draft pays in this step: its tokens (each of the decoding sequences' next one and
        the prefill chunk) and the other sequences that each get a token from it."""
        decoding = sum(1 for seq in running if seq.next_token is not None)
        prefill = min(self.chunk, sum(len(seq.pending) for seq in running)) if with_prefill else 0
        return lambda p, limit: self.cost.best_length(p, limit, decoding + prefill, decoding - 1)

    def _drop_idle_caches(self) -> None:
        for slot in self.slots:
            if slot.active is None and slot.cached:
                self.llama_cpp.llama_memory_seq_rm(self.memory, slot.seq_id, 0, -1)
                slot.cached.clear()

    def _sample(self, seq: Sequence, index: int) -> None:
        req, lib = seq.req, self.llama_cpp
        logits = raw = None
        held = seq.generated < req.params.min_tokens  # min_tokens: the end tokens wait
        if req.wants_logits or held:  # the step's logits, in place: the sampler reads them from here
            logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
            changed = req.constraint is not None or held
            raw = logits.copy() if req.params.logprobs is not None and changed else logits
        token = self.forced_token(seq)
        if token is None:
            if req.constraint is not None:
                req.constraint.mask(logits)
            if held:
                hold_end(logits, self.end_ids)
            token = lib.llama_sampler_sample(seq.sampler, self.ctx, index)
            if req.constraint is not None:
                req.constraint.accept(token)
        else:
            lib.llama_sampler_accept(seq.sampler, token)
        logprob = logprob_of(raw, token, req.params.logprobs) if req.params.logprobs is not None else None
        self._emit(seq, token, logprob)

    @functools.cached_property
    def end_ids(self) -> np.ndarray:
        """The end-of-generation tokens, which min_tokens holds back (read on first use)."""
        lib = self.llama_cpp
        vocab = lib.llama_model_get_vocab(lib.llama_get_model(self.ctx))
        return np.array([t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(vocab, t)], dtype=np.int64)

    def _release(self, seq: Sequence) -> None:
        self.llama_cpp.llama_sampler_free(seq.sampler)

    def _reset(self) -> None:
        self.llama_cpp.llama_memory_clear(self.memory, True)
        if self.draft_model is not None:
            self.draft_model.reset()

    def close(self) -> None:
        super().close()
        self.llama_cpp.llama_batch_free(self.batch)


def draft_room(slots: int) -> int:
    """Draft tokens one step may verify, over all its sequences."""
    return min(slots * MAX_DRAFT, 256)


def batch_tokens(chunk: int, slots: int) -> int:
    """The most tokens one decode holds: a prefill chunk, every slot's next token, and the drafts."""
    return chunk + slots + draft_room(slots)


def bias_array(llama_cpp, logit_bias: dict[int, float], n_vocab: int):
    items = [(t, b) for t, b in logit_bias.items() if 0 <= t < n_vocab]
    array = (llama_cpp.llama_logit_bias * len(items))()
    for i, (token, bias) in enumerate(items):
        array[i].token, array[i].bias = token, bias
    return ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_logit_bias)), len(items)
