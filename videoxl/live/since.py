"""The part of a live stream a question is about (``since``): its last stretch ("-90s", "-5m", "-1h", "-1m30s"),
or everything from a stream time in seconds on ("120"). Declared once here: :meth:`LiveStream.ask` takes it as
``since=``, ``videoxl watch`` as ``--since`` (:func:`add_argument`) and the server as ``since`` beside the ``url`` of
a ``stream://`` video part, all parsed by :func:`parse_since`.

A range leaves every group that began before it out of the answer's cache: the question sees the prompt prefix and
the groups inside the range, and selection scores only those. A stretch is counted back from the newest frame
ingested. A plain module with no heavy imports, so the CLI builds its parser without loading torch.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

from ..errors import OptionError

HELP = ("answer only from part of the stream: its last stretch ('-90s', '-5m', '-1h', '-1m30s') or everything from "
        "a stream time in seconds on ('120')")

_NUMBER = r"\d+(?:\.\d+)?"
_STRETCH = re.compile(rf"-(?:({_NUMBER})h)?(?:({_NUMBER})m)?(?:({_NUMBER})s)?")


@dataclass(frozen=True)
class Since:
    """A question's range of stream time: from stream time ``start`` on, or the ``last`` seconds up to the newest
    frame ingested (exactly one of the two is set)."""

    start: float | None = None
    last: float | None = None

    def __post_init__(self):
        assert (self.start is None) != (self.last is None), self

    def begin(self, newest: float) -> float:
        """The range's first second of stream time, when the newest frame ingested is at ``newest``."""
        return self.start if self.start is not None else newest - self.last


def parse_since(value: str | float | Since) -> Since:
    """A range from its text ('-5m', '-1m30s', '120') or a number of stream seconds; OptionError names a bad one."""
    if isinstance(value, Since):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return Since(start=float(value))
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(_NUMBER, text):
            return Since(start=float(text))
        match = _STRETCH.fullmatch(text)
        seconds = sum(float(n) * unit for n, unit in zip(match.groups(), (3600, 60, 1)) if n) if match else 0.0
        if seconds > 0:
            return Since(last=seconds)
    raise OptionError(f"since must be a stretch back from now ('-90s', '-5m', '-1h', '-1m30s') or a stream time in "
                      f"seconds ('120'), got {value!r:.60}")


def _argument(text: str) -> Since:
    try:
        return parse_since(text)
    except OptionError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("since ")) from None


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Register ``--since`` (parsed to a :class:`Since`; absent: None, the whole stream)."""
    # argparse takes '-5m' for an option unless it looks like a negative number; Python 3.13's own test is this one
    parser._negative_number_matcher = re.compile(r"-\.?\d")
    parser.add_argument("--since", type=_argument, default=None, metavar="RANGE", help=HELP)
