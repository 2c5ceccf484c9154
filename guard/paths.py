"""Where the guard keeps what it builds: converted models, trained artifacts, environments.

Everything goes under one cache directory (``$GUARD_CACHE_DIR``, else
``$XDG_CACHE_HOME/unlearning-guard``, else ``~/.cache/unlearning-guard``), never into the
repository or the read-only data folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("GUARD_CACHE_DIR")
    if explicit:
        root = Path(explicit)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "unlearning-guard"
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_data_dir() -> Path:
    """The benchmark data beside the checkout (``../shared/data``), or ``$GUARD_DATA_DIR``."""
    explicit = os.environ.get("GUARD_DATA_DIR")
    if explicit:
        return Path(explicit)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"
