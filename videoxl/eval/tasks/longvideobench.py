"""LongVideoBench (validation set): accuracy overall and per duration group and question category.

Files (the ``longvideobench/LongVideoBench`` dataset card): ``lvb_val.json``, a list of ``{"id", "video_id",
"video_path", "question", "candidates", "correct_choice", "duration_group", "question_category", "subtitle_path",
"starting_timestamp_for_subtitles", "duration", ...}`` (the dataset's parquet spells the options ``option0`` ..
``option4``, "N/A" when absent; both are read), the videos in ``videos/<video_path>`` and, for ``--subtitles``, the
subtitles in ``subtitles/<subtitle_path>``. Without ``--data`` the files come from that (gated) dataset repository:
``lvb_val.json``, ``videos.tar.part.*`` (one tar in parts) and ``subtitles.tar``.

Prompt and scoring as the published run (VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/*/lmms_eval/tasks/
longvideobench/utils.py`` and ``longvideobench_val_v*.yaml``, from lmms-eval's ``longvideobench`` task):
``"{question}\nA. ...\nB. ...\nAnswer with the option's letter from the given choices directly.\n"``, 32 new
tokens at most. The answer is the first of A-E once the listed answer prefixes are removed; where there is none the
published code picks a random option, here drawn from a generator seeded with the question's id so that reruns and
rescoring agree. The published aggregate (instances weighted over duration groups and categories) equals the
pooled accuracy. Frames: at most 400; the chunked (w_chunk) run used 6-group chunks seeing 5 previous ones
(``Video-XL-2/eval/lvu/w_chunk/scripts/longvideobench.sh``), the bi-level run 4 and 3 (``scripts/longvideobench.sh``).
The published selection file (``w_chunk_bilevel/selected_infos/longvideobench.json``) is keyed by
``question_category`` ("E2O", ...).

Subtitles (``--subtitles``) are interleaved with the frames in time order as the benchmark's own loader
(longvideobench/LongVideoBench ``longvideobench/longvideobench_dataset.py``, ``insert_subtitles_into_frames``) and
lmms-eval's ``longvideobench_val_i`` task (``lmms_eval/tasks/longvideobench/utils.py``) do it: each entry of the
subtitle file (``{"timestamp": [start, end], "text"}``, where an end that is not a float stands for the video's
duration, or ``{"start": "hh:mm:ss.ms", "end", "line"}``), shifted by ``starting_timestamp_for_subtitles`` (that
duration too, as published), comes after the frames
shown at or before its midpoint, and is kept only if a frame lies strictly inside its span (widened to one second
around the midpoint when shorter); lines are separated by newlines. Video-XL-2 reads frames in 4-frame groups, each
after its ``Time {t}s:`` stamp, so here (Video-XL-2 published no run with subtitles; this mapping is videoxl's):

* the frames are the published Video-XL-2 sampling (1 fps, at most 4 fps, at most 400), not the uniform grid over
  the annotated duration that lmms-eval's interleaved task assumes;
* a subtitle goes before the first group whose stamp is later than its midpoint (the published frame rule applied
  to the group stamps), as ``"\n{line}\n"`` after the previous group's visual tokens (``"{line}\n"`` before the
  first group, right after the prompt prefix); lines after the last group open the question text (``"{line}\n"``
  before it, as the published ``<image>\n{line}\n{question}``);
* the subtitle tokens are pre-filled with the timestamp tokens of the group they precede, so like those they are
  seen by every later chunk and stay dense in bi-level decoding (text is not pooled);
* a question whose subtitle file is missing or unreadable is skipped and listed (the published loader stops).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from .base import HubData, Sample, Settings, Skipped, Task, convert_times, find_video, missing_video, read_json

POST_PROMPT = "Answer with the option's letter from the given choices directly.\n"
ANSWER_PREFIXES = ["The best answer is", "The correct answer is", "The answer is", "The answer",
                   "The best option is", "The correct option is", "Best answer:", "Best option:"]


def candidates_of(row: dict) -> list[str]:
    if "candidates" in row:
        return [str(c) for c in row["candidates"]]
    return [str(row[f"option{i}"]) for i in range(5) if row.get(f"option{i}", "N/A") != "N/A"]


def extract(pred: str, choices: list[str], seed: str) -> str:
    s = pred.strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return random.Random(seed).choice(choices)
    match = re.search(r"[ABCDE]", s)
    return random.Random(seed).choice(choices) if match is None else match[0]


def seconds(stamp: str) -> float:
    """``"hh:mm:ss.ms"`` in seconds (``timestamp_to_seconds`` of the published loader)."""
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def read_subtitles(path: Path, offset: float, duration: float) -> tuple[tuple[float, float, str], ...]:
    """(start, end, text) of each entry of a LongVideoBench subtitle file, in video seconds, in file order; ValueError
    (or OSError) when it cannot be read."""
    entries = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError("not a JSON list of subtitles")
    spans = []
    for entry in entries:
        if "timestamp" in entry:
            start, end = entry["timestamp"]
            end = end if isinstance(end, float) else duration  # as published: an int or null end is the duration
            text = entry["text"]
        else:
            start, end, text = seconds(entry["start"]), seconds(entry["end"]), entry["line"]
        spans.append((float(start) - offset, float(end) - offset, str(text)))
    return tuple(spans)


class LongVideoBench(Task):
    name = "longvideobench"
    settings = Settings(max_frames=400, max_new_tokens=32, chunked=(6, 5))
    hub = HubData("longvideobench/LongVideoBench", annotations=("lvb_val.json",), videos=("videos.tar.part.*",),
                  subtitles=("subtitles.tar",))
    selection_field = "question_category"

    def read(self, data: Path, *, subtitles: bool = False) -> tuple[list[Sample], list[Skipped]]:
        path = data / "lvb_val.json"
        if not path.is_file():
            from ...errors import InputError

            raise InputError(f"{data}: no lvb_val.json (the LongVideoBench validation annotations)")
        samples, skipped = [], []
        for i, row in enumerate(read_json(path)):
            sid = str(row.get("id", f"lvb_val.json:{i}")) if isinstance(row, dict) else f"lvb_val.json:{i}"
            try:
                choices = candidates_of(row)
                gold = chr(ord("A") + int(row["correct_choice"]))
                assert 2 <= len(choices) <= 5 and 0 <= int(row["correct_choice"]) < len(choices)
                video_path, question = str(row["video_path"]), row["question"]
                categories = {"duration_group": row["duration_group"], "question_category": row["question_category"]}
                assert isinstance(question, str)
            except (KeyError, TypeError, ValueError, AssertionError):
                skipped.append(Skipped(self.name, sid, "malformed row (needs question, candidates, correct_choice, "
                                                       "video_path, duration_group, question_category)"))
                continue
            video = find_video(data, [video_path], ["videos", ""])
            if video is None:
                skipped.append(missing_video(self.name, sid, f"videos/{video_path}"))
                continue
            spans: tuple = ()
            if subtitles:
                name = str(row.get("subtitle_path") or "")
                try:
                    if not name:
                        raise ValueError("the row has no subtitle_path")
                    spans = read_subtitles(data / "subtitles" / name, float(row["starting_timestamp_for_subtitles"]),
                                           float(row["duration"]))
                except FileNotFoundError:
                    skipped.append(Skipped(self.name, sid, f"subtitle file not found: subtitles/{name}"))
                    continue
                except (OSError, ValueError, KeyError, TypeError) as e:
                    skipped.append(Skipped(self.name, sid, f"unreadable subtitles subtitles/{name} "
                                                           f"({type(e).__name__}: {e})"))
                    continue
            text = question + "\n" + "\n".join(f"{chr(ord('A') + j)}. {c}" for j, c in enumerate(choices))
            raw = f"{text}\n{POST_PROMPT}"
            samples.append(Sample(self.name, sid, str(video), convert_times(raw), gold, categories,
                                  selection_key=f"{Path(video_path).name}_{raw.split(chr(10) + 'A.')[0]}",
                                  doc={"choices": [chr(ord("A") + j) for j in range(len(choices))]},
                                  subtitles=spans))
        return samples, skipped

    def score(self, pred: str, sample: dict) -> tuple[object, float]:
        parsed = extract(pred, sample["doc"]["choices"], str(sample["id"]))
        return parsed, float(parsed == sample["gold"])

    def from_lmms_doc(self, doc: dict) -> dict:
        choices = candidates_of(doc)
        return {"id": str(doc["id"]), "gold": chr(ord("A") + int(doc["correct_choice"])),
                "categories": {"duration_group": doc["duration_group"], "question_category": doc["question_category"]},
                "doc": {"choices": [chr(ord("A") + j) for j in range(len(choices))]}}
