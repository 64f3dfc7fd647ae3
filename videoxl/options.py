"""Types for command-line options (argparse): each refuses a bad value with a message argparse prefixes with the
option's name, so ``--chunk 0`` and ``--decode-chunk 0`` say which one is wrong. No heavy imports."""

from __future__ import annotations

import argparse
import math

from . import defaults


def whole(low: int, high: int | None = None):
    """A whole number in [low, high]; the error names the option (argparse adds its name)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low:,} to {high:,}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return parse


def rate(text: str) -> float:
    """A rate in frames per second: a finite number > 0."""
    return positive(text)


def device_name(text: str) -> str:
    """The shape of a device name (whether it exists is checked once torch is loaded)."""
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:N or mps")
    return text


def fraction(text: str) -> float:
    """A fraction of the dense KV cache, in (0, 1]."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"is a fraction of the dense KV cache in (0, 1], got {text!r}")
    return value


def lengths(text: str) -> list[int]:
    """Comma-separated haystack lengths in frames."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers of frames, got {text!r}") from None
    if any(not 8 <= v <= defaults.FRAMES_LIMIT for v in values):
        raise argparse.ArgumentTypeError(f"each length must be from 8 to {defaults.FRAMES_LIMIT:,} frames, got {text}")
    return values


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive(text: str) -> float:
    """A finite number > 0."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative(text: str) -> float:
    """A finite number >= 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def share_or_off(text: str) -> float | None:
    """A share of attention in (0, 1], or ``off`` (None)."""
    if text == "off":
        return None
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share of attention in (0, 1] or 'off', got {text!r}")
    return value


def on_off(text: str) -> bool:
    """A switch: ``on`` (True) or ``off`` (False)."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"must be 'on' or 'off', got {text!r}")
    return text == "on"


def unit(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def switch(text: str) -> bool:
    """``on`` or ``off``."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"must be 'on' or 'off', got {text!r}")
    return text == "on"


def add_compile(parser) -> None:
    """``--compile on|off``, the model's ``compile_generation`` (``videoxl.model.VideoXL2``), for every command that
    loads a model to answer."""
    parser.add_argument("--compile", type=switch, metavar="on|off",
                        help="greedy tokens from the fixed-shape generation step compiled with torch.compile; "
                             "its compilation is reported in the stats (default: off; on a CPU compiling takes "
                             "minutes and pays only for long answers: docs/host.md)")
