"""Running a published benchmark (``videoxl/eval/tasks``) with videoxl: one row per sample, serially or in worker
processes, resumable from a rows file, summarised per run the way each benchmark's official code scores it.

    task = TASKS["mlvu"]
    samples, skipped = task.read(Path("MLVU"))
    rows = run(DEFAULT_MODEL, task, samples, Run("bilevel", selection=read_selection("mlvu.json")))
    summary = summarize(task, rows, skipped)

A row holds the sample's id, the run's label, the answer text (``pred``), what the scorer parsed from it, the score
and what decoding used (dense chunks, KV ratio, seconds); a sample that could not run (an unreadable video) is a row
with ``skipped``. Rows carry everything scoring needs (``gold``, ``categories``, ``doc``), so ``rescore`` re-scores
them without the annotation files. Several runs (dense, oracle bi-level, in-model bi-level) may share one rows file:
the summary reports them side by side.
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .selection import Plan, Run
from .tasks import TASKS, Sample, Skipped, Task, chat_prompt
from .tasks.base import STOP, Settings, interleaved

if TYPE_CHECKING:  # torch and the model load only when a run starts
    from ..engine.prefill import PrefillConfig
    from ..model import VideoXL2
    from ..pipeline import Session
    from ..video import VideoInfo

QUESTION_TOKENS = 1_000_000  # prompts are the benchmark's own; subtitles can be long
GROUP = "<group>"  # one 4-frame group's visual tokens, in a prompt written out group by group
_KILL_ONCE = "VIDEOXL_EVAL_KILL_ONCE"  # test hook: a worker that finds this file removes it and dies


REMAINDER = "drop"  # the published harness's load_video drops the frames past the last multiple of 4


def sampling(task: Task, video: str, max_frames: int):
    """The published sampling plan of a video (probe only, no decoding): VideoInfo and SampledFrames. As the
    published ``load_video`` (the same in its pure, w_chunk and w_chunk_bilevel harnesses): steps counted at the
    container's average frame rate, and the frames past the last multiple of 4 dropped."""
    from ..video import plan_frames, probe

    s = task.settings
    info = probe(video)
    return info, plan_frames(info.frame_times, fps=s.fps, max_fps=s.max_fps, max_frames=max_frames,
                             native_fps=info.native_fps, remainder=REMAINDER)


def plan_of(task: Task, sample: Sample, run: Run, groups: int) -> Plan:
    from ..decoding import Selection

    s = task.settings
    return run.plan(sample.selection_key, groups, s.chunked, s.bilevel, default_topk=Selection().topk,
                    default_chunk=s.bilevel[0], category=task.selection_category(sample.categories))


def decode_options(task: Task, run: Run, plan: Plan):
    """(Selection, Generation) of a sample: the plan's selection (every chunk dense when it chooses none), the
    task's answer length, greedy, no stop string (the published stop: ``<|im_end|>``, which ends the chat
    template's turns and is the tokenizer's EOS, or the limit). A run with a selection file decodes as the
    published bi-level code does, whatever the model's profile: sparse chunks keep their timestamp tokens
    (``w_chunk_bilevel/.../llava_qwen.py`` keeps every non-visual token of the video span verbatim)."""
    from ..decoding import Generation, Selection

    decode = {k: v for k, v in plan.decode.items() if v is not None}
    if run.selection is not None:
        decode["sparse_stamps"] = True
    selects = "topk" in decode or "kv_budget" in decode
    selection = Selection(**decode) if selects else Selection(dense=True, chunk=None)  # rows name pre-fill chunks
    return selection, Generation(max_new_tokens=task.settings.max_new_tokens, stop=STOP)


