"""Where videoxl keeps what it makes once: converted checkpoints, the demo video, retrieval-head lists."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no lock; concurrent makers then each make their own copy and one rename wins
    fcntl = None


def cache_dir() -> Path:
    """``$VIDEOXL_CACHE``, or ``~/.cache/videoxl`` when it is unset or empty."""
    return Path(os.environ.get("VIDEOXL_CACHE") or Path.home() / ".cache" / "videoxl")


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold an advisory lock on the file ``lock`` (created if needed) across processes, so that one of several
    processes makes a cached thing while the others wait and then read it. The lock goes with the process. Where
    the file cannot be opened (a read-only folder) or the system has no such locks, nothing is locked."""
    try:
        f = open(lock, "a") if fcntl is not None else None
    except OSError:
        f = None
    if f is None:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
