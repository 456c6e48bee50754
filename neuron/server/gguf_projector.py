"""Which GGUF is a vision model: a chat GGUF with its multimodal projector (mmproj) beside it.

Vision GGUFs ship as two files, the language model and its projector (architecture `clip`), which
llama.cpp's mtmd reads together. A model `NAME.gguf` pairs with `NAME.mmproj.gguf` beside it (what
`cortex tiny-model --kind vision --format gguf` writes), or, when it is the only model GGUF in its
folder, with that folder's one `mmproj*.gguf` (the layout of the GGUF repositories on the hub). A
projector is never a model of its own: nothing could be served from it alone.
"""

from __future__ import annotations

import re
from pathlib import Path

PROJECTOR_ARCH = "clip"
_LATER_PART = re.compile(r"-(\d+)-of-\d+$")  # a split GGUF's parts; llama.cpp opens them through the first


def is_projector(path: Path) -> bool:
    """A multimodal projector: named as one, or a GGUF whose architecture is clip."""
    if path.name.endswith(".mmproj.gguf") or path.name.startswith("mmproj"):
        return True
    from neuron.server.catalog import gguf_metadata

    try:
        return gguf_metadata(path).get("general.architecture") == PROJECTOR_ARCH
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the load itself
        return False


def projector_for(model: Path) -> Path | None:
    """The projector that makes `model` a vision model, or None for a text model."""
    beside = model.with_name(model.name.removesuffix(".gguf") + ".mmproj.gguf")
    if beside.is_file():
        return beside
    try:
        ggufs = [p for p in model.parent.iterdir() if p.suffix == ".gguf" and p.is_file()]
    except OSError:
        return None
    projectors = [p for p in ggufs if p.name.startswith("mmproj")]
    if len(projectors) != 1:  # by name first: a flat models directory costs no header reads
        return None
    models = [p for p in ggufs if p not in projectors and _first_part(p) and not is_projector(p)]
    return projectors[0] if [p.name for p in models] == [model.name] else None


def _first_part(path: Path) -> bool:
    match = _LATER_PART.search(path.stem)
    return match is None or int(match.group(1)) == 1
