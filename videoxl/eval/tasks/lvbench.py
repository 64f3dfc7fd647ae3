"""LVBench: accuracy overall, per question type (a question may have several) and per video type.

Files (THUDM/LVBench and its dataset card): ``video_info.meta.jsonl``, one video per line, ``{"key", "type",
"qa": [{"uid", "question": "stem\\n(A) ...\\n(B) ...", "answer": "B", "question_type": [...],
"time_reference"}], ...}``, and the videos as ``videos/<key>.mp4`` (or ``all_videos/``).

Prompt and scoring as the published run (VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/*/lmms_eval/tasks/lvbench/
utils.py`` and ``lvbench_*.yaml``; its own copy of LVBench holds the stem and the candidates apart):
``"{stem}\\nA. (A) ...\\nB. (B) ...\\nAnswer with the option's letter from the given choices directly."``: each
candidate of that copy keeps its ``(A)`` letter (``"candidates": ["(A) 1636", ...]``), so both letters show, as
in the published per-sample logs (``pure/logs/videoxl2-lvbench/*/lvbench_*.json``). An answer is
normalised by ``mcq_acc`` (kept as published, including its period regex and the ``count`` passed as ``flags``)
and compared with the gold letter; empty answers are left out of the published aggregate, so they are counted and
reported here (``excluded_empty``), not hidden. Frames: at most 600; chunks see 11 previous ones
(``scripts/lvbench.sh``). The published selection files (``w_chunk_bilevel/selected_infos/lvbench/lvbench_<video
type>.json``) are keyed by LVBench's question types ("event understanding", ...); a question with several is taken
to be in the category of its first (an assumption: the files do not say; ``w_chunk_bilevel/merge_results.py``
groups scores by ``doc["question_type"][0]``). The
dataset repository ``THUDM/LVBench`` holds ``video_info.meta.jsonl`` but not the videos, so ``--data`` is needed.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from .base import (HubData, Sample, Settings, Skipped, Task, _mean_pct, by_category, convert_times, find_video,
                   missing_video)

POST_PROMPT = "Answer with the option's letter from the given choices directly."
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or (re.search(COMMA_STRIP, text) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, re.UNICODE)  # re.UNICODE lands in ``count``, as published


def normalise(answer: str) -> str:
    match = re.match(r"^([A-E])\.\s*(.+)$", answer.strip(), re.IGNORECASE)
    if match:
        return match.group(1).upper()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    answer = _punctuation(answer)
    answer = answer.strip("'").strip('"').strip(")").strip("(").strip().lower()
    letter = re.search(r"\b([A-E])\b", answer, re.IGNORECASE)
    return letter.group(1).upper() if letter else answer


def split_question(question: str) -> tuple[str, list[str]]:
    """("stem", [candidates]) of an LVBench question "stem\\n(A) a\\n(B) b...". A candidate keeps its letter
    ("(A) a"), as in the published harness's copy of LVBench, whose prompts therefore read ``A. (A) a``."""
    parts = re.split(r"\n(?=\([A-Z]\))", question)
    stem, candidates = parts[0], parts[1:]
    letters = [c[1] for c in candidates]
    if len(candidates) < 2 or letters != list(string.ascii_uppercase[: len(candidates)]):
        raise ValueError("options are not (A), (B), ... lines")
    return stem, candidates


class LVBench(Task):
    name = "lvbench"
    settings = Settings(max_frames=600, chunked=(4, 11), bilevel=(4, 11))
    hub = HubData("THUDM/LVBench", annotations=("video_info.meta.jsonl",),
                  videos_elsewhere="the videos are downloaded from YouTube with the benchmark's own script, "
                                   "github.com/THUDM/LVBench")
    selection_field = "question_type"

    def read(self, data: Path, *, subtitles: bool = False) -> tuple[list[Sample], list[Skipped]]:
        path = next((p for p in (data / "video_info.meta.jsonl", data / "data" / "video_info.meta.jsonl")
                     if p.is_file()), None)
        if path is None:
            from ...errors import InputError

            raise InputError(f"{data}: no video_info.meta.jsonl (the LVBench annotations)")
        samples, skipped = [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                video_row = json.loads(line)
                key, kind, qas = str(video_row["key"]), video_row["type"], list(video_row["qa"])
            except (ValueError, KeyError, TypeError):
                skipped.append(Skipped(self.name, f"line {n}", "malformed line (needs key, type and qa)"))
                continue
            video = find_video(data, [f"{key}.mp4"], ["videos", "all_videos", "video", ""])
            for j, qa in enumerate(qas):
                sid = str(qa.get("uid", f"{key}:{j}")) if isinstance(qa, dict) else f"{key}:{j}"
                try:
                    stem, options = split_question(qa["question"])
                    gold = qa["answer"]
                    types = qa["question_type"]
                    assert gold in string.ascii_uppercase[: len(options)] and len(gold) == 1
                except (KeyError, TypeError, ValueError, AssertionError):
                    skipped.append(Skipped(self.name, sid, "malformed question (needs question with (A).. options, "
                                                           "answer letter, question_type)"))
                    continue
                if video is None:
                    skipped.append(missing_video(self.name, sid, f"videos/{key}.mp4"))
                    continue
                raw = stem + "\n" + "".join(f"{string.ascii_uppercase[i]}. {o}\n" for i, o in enumerate(options)) \
                    + POST_PROMPT
                samples.append(Sample(self.name, sid, str(video), convert_times(raw), gold,
                                      {"question_type": list(types) if isinstance(types, list) else [types],
                                       "video_type": kind},
                                      selection_key=f"{video.name.split('.mp4')[0]}_{raw.split(chr(10) + 'A.')[0]}"))
        return samples, skipped

    def score(self, pred: str, sample: dict) -> tuple[object, float]:
        parsed = normalise(pred)
        gold = sample["gold"]
        return parsed, float(gold is not None and parsed == normalise(gold))

    def from_lmms_doc(self, doc: dict) -> dict:
        letters = string.ascii_uppercase
        gold = next((letters[i] for i, c in enumerate(doc["candidates"]) if c == doc["answer"]), None)
        categories = {"video_type": doc.get("type", doc.get("video_type", "all"))}
        if "question_type" in doc:
            categories["question_type"] = doc["question_type"]
        return {"id": str(doc.get("uid", doc.get("question"))), "gold": gold, "categories": categories}

    def summarize(self, rows: list[dict]) -> dict:
        answered = [r for r in rows if r.get("pred", "") != ""]
        return {"metric": self.metric, "score": _mean_pct(r["score"] for r in answered), "n": len(answered),
                "excluded_empty": len(rows) - len(answered),
                "categories": by_category(answered)}