class Evaluator:
    """Runs samples of one task and run on one loaded model; keeps the last video's session for its next question."""

    def __init__(self, model, task: Task, run: Run, max_frames: int | None = None):
        self.model, self.task, self.run = model, task, run
        self.max_frames = max_frames or task.settings.frames(run.mode)
        self._cached: tuple | None = None
        self._probed: tuple | None = None

    def row(self, sample: Sample) -> dict:
        """The sample's row; a video that cannot be read, or a fault on this sample, gives a ``skipped`` row saying
        why, and the run goes on."""
        from ..errors import InputError

        base = {"task": sample.task, "id": sample.id, "run": self.run.label}
        try:
            return self._row(sample, base)
        except InputError as e:
            return {**base, "skipped": f"{type(e).__name__}: {e}"}
        except Exception as e:  # noqa: BLE001 - an internal fault (out of memory...) on one sample
            return {**base, "skipped": f"failed: {type(e).__name__}: {e}"}

    def _row(self, sample: Sample, base: dict) -> dict:
        from ..engine.prefill import PrefillConfig
        from ..pipeline import ingest

        started = time.perf_counter()
        if self._probed is None or self._probed[0] != sample.video:
            self._probed = (sample.video, *sampling(self.task, sample.video, self.max_frames))
        _, info, frames = self._probed
        plan = plan_of(self.task, sample, self.run, len(frames.group_times))
        texts, question = interleaved(sample, frames.frame_times, frames.group_times)
        key = (sample.video, tuple(sorted(plan.prefill.items())), tuple(texts or ()))
        if self._cached is None or self._cached[0] != key:
            self._cached = None  # free the previous video's KV first
            s = self.task.settings
            config = PrefillConfig(**plan.prefill)
            if texts is None:
                session = ingest(self.model, info, max_frames=self.max_frames, fps=s.fps, max_fps=s.max_fps,
                                 prefill_config=config, remainder=REMAINDER)
            else:
                session = ingest_with_text(self.model, info, texts, s, self.max_frames, config)
            self._cached = (key, session)
        session = self._cached[1]
        selection, generation = decode_options(self.task, self.run, plan)
        answer = session.ask(question, selection, generation, chunk_scores=plan.chunk_scores,
                             max_question_tokens=QUESTION_TOKENS)
        pred = answer.text.strip()
        row = {**base, "video": Path(sample.video).name, "gold": sample.gold, "categories": sample.categories,
               "doc": sample.doc, "pred": pred}
        parsed, score = self.task.score(pred, row)
        row.update(parsed=parsed, score=score, frames=session.stats.frames, chunks=answer.chunks,
                   dense_chunks=answer.dense_chunks, kv_ratio=answer.kv_ratio,
                   seconds=round(time.perf_counter() - started, 3))
        if plan.dense_blocks is not None:
            row["dense_blocks"] = plan.dense_blocks
        if plan.note:
            row["note"] = plan.note
        return row


def ingest_with_text(model: VideoXL2, info: VideoInfo, texts: list[str], settings: Settings, max_frames: int,
                     prefill_config: PrefillConfig) -> Session:
    """A video pre-filled with ``texts[g]`` (interleaved subtitles) before group g's ``Time {t}s:`` stamp, as part of
    that group's timestamp tokens: seen by every later chunk and kept verbatim in sparse chunks, like the stamp."""
    import torch

    from ..engine.layout import Group
    from ..engine.prefill import prefill
    from ..pipeline import Session, encode_video

    visual, group_times, stats = encode_video(model, info, max_frames=max_frames, fps=settings.fps,
                                              max_fps=settings.max_fps, remainder=REMAINDER)  # (G, T, hidden)
    assert len(texts) == len(group_times), (len(texts), len(group_times))

    def stamp(text: str, t: float) -> torch.Tensor:
        if not text:
            return model.timestamp_ids(t)
        ids = torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        return torch.cat([ids, model.timestamp_ids(t)])

    groups = (Group(stamp(text, t), v) for text, t, v in zip(texts, group_times, visual))
    started = time.perf_counter()
    video = prefill(model.llm, model._prompt_prefix(), groups, prefill_config)
    stats.seconds["prefill"] = time.perf_counter() - started
    stats.tokens, stats.chunks = video.stats.tokens, video.stats.chunks
    return Session(model, video, list(group_times), stats)


def load_model(model: str, device: str | None = None, dtype: str | None = None):
    import torch

    from ..model import VideoXL2

    return VideoXL2.from_pretrained(model, dtype=getattr(torch, dtype) if dtype else None, device=device)


def run(model: str, task: Task, samples: list[Sample], run: Run, *, workers: int = 1,
        on_row: Callable[[dict], None] | None = None, device: str | None = None, dtype: str | None = None,
        max_frames: int | None = None) -> list[dict]:
    """One row per sample, in the samples' order. ``workers`` > 1 runs them in spawned processes, each loading the
    model once; a worker that dies has its sample run again (twice at most, then the row says it failed)."""
    if workers <= 1 or len(samples) <= 1:
        evaluator = Evaluator(load_model(model, device, dtype), task, run, max_frames)
        rows = []
        for sample in samples:
            rows.append(evaluator.row(sample))
            if on_row:
                on_row(rows[-1])
        return rows
    return _run_workers(model, task, samples, run, min(workers, len(samples)), on_row, device, dtype, max_frames)


