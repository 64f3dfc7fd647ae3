"""Checks of this harness against the published Video-XL-2 runs: their per-sample logs and selection files.

The Video-XL repository (VectorSpaceLab/Video-XL) ships, for each published run, lmms-eval's per-sample logs
(``Video-XL-2/eval/lvu/{pure,w_chunk,w_chunk_bilevel}/logs/*/*/<task>.json``: every entry holds the dataset row it
was asked from, ``doc``, and the text the harness built from it, ``arguments[0]``) and the bi-level selection files
(``w_chunk_bilevel/selected_infos``). :func:`prompt_check` writes each logged ``doc`` back into the benchmark's own
file layout (:func:`write_dataset`), reads it with this harness's task, and compares every sample's question with
the logged text after the published model-side rewrite of ``mm:ss`` times (:func:`videoxl.question.convert_times`,
which the published model applies to every prompt before tokenizing it). ``docs/reproduce.md`` runs it over a
clone of the repository.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from ..question import convert_times
from .tasks import TASKS

CHECKED = ("videomme", "lvbench")  # the tasks whose logs carry their dataset rows in a form read back here


def write_dataset(task: str, docs: list[dict], folder: Path) -> list[str]:
    """Write logged ``docs`` as ``task``'s annotation files under ``folder`` (the ``--data`` layout), each video an
    empty placeholder file; returns the sample ids in the docs' order."""
    folder.mkdir(parents=True, exist_ok=True)
    if task == "videomme":
        (folder / "data").mkdir(exist_ok=True)
        for doc in docs:
            (folder / "data" / f"{doc['videoID']}.mp4").touch()
        (folder / "rows.json").write_text(json.dumps(docs), encoding="utf-8")
        return [str(doc["question_id"]) for doc in docs]
    if task == "lvbench":
        (folder / "videos").mkdir(exist_ok=True)
        videos: dict[str, dict] = {}
        ids = []
        for i, doc in enumerate(docs):
            (folder / "videos" / f"{doc['video']}.mp4").touch()
            entry = videos.setdefault(doc["video"], {"key": doc["video"], "type": doc["type"], "qa": []})
            letter = string.ascii_uppercase[doc["candidates"].index(doc["answer"])]
            uid = f"log-{i}"
            # LVBench's own form: the stem, then one "(A) ..." line per candidate
            entry["qa"].append({"uid": uid, "question": "\n".join([doc["question"], *doc["candidates"]]),
                                "answer": letter, "question_type": doc["question_type"]})
            ids.append(uid)
        lines = [json.dumps(v) for v in videos.values()]
        (folder / "video_info.meta.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return ids
    raise ValueError(f"no published-log check for {task!r}; checked: {', '.join(CHECKED)}")


def prompt_check(task: str, entries: list[dict], folder: Path) -> dict:
    """{"samples", "equal", "mismatches": [{"id", "published", "videoxl"}, ...]} of this harness's questions
    against a published log's ``entries`` (its ``logs`` list), the time rewrite applied to the logged text."""
    ids = write_dataset(task, [e["doc"] for e in entries], folder)
    samples, skipped = TASKS[task].read(folder)
    ours = {s.id: s.question for s in samples}
    mismatches = []
    for sid, entry in zip(ids, entries):
        published = convert_times(entry["arguments"][0])
        if ours.get(sid) != published:
            mismatches.append({"id": sid, "published": published, "videoxl": ours.get(sid)})
    return {"samples": len(entries), "equal": len(entries) - len(mismatches), "skipped": len(skipped),
            "mismatches": mismatches}
