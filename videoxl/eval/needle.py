"""Needle in a video: an object icon shown once in a long synthetic haystack; "What object appears in the video?"

For each haystack length (in frames, at 4 fps) and each case (a depth among ``depths`` evenly spaced ones), a real
MP4 is written, decoded and encoded once, and the question is answered three ways:

* ``dense``: the whole prompt in one forward of the LLM (transformers, SDPA), then greedy decoding;
* ``chunked``: streaming chunked pre-fill, every chunk dense in decoding;
* ``bilevel``: the same pre-fill, then bi-level decoding (relevant chunks dense, the rest sparse).

Cases use seeds of their own ("needle/..."), never drawn in training.

Two haystacks (``haystack``), both asked the question the model was trained on:

* ``plain``: scene cuts, moving shapes and star distractors. The needle is the only large centred icon, outlined in
  black, in a colour few shapes wear, so a low-level statistic finds its frames: thresholding the share of a frame
  in the icons' palette at the needle's level flags about 6% of the other frames (256 frames, 4 cases).
* ``lookalike``: the same video (same seed, so the same scenes, needle, depth and stars) plus look-alike glyphs in
  every free stretch (:func:`videoxl.synth.haystack.fill_lookalikes`). Glyphs are ten shapes that are not objects
  (hexagon, octagon, tick, tee, ell, hourglass, semicircle, frame, parallelogram, pie) drawn as the icons are:
  centred, the icons' radius give or take 10%, filling 6-27% of the frame as the icons fill 5-22%, the same black
  outlines and black cut-outs, each in the colour of a random object (the needle's own included). They are timed
  like the needle: shown 4-8 frames, at least 4 frames from any other event, covering about half the frames of a
  long haystack (a third of a 64-frame one). The same threshold then flags about 40% of the other frames: palette,
  outline, area and onset look the same with and without the needle, and only the shape tells the object. The
  answer stays unique: exactly one object of the vocabulary appears, and no glyph in any colour looks like one
  (``tests/test_synth.py``, ``tests/test_needle.py``). The model never saw a glyph in training, so this haystack
  also measures how it copes with unseen distractors of the kind it was trained to report. Each case is the plain
  case with glyphs added, so the two haystacks compare case by case.

Rows carry their haystack; a row without one (written before the option) is ``plain``.

Long runs keep one JSON line per case (``rows``): an interrupted run resumes where it stopped, and several runs
(different lengths, different machines) merge into one table and one heatmap. ``workers`` runs cases in parallel
processes, longest first, each with its share of the CPU threads; per-case seconds are then measured with that many
threads, and the rows say so.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..cache import cache_dir
from ..decoding import Generation, Selection
from ..synth import is_correct, make_qa, write
from ..synth.haystack import HAYSTACKS, fill_lookalikes

if TYPE_CHECKING:  # the cases, rows and summaries need no torch: a bad --rows file is refused before it loads
    from ..engine.prefill import PrefillConfig
    from ..model.videoxl2 import VideoXL2

FPS = 4.0
BILEVEL = Selection(topk=4, chunk=1)  # bi-level decoding's settings: 4 groups dense (16 frames)
ANSWER = Generation(max_new_tokens=4)


@dataclass(frozen=True)
class NeedleCase:
    frames: int
    depth: float
    index: int
    seed: int = 0
    haystack: str = "plain"

    def make(self):
        name = f"needle/{self.seed}/{self.frames}/{self.index}"
        script, qa = make_qa(random.Random(name), self.frames, FPS, family="needle", multiple_choice=False,
                             depth=self.depth)
        if self.haystack == "lookalike":  # a stream of its own: the same needle and scenes as the plain case
            script = fill_lookalikes(random.Random(f"{name}/lookalike"), script)
        return script, qa

    def video(self, folder: Path) -> Path:
        kind = "" if self.haystack == "plain" else f"{self.haystack}-"
        path = folder / f"needle-{kind}{self.seed}-{self.frames}-{self.index}.mp4"
        if not path.is_file():
            write(self.make()[0], path)
        return path


def run_case(model: VideoXL2, case: NeedleCase, folder: Path, prefill_config: PrefillConfig,
             bilevel: Selection) -> dict:
    import torch

    from ..engine.decode import DEFAULT, Ablation
    from ..pipeline import encode_video, ingest_tokens

    script, qa = case.make()
    path = case.video(folder)
    t0 = time.perf_counter()
    visual, times, stats = encode_video(model, path, max_frames=case.frames)
    encode_s = time.perf_counter() - t0
    assert stats.frames == case.frames, "the haystack is sampled at its native rate"
    row = {"haystack": case.haystack, "frames": case.frames, "depth": case.depth, "index": case.index,
           "seed": case.seed, "answer": qa.answer,
           "threads": torch.get_num_threads(), "encode_s": encode_s,
           **dataclasses.asdict(bilevel), "follow_tail": DEFAULT.follow_tail, "template_prior": DEFAULT.template_prior}

    t0 = time.perf_counter()
    ids = model.prompt_ids(times, qa.question)
    with torch.inference_mode():
        embeds = model.embed_prompt(ids, visual)
        ones = torch.ones(1, ids.numel(), dtype=torch.long, device=embeds.device)  # the mask beside the embeddings
        out = model.llm.generate(inputs_embeds=embeds[None], attention_mask=ones,
                                 max_new_tokens=ANSWER.max_new_tokens, do_sample=False,
                                 pad_token_id=model.tokenizer.pad_token_id,
                                 eos_token_id=model.tokenizer.convert_tokens_to_ids("<|im_end|>"))
    dense_text = model.tokenizer.decode(out[0], skip_special_tokens=True)
    row.update(dense=is_correct(qa, dense_text), dense_text=dense_text, dense_s=time.perf_counter() - t0,
               tokens=ids.numel())

    t0 = time.perf_counter()
    session = ingest_tokens(model, visual, times, prefill_config)
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunked = session.ask(qa.question, Selection(dense=True), ANSWER)
    row.update(chunked=is_correct(qa, chunked.text), chunked_text=chunked.text,
               chunked_s=prefill_s + time.perf_counter() - t0)
    t0 = time.perf_counter()
    answer = session.ask(qa.question, bilevel, ANSWER)
    needle_chunk = (qa.meta["frame"] // 4) // (bilevel.chunk or prefill_config.chunk)
    row.update(bilevel=is_correct(qa, answer.text), bilevel_text=answer.text,
               bilevel_s=prefill_s + time.perf_counter() - t0, kv_ratio=answer.kv_ratio,
               tail=answer.tail,
               needle_chunk_dense=needle_chunk in answer.dense_chunks)
    # the other position mode of bi-level decoding, for choosing the default by measurement
    other = "contiguous" if DEFAULT.positions == "absolute" else "absolute"
    alt = session.decoder.answer(model.question_ids(qa.question), bilevel, ANSWER, ablation=Ablation(positions=other))
    row[f"bilevel_{other}"] = is_correct(qa, alt.text)
    return row


def haystack_of(row: dict) -> str:
    """A row's haystack; rows written before there were two are plain."""
    return row.get("haystack", "plain")


