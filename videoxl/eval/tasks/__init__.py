"""The published long-video benchmarks, one module each: MLVU, Video-MME, LongVideoBench, LVBench, Charades-STA.

Each reads the files its benchmark distributes, builds the published prompts and scores answers as the benchmark's
official code does (see each module's docstring for its sources). ``videoxl/eval/benchmarks.py`` runs them.
"""

from __future__ import annotations

from .base import Sample, Settings, Skipped, Task, chat_prompt, convert_times
from .charades import CharadesSTA
from .longvideobench import LongVideoBench
from .lvbench import LVBench
from .mlvu import MLVU
from .videomme import VideoMME

TASKS: dict[str, Task] = {t.name: t for t in (MLVU(), VideoMME(), LongVideoBench(), LVBench(), CharadesSTA())}

__all__ = ["TASKS", "Task", "Sample", "Settings", "Skipped", "chat_prompt", "convert_times"]
