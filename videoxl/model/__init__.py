"""The Video-XL-2 model: vision tower, DTS, projector, Qwen2 LLM, checkpoints in the official layout.

The names below load on first use (PEP 562), so that :mod:`videoxl.model.files` checks a checkpoint folder without
importing torch."""

from importlib import import_module

from ..errors import CheckpointError

_HOME = {"VideoXL2": ".videoxl2", **dict.fromkeys(
    ["VideoXL2Config", "VisionConfig", "LLMConfig", "PRESETS", "TINY", "SYNTH", "VIDEO_XL_2", "preset"], ".config")}

__all__ = [*_HOME, "CheckpointError"]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_HOME[name], __name__), name)
    globals()[name] = value
    return value
