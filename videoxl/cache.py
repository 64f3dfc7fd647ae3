"""Where videoxl keeps what it makes once: converted checkpoints, the demo video, retrieval-head lists."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$VIDEOXL_CACHE``, or ``~/.cache/videoxl`` when it is unset or empty."""
    return Path(os.environ.get("VIDEOXL_CACHE") or Path.home() / ".cache" / "videoxl")
