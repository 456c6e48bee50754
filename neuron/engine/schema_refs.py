"""Embedding one JSON schema inside another without breaking its references.

A tool's `parameters` is a schema document of its own: its `$ref`s are relative to
its own root (`#/$defs/Person`, `#/definitions/Item`, `#` for recursion). A forced
tool call is constrained by one grammar in which every allowed tool's schema sits
under a call's `arguments`, inside an `anyOf`; there, `#/$defs/Person` would point at
the combined document's root and not resolve (what pydantic, instructor, the OpenAI
Agents SDK and litellm send for any nested model). So each embedded schema's
definitions are hoisted to the combined root under a name of its own, and its
references rewritten to point there. Pure functions: no llguidance here.
"""

from __future__ import annotations

from typing import Any

_DEF_KEYS = ("$defs", "definitions")


def embed_schemas(schemas: list[dict], prefix: str = "s") -> tuple[list[dict], dict[str, Any]]:
    """Each schema rewritten for embedding, and the `$defs` the combined root must carry.

    Schema i's definition `X` becomes root `$defs/{prefix}{i}.X`; a reference to its own root
    (`#`), or into it by another pointer, goes to root `$defs/{prefix}{i}`, a copy of it."""
    embedded, root_defs = [], {}
    for i, schema in enumerate(schemas):
        name = f"{prefix}{i}"
        body, defs = _split_defs(schema)
        for key, value in defs.items():
            root_defs[f"{name}.{key}"] = _rewrite(value, name)
        rewritten = _rewrite(body, name)
        if _refers_to_root(schema):
            root_defs[name] = rewritten
        embedded.append(rewritten)
    return embedded, root_defs


def _split_defs(schema: Any) -> tuple[Any, dict[str, Any]]:
    if not isinstance(schema, dict):
        return schema, {}
    defs = {}
    for key in _DEF_KEYS:
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    return {k: v for k, v in schema.items() if k not in _DEF_KEYS}, defs


def _rewrite(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [_rewrite(v, name) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _rewrite(v, name) for k, v in value.items()}
    if isinstance(value.get("$ref"), str):
        out["$ref"] = _moved_ref(value["$ref"], name)
    return out


def _moved_ref(ref: str, name: str) -> str:
    """Where a local reference of schema `name` points once its definitions are hoisted."""
    if not ref.startswith("#"):
        return ref  # a remote reference: left for the grammar compiler to refuse, by name
    pointer = ref[1:]
    for key in _DEF_KEYS:
        head = f"/{key}/"
        if pointer.startswith(head):
            def_name, _, rest = pointer[len(head):].partition("/")
            return f"#/$defs/{_escape(name + '.' + _unescape(def_name))}" + (f"/{rest}" if rest else "")
    return f"#/$defs/{name}{pointer}"


def _refers_to_root(value: Any) -> bool:
    """Whether any reference points at the schema's root or into it other than through its definitions."""
    if isinstance(value, list):
        return any(_refers_to_root(v) for v in value)
    if not isinstance(value, dict):
        return False
    ref = value.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and not any(ref.startswith(f"#/{k}/") for k in _DEF_KEYS):
        return True
    return any(_refers_to_root(v) for v in value.values())


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")