def _maybe_die() -> None:
    """Test hook: the first worker to find the file named by $VIDEOXL_EVAL_KILL_ONCE removes it and dies."""
    marker = os.environ.get(_KILL_ONCE)
    if marker and os.path.exists(marker):
        try:
            os.remove(marker)
        except FileNotFoundError:  # another worker got there first
            return
        os._exit(9)  # as if killed mid-sample


def _worker(wid: int, model: str, task_name: str, run_: Run, device, dtype, max_frames, threads: int,
            inbox, outbox) -> None:
    import torch

    torch.set_num_threads(threads)
    if device is None and torch.cuda.is_available():  # one GPU per worker, round robin
        device = f"cuda:{wid % torch.cuda.device_count()}"
    try:
        evaluator = Evaluator(load_model(model, device, dtype), TASKS[task_name], run_, max_frames)
    except Exception as e:  # the parent reports it: every worker would fail the same way
        outbox.put((wid, None, {"error": f"{type(e).__name__}: {e}"}))
        return
    while True:
        item = inbox.get()
        if item is None:
            return
        index, sample = item
        _maybe_die()
        outbox.put((wid, index, evaluator.row(sample)))


# long: one supervision loop: hand out samples, collect rows, restart dead workers, shut down
def _run_workers(model, task, samples, run_, n, on_row, device, dtype, max_frames) -> list[dict]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    outbox = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // n)
    workers: dict[int, list] = {}  # wid -> [process, inbox, index in flight]
    pending, results, attempts = deque(range(len(samples))), {}, {}
    deaths = 0

    def start(wid: int) -> None:
        inbox = ctx.Queue()
        process = ctx.Process(target=_worker, args=(wid, model, task.name, run_, device, dtype, max_frames, threads,
                                                    inbox, outbox), daemon=True)
        process.start()
        workers[wid] = [process, inbox, None]

    for wid in range(n):
        start(wid)
    next_wid = n
    try:
        while len(results) < len(samples):
            for w in workers.values():
                while w[2] is None and pending:
                    index = pending.popleft()
                    if index not in results:
                        w[1].put((index, samples[index]))
                        w[2] = index
            try:
                wid, index, row = outbox.get(timeout=0.5)
            except queue.Empty:
                for wid, (process, inbox, index) in list(workers.items()):
                    if process.is_alive():
                        continue
                    del workers[wid]
                    deaths += 1
                    if deaths > 3 * (n + len(samples)):
                        raise RuntimeError(f"{deaths} worker processes died; see the messages above")
                    if index is not None and index not in results:
                        attempts[index] = attempts.get(index, 0) + 1
                        if attempts[index] > 2:
                            s = samples[index]
                            results[index] = {"task": s.task, "id": s.id, "run": run_.label,
                                              "skipped": "failed: the worker running it died three times"}
                            if on_row:
                                on_row(results[index])
                        else:
                            pending.appendleft(index)
                    if pending:
                        start(next_wid)
                        next_wid += 1
                continue
            if index is None:
                raise RuntimeError(f"a worker could not load the model: {row['error']}")
            if wid in workers and workers[wid][2] == index:
                workers[wid][2] = None
            if index not in results:
                results[index] = row
                if on_row:
                    on_row(row)
    finally:
        for process, inbox, _ in workers.values():
            if process.is_alive():
                inbox.put(None)
        for process, _, _ in workers.values():
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    return [results[i] for i in range(len(samples))]


# -- rows, summaries, outputs ---------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict]:
    """Rows kept in a JSON lines file (a line cut short by an interrupted run is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "id" in row and "run" in row:
            rows.append(row)
    return rows


def append_row(path: Path, row: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def summarize(task: Task, rows: list[dict], skipped: list[Skipped] = ()) -> dict:
    """Per run label: the task's metrics over its scored rows, and the samples it skipped; plus the annotation rows
    that were never run. The denominators are explicit: ``n`` scored, ``skipped`` listed."""
    runs: dict[str, dict] = {}
    for label in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == label]
        scored = [r for r in mine if "skipped" not in r]
        summary = task.summarize(scored)
        summary["skipped"] = [{"id": r["id"], "reason": r["skipped"]} for r in mine if "skipped" in r]
        kv = [r["kv_ratio"] for r in scored if "kv_ratio" in r]
        if kv:
            summary["kv_ratio"] = sum(kv) / len(kv)
        runs[label] = summary
    return {"task": task.name, "runs": runs,
            "annotation_skipped": [{"id": s.id, "reason": s.reason} for s in skipped]}


def rescore_rows(task: Task, rows: list[dict]) -> list[dict]:
    """Score saved rows again from their answer text (``pred``) with this version's scorer."""
    out = []
    for row in rows:
        if "skipped" in row:
            out.append(row)
            continue
        parsed, score = task.score(row["pred"], row)
        out.append({**row, "parsed": parsed, "score": score})
    return out


