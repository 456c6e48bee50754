"""Which models a key may use: its allow-list of ids, aliases and glob patterns, decided without I/O.

A key's `models` is None (every model) or a tuple of entries, each a model id, an alias of the gateway's
config, or an fnmatch pattern (`qwen-*`, `*-embed`, `org/[ab]*`), matched case-sensitively (model ids are).
An alias and its target name one model, so either form on either side matches: a key allowed `fast`
(an alias of `qwen-0.5b`) may ask for `qwen-0.5b`, and a key allowed `qwen-*` may ask for `fast`.

A model the key may not use is answered as one that does not exist, in the words of the provider the
route speaks, so a limited key cannot tell a model it may not use from one the fleet lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

from cortex_gateway.state_db import ApiKey
from neuron.shared.errors import ApiError

Resolve = Callable[[str], str]  # alias -> model id (GatewayConfig.resolve_alias); an id maps to itself


def allows(patterns: Iterable[str] | None, model: str, resolve: Resolve) -> bool:
    """Whether `model` (an id or an alias) is on the allow-list `patterns` (None: every model)."""
    if patterns is None:
        return True
    names = {model, resolve(model)}
    return any(_matches(name, entry) or _matches(name, resolve(entry)) for entry in patterns for name in names)


def _matches(name: str, entry: str) -> bool:
    return name == entry or fnmatchcase(name, entry)  # equality first: an id with `[` in it matches itself


def not_allowed(model: str) -> ApiError:
    """OpenAI's own answer for a model a key cannot use (the Anthropic renderer makes it not_found_error)."""
    return ApiError(404, "invalid_request_error", f"The model '{model}' does not exist or you do not have "
                    "access to it.", code="model_not_found", param="model")


def refusal(tenant: ApiKey | None, model: str, resolve: Resolve) -> ApiError | None:
    """The error that ends a request for `model` with this key, or None if the key may use it
    (no key at all: a gateway without keys)."""
    if tenant is None or allows(tenant.settings.models, model, resolve):
        return None
    return not_allowed(model)


def visible(tenant: ApiKey | None, entries: list[dict], resolve: Resolve) -> list[dict]:
    """The catalog entries (`{"id": ...}`) this key may see in /v1/models."""
    if tenant is None or tenant.settings.models is None:
        return entries
    return [e for e in entries if allows(tenant.settings.models, e["id"], resolve)]
