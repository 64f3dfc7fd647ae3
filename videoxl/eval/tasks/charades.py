"""Charades-STA (test): temporal grounding, mIoU and R@0.3/0.5/0.7 with the times parsed from the answer text.

Files (jiyanggao/TALL, the benchmark's release): ``charades_sta_test.txt``, one query per line,
``"<video> <start> <end>##<sentence>"``, and the videos as ``Charades_v1_480/<video>.mp4`` (or ``videos/``). The
copy lmms-eval's task reads (the dataset repository ``lmms-lab/charades_sta``, fetched when ``--data`` is not
given) is read too: ``data/test-*.parquet`` with ``video`` ("<id>.mp4"), ``caption`` and ``timestamp`` [start, end],
and ``Charades_v1_480_part_*.zip`` unpacked into ``Charades_v1_480/``.

Prompt and scoring as lmms-eval's ``charades_sta`` task (``lmms_eval/tasks/charades_sta/charades.yaml``,
``utils.py`` and ``eval_tvg.py``): the published pre-prompt, then the sentence (its final period dropped, as the
task's own copy of the data holds it), ". " and "Please return its start time and end time."; 50 new tokens at
most. ``extract_time`` reads "start - end" (or start/end sentences, or hh:mm:ss times; that last branch raises in
the published code, which indexes a tuple, and reads the time here) and keeps the first pair; an
answer without exactly one pair scores as the published fallback [end + 10, end + 20] (IoU 0). Video-XL-2 has not
published its grounding evaluation (its ``eval`` folder for it is a placeholder): frames here follow the others, 1 fps (up to 4 fps),
at most 256.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import HubData, Sample, Settings, Skipped, Task, convert_times, find_video, missing_video

PRE_PROMPT = ("Please find the visual event described by a sentence in the video, determining its starting and ending "
              "times. The format should be: 'The event happens in the start time - end time'. For example, The event "
              "'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the textual sentence: ")
POST_PROMPT = "Please return its start time and end time."
THRESHOLDS = (0.3, 0.5, 0.7)


def extract_time(paragraph: str) -> list[list[float]]:
    """At most one [start, end] read from an answer, as lmms-eval's ``eval_tvg.extract_time``."""
    example = "A specific example is : 20.8 - 30.0 seconds".lower()
    paragraph = paragraph.lower().replace(example, "").replace("to", "-")
    sentences = re.split(r"[!?\n]", paragraph)
    keywords = ["starts", "ends", "happens in", "start time", "end time", "start", "end", "happen"]
    candidates = [s for s in sentences if any(k in s for k in keywords)]
    timestamps: list = []
    matches = re.findall(r"(\d+\.*\d*)\s*-\s*(\d+\.*\d*)", paragraph)
    if matches:
        timestamps = [[float(s), float(e)] for s, e in matches]
    if not timestamps:
        times = []
        for sentence in candidates:
            found = re.findall(r"\b(\d+\.\d+\b|\b\d+)\b", sentence)
            if found:
                times.append(float(found[0]))
        times = times[: len(times) // 2 * 2]
        timestamps = [(times[i], times[i + 1]) for i in range(0, len(times), 2)]
    if not timestamps:
        times = []
        for sentence in candidates:
            found = re.findall(r"\b((\d{1,2}:\d{2}:\d{2}))\b", sentence)
            if not found:
                continue
            h, m, s = map(int, found[0][0].split(":"))
            times.append(h * 3600 + m * 60 + s)
        times = times[: len(times) // 2 * 2]
        timestamps = [(times[i], times[i + 1]) for i in range(0, len(times), 2)]
    results = [[s, e] if e > s else [e, s] for s, e in timestamps]
    return results[:1]


def iou(a, b) -> float:
    return max(min(a[1], b[1]) - max(a[0], b[0]), 0) / (max(a[1], b[1]) - min(a[0], b[0]))


class CharadesSTA(Task):
    name = "charades-sta"
    settings = Settings(max_frames=256, max_new_tokens=50)
    metric = "mIoU"
    hub = HubData("lmms-lab/charades_sta", annotations=("data/test-*.parquet",),
                  videos=("Charades_v1_480_part_*.zip",))

    def read(self, data: Path, *, subtitles: bool = False) -> tuple[list[Sample], list[Skipped]]:
        path = data / "charades_sta_test.txt"
        if path.is_file():
            return self._read_tall(data, path)
        tables = sorted(data.glob("data/test-*.parquet")) or sorted(data.glob("*.parquet"))
        if tables:
            return self._read_lmms(data, tables)
        from ...errors import InputError

        raise InputError(f"{data}: no charades_sta_test.txt (the Charades-STA test annotations) nor "
                         "data/test-*.parquet (lmms-lab/charades_sta)")

    def _sample(self, data: Path, sid: str, video: str, sentence: str, gold: list[float], key: str):
        path = find_video(data, [video], ["Charades_v1_480", "videos", ""])
        if path is None:
            return missing_video(self.name, sid, f"Charades_v1_480/{video}")
        return Sample(self.name, key, str(path), convert_times(f"{PRE_PROMPT}{sentence}. {POST_PROMPT}"), gold)

    def _read_tall(self, data: Path, path: Path) -> tuple[list[Sample], list[Skipped]]:
        samples, skipped = [], []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            sid = f"line {n}"
            try:
                head, sentence = line.split("##", 1)
                vid, start, end = head.split()
                gold = [float(start), float(end)]
                sentence = sentence.strip()
                sentence = sentence[:-1] if sentence.endswith(".") else sentence
                assert sentence and gold[1] > gold[0] >= 0
            except (ValueError, AssertionError):
                skipped.append(Skipped(self.name, sid, "malformed line (expected '<video> <start> <end>##<sentence>')"))
                continue
            item = self._sample(data, sid, f"{vid}.mp4", sentence, gold, f"{vid}>>>{sentence}>>>{gold}")
            (samples if isinstance(item, Sample) else skipped).append(item)
        return samples, skipped

    def _read_lmms(self, data: Path, tables: list[Path]) -> tuple[list[Sample], list[Skipped]]:
        from .videomme import read_rows

        samples, skipped = [], []
        for table in tables:
            for i, row in enumerate(read_rows(table)):
                sid = f"{table.name}:{i}"
                try:
                    video, caption, stamp = str(row["video"]), str(row["caption"]), row["timestamp"]
                    gold = [float(x) for x in stamp]
                    assert caption.strip() and len(gold) == 2 and gold[1] > gold[0] >= 0
                except (KeyError, TypeError, ValueError, AssertionError):
                    skipped.append(Skipped(self.name, sid, "malformed row (needs video, caption, timestamp [s, e])"))
                    continue
                sentence = caption.strip()
                sentence = sentence[:-1] if sentence.endswith(".") else sentence
                item = self._sample(data, sid, video, sentence, gold, f"{video}>>>{caption}>>>{list(stamp)}")
                (samples if isinstance(item, Sample) else skipped).append(item)
        return samples, skipped

    def score(self, pred: str, sample: dict) -> tuple[object, float]:
        gold = [float(x) for x in sample["gold"]]
        found = extract_time(pred)
        window = found[0] if len(found) == 1 else [gold[1] + 10, gold[1] + 20]
        return window, iou(gold, window)

    def from_lmms_doc(self, doc: dict) -> dict:
        gold = doc["timestamp"]
        return {"id": f"{doc['video']}>>>{doc['caption']}>>>{gold}", "gold": [float(x) for x in gold], "categories": {}}

    def summarize(self, rows: list[dict]) -> dict:
        n = len(rows)
        ious = [r["score"] for r in rows]
        recall = {f"R@{t}": (100.0 * sum(x >= t for x in ious) / n if n else None) for t in THRESHOLDS}
        return {"metric": self.metric, "score": 100.0 * sum(ious) / n if n else None, "n": n, **recall,
                "categories": {}}
