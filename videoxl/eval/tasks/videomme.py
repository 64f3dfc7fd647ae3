"""Video-MME: accuracy overall and per duration (short, medium, long), domain, sub-category and task type.

Files: the parquet of the ``lmms-lab/Video-MME`` dataset (``videomme/test-00000-of-00001.parquet``; columns
``video_id, duration, domain, sub_category, url, videoID, question_id, task_type, question, options, answer``),
the videos as ``data/<videoID>.mp4`` (or ``.MP4``/``.mkv``, as the lmms-eval task looks them up) and, for
``--subtitles``, ``subtitle/<videoID>.srt``. Reading parquet needs pyarrow; the same rows as a JSON list or JSON
lines file are read without it.

Prompt and scoring as the published run (VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/*/lmms_eval/tasks/videomme/
utils.py`` and ``videomme_*.yaml``, which follow lmms-eval's ``videomme`` task): the options are written as the
Python list ``str(doc["options"])``; without subtitles the post-prompt is "\\nAnswer with the option's letter from
the given choices directly."; with subtitles the text of the subtitles shown at 128 evenly spaced frames comes
first and the prompt ends "The best answer is:". The answer is the first of A-D after the listed answer prefixes
are removed (two of them run together, a missing comma in the published list, kept as published). Frames: at most
400 (``scripts/videomme.sh``), 300 in the chunked run (``Video-XL-2/eval/lvu/w_chunk/scripts/videomme.sh``).
The published selection files (``w_chunk_bilevel/selected_infos/videomme/videomme_{short,medium,long}.json``) are
keyed by ``task_type`` ("Action Recognition", ...), the field ``merge_results.py`` reports per task type. Without
``--data`` the files come from the dataset repository ``lmms-lab/Video-MME``: the parquet, ``videos_chunked_*.zip``
(unpacked into ``data/``) and, with ``--subtitles``, ``subtitle.zip`` (``subtitle/``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .base import HubData, Sample, Settings, Skipped, Task, convert_times, find_video, missing_video

OPTION_PROMPT = ("Select the best answer to the following multiple-choice question based on the video and the "
                 "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
SUBTITLE_FRAMES = 128  # frame_num of videomme_w_subtitle.yaml
ANSWER_PREFIXES = ["The best answer is", "The correct answer is", "The answer is", "The answer",
                   "The best option is" "The correct option is", "Best answer:" "Best option:"]
FIELDS = ("videoID", "question_id", "duration", "domain", "sub_category", "task_type", "question", "options", "answer")


def extract(pred: str) -> str:
    s = pred.strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    match = re.search(r"[ABCD]", s)
    return "" if match is None else match[0]


def read_rows(path: Path) -> list[dict]:
    """The annotation rows from a parquet file (pyarrow), a JSON list or JSON lines."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            from ...errors import InputError

            raise InputError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or give the same rows "
                             "as a .json or .jsonl file") from None
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def srt_subtitles(path: Path) -> list[tuple[float, float, str]]:
    """(start s, end s, text) of each block of an .srt file, as the published ``load_subtitles`` reads it."""
    def seconds(stamp: str) -> float:
        h, m, s_ms = stamp.split(":")
        s, ms = s_ms.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    blocks = {}
    for section in path.read_text(encoding="utf-8").split("\n\n"):
        lines = section.split("\n")
        if section.strip() and len(lines) >= 3:
            start, end = lines[1].split(" --> ")
            blocks[(seconds(start), seconds(end))] = " ".join(lines[2:])
    return [(s, e, t) for (s, e), t in blocks.items()]


def subtitle_text(video: Path, srt: Path) -> str:
    """The subtitles shown at 128 evenly spaced frames, their ``<font ...>`` text one per line."""
    from ...video import probe

    info = probe(video)
    total = info.frames
    duration = info.pts[-1] - info.pts[0]
    fps = (total - 1) / (duration * info.time_base) if duration > 0 else 1.0
    spans = [(int(s * fps), int(e * fps), t) for s, e, t in srt_subtitles(srt)]
    shown = set()
    for frame in np.linspace(0, total - 1, SUBTITLE_FRAMES, dtype=int).tolist():
        shown.update(i for i, (s, e, _) in enumerate(spans) if s <= frame < e)
    texts = []
    for i in sorted(shown):
        found = re.findall(r'<font color="white" size=".72c">(.*?)</font>', spans[i][2])
        if found:
            texts.append(found[0])
    return "\n".join(texts)


class VideoMME(Task):
    name = "videomme"
    settings = Settings(max_frames=400, chunked_frames=300)
    hub = HubData("lmms-lab/Video-MME", annotations=("videomme/test-*.parquet",), videos=("videos_chunked_*.zip",),
                  subtitles=("subtitle.zip",))
    selection_field = "task_type"

    def read(self, data: Path, *, subtitles: bool = False) -> tuple[list[Sample], list[Skipped]]:
        files = (sorted(data.glob("**/*.parquet")) or sorted(data.glob("*.jsonl")) or sorted(data.glob("*.json")))
        if not files:
            from ...errors import InputError

            raise InputError(f"{data}: no Video-MME annotation file (videomme/test-00000-of-00001.parquet)")
        samples, skipped = [], []
        for path in files:
            for i, row in enumerate(read_rows(path)):
                sid = str(row.get("question_id") or f"{path.name}:{i}") if isinstance(row, dict) else f"{path.name}:{i}"
                try:
                    assert all(k in row for k in FIELDS) and row["answer"] in "ABCD" and len(row["answer"]) == 1
                    options = [str(o) for o in row["options"]]
                    assert options and isinstance(row["question"], str)
                except (AssertionError, TypeError):
                    skipped.append(Skipped(self.name, sid, f"malformed row (needs {', '.join(FIELDS)}; answer A-D)"))
                    continue
                vid = str(row["videoID"])
                video = find_video(data, [f"{vid}.mp4", f"{vid}.MP4", f"{vid}.mkv"], ["data", "videos", "video", ""])
                if video is None:
                    skipped.append(missing_video(self.name, sid, f"data/{vid}.mp4"))
                    continue
                question = row["question"] + "\n" + str(options)
                if subtitles:
                    srt = data / "subtitle" / f"{vid}.srt"
                    text = subtitle_text(video, srt) if srt.is_file() else "No subtitles available"
                    raw = ("This video's subtitles are listed below: \n" + text + "\n" + OPTION_PROMPT + "\n"
                           + question + "\n" + "The best answer is:")
                    key = raw.split("Respond with only the letter (A, B, C, or D) of the correct option.\n")[-1]
                    key = key.split("\n[")[0]
                else:
                    raw = OPTION_PROMPT + "\n" + question + "\n" + POST_PROMPT
                    key = raw.split("\n[")[0].split("option.\n")[-1]
                samples.append(Sample(self.name, sid, str(video), convert_times(raw), row["answer"],
                                      {k: row[k] for k in ("duration", "domain", "sub_category", "task_type")},
                                      selection_key=f"{video.name}_{key}"))
        return samples, skipped

    def score(self, pred: str, sample: dict) -> tuple[object, float]:
        parsed = extract(pred)
        return parsed, float(parsed == sample["gold"])

    def from_lmms_doc(self, doc: dict) -> dict:
        return {"id": str(doc["question_id"]), "gold": doc["answer"],
                "categories": {k: doc[k] for k in ("duration", "domain", "sub_category", "task_type")}}
