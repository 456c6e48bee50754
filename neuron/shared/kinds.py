"""Which routes each kind of model serves, and the one refusal for a request to the wrong kind.

The neuron asks it of a loaded model (`Registry.require_loaded`) and the gateway of a model it
would cold-load (`cortex_gateway.dispatch.place`, from the kind the nodes list), so a chat request
for a reranker gets the same clear 400 whether or not the model is loaded, and never a load first.
Free of heavy imports: the gateway imports this module.
"""

from __future__ import annotations

from neuron.shared.errors import ApiError
from neuron.shared.protocol import ModelKind

CHAT_ROUTES = ("/v1/chat/completions", "/v1/completions")
# The routes each kind serves, public ones first (the refusal names those); `/tokenize` is the gateway's
# token count for chat bodies. A chat model embeds too (its pooled hidden states), as llama.cpp offers.
SERVES: dict[ModelKind, tuple[str, ...]] = {
    ModelKind.GENERATION: (*CHAT_ROUTES, "/v1/embeddings", "/tokenize"),
    ModelKind.VISION: (*CHAT_ROUTES, "/v1/embeddings", "/tokenize"),
    ModelKind.EMBEDDING: ("/v1/embeddings",),
    ModelKind.RERANK: ("/v1/rerank",),
    ModelKind.IMAGE: ("/v1/images/generations",),
    ModelKind.TRANSCRIPTION: ("/v1/audio/transcriptions",),
}
# How a refusal names a kind: "is a rerank model", "pick a chat model".
NAMES = {ModelKind.GENERATION: "chat", ModelKind.VISION: "vision chat", ModelKind.EMBEDDING: "embedding",
         ModelKind.RERANK: "rerank", ModelKind.IMAGE: "image generation",
         ModelKind.TRANSCRIPTION: "transcription"}


def kind_label(value: str | None) -> str:
    """How the operator tools name a kind from the wire ("generation" -> "chat"); an unknown one as given."""
    try:
        return NAMES[ModelKind(value or ModelKind.GENERATION)]
    except ValueError:
        return str(value)


def serves(kind: ModelKind, path: str) -> bool:
    """Whether a model of `kind` answers `path`; a route no kind lists (a lifecycle route) is anyone's."""
    return path in SERVES[kind] or not any(path in routes for routes in SERVES.values())


def wrong_kind(model: str, kind: ModelKind | None, path: str) -> ApiError | None:
    """The 400 for a request to `path` that a model of `kind` cannot answer; None when it can (or the kind
    is not known: the node that loads it will say)."""
    if kind is None or serves(kind, path):
        return None
    routes = [r for r in SERVES[kind] if r != "/tokenize"]
    wanted = next((k for k in (ModelKind.GENERATION, *SERVES) if path in SERVES[k]), ModelKind.GENERATION)
    code = "embedding_model" if kind == ModelKind.EMBEDDING else f"{kind.value}_model"
    return ApiError(400, "invalid_request_error",
                    f"model {model!r} is {_article(NAMES[kind])} model: it serves {_listed(routes)} only; "
                    f"pick {_article(NAMES[wanted])} model from /v1/models (each entry's `kind` says which it is)",
                    code=code, param="model")


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name
