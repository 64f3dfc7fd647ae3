"""What every published long-video benchmark shares: samples read from the files a benchmark distributes, the
published sampling and pre-fill settings, the model-side prompt rewrite, and scoring from saved answers.

A task reads its annotation files into :class:`Sample` objects (the exact user text the published harness sends
after the video, the gold answer, the categories it is scored in) and :class:`Skipped` entries for rows that
cannot be used (a missing video, a malformed row): those are counted and listed, never dropped silently. Scoring
works on plain dict rows (``pred`` is the model's answer text), so the same code scores a fresh run, a saved
``--rows`` file and an lmms-eval per-sample log.

References: the Video-XL-2 evaluation harness (VectorSpaceLab/Video-XL, ``Video-XL-2/eval/lvu/{pure,w_chunk,
w_chunk_bilevel}``: ``lmms_eval/models/videoxl2.py`` builds the ChatML prompt, rewrites ``mm:ss`` times and looks
up selection files; ``scripts/*.sh`` hold the frame caps and pre-fill settings) and the Video-XL-2 paper (arXiv 2506.19225).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ...question import convert_times

SYSTEM_PROMPT = "You are a helpful assistant."
# no stop strings: the published harness pops lmms-eval's ``until`` ("\n\n") from the generation arguments and
# stops only at ``<|im_end|>`` (its KeywordsStoppingCriteria on the conversation separator), EOS or the token limit
STOP: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """A benchmark's published evaluation settings (VectorSpaceLab/Video-XL ``eval/lvu/*/scripts``)."""

    max_frames: int
    fps: float = 1.0
    max_fps: float = 4.0
    max_new_tokens: int = 16
    chunked: tuple[int, int] = (4, 3)  # (pre-fill chunk in groups, previous chunks seen) of the chunked run
    bilevel: tuple[int, int] = (4, 3)  # the same for the bi-level run (block_size_chosed, prev_blocks_num)
    chunked_frames: int | None = None  # a different frame cap of the published chunked run, if any

    def frames(self, mode: str) -> int:
        return self.chunked_frames if mode == "chunked" and self.chunked_frames else self.max_frames


@dataclass(frozen=True)
class Sample:
    """One question of a benchmark, ready to run."""

    task: str
    id: str
    video: str
    question: str  # the user text after the video, byte for byte as the published harness sends it
    gold: object  # a letter, or [start, end] seconds for grounding
    categories: dict = field(default_factory=dict)  # e.g. {"task_type": "needle"}; list values = several labels
    selection_key: str | None = None  # "<video file>_<question>" as the published selection files key it
    doc: dict = field(default_factory=dict, compare=False)  # what scoring needs beyond gold (e.g. options)
    subtitles: tuple = ()  # (start s, end s, text) spans to interleave with the frames, in the published order


@dataclass(frozen=True)
class Skipped:
    """An annotation row that could not be run, and why."""

    task: str
    id: str
    reason: str

    def row(self, run: str) -> dict:
        return {"task": self.task, "id": self.id, "run": run, "skipped": self.reason}


def chat_prompt(question: str, system: str = SYSTEM_PROMPT) -> str:
    """The whole ChatML prompt (qwen_1_5 template), ``<image>`` standing for the timestamped video tokens."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<image>\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n")


class Task:
    """A benchmark: reading its files, extracting and scoring answers, aggregating like its official code."""

    name: str = ""
    settings: Settings = Settings(max_frames=256)
    metric: str = "accuracy"
    hub: HubData | None = None  # the benchmark's Hugging Face dataset repository, when --data is not given
    selection_field: str | None = None  # the category field the published selection files are keyed by

    def selection_category(self, categories: dict) -> str | None:
        """The sample's category as the published selection files name it (a list value: its first label, as
        ``Video-XL-2/eval/lvu/w_chunk_bilevel/merge_results.py`` groups LVBench's question types)."""
        value = categories.get(self.selection_field) if self.selection_field else None
        if isinstance(value, list):
            value = value[0] if value else None
        return None if value is None else str(value)

    def read(self, data: Path, *, subtitles: bool = False) -> tuple[list[Sample], list[Skipped]]:
        raise NotImplementedError

    def score(self, pred: str, sample: dict) -> tuple[object, float]:
        """(parsed answer, score) of the answer text ``pred`` for a sample (a row with ``gold`` and ``doc``)."""
        raise NotImplementedError

    def from_lmms_doc(self, doc: dict) -> dict:
        """An lmms-eval per-sample ``doc`` as a row stub: ``id``, ``gold``, ``categories``, ``doc``."""
        raise NotImplementedError

    def summarize(self, rows: list[dict]) -> dict:
        """Metrics over scored rows: ``score`` (the headline), ``categories`` {field: {label: {n, score}}}."""
        return {"metric": self.metric, "score": _mean_pct(r["score"] for r in rows), "n": len(rows),
                "categories": by_category(rows)}


