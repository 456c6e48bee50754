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
"""

from __future__ import annotations

from dataclasses import dataclass

from neuron.engine.batching import BatchRequest, BatchScheduler, Sequence, Slot, common_prefix
from neuron.engine.generation import DeviceFault
from neuron.engine.logprobs import logprob_of


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
        self.mask = None  # [rows, length]: 1 for a real token, 0 for left padding

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
        return Sequence(req, slot, self.backend.sampler(req.params), req.prompt[keep:], state=row)

    def _reusable(self, slot: Slot, prompt: list[int]) -> int:
        return common_prefix(slot.cached, prompt) if slot.kept is not None else 0

    def _prefix_of(self, donor: Sequence, keep: int):
        """The first `keep` tokens of a running sequence's cache, copied into a cache of their own."""
        if donor in self.rows:  # decoding: its row of the batch, after its left padding
            index = self.rows.index(donor)
            rows, start, layers = slice(index, index + 1), int((self.mask[index] == 0).sum()), self.cache.layers
        else:  # prefilling: its own cache
            rows, start, layers = slice(0, 1), 0, donor.state.cache.layers
        return self.backend.new_cache([(layer.keys[rows, :, start:start + keep].clone(),
                                        layer.values[rows, :, start:start + keep].clone()) for layer in layers])

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
        ids = torch.tensor([[s.next_token] for s in rows], device=device)
        self.mask = torch.cat([self.mask, torch.ones((len(rows), 1), dtype=self.mask.dtype, device=device)], 1)
        positions = torch.tensor([[s.state.position] for s in rows], device=device)
        out = self.backend.model(input_ids=ids, attention_mask=self.mask, position_ids=positions,
                                 past_key_values=self.cache, use_cache=True)
        logits = out.logits[:, -1].float()
        for i, seq in enumerate(rows):
            seq.state.position += 1
            seq.slot.cached.append(seq.next_token)
            self._sample(seq, logits[i])

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
        """One row of the batch as a cache of its own, without its left padding."""
        pad = int((self.mask[index] == 0).sum())
        return self.backend.new_cache([(layer.keys[index:index + 1, :, pad:].clone(),
                                        layer.values[index:index + 1, :, pad:].clone())
                                       for layer in self.cache.layers])

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
