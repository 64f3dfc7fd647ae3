"""The question's text before the model sees it: the published rewrite of mm:ss times (videoxl/question.py)."""

import pytest

from videoxl.question import convert_times


@pytest.mark.parametrize("text,expected", [
    ("from 01:30 to 12:05, again 01:30", "from 90 seconds to 725 seconds, again 90 seconds"),
    ("What happens at 00:00?", "What happens at 0 seconds?"),
    ("between 00:15-00:19", "between 15 seconds-19 seconds"),  # a range, as LVBench writes time references
    ("at 75:30", "at 4530 seconds"),  # minutes past an hour are still minutes
    ("01:02:03", "62 seconds:03"),  # hh:mm:ss is read as mm:ss, then ":03" (published)
    ("123:45", "11425 seconds"),  # two digits each side, wherever they are: "1" + 23:45
])
def test_mm_ss_times_become_seconds_as_published(text, expected):
    assert convert_times(text) == expected


@pytest.mark.parametrize("text", [
    "at 1:30",  # one digit for the minutes
    "a 3:2 ratio", "Time 4.0s:", "at 12.5 seconds", "ratio 10: 20", "no time here", "",
])
def test_text_without_mm_ss_is_unchanged(text):
    assert convert_times(text) == text



def test_every_question_the_model_sees_is_rewritten():
    """``ask``, the server and ``Session.ask`` all tokenize through ``question_ids``: the rewrite happens there, once
    (it is idempotent, so an eval prompt rewritten before stays byte-equal)."""
    from videoxl import DEFAULT_MODEL
    from videoxl.model import checkpoint
    from videoxl.model.videoxl2 import question_ids

    tokenizer = checkpoint.load_tokenizer(DEFAULT_MODEL)
    asked = question_ids(tokenizer, "What appears between 01:30-02:00?")
    assert asked.tolist() == question_ids(tokenizer, "What appears between 90 seconds-120 seconds?").tolist()
    assert convert_times(convert_times("at 01:30")) == convert_times("at 01:30")
