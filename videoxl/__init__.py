"""videoxl: question answering over very long videos with streaming chunked pre-fill and bi-level KV decoding.

    import videoxl
    model = videoxl.load("BAAI/Video-XL-2")                   # or a local folder, or videoxl.DEFAULT_MODEL
    session = videoxl.ingest(model, "movie.mp4", max_frames=2048)
    print(session.ask("When does the dog appear?").text)     # options by name: session.ask(q, topk=8)

Names are imported on first use, so ``import videoxl`` (and ``videoxl --help``) does not load torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from .errors import CheckpointError, InputError, OptionError, VideoError, VideoXLError

DEFAULT_MODEL = Path(__file__).parent / "assets" / "synth"

# PyTorch's OpenMP threads spin while they wait. When another process holds a core, a spinning thread takes the
# core the thread it waits for needs, and every parallel region stalls: on 2 cores beside one busy process the
# bundled model's stages ran 2.5x slower spinning, 1.1x passive, and passive costs nothing on an idle machine
# (benchmarks/threads.py). It only takes effect if torch is not imported yet, and an explicit setting wins.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_LAZY = {
    "VideoXL2": ".model", "VideoXL2Config": ".model", "Session": ".pipeline", "ingest": ".pipeline",
    "load": ".pipeline", "Selection": ".decoding", "Generation": ".decoding",
    "PrefillConfig": ".engine.prefill", "PrefilledVideo": ".engine.prefill", "prefill": ".engine.prefill",
    "Answer": ".engine.decode", "Decoder": ".engine.decode",
    "Group": ".engine.layout", "KVStore": ".engine.store",
}

__all__ = [*_LAZY, "VideoXLError", "InputError", "OptionError", "VideoError", "CheckpointError", "DEFAULT_MODEL"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'videoxl' has no attribute {name!r}")