def _mean_pct(values: Iterable[float]) -> float | None:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else None


def by_category(rows: list[dict], keep=lambda row: True) -> dict:
    """{field: {label: {"n", "score"}}} over the rows' categories; a list value counts the row under each label."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if not keep(row):
            continue
        for key, value in row.get("categories", {}).items():
            for label in value if isinstance(value, list) else [value]:
                acc[key][str(label)].append(row["score"])
    return {key: {label: {"n": len(v), "score": _mean_pct(v)} for label, v in sorted(labels.items())}
            for key, labels in acc.items()}


@dataclass(frozen=True)
class HubData:
    """Where a benchmark's files are on the Hugging Face hub (a dataset repository) and which of them a run needs:
    glob patterns (``snapshot_download``'s ``allow_patterns``) for the annotations, the videos and the subtitles.
    Archives among them (``.zip``, ``.tar``, ``.tar.part.*``) are unpacked; ``root`` is the repository folder that
    then has the ``--data`` layout. ``videos_elsewhere`` says where the videos are when the repository lacks them."""

    repo: str
    annotations: tuple[str, ...]
    videos: tuple[str, ...] = ()
    subtitles: tuple[str, ...] = ()
    root: str = ""
    videos_elsewhere: str = ""


def interleave(spans: Iterable[tuple[float, float, str]], frame_times: list[float],
               group_times: list[float]) -> tuple[list[list[str]], list[str]]:
    """Subtitle spans (start, end, text) placed among 4-frame groups: (lines before each group, lines after the last).

    LongVideoBench's published rule (``insert_subtitles_into_frames`` in longvideobench/LongVideoBench
    ``longvideobench/longvideobench_dataset.py``) at group granularity: a line comes after every group stamped at
    or before its midpoint, and is kept only if a sampled frame lies strictly inside its span (widened to one second
    around the midpoint when shorter). See ``tasks/longvideobench.py`` for the mapping onto Video-XL-2's groups."""
    before: list[list[str]] = [[] for _ in group_times]
    after: list[str] = []
    g = 0
    for start, end, text in spans:
        middle = (start + end) / 2
        while g < len(group_times) and group_times[g] <= middle:
            g += 1
        if end - start < 1:
            start, end = middle - 0.5, middle + 0.5
        if any(start < t < end for t in frame_times):
            (before[g] if g < len(group_times) else after).append(text)
    return before, after


def group_texts(before: list[list[str]]) -> list[str]:
    """The text pre-filled before each group's ``Time {t}s:`` stamp ("" for none)."""
    return [("\n" if g else "") + "\n".join(lines) + "\n" if lines else "" for g, lines in enumerate(before)]


def question_after(after: list[str], question: str) -> str:
    """The question text, opened by the subtitle lines that come after the last group."""
    return "".join(f"{line}\n" for line in after) + question


def interleaved(sample: Sample, frame_times: list[float], group_times: list[float]) -> tuple[list[str] | None, str]:
    """(text pre-filled before each group's stamp, None without subtitles; the question asked after the video) of a
    sample on these frames. Subtitle text gets the published ``mm:ss`` rewrite, as the whole published prompt does."""
    if not sample.subtitles:
        return None, sample.question
    spans = [(start, end, convert_times(text)) for start, end, text in sample.subtitles]
    before, after = interleave(spans, frame_times, group_times)
    return group_texts(before), question_after(after, sample.question)


def find_video(data: Path, names: Iterable[str], folders: Iterable[str]) -> Path | None:
    """The first existing ``data/folder/name`` (folders in order, "" for ``data`` itself)."""
    for folder in folders:
        for name in names:
            path = data / folder / name
            if path.is_file():
                return path
    return None


def read_json(path: Path) -> object:
    return json.loads(path.read_text(encoding="utf-8"))


def missing_video(task: str, sid: str, wanted: str) -> Skipped:
    return Skipped(task, sid, f"video not found: {wanted}")
