"""Where embedded data sets are cached, and an atomic writer for the cache files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._io import atomic_write


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/visattn``, or ``~/.cache/visattn``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "visattn"


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` (.npz) through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
