"""A model's speculative decoding, as a load (`"speculative"`), a neuron.toml [[preload]] or a models.toml
profile asks for it: the wire type both the neuron and the gateway check. The drafting itself is the
neuron's (`neuron.engine.drafts`)."""

from __future__ import annotations

from dataclasses import dataclass

from neuron.shared.errors import bad_request

METHODS = ("ngram", "draft")  # a model's own source of drafts; a request's prediction needs none
MAX_DRAFT = 16  # the most draft tokens a sequence verifies in one step
SPECULATIVE_BACKENDS = ("llama.cpp", "torch")  # the backends whose batcher verifies drafts
DRAFT_MODEL_BACKENDS = ("llama.cpp",)  # those that also run a draft model beside the target


@dataclass(frozen=True)
class SpecConfig:
    """A model's speculative decoding (`"speculative"` of a load or a profile); None: predictions only."""

    method: str = "ngram"
    max_draft: int = 8  # draft tokens at most per step
    ngram_max: int = 3  # the longest suffix of the text looked up
    ngram_min: int = 1  # the shortest
    draft_model: str | None = None  # method "draft": a smaller GGUF of the same vocabulary on the node

    @classmethod
    def from_dict(cls, value) -> SpecConfig | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise bad_request('speculative: expected an object such as {"method": "ngram"}', param="speculative")
        unknown = set(value) - {"method", "max_draft", "ngram_max", "ngram_min", "draft_model"}
        if unknown:
            raise bad_request(f"speculative: unknown field {sorted(unknown)[0]!r}; expected method, max_draft, "
                              "ngram_max, ngram_min, draft_model", param="speculative")
        method = value.get("method", "ngram")
        if method not in METHODS:
            raise bad_request(f"speculative.method: expected one of {', '.join(METHODS)}, got {method!r} (a "
                              "request's prediction drafts without any)", param="speculative")
        spec = cls(method, _count(value, "max_draft", 8, MAX_DRAFT), _count(value, "ngram_max", 3, 8),
                   _count(value, "ngram_min", 1, 8), _draft_model(value, method))
        if spec.ngram_min > spec.ngram_max:
            raise bad_request("speculative.ngram_min: must not be more than ngram_max", param="speculative")
        return spec

    def to_dict(self) -> dict:
        out = {"method": self.method, "max_draft": self.max_draft, "ngram_max": self.ngram_max,
               "ngram_min": self.ngram_min}
        if self.draft_model is not None:
            out["draft_model"] = self.draft_model
        return out


def _draft_model(value: dict, method: str) -> str | None:
    model = value.get("draft_model")
    if method != "draft":
        if model is not None:
            raise bad_request('speculative.draft_model: only with method "draft"', param="speculative")
        return None
    if not isinstance(model, str) or not model or len(model) > 512:
        raise bad_request('speculative.draft_model: method "draft" needs the id of a GGUF on the node (a smaller '
                          "model with the same vocabulary), as a load names a model", param="speculative")
    return model


def _count(value: dict, name: str, default: int, most: int) -> int:
    got = value.get(name, default)
    if isinstance(got, bool) or not isinstance(got, int) or not 1 <= got <= most:
        raise bad_request(f"speculative.{name}: expected a whole number from 1 to {most}, got {got!r}",
                          param="speculative")
    return got
