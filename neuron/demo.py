"""`cortex-tiny`, the demo model served when a user has no model yet.

Its weights are random: it answers gibberish. It is there so that the first
command a new user runs answers a first `curl`, and says how to add a real model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from neuron.catalog import scan

log = logging.getLogger(__name__)
DEMO_ID = "cortex-tiny"


def ensure_demo_model(models_dir: Path) -> str | None:
    """Write cortex-tiny into an empty models dir; returns its id, or None when real models exist."""
    ids = {ref.id for ref in scan(models_dir)}
    if ids - {DEMO_ID}:
        return None
    if DEMO_ID in ids:
        return DEMO_ID
    from neuron.tiny.model import write_tiny_model

    path = write_tiny_model(models_dir / f"{DEMO_ID}.gguf", "gguf")
    log.warning("no model in %s: serving the demo model %s (random weights, gibberish answers). "
                "Add a real one by copying a .gguf file or a Hugging Face directory there.", models_dir, path.name)
    return DEMO_ID
