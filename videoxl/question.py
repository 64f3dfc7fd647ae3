"""Checks of a question's text that need no model, so a bad question is refused before anything is loaded."""

from __future__ import annotations

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
