"""Writing a file whole, atomically: what every writer of a config, a unit or an index goes through.

A reader (the gateway reloading its models file, systemd reading a unit, a neuron reading its pull
index) sees the old file or the new one, never half of one, and a crash right after the write
loses neither: the data and the rename are both on disk before this returns.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE = 0o600  # a new file's mode unless told otherwise: a config may hold keys


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it over `path`, fsync the directory.

    `mode`: the new file's permissions; None keeps those of the file replaced (0600 for a new one)."""
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else PRIVATE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """The rename itself survives a crash only once the directory is on disk too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
