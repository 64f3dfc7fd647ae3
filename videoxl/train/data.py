"""Training samples: synthetic clips with questions (a pure function of seed and index), or a JSONL of real
videos with questions and answers."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..synth import make_qa, render
from ..synth.questions import GROUP
from ..video import decode_frames, plan_frames, probe
from .recipe import Stage


@dataclass
class TrainSample:
    """Frames (4 per group), the group timestamps, and one question with its answer."""

    frames: list[np.ndarray]
    group_times: list[float]
    question: str
    answer: str
    family: str = ""
    group_targets: list[str] | None = None  # what each group shows, for the dense caption loss


def group_targets(script, groups: int) -> list[str]:
    """One word per group saying what it shows: the object, else "word" for a word card, else "star", else the
    shape's colour."""
    out = []
    for g in range(groups):
        frames = set(range(GROUP * g, GROUP * g + GROUP))
        seen = {e.kind: e.word for e in script.events if len(frames & set(range(e.start, e.end))) >= 2}
        star = any(e.kind == "star" and frames & set(range(e.start, e.end)) for e in script.events)
        out.append(seen["object"] if "object" in seen else "word" if "word" in seen else "star" if star
                   else script.scene_at(GROUP * g + 2).colour)
    return out


class SyntheticData:
    """Clips from :mod:`videoxl.synth`; sample ``index`` of stage ``stage_index`` is the same on every machine, so
    a resumed run sees exactly the data it would have seen. ``split`` keeps training and evaluation apart."""

    def __init__(self, seed: int = 0, fps: float = 4.0, size: int = 64, split: str = "train"):
        self.seed, self.fps, self.size, self.split = seed, fps, size, split

    def sample(self, stage: Stage, stage_index: int, index: int) -> TrainSample:
        rng = random.Random(f"{self.split}/{self.seed}/{stage_index}/{index}")
        groups = round(math.exp(rng.uniform(math.log(stage.min_groups), math.log(stage.max_groups + 0.999))))
        families = stage.families or {}
        family = rng.choices(list(families), weights=list(families.values()))[0] if families else None
        script, qa = make_qa(rng, groups * GROUP, self.fps, self.size, family)
        frames = [render(script, i) for i in range(script.frames)]
        times = [round(g * GROUP / self.fps, 1) for g in range(groups)]
        return TrainSample(frames, times, qa.question, qa.answer, qa.family, group_targets(script, groups))


class VideoQAFile:
    """Real data: a JSONL file of {"video": path, "question": ..., "answer": ...} lines (paths relative to it)."""

    def __init__(self, path: str | Path, fps: float = 1.0, max_fps: float = 4.0):
        self.path = Path(path)
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        if not self.rows:
            raise ValueError(f"{self.path}: no samples")
        self.fps, self.max_fps = fps, max_fps

    def sample(self, stage: Stage, stage_index: int, index: int) -> TrainSample:
        row = self.rows[index % len(self.rows)]
        info = probe(self.path.parent / row["video"])
        plan = plan_frames(info.frame_times, self.fps, self.max_fps, max_frames=stage.max_groups * GROUP)
        return TrainSample(list(decode_frames(info, plan.indices)), plan.group_times, row["question"], row["answer"])