def summarize(rows: list[dict]) -> list[dict]:
    """One row per haystack and length (plain first): accuracies (percent), KV ratio, mean seconds."""
    out = []
    for haystack, frames in sorted({(haystack_of(r), r["frames"]) for r in rows},
                                   key=lambda hf: (HAYSTACKS.index(hf[0]), hf[1])):
        rs = [r for r in rows if r["frames"] == frames and haystack_of(r) == haystack]
        mean = lambda key: sum(float(r[key]) for r in rs) / len(rs)
        out.append({"haystack": haystack, "frames": frames, "cases": len(rs), "tokens": round(mean("tokens")),
                    "acc_dense": 100 * mean("dense"), "acc_chunked": 100 * mean("chunked"),
                    "acc_bilevel": 100 * mean("bilevel"), "needle_selected": 100 * mean("needle_chunk_dense"),
                    **{f"acc_bilevel_{m}": 100 * mean(f"bilevel_{m}") for m in ("absolute", "contiguous")
                       if f"bilevel_{m}" in rs[0]},
                    "kv_ratio": mean("kv_ratio"), "dense_s": mean("dense_s"), "chunked_s": mean("chunked_s"),
                    "bilevel_s": mean("bilevel_s"), "encode_s": mean("encode_s"),
                    "threads": max(r["threads"] for r in rs), "workers": max(r["workers"] for r in rs)})
    return out


