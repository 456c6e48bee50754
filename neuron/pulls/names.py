"""Names from the hub, checked before any becomes a path; and the exact names of a split GGUF's parts.

cortex downloads a repository's files itself rather than through
`hf_hub_download`, so the hub library's own path checks never run: a file
name the hub (or a mirror in HF_ENDPOINT) lists is data from outside, and
`staging / name` with `../x` or `/x` in it would write wherever the neuron
may. Every name is therefore checked here, once when the hub lists it (so a
bad one refuses the pull before a byte moves) and again whenever it is made a
path (download, checksum, move into place), resolved inside the staging folder.

A split GGUF is `PREFIX-NNNNN-of-NNNNN.gguf` (llama.cpp's `llama_split_path`);
its parts are named from the prefix taken literally, never found by a glob,
whose `*` and `[...]` in a name would reach other models' files.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from neuron.shared.errors import ApiError

SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})\.gguf$")


def name_problem(name: object) -> str | None:
    """Why `name` is not a plain relative path inside a repository, or None when it is one."""
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        return "it holds a control character"
    if "\\" in name:
        return "it holds a backslash"
    if name.startswith("/"):
        return "it is an absolute path"
    segments = name.split("/")
    if ".." in segments:
        return "it has a '..' segment"
    if "" in segments or "." in segments:
        return "it has an empty or '.' segment"
    return None


def unsafe_name(source: object, name: object, why: str) -> ApiError:
    shown = repr(name) if len(repr(name)) <= 200 else repr(name)[:200] + "..."
    return ApiError(502, "api_error", f"{source}: the hub lists a file named {shown}, which is not a plain relative "
                    f"path inside the repository ({why}); nothing of this pull was written. Check that HF_ENDPOINT "
                    "points at a hub you trust", code="unsafe_file_name", param="source")


def check_name(source: object, name: object) -> str:
    """`name` itself when it is a plain relative path; an error naming it otherwise."""
    if (why := name_problem(name)) is not None:
        raise unsafe_name(source, name, why)
    return name


def staged_path(source: object, staging: Path, name: str, suffix: str = "") -> Path:
    """Where the hub's file `name` (plus `suffix`, e.g. ".part") lies in `staging`: checked, and resolved
    (symlinks followed) inside it before anything there is opened."""
    check_name(source, name)
    root = staging.resolve()
    path = (root / (name + suffix)).resolve()
    if path == root or not path.is_relative_to(root):
        raise unsafe_name(source, name, "it resolves outside the staging folder")
    return path


def split_parts(name: str) -> list[str] | None:
    """Every part's name of the split GGUF `name` is one part of (the prefix literal), or None when it is none."""
    match = SPLIT.match(name)
    if match is None or int(match["total"]) < 1:
        return None
    prefix, total = match["prefix"], match["total"]
    return [f"{prefix}-{i:05d}-of-{total}.gguf" for i in range(1, int(total) + 1)]
