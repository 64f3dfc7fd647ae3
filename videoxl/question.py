"""A question's text before the model sees it: checks that need no model (a bad question is refused before
anything is loaded), and the published rewrite of ``mm:ss`` times."""

from __future__ import annotations

import re

from .errors import OptionError


def check_question_text(question: str) -> str:
    """Return ``question`` if it is non-empty, valid UTF-8 text; OptionError saying what is wrong if not."""
    if not isinstance(question, str):
        raise OptionError(f"the question must be text, got {type(question).__name__}")
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as e:  # bytes that were not UTF-8, smuggled in through argv's surrogate escapes
        raise OptionError(f"the question is not valid UTF-8 text (undecodable bytes at character {e.start}: "
                          f"{question[max(0, e.start - 20):e.start]!r}...)") from None
    if not question.strip():
        raise OptionError("the question is empty")
    return question



_MMSS = re.compile(r"(\d{2}:\d{2})")


def convert_times(text: str) -> str:
    """``text`` with every ``mm:ss`` time spelled out in seconds: ``"at 01:30"`` -> ``"at 90 seconds"``.

    The published Video-XL-2 harness applies this rewrite to every prompt before tokenizing it
    (``convert_time_in_prompt`` in VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/*/lmms_eval/models/videoxl2.py``):
    the model was evaluated on such prompts, and its timestamp tokens count seconds (``Time 90.0s:``). The rule is
    the published one, quirks included, so prompts stay byte-equal to the published runs:

    * exactly two digits on each side of a colon, anywhere: ``1:30`` is left alone, the ``23:45`` in ``123:45``
      is rewritten (``"11425 seconds"``), and so is the ``12:34`` in ``12:345`` (``"754 seconds5"``);
    * minutes may exceed 59 and seconds are not checked (``99:99`` -> ``"6039 seconds"``);
    * a range ``00:15-00:19`` -> ``"15 seconds-19 seconds"``; ``hh:mm:ss`` is read as ``mm:ss`` then ``:ss``
      (``01:02:03`` -> ``"62 seconds:03"``);
    * text without such a time is returned unchanged.
    """
    for original in _MMSS.findall(text):
        minutes, seconds = map(int, original.split(":"))
        text = text.replace(original, f"{minutes * 60 + seconds} seconds")
    return text