def lmms_rows(task: Task, log: object) -> list[dict]:
    """Rows from an lmms-eval per-sample log: ``{"logs": [{"doc", "filtered_resps", ...}]}`` or a list of such
    entries."""
    entries = log["logs"] if isinstance(log, dict) else log
    rows = []
    for i, entry in enumerate(entries):
        pred = entry.get("filtered_resps", entry.get("resps"))
        while isinstance(pred, list):
            pred = pred[0] if pred else ""
        stub = task.from_lmms_doc(entry["doc"])
        row = {"task": task.name, "run": "lmms-eval", "doc": {}, **stub, "pred": str(pred).strip()}
        row.setdefault("id", str(entry.get("doc_id", i)))
        rows.append(row)
    return rescore_rows(task, rows)


def read_log(task: Task, path: Path) -> list[dict]:
    """Rows from a saved log: this harness's rows (JSON lines) or an lmms-eval per-sample log (JSON or JSON lines)."""
    from ..errors import InputError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the log ({e})") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
        lines = [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
        if lines and all("doc" in e for e in lines):
            data = lines
    try:
        if data is not None:
            return lmms_rows(task, data)
        return rescore_rows(task, [r for r in read_rows(path) if r.get("task", task.name) == task.name])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InputError(f"{path}: not a rows file of this harness nor an lmms-eval log of {task.name} "
                         f"({type(e).__name__}: {e})") from None


def prompt_record(task: Task, sample: Sample, run: Run, max_frames: int | None = None) -> dict:
    """What a sample is asked, from which frames, and how it is decoded, with no model."""
    from ..errors import InputError

    record = {"task": task.name, "id": sample.id, "video": Path(sample.video).name, "question": sample.question,
              "prompt": chat_prompt(sample.question), "selection_key": sample.selection_key}
    s = task.settings
    max_frames = max_frames or s.frames(run.mode)
    try:
        info, frames = sampling(task, sample.video, max_frames)
    except InputError as e:
        return {**record, "skipped": f"{type(e).__name__}: {e}"}
    plan = plan_of(task, sample, run, len(frames.group_times))
    texts, question = interleaved(sample, frames.frame_times, frames.group_times)
    if texts is not None:  # the video written out group by group, the subtitle lines where they are pre-filled
        video = "".join(f"{text}Time {t}s:{GROUP}" for text, t in zip(texts, frames.group_times))
        record.update(question=question, prompt=chat_prompt(question).replace("<image>", video, 1))
    record["sampling"] = {"fps": s.fps, "max_fps": s.max_fps, "max_frames": max_frames,
                          "frames": len(frames.indices), "frame_indices": frames.indices,
                          "group_times": frames.group_times}
    record["decoding"] = {"run": run.label, **plan.to_json(), "max_new_tokens": s.max_new_tokens,
                          "greedy": True, "stop": list(STOP)}
    if run.selection is not None:
        record["decoding"]["sparse_stamps"] = True  # as decode_options: the published bi-level caches
    return record


def plot(summary: dict, path: Path) -> None:
    """Bar chart per category (the first category field), one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary["runs"]
    field = next((f for r in runs.values() for f in r.get("categories", {})), None)
    labels = sorted({c for r in runs.values() for c in r.get("categories", {}).get(field, {})}) if field else []
    labels = labels or ["overall"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) * max(1, len(runs))), 4))
    width = 0.8 / max(1, len(runs))
    for i, (label, r) in enumerate(runs.items()):
        values = [r["score"] or 0] if labels == ["overall"] else \
            [(r.get("categories", {}).get(field, {}).get(c, {}).get("score") or 0) for c in labels]
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=label)
    ax.set_xticks([x + width * (len(runs) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(next(iter(runs.values()))["metric"] if runs else "score")
    ax.set_title(f"{summary['task']}" + (f" by {field}" if field else ""))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

