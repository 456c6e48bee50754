"""Batched decoding for torch: every running request of a model in one forward pass per step.

Decoding rows share one KV cache, left-padded to a common length, with a per-row
attention mask and per-row positions, the way transformers itself batches
left-padded prompts. A new request is prefilled on its own, a bounded chunk per
step (so the running rows are never stalled for long), then its cache joins the
batch; a finished or abandoned row is dropped from it between steps, and
padding every row no longer needs is cut away. Each row samples with its own
sampler and seed.

Prefix reuse: a row that leaves the batch (or its prefill) leaves its own cache
with its slot; a new request takes the free slot whose tokens share the longest
prefix with its prompt, keeps that much of the cache and prefills only the rest.
When a running sequence holds more of its prompt (the same prompt sent again
while an abandoned attempt still prefills), that prefix of its cache is copied.

Speculative decoding (`neuron.engine.drafts`): rows with a draft feed their next token and the draft in
the same step, every row padded to the longest draft, logits at each position; each position is sampled
in turn with the row's own sampler and the draft kept while it equals what was sampled. The cells of what
was not kept, and the padding, are masked out where they are (`torch_holes`), not copied away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from neuron.engine.backends import torch_holes
from neuron.engine.batching import BatchRequest, BatchScheduler, Sequence, Slot, answer_room, common_prefix
from neuron.engine.generation import DeviceFault
from neuron.engine.logprobs import logprob_of
from neuron.engine.step_cost import StepCost
from neuron.shared.speculative import MAX_DRAFT


@dataclass
class _Row:
    cache: object  # the sequence's own DynamicCache while it prefills; None once it joined the batch
    position: int = 0  # tokens of this sequence in the cache (its next position)


class TorchBatcher(BatchScheduler):
    def __init__(self, backend, slots: int, chunk: int):
        super().__init__(slots, chunk)
        self.backend, self.torch = backend, backend.torch
        self.rows: list[Sequence] = []  # decoding sequences, in the batch's row order
        self.cache = None  # DynamicCache of the rows, [rows, heads, length, dim] per layer
        self.mask = None  # [rows, length]: 1 for a real token, 0 for left padding and the holes drafts leave
        self.can_draft = torch_holes.can_verify(backend.model.config)
        self.cost = StepCost()  # what a step costs by its size: how long the rows' drafts may be (step_cost)

    def _begin(self, req: BatchRequest, free: list[Slot]) -> Sequence:
        slot, donor, computed = self._prefix_source(req, free)
        keep = min(computed, len(req.prompt) - 1)  # the last one is computed again: it yields the logits
        if donor is not None:
            slot.kept, slot.cached = self._prefix_of(donor, keep), req.prompt[:keep]
        row = _Row(None)
        if keep > 0:
            for layer in slot.kept.layers:
                layer.keys, layer.values = layer.keys[:, :, :keep], layer.values[:, :, :keep]
            row = _Row(slot.kept, keep)
        slot.kept = None
        del slot.cached[keep:]
        req.text.stats.cached_tokens = keep
        return Sequence(req, slot, self.backend.sampler(req.params), req.prompt[keep:], state=row,
                        drafter=self.drafter_for(req))

    def _reusable(self, slot: Slot, prompt: list[int]) -> int:
        return common_prefix(slot.cached, prompt) if slot.kept is not None else 0

    def _prefix_of(self, donor: Sequence, keep: int):
        """The first `keep` tokens of a running sequence's cache, copied into a cache of their own."""
        if donor in self.rows:  # decoding: its row of the batch, its real cells only
            return self.backend.new_cache(torch_holes.row_cache_layers(self.cache, self.mask,
                                                                       self.rows.index(donor), keep))
        return self.backend.new_cache([(layer.keys[:, :, :keep].clone(), layer.values[:, :, :keep].clone())
                                       for layer in donor.state.cache.layers])  # prefilling: its own cache

    def _decode_and_sample(self, running: list[Sequence]) -> None:
        try:
            with self.torch.inference_mode():
                self._prefill(running)
                if self.rows:
                    self._decode()
        except (RuntimeError, OSError) as exc:  # from inside torch: the device state is suspect
            raise DeviceFault(str(exc)) from exc
        self.steps += 1

    def _prefill(self, running: list[Sequence]) -> None:
        budget = self.chunk
        for seq in running:
            if not seq.pending or budget <= 0:
                continue
            take = seq.pending[:budget]
            budget -= len(take)
            row = seq.state
            if row.cache is None:
                row.cache = self.backend.new_cache()
            logits = self._forward(take, row)
            seq.slot.cached.extend(take)
            del seq.pending[:len(take)]
            if not seq.pending:
                self._join(seq)
                self._sample(seq, logits)

    def _forward(self, tokens: list[int], row: _Row):
        torch, device = self.torch, self.backend.device
        start = row.position
        out = self.backend.model(input_ids=torch.tensor([tokens], device=device),
                                 position_ids=torch.arange(start, start + len(tokens), device=device)[None],
                                 past_key_values=row.cache, use_cache=True)
        row.position += len(tokens)
        return out.logits[0, -1].float()

    def _decode(self) -> None:
        torch, device = self.torch, self.backend.device
        rows = list(self.rows)
        drafts = self._drafts(rows)
        width = 1 + max(map(len, drafts))
        ids = torch.tensor([[s.next_token, *d] + [s.next_token] * (width - 1 - len(d))
                            for s, d in zip(rows, drafts, strict=True)], device=device)
        new = torch.tensor([[1] * (1 + len(d)) + [0] * (width - 1 - len(d)) for d in drafts], dtype=self.mask.dtype,
                           device=device)
        self.mask = torch.cat([self.mask, new], 1)
        positions = torch.tensor([[s.state.position + j for j in range(width)] for s in rows], device=device)
        started = time.perf_counter()
        out = self.backend.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                                 past_key_values=self.cache, use_cache=True)
        logits = out.logits.float()
        self.cost.observe(len(rows) * width, time.perf_counter() - started)
        if width > 1:  # draft cells count only once kept (`_keep_drafted`)
            self.mask[:, 1 - width:] = 0
        for i, seq in enumerate(rows):
            seq.state.position += 1
            seq.slot.cached.append(seq.next_token)
            if drafts[i]:
                self._verify(seq, drafts[i], logits[i], width)
            else:
                self._sample(seq, logits[i, 0])
        if width > 1 and self.rows and torch_holes.worth_compacting(self.mask):
            self.mask = torch_holes.compact(torch, self.cache, self.mask)

    def _drafts(self, rows: list[Sequence]) -> list[list[int]]:
        """Each row's draft for this step, all cut to the one length that pays for the whole batch (every
        row computes as many positions as the longest draft)."""
        if not any(seq.drafter is not None for seq in rows):
            return [[] for _ in rows]
        n = len(rows)
        pays = lambda p, limit: self.cost.best_length(p, limit, n, n - 1)  # noqa: E731 - one row's view
        drafts = [seq.drafter.propose(min(MAX_DRAFT, answer_room(seq)), pays) if seq.drafter is not None else []
                  for seq in rows]
        chances = [(seq.drafter.chance("prediction" if seq.drafter.from_prediction else "model"), len(d))
                   for seq, d in zip(rows, drafts, strict=True) if d]
        width = self.cost.best_padded_length(chances, n, max(map(len, drafts)))
        return [d[:width] for d in drafts]

    def _verify(self, seq: Sequence, draft: list[int], logits, width: int) -> None:
        """Sample each of the row's positions in turn; a draft token equal to what was sampled is kept (its
        cell unmasked) and the next position sampled from it, the first that differs ends the draft."""
        accepted = 0
        seq.next_token = None
        seq.drafter.start_verify(draft)
        self.drafted += len(draft)  # counted before the answer can end (its client may read the metrics then)
        for j in range(len(draft) + 1):
            self._sample(seq, logits[j])  # emits, and sets next_token, or retires the sequence
            if seq.slot.active is not seq or j == len(draft) or seq.next_token != draft[j]:
                break
            accepted += 1
            self.draft_accepted += 1
            self._keep_drafted(seq, draft[j], j + 1 - width)
        seq.drafter.verified(len(draft), accepted)

    def _keep_drafted(self, seq: Sequence, token: int, column: int) -> None:
        """A drafted token was kept: its cell (at `column` from the mask's end) is the row's next real one."""
        self.mask[self.rows.index(seq), column] = 1
        seq.state.position += 1
        seq.slot.cached.append(token)

    def _sample(self, seq: Sequence, logits) -> None:
        req, raw = seq.req, logits
        token = self.forced_token(seq)
        if token is None:
            if req.constraint is not None:
                logits = self._masked(logits, req.constraint)
            token = seq.sampler.sample(logits)
            if req.constraint is not None:
                req.constraint.accept(token)
        seq.sampler.seen(token)
        # From the model's own distribution, before any mask (masked_fill left `raw` as it was).
        logprob = logprob_of(raw.cpu().numpy(), token, req.params.logprobs) if req.params.logprobs is not None else None
        self._emit(seq, token, logprob)

    def _masked(self, logits, constraint):
        """The logits with every token the grammar forbids at -inf (the raw ones kept for logprobs)."""
        torch = self.torch
        allowed = torch.from_numpy(constraint.allowed()).to(logits.device)
        if allowed.numel() < logits.numel():
            allowed = torch.cat([allowed, torch.zeros(logits.numel() - allowed.numel(), dtype=torch.bool,
                                                      device=logits.device)])
        return logits.masked_fill(~allowed[:logits.numel()], float("-inf"))

    def _join(self, seq: Sequence) -> None:
        """Add a prefilled sequence's cache to the batch as one more row, left-padding whichever is shorter."""
        torch = self.torch
        row_cache, length = seq.state.cache, seq.state.position
        seq.state.cache = None
        row_mask = torch.ones((1, length), dtype=torch.long, device=self.backend.device)
        if self.cache is None:
            self.cache, self.mask, self.rows = row_cache, row_mask, [seq]
            return
        width = self.mask.shape[1]
        layers = []
        for batch_layer, row_layer in zip(self.cache.layers, row_cache.layers, strict=True):
            layers.append(tuple(torch.cat([_pad_left(torch, b, length - width), _pad_left(torch, r, width - length)])
                                for b, r in ((batch_layer.keys, row_layer.keys),
                                             (batch_layer.values, row_layer.values))))
        self.mask = torch.cat([_pad_left(torch, self.mask, length - width, dim=1),
                               _pad_left(torch, row_mask, width - length, dim=1)])
        self.cache = self.backend.new_cache(layers)
        self.rows.append(seq)

    def _release(self, seq: Sequence) -> None:
        if seq not in self.rows:  # left while prefilling: what it prefilled stays with the slot
            seq.slot.kept = seq.state.cache
            if seq.slot.kept is None:
                seq.slot.cached.clear()
            return
        index = self.rows.index(seq)
        seq.slot.kept = self._row_cache(index)
        self.rows.pop(index)
        if not self.rows:
            self.cache = self.mask = None
            return
        keep = self.torch.tensor([i for i in range(len(self.rows) + 1) if i != index], device=self.backend.device)
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]
        self._trim_padding()

    def _row_cache(self, index: int):
        """One row of the batch as a cache of its own, without its left padding or holes."""
        return self.backend.new_cache(torch_holes.row_cache_layers(self.cache, self.mask, index))

    def _trim_padding(self) -> None:
        """Cut the leading columns that are padding in every row (left by a row that left)."""
        real = self.mask.any(dim=0).nonzero()
        cut = int(real[0]) if len(real) else 0
        if cut:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
            self.mask = self.mask[:, cut:]

    def _reset(self) -> None:
        self.rows, self.cache, self.mask = [], None, None
        for slot in self.slots:
            slot.kept = None


def _pad_left(torch, tensor, amount: int, dim: int = 2):
    """`tensor` with `amount` zeros before its entries along `dim` (the sequence axis); as is when amount <= 0."""
    if amount <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)
