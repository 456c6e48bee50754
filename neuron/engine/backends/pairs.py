"""How a cross-encoder reads a (query, document) pair: the special tokens around and between the two texts,
and each part's token type. Apart from the backends so that both rerank backends frame pairs one way."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairFrame:
    """The special tokens a tokenizer puts around a pair, and each part's token type."""

    before: list[int]
    between: list[int]
    after: list[int]
    types: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # before, first text, between, second text, after

    def framed(self, first: list[int], second: list[int]) -> tuple[list[int], list[int]]:
        """(input ids, token type ids) of one (query, document) pair."""
        ids = self.before + first + self.between + second + self.after
        parts = (self.before, first, self.between, second, self.after)
        return ids, [t for part, t in zip(parts, self.types, strict=True) for _ in part]


def hf_pair_frame(tokenizer) -> PairFrame:
    """A transformers tokenizer's frame, learnt from one pair it frames itself ("a", "b"), so that any
    tokenizer's template is followed (BERT's [CLS] a [SEP] b [SEP], RoBERTa's <s> a </s></s> b </s>)."""
    a, b = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("a", "b"))
    full = tokenizer("a", "b", add_special_tokens=True)
    ids = full["input_ids"]
    types = full.get("token_type_ids") or [0] * len(ids)
    for i in range(len(ids) - len(a) + 1):
        if ids[i:i + len(a)] != a:
            continue
        for j in range(i + len(a), len(ids) - len(b) + 1):
            if ids[j:j + len(b)] == b:
                k = j + len(b)
                spans = ((0, i), (i, i + len(a)), (i + len(a), j), (j, k), (k, len(ids)))
                kinds = tuple(types[s] if s < e else 0 for s, e in spans)
                return PairFrame(ids[:i], ids[i + len(a):j], ids[k:], kinds)
    raise ValueError("the tokenizer does not frame a text pair as a cross-encoder needs")