def heatmap(rows: list[dict], png: Path) -> None:
    """Depth x length accuracy, one panel per method, for the rows of one haystack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    haystacks = {haystack_of(r) for r in rows}
    if len(haystacks) != 1:
        raise ValueError(f"a heatmap shows one haystack, got {sorted(haystacks)}")
    lengths = sorted({r["frames"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    methods = [("dense", "dense pre-fill + decoding"), ("chunked", "chunked pre-fill"),
               ("bilevel", "chunked pre-fill + bi-level")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), dpi=110, sharey=True)
    for ax, (key, title) in zip(axes, methods):
        grid = np.full((len(depths), len(lengths)), np.nan)
        for i, d in enumerate(depths):
            for j, n in enumerate(lengths):
                cell = [r[key] for r in rows if r["depth"] == d and r["frames"] == n]
                if cell:
                    grid[i, j] = 100 * sum(cell) / len(cell)
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i in range(len(depths)):
            for j in range(len(lengths)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=8)
        ax.set_xlabel("haystack frames")
        ax.set_title(title, fontsize=9)
    axes[0].set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=8)
    axes[0].set_ylabel("needle depth")
    fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy %")
    fig.suptitle(f"Needle in a video ({haystacks.pop()} haystack): accuracy by depth and length", fontsize=11)
    fig.savefig(png, bbox_inches="tight")
    plt.close(fig)


def plan(lengths: list[int], cases: int, depths: int = 10, seed: int = 0,
         haystack: str = "plain") -> list[NeedleCase]:
    """The cases of a run: ``cases`` per length, depths cycling through ``depths`` evenly spaced ones."""
    if cases < 1 or depths < 1 or not lengths or min(lengths) < 8:
        raise ValueError("a needle run needs at least one case, one depth and haystacks of at least 8 frames")
    if haystack not in HAYSTACKS:
        raise ValueError(f"unknown haystack {haystack!r}; choose one of {', '.join(HAYSTACKS)}")
    return [NeedleCase(frames, (i % depths + 0.5) / depths, i, seed, haystack)
            for frames in lengths for i in range(cases)]


def key(row: dict | NeedleCase) -> tuple[str, int, int, int]:
    """What identifies a case across runs: (haystack, seed, frames, index)."""
    if isinstance(row, NeedleCase):
        return row.haystack, row.seed, row.frames, row.index
    return haystack_of(row), row["seed"], row["frames"], row["index"]


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """The per-case rows kept so far in ``path`` (JSON lines). A last line cut short by a killed run is ignored, and
    with ``repair`` removed from the file, so that rows appended next start on a line of their own."""
    if not path.is_file():
        return []
    rows, lines = [], path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            key(row)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            if n < len(lines):
                raise ValueError(f"{path}:{n} is not a needle row ({error})") from None
            if repair:
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(line + "\n" for line in lines[:-1]))
                tmp.replace(path)
            break
        rows.append(row)
    return rows


def append_row(path: Path, row: dict) -> None:
    """Add one case's row to ``path`` in a single write (whole lines even with parallel writers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


_worker: dict = {}


def _ignore_interrupts() -> None:
    """Ctrl-C reaches the whole process group; the parent handles it and ends the pool, workers stay quiet."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_in_worker(job: tuple) -> dict:
    """One case in a worker process; the process loads the model on its first case and keeps it. (Loading in the
    task, not a pool initializer, lets a bad checkpoint reach the parent as an error instead of respawning.)"""
    import torch

    from ..model.videoxl2 import VideoXL2

    case, model_path, device, threads, folder, prefill_config, bilevel = job
    if "model" not in _worker:
        torch.set_num_threads(threads)
        _worker["model"] = VideoXL2.from_pretrained(model_path, device=device)
    return run_case(_worker["model"], case, folder, prefill_config, bilevel)


def run(model: VideoXL2 | str, lengths: list[int], cases: int, depths: int = 10, seed: int = 0,
        prefill_config: PrefillConfig | None = None, bilevel: Selection | None = None,
        folder: Path | None = None, on_case: Callable[[dict], None] | None = None,
        skip: set[tuple[str, int, int, int]] = frozenset(), workers: int = 1, device: str | None = None,
        haystack: str = "plain") -> list[dict]:
    """Every case of every length not in ``skip`` (see :func:`key`); returns per-case rows (see :func:`summarize`).

    ``model`` is a loaded model, or a checkpoint path (needed for ``workers`` > 1: each worker process loads it).
    """
    from ..model import files

    todo = [case for case in plan(lengths, cases, depths, seed, haystack) if key(case) not in skip]
    if not todo:  # a finished run resumed: nothing loads
        return []
    model = str(model) if isinstance(model, Path) else model
    if isinstance(model, str) and workers > 1:
        files.check(model)  # a broken checkpoint fails here, once, not in every worker

    import torch

    from ..engine.prefill import PrefillConfig
    from ..model.videoxl2 import VideoXL2

    prefill_config = prefill_config or PrefillConfig()
    bilevel = bilevel or BILEVEL
    folder = folder or cache_dir() / "needle"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []

    def done(row):
        row["workers"] = max(1, workers)  # parallel processes sharing the machine while the seconds were measured
        rows.append(row)
        if on_case:
            on_case(row)

    if workers <= 1:
        if isinstance(model, str):
            model = VideoXL2.from_pretrained(model, device=device)
        for case in todo:
            done(run_case(model, case, folder, prefill_config, bilevel))
        return rows
    if not isinstance(model, str):
        raise ValueError("parallel workers load the model themselves: pass a checkpoint path, not a loaded model")
    threads = max(1, torch.get_num_threads() // workers)
    todo.sort(key=lambda case: -case.frames)  # longest first, so the last cases to finish are short ones
    jobs = [(case, str(model), device, threads, folder, prefill_config, bilevel) for case in todo]
    # an executor, not multiprocessing.Pool: a worker that dies fails the run (BrokenProcessPool) instead of
    # leaving its case unanswered and the parent waiting for it forever
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_interrupts)
    try:
        for future in as_completed([pool.submit(_run_in_worker, job) for job in jobs]):
            done(future.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()  # cases in progress are not waited for: their rows are not written
        raise
    pool.shutdown()
    return rows


def write_json(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summarize(rows), indent=2))
