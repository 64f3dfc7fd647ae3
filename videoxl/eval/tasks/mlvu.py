"""MLVU (dev set, multiple choice): M-Avg over the seven multiple-choice tasks, and accuracy per task.

Files (the MLVU dataset card and its repository JUNJIE99/MLVU): ``json/<n>_<task>.json``, a list of
``{"video", "duration", "question", "candidates", "answer" (the option's text), "question_type"}``, and the videos
in ``video/<n>_<task>/<video>``. The open-ended tasks (sub-scene captioning, summary) are not multiple choice and
are not read.

Prompt and scoring as the published Video-XL-2 run (VectorSpaceLab/Video-XL
``Video-XL-2/eval/lvu/*/lmms_eval/tasks/mlvu/utils.py``; the lmms-eval ``mlvu`` task's doc holds the question with
its options as ``"(A) ...\\n"`` lines): ``"\\n{question}\\nOnly give the best option.\\n\\nBest option: ("``; the
answer is the character before the first ``)``, else the whole stripped answer; M-Avg is MLVU's mean of the
per-task accuracies (the lmms-eval aggregate also logs the pooled accuracy, kept here as ``overall``).
Frames: at most 256 (``scripts/mlvu.sh``). The published selection file (``w_chunk_bilevel/selected_infos/
mlvu.json``) is keyed by the task names used here (``topic_reasoning`` null, ``anomaly_reco``, ...; the same names
as the file of the published MLVU log, ``logs/videoxl2-w_chunk_bilevel-mlvu/*/mlvu.json_results_each_dataset_*``).
Without ``--data``, the files come from the dataset repository ``MLVU/MVLU`` (gated): ``MLVU/json`` and the
multiple-choice tasks' folders of ``MLVU/video``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import (HubData, Sample, Settings, Skipped, Task, _mean_pct, by_category, convert_times, find_video,
                   missing_video)

MULTIPLE_CHOICE = ("plotQA", "needle", "ego", "count", "order", "anomaly_reco", "topic_reasoning")
GROUPS = {"holistic": ("topic_reasoning", "anomaly_reco"), "single": ("needle", "ego", "plotQA"),
          "multi": ("order", "count")}
LETTERS = "ABCDEFGHIJ"


def doc_question(question: str, candidates: list[str]) -> str:
    """The question with its options as the lmms-eval MLVU doc holds it."""
    return f"{question}\n" + "".join(f"({LETTERS[i]}) {c}\n" for i, c in enumerate(candidates))


def context(doc_q: str) -> str:
    return "\n" + doc_q + "\nOnly give the best option.\n" + "\n" + "Best option: ("


def extract(pred: str) -> str:
    s = pred.strip()
    if ")" in s:
        index = s.index(")")
        return s[index - 1: index]
    return s


def task_type(stem: str) -> str:
    head, _, rest = stem.partition("_")
    return rest if head.isdigit() and rest else stem


class MLVU(Task):
    name = "mlvu"
    settings = Settings(max_frames=256)
    metric = "M-Avg"
    hub = HubData("MLVU/MVLU", annotations=tuple(f"MLVU/json/*_{t}.json" for t in MULTIPLE_CHOICE),
                  videos=tuple(f"MLVU/video/*_{t}/*" for t in MULTIPLE_CHOICE), root="MLVU")
    selection_field = "task_type"

    def read(self, data: Path, *, subtitles: bool = False) -> tuple[list[Sample], list[Skipped]]:
        samples, skipped = [], []
        files = sorted((data / "json").glob("*.json")) or sorted(data.glob("*.json"))
        for path in files:
            kind = task_type(path.stem)
            if kind not in MULTIPLE_CHOICE:
                continue
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
                assert isinstance(rows, list)
            except (ValueError, AssertionError, UnicodeDecodeError) as e:
                skipped.append(Skipped(self.name, path.name, f"not a JSON list of questions ({e})"))
                continue
            for i, row in enumerate(rows):
                sid = f"{path.stem}:{i}"
                try:
                    video, question, candidates = row["video"], row["question"], list(row["candidates"])
                    gold = LETTERS[candidates.index(row["answer"])]
                    assert isinstance(video, str) and isinstance(question, str) and len(candidates) >= 2
                except (KeyError, TypeError, ValueError, AssertionError, IndexError):
                    skipped.append(Skipped(self.name, sid, "malformed row (needs video, question, candidates and "
                                                           "an answer among the candidates)"))
                    continue
                path_video = find_video(data, [video], [f"video/{path.stem}", "video", ""])
                if path_video is None:
                    skipped.append(missing_video(self.name, sid, f"video/{path.stem}/{video}"))
                    continue
                raw = context(doc_question(question, candidates))
                samples.append(Sample(self.name, sid, str(path_video), convert_times(raw), gold,
                                      {"task_type": kind},
                                      selection_key=f"{Path(video).name}_{raw.split(chr(10) + '(')[0].strip()}"))
        return samples, skipped

    def score(self, pred: str, sample: dict) -> tuple[object, float]:
        parsed = extract(pred)
        return parsed, float(parsed == sample["gold"])

    def from_lmms_doc(self, doc: dict) -> dict:
        return {"gold": doc["answer"], "categories": {"task_type": doc["task_type"]},
                "id": f"{doc.get('video_name', '')}_{doc['question']}"}

    def summarize(self, rows: list[dict]) -> dict:
        categories = by_category(rows)
        per_task = {k: v["score"] for k, v in categories.get("task_type", {}).items()}
        mc = [per_task[k] for k in MULTIPLE_CHOICE if k in per_task]
        groups = {}
        for group, members in GROUPS.items():
            scores = [r["score"] for r in rows if r["categories"].get("task_type") in members]
            if scores:
                groups[group] = {"n": len(scores), "score": _mean_pct(scores)}
        if groups:
            categories["group"] = groups
        return {"metric": self.metric, "score": sum(mc) / len(mc) if mc else None, "n": len(rows),
                "overall": _mean_pct(r["score"] for r in rows), "categories": categories}
