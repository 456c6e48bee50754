"""Where a model comes from on the Hugging Face hub, and which of a repository's files a load needs.

Three forms of source, all pure to parse:
- `org/name`: a safetensors repository: config, tokenizer, weights; other weight
  formats (GGUF, ONNX, Flax, TF, and .bin when safetensors exist) and training
  leftovers (optimiser states) are skipped;
- `org/name:Q4_K_M`: the GGUF file of that quantisation in a GGUF repository (all
  parts of a split GGUF);
- `org/name/path/file.gguf`: that GGUF file (and its other parts when split).
An `@revision` suffix on the repository (`org/name@main:Q4_K_M`) pins a branch,
tag or commit. What lands in the models directory is named so the catalog's
scan gives it a stable id: `org--name` for a repository, the file's own name for
a GGUF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from neuron.pulls.names import split_parts
from neuron.shared.errors import ApiError, bad_request

_NAME = r"[A-Za-z0-9][\w.-]*"
_SOURCE = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<rev>[\w./-]+?))?"
                     rf"(?::(?P<quant>[\w.-]+)|/(?P<file>.+\.gguf))?$")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
# What a transformers load reads besides the weights (top level, or a sentence-transformers module folder).
_SMALL_FILES = re.compile(r"(^|/)(config\.json|generation_config\.json|tokenizer[^/]*|special_tokens_map\.json|"
                          r"vocab\.[a-z]+|merges\.txt|chat_template\.jinja|preprocessor_config\.json|"
                          r"modules\.json|sentence_bert_config\.json|config_sentence_transformers\.json|"
                          r"[^/]*\.model|[^/]*\.safetensors\.index\.json)$")
_SKIPPED_DIRS = ("onnx/", "openvino/", "coreml/", "original/")


@dataclass(frozen=True)
class HubSource:
    repo: str
    revision: str | None = None
    quant: str | None = None  # a GGUF quantisation tag, e.g. Q4_K_M
    file: str | None = None  # a GGUF file path inside the repository

    @property
    def is_gguf(self) -> bool:
        return self.quant is not None or self.file is not None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        tail = f":{self.quant}" if self.quant else f"/{self.file}" if self.file else ""
        return f"{self.repo}{rev}{tail}"


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repository
    size: int
    sha256: str | None = None  # LFS files carry one; small git files are checked by size


def parse_source(text: str) -> HubSource | None:
    """The hub source `text` names, or None when it is not one (a local id or path)."""
    match = _SOURCE.match(text.strip()) if isinstance(text, str) else None
    if match is None or ".." in text:
        return None
    return HubSource(match["repo"], match["rev"], match["quant"], match["file"])


def select_files(source: HubSource, files: list[RemoteFile]) -> list[RemoteFile]:
    """The files of `source`'s repository a load needs; a 404 that lists the choices when none match."""
    if source.is_gguf:
        return _gguf_files(source, files)
    weights = [f for f in files if f.path.endswith(".safetensors") and not f.path.startswith(_SKIPPED_DIRS)]
    if not weights:
        weights = [f for f in files if re.search(r"(^|/)pytorch_model[^/]*\.bin$", f.path)]
    if not weights:
        ggufs = sorted({q for f in files if (q := quant_of(f.path))})
        hint = f"; it holds GGUF files: pull one with {source.repo}:{ggufs[0]}" if ggufs else ""
        raise ApiError(404, "not_found_error", f"{source.repo} has no safetensors weights{hint}",
                       code="model_not_found", param="source")
    small = [f for f in files if _SMALL_FILES.search(f.path) and not f.path.startswith(_SKIPPED_DIRS)]
    if not any(f.path == "config.json" for f in small):
        raise ApiError(404, "not_found_error", f"{source.repo} has no config.json: not a transformers model",
                       code="model_not_found", param="source")
    return sorted(small + weights, key=lambda f: f.path)


def _gguf_files(source: HubSource, files: list[RemoteFile]) -> list[RemoteFile]:
    ggufs = [f for f in files if f.path.endswith(".gguf")]
    if source.file is not None:
        chosen = [f for f in ggufs if f.path == source.file]
    else:
        chosen = [f for f in ggufs if (quant_of(f.path) or "").lower() == source.quant.lower()]
    if not chosen:
        quants = sorted({q for f in ggufs if (q := quant_of(f.path))})
        raise ApiError(404, "not_found_error", f"{source}: no such GGUF in {source.repo}; it has "
                       + (", ".join(quants) if quants else "no GGUF files"), code="model_not_found", param="source")
    if (parts := split_parts(chosen[0].path)) is not None:  # every part of the split file the choice belongs to
        return _split_files(source, parts, ggufs)
    if len(chosen) > 1:
        raise ApiError(400, "invalid_request_error", f"{source}: several files match: "
                       f"{', '.join(f.path for f in chosen)}; name one as {source.repo}/FILE.gguf",
                       code="ambiguous_source", param="source")
    return sorted(chosen, key=lambda f: f.path)


def _split_files(source: HubSource, parts: list[str], ggufs: list[RemoteFile]) -> list[RemoteFile]:
    """Its parts by their exact names: another file that merely starts like them belongs to another model."""
    by_name = {f.path: f for f in ggufs}
    if missing := [name for name in parts if name not in by_name]:
        raise ApiError(502, "api_error", f"{source}: the hub lists {len(parts) - len(missing)} of the {len(parts)} "
                       f"parts of {parts[0]}; missing: {', '.join(missing[:5])}", code="model_not_found",
                       param="source")
    return [by_name[name] for name in parts]


def quant_of(path: str) -> str | None:
    """The quantisation tag in a GGUF file name (model.Q4_K_M.gguf, model-q8_0-00001-of-00002.gguf)."""
    name = _SPLIT.sub(".gguf", PurePosixPath(path).name)
    match = re.search(r"(?:^|[-._])((?:I?Q\d[\w]*)|F16|BF16|F32)\.gguf$", name, re.IGNORECASE)
    return match.group(1).upper() if match else None


def local_name(source: HubSource, files: list[RemoteFile]) -> str:
    """The name under the models directory; the catalog's id is derived from it."""
    if source.is_gguf:
        return PurePosixPath(files[0].path).name
    return source.repo.replace("/", "--")


def check_source(text: str) -> HubSource:
    source = parse_source(text)
    if source is None:
        raise bad_request(f"source: {text!r} is not a hub source; expected org/name, org/name:QUANT or "
                          "org/name/file.gguf", param="source")
    return source
