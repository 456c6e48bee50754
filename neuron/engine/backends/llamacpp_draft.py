"""A draft model for speculative decoding on llama.cpp (`"speculative": {"method": "draft", "draft_model": ID}`).

A smaller GGUF with the target's vocabulary, opened beside it on the same devices, in a context of its
own holding one sequence per target slot (the same seq ids), so a slot's draft cache follows its target
cache: prefix reuse on both. Each step, before the target's decode, every sequence that wants a draft is
caught up on the draft side with the tokens it has not seen (the prompt's, chunked like a prefill, then
the tokens emitted since), and the draft model then runs its own greedy steps, batched over those
sequences, for as many tokens as each wants. What it drafts is only proposed: the target verifies it
(`llamacpp_batch._verify`), so a draft model changes how fast an answer comes, never what it says.
"""

from __future__ import annotations

import numpy as np

from neuron.engine.batching import common_prefix


class DraftModel:
    """The draft side of one target model: its model, context and what each sequence has cached there."""

    def __init__(self, llama_cpp, model, ctx, slots: int, chunk: int):
        self.llama_cpp, self.model, self.ctx, self.chunk = llama_cpp, model, ctx, chunk
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.n_vocab = model.n_vocab()
        self.batch = llama_cpp.llama_batch_init(max(chunk, slots), 0, 1)
        self.cached: list[list[int]] = [[] for _ in range(slots)]  # per seq id: tokens in the draft cache
        self.agreed: list[tuple[object, int]] = [(None, 0)] * slots  # (request, tokens known to match) per seq

    def propose(self, wants: list[tuple[int, object, list[int], int]]) -> dict[int, list[int]]:
        """Drafts for (seq id, request, its text so far, tokens wanted): by seq id, for those caught up."""
        feeds, wanted, budget = [], {}, self.chunk
        for seq_id, req, text, k in wants:
            missing = self._catch_up(seq_id, req, text)
            take = missing[:budget]
            budget -= len(take)
            if take:
                feeds.append((seq_id, take))
                if len(take) == len(missing):  # caught up: it drafts this step
                    wanted[seq_id] = k
        drafts: dict[int, list[int]] = {seq_id: [] for seq_id in wanted}
        rows = self._decode(feeds) if feeds else None
        while rows:
            fed = []
            for seq_id, k in wanted.items():
                if len(drafts[seq_id]) < k:
                    drafts[seq_id].append(self._greedy(rows[seq_id]))
                    if len(drafts[seq_id]) < k:
                        fed.append((seq_id, drafts[seq_id][-1:]))
            rows = self._decode(fed) if fed else None
        return {seq_id: draft for seq_id, draft in drafts.items() if draft}

    def _catch_up(self, seq_id: int, req, text: list[int]) -> list[int]:
        """The tokens of `text` the draft cache lacks, after taking back what it holds beyond their prefix."""
        cached = self.cached[seq_id]
        known_req, agreed = self.agreed[seq_id]
        start = min(agreed, len(cached)) if known_req is req else 0  # the same answer: its start still matches
        keep = start + common_prefix(cached[start:], text[start:])
        keep = min(keep, len(text) - 1)  # the last token is fed again: its logits start the draft
        if keep < len(cached):
            self.llama_cpp.llama_memory_seq_rm(self.memory, seq_id, keep, -1)
            del cached[keep:]
        self.agreed[seq_id] = (req, keep)
        return text[keep:]

    def _decode(self, feeds: list[tuple[int, list[int]]]) -> dict[int, int] | None:
        """Feed each sequence its tokens: the batch index of each one's last (its logits), or None if the
        draft cache had no room (no draft this step: the target goes on alone)."""
        batch, n, rows = self.batch, 0, {}
        for seq_id, tokens in feeds:
            base = len(self.cached[seq_id])
            for i, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, base + i, 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = i == len(tokens) - 1
                n += 1
            rows[seq_id] = n - 1
        batch.n_tokens = n
        if self.llama_cpp.llama_decode(self.ctx, batch) != 0:
            for seq_id, _ in feeds:  # what the failed decode may have left is not trusted
                self.llama_cpp.llama_memory_seq_rm(self.memory, seq_id, 0, -1)
                self.cached[seq_id].clear()
                self.agreed[seq_id] = (None, 0)
            return None
        for seq_id, tokens in feeds:
            self.cached[seq_id].extend(tokens)
        return rows

    def _greedy(self, row: int) -> int:
        logits = np.ctypeslib.as_array(self.llama_cpp.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))
        return int(logits.argmax())

    def reset(self) -> None:
        self.llama_cpp.llama_memory_clear(self.memory, True)
        for seq_id in range(len(self.cached)):
            self.cached[seq_id].clear()
            self.agreed[seq_id] = (None, 0)

    def close(self) -> None:
        self.llama_cpp.llama_batch_free(self.batch)
        self.llama_cpp.llama_free(self.ctx)
        self.model.close()
