"""A deterministic generator of synthetic long videos with known events and question-answer pairs."""

from .questions import FAMILIES, QA, group_time, is_correct, make_qa
from .video import write
from .world import WORDS, Event, Scene, Script, render

__all__ = ["Script", "Scene", "Event", "QA", "FAMILIES", "WORDS", "make_qa", "is_correct", "render", "write",
           "group_time"]
