"""``videoxl eval``: videoxl's own benchmarks on synthetic videos (``needle``, ``families``) and the published ones
(``mlvu|videomme|longvideobench|lvbench|charades-sta``, ``rescore``). Wired into ``videoxl/cli.py`` by
``add_parsers(tasks)`` under ``videoxl eval``.

Building the parser imports nothing heavy (no torch, no numpy), so ``videoxl --help`` stays instant; the
benchmark code is imported when a command runs. Progress bars, tables and pictures live here, not in the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .. import decoding
from ..errors import InputError, OptionError
from ..options import device_name, fraction, lengths, whole

TASK_NAMES = {"mlvu": "MLVU dev (M-Avg over the multiple-choice tasks)",
              "videomme": "Video-MME (accuracy per duration, domain and task type)",
              "longvideobench": "LongVideoBench validation (accuracy per duration group and category)",
              "lvbench": "LVBench (accuracy per question type and video type)",
              "charades-sta": "Charades-STA test (mIoU, R@0.3/0.5/0.7)"}


def _topk(text: str):
    if text == "auto":
        return "auto"
    return whole(0)(text)


def add_parsers(tasks) -> None:
    """Add the benchmark commands to ``videoxl eval``'s subparsers."""
    _add_needle(tasks)
    for name, title in TASK_NAMES.items():
        p = tasks.add_parser(name, help=title, description=(
            f"{title}, with the published prompts, frame caps and scoring. Reads the benchmark's own files from "
            "--data, or without it from the benchmark's Hugging Face dataset repository (downloaded once into the "
            "hub cache; offline, a cached copy). --mode dense: full attention; chunked: the published chunked "
            "pre-fill, dense decoding; "
            "bilevel: chunked pre-fill and bi-level decoding, with a published --selection file (oracle "
            "relevance), or the model's own relevance (--topk N, or --topk auto with a --selection file for each "
            "question's k and chunk size)."))
        p.add_argument("--data", help="folder with the benchmark's annotation files and videos (default: its "
                                      "Hugging Face dataset repository, downloaded or cached)")
        p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
        p.add_argument("--mode", choices=["dense", "chunked", "bilevel"], default="bilevel")
        p.add_argument("--selection", metavar="FILE", nargs="+",
                       help="published selected_infos JSON file(s), merged (oracle bi-level)")
        p.add_argument("--topk", type=_topk, help="in-model relevance: chunks reloaded dense besides the first and "
                                                  "last, or 'auto' (each question's k and chunk size from --selection)")
        p.add_argument("--decode-chunk", type=whole(1), help="in-model relevance: decoding chunk in groups "
                                                             "(default: the pre-fill chunk)")
        p.add_argument("--kv-budget", type=fraction,
                       help="in-model relevance: fraction of the dense KV instead of --topk")
        p.add_argument("--limit", type=whole(1), help="only the first N runnable samples")
        p.add_argument("--max-frames", type=whole(4), help="override the published frame cap (for quick checks)")
        if name == "videomme":
            p.add_argument("--subtitles", action="store_true", help="with the published subtitle prompt")
        if name == "longvideobench":
            p.add_argument("--subtitles", action="store_true",
                           help="subtitles interleaved with the frames in time order (the published interleaving)")
        p.add_argument("--rows", metavar="ROWS.jsonl", help="keep one JSON line per sample here; samples already in "
                                                            "it (same run) are not run again")
        p.add_argument("--workers", type=whole(1, 256), default=1, help="local worker processes (default 1)")
        p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS", help="run samples as Ray tasks")
        p.add_argument("--json", metavar="PATH", help="write the summary here")
        p.add_argument("--plot", metavar="PNG", help="write a per-category bar chart here")
        p.add_argument("--prompts-only", metavar="PATH", help="write every sample's prompt and sampling plan (JSON "
                                                              "lines) and stop; no model is loaded")
        p.add_argument("--device", type=device_name)
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                       help="default: the checkpoint's torch_dtype")
        p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a tty")
        p.set_defaults(run=run_task, benchmark=name)
    r = tasks.add_parser("rescore", help="metrics again from saved answers (this harness's rows or an lmms-eval log)")
    r.add_argument("benchmark", choices=list(TASK_NAMES))
    r.add_argument("log", help="a --rows file, or an lmms-eval per-sample log ({\"logs\": [{doc, filtered_resps}]})")
    r.add_argument("--json", metavar="PATH", help="write the summary here")
    r.add_argument("--plot", metavar="PNG", help="write a per-category bar chart here")
    r.set_defaults(run=rescore)


def _add_needle(tasks) -> None:
    n = tasks.add_parser("needle", help="needle in a video: dense vs chunked vs chunked + bi-level")
    n.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    n.add_argument("--quick", action="store_true", help="256 and 2,048 frames, 10 cases each (< 5 minutes)")
    n.add_argument("--lengths", type=lengths, help="comma-separated haystack lengths in frames "
                                                    "(default 256,512,1024,2048,4096,8192)")
    n.add_argument("--cases", type=whole(1), help="cases per length (default 50; --quick: 10)")
    n.add_argument("--haystack", choices=["plain", "lookalike"], default="plain",
                   help="plain: scene cuts, moving shapes and stars (default); lookalike: the same videos full of "
                        "glyphs drawn like the object icons, so only the needle's shape tells it apart")
    n.add_argument("--json", type=str, help="write one row per length here")
    n.add_argument("--heatmap", type=str, help="write the depth x length accuracy heatmap here (PNG)")
    n.add_argument("--rows", type=str, help="keep one JSON line per case here; cases already in it are not run "
                                            "again (resume), and --json/--heatmap cover every row in it (merge)")
    n.add_argument("--workers", type=whole(1, 64), default=1, help="cases in parallel processes, the CPU threads "
                                                                    "shared among them (default 1)")
    n.add_argument("--device", type=device_name)
    decoding.add_arguments(n, (decoding.Selection,))  # bi-level decoding's options, recorded in every row
    n.set_defaults(run=run_needle)
    f = tasks.add_parser("families", help="accuracy per question family (needle, grounding, order, count, detail)")
    f.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    f.add_argument("--cases", type=whole(1), default=20, help="clips per family (default 20)")
    f.add_argument("--groups", type=whole(2), default=16, help="4-frame groups per clip (default 16)")
    f.add_argument("--json", type=str, help="write {family: accuracy %%} here")
    f.add_argument("--device", type=device_name)
    f.set_defaults(run=run_families)


def _needle_rows(args, selection) -> tuple[Path | None, list[dict]]:
    """The rows kept from earlier runs; refused when they were decoded with other options (rows without an option
    predate it: its default then)."""
    from . import needle

    rows_path = Path(args.rows) if args.rows else None
    kept = needle.read_rows(rows_path, repair=True) if rows_path else []
    before = {"sparse_stamps": True}  # rows from before the option kept the stamps
    for name, value in dataclasses.asdict(selection).items():
        other = sorted({str(r.get(name, before.get(name, value))) for r in kept} - {str(value)})
        if other:
            raise InputError(f"{rows_path} holds rows decoded with {name} {', '.join(other)}, not {value}: keep "
                             "each decoding's rows in a file of its own")
    return rows_path, kept


def run_needle(args) -> int:
    from .. import DEFAULT_MODEL
    from . import needle

    heatmap = _out_path(args.heatmap, "--heatmap", ".png")
    selection = dataclasses.replace(needle.BILEVEL, **decoding.given(args))
    lengths_ = args.lengths or ([256, 2048] if args.quick else [256, 512, 1024, 2048, 4096, 8192])
    cases = args.cases or (10 if args.quick else 50)
    rows_path, kept = _needle_rows(args, selection)
    planned = {needle.key(case) for case in needle.plan(lengths_, cases, haystack=args.haystack)}
    done_before = {needle.key(r) for r in kept} & planned
    if done_before:
        print(f"{rows_path}: {len(done_before)} of {len(planned)} cases already measured; running the rest")
    print(f"{'haystack':>9} {'frames':>6} {'cases':>5} {'tokens':>7} {'dense':>6} {'chunked':>7} {'bilevel':>7} "
          f"{'found':>5} {'KV':>5} {'dense s':>7} {'chunk s':>7} {'bilev s':>7}")
    rows: list[dict] = [r for r in kept if needle.key(r) in planned]
    everything = lambda: needle.read_rows(rows_path) if rows_path else rows  # noqa: E731 (--json, --heatmap)

    def on_case(row):
        rows.append(row)
        if rows_path:
            needle.append_row(rows_path, row)
        if sum(r["frames"] == row["frames"] for r in rows) == cases:
            _needle_line(needle.summarize([r for r in rows if r["frames"] == row["frames"]])[0])
            if args.json:  # after every length, so a long run keeps what it measured
                needle.write_json(everything(), Path(args.json))

    for frames in lengths_:
        if sum(r["frames"] == frames for r in rows) == cases:
            _needle_line(needle.summarize([r for r in rows if r["frames"] == frames])[0])
    needle.run(args.model or str(DEFAULT_MODEL), lengths_, cases, on_case=on_case, skip=done_before,
               workers=args.workers, device=args.device, haystack=args.haystack, bilevel=selection)
    print("accuracy in %; found: cases whose needle chunk was dense in bi-level decoding; KV: bi-level cache over "
          "dense; seconds per case after encoding (pre-fill + answer)"
          + (f"; {args.workers} worker processes sharing the CPU" if args.workers > 1 else ""))
    if args.json:  # every haystack kept in --rows, one row per haystack and length
        needle.write_json(everything(), Path(args.json))
    if heatmap:
        needle.heatmap([r for r in everything() if needle.haystack_of(r) == args.haystack], heatmap)
    return 0


def _needle_line(s: dict) -> None:
    print(f"{s['haystack']:>9} {s['frames']:>6} {s['cases']:>5} {s['tokens']:>7} {s['acc_dense']:>6.0f} "
          f"{s['acc_chunked']:>7.0f} {s['acc_bilevel']:>7.0f} {s['needle_selected']:>5.0f} {s['kv_ratio']:>5.2f} "
          f"{s['dense_s']:>7.2f} {s['chunked_s']:>7.2f} {s['bilevel_s']:>7.2f}", flush=True)


def run_families(args) -> int:
    from .. import DEFAULT_MODEL
    from ..model import VideoXL2
    from .families import family_accuracy

    model = VideoXL2.from_pretrained(args.model or str(DEFAULT_MODEL), device=args.device)
    scores = family_accuracy(model, cases=args.cases, groups=args.groups)
    print(f"{'family':<10} {'accuracy %':>10}   ({args.cases} held-out clips of {args.groups * 4} frames each)")
    for family, acc in scores.items():
        print(f"{family:<10} {acc:>10.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(scores, indent=2))
    return 0


def _out_path(text: str | None, option: str, suffix: str | None = None) -> Path | None:
    if not text:
        return None
    path = Path(text)
    if path.is_dir():
        raise OptionError(f"{option} {text}: is a folder; give a file name")
    if suffix and path.suffix.lower() != suffix:
        raise OptionError(f"{option} {text}: must be a file name ending in {suffix}")
    if not path.parent.is_dir():
        raise OptionError(f"{option} {text}: the folder {path.parent} does not exist")
    return path


def _data_folder(args, task, subtitles: bool) -> Path:
    """``--data``, or the benchmark's files from its Hugging Face dataset (downloaded or cached)."""
    if args.data is not None:
        return Path(args.data)
    if task.hub is None:
        raise OptionError(f"{task.name}: give --data DIR (a folder with the benchmark's files)")
    from .hub import fetch

    data = fetch(task.name, task.hub, subtitles=subtitles)
    print(f"{task.name}: the files of the Hugging Face dataset {task.hub.repo}, in {data}", file=sys.stderr)
    return data


def _write_prompts(path: Path, task, samples, skipped, the_run, max_frames) -> None:
    """``--prompts-only``: every sample's prompt and sampling plan, and the annotation rows skipped, as JSON lines."""
    from .benchmarks import prompt_record

    with path.open("w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(prompt_record(task, sample, the_run, max_frames)) + "\n")
        for s in skipped:
            f.write(json.dumps({"task": task.name, "id": s.id, "skipped": s.reason}) + "\n")
    print(f"{path}: {len(samples)} prompts, {len(skipped)} annotation rows skipped")


def _run_samples(args, task, todo, the_run, rows_path: Path | None) -> list[dict]:
    """The samples run locally (``--workers``) or as Ray tasks, each row appended to ``--rows`` as it comes."""
    from .. import DEFAULT_MODEL
    from .benchmarks import append_row, run

    model = args.model or str(DEFAULT_MODEL)
    bar = None
    if args.progress or sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"{task.name} {the_run.label}", unit="sample", file=sys.stderr)

    def on_row(row):
        if rows_path:
            append_row(rows_path, row)
        if bar is not None:
            bar.update(1)

    try:
        if args.ray is not None:
            from .distributed import run_ray

            return run_ray(args.ray, model, task, todo, the_run, on_row=on_row,
                           dtype=args.dtype, max_frames=args.max_frames)
        return run(model, task, todo, the_run, workers=args.workers, on_row=on_row,
                   device=args.device, dtype=args.dtype, max_frames=args.max_frames)
    finally:
        if bar is not None:
            bar.close()


def run_task(args) -> int:
    from .benchmarks import read_rows, summarize
    from .selection import Run, check_categories, read_selection
    from .tasks import TASKS

    task = TASKS[args.benchmark]
    subtitles = getattr(args, "subtitles", False)
    if args.data is not None and not Path(args.data).is_dir():
        raise OptionError(f"--data {args.data}: not a folder (download the benchmark and give its folder)")
    json_path, plot_path = _out_path(args.json, "--json"), _out_path(args.plot, "--plot", ".png")
    prompts_path, rows_path = _out_path(args.prompts_only, "--prompts-only"), _out_path(args.rows, "--rows")
    selection = read_selection(args.selection) if args.selection else None
    the_run = Run(args.mode, selection, args.topk, args.decode_chunk, args.kv_budget)
    if args.ray is not None:
        _check_ray()
    samples, skipped = task.read(_data_folder(args, task, subtitles), subtitles=subtitles)
    if selection is not None:
        labels = {task.selection_category(s.categories) for s in samples} - {None}
        check_categories(selection, task.name, task.selection_field, labels)
    if args.limit:
        samples = samples[: args.limit]
    for s in skipped:
        print(f"skipped {s.id}: {s.reason}", file=sys.stderr)
    if prompts_path:
        _write_prompts(prompts_path, task, samples, skipped, the_run, args.max_frames)
        return 0
    kept = read_rows(rows_path) if rows_path else []
    done = {r["id"] for r in kept if r["run"] == the_run.label}
    todo = [s for s in samples if s.id not in done]
    if done:
        print(f"{rows_path}: {len(samples) - len(todo)} of {len(samples)} samples already run ({the_run.label})",
              file=sys.stderr)
    rows = _run_samples(args, task, todo, the_run, rows_path)
    ids = {s.id for s in samples}
    if rows_path:  # the summary covers every row kept for these samples (resumed runs and other modes too)
        rows = [r for r in read_rows(rows_path) if r["id"] in ids and r.get("task", task.name) == task.name]
        rows = list({(r["id"], r["run"]): r for r in rows}.values())
    summary = summarize(task, rows, skipped)
    _report(summary, json_path, plot_path)
    return 0


def rescore(args) -> int:
    from .benchmarks import read_log, summarize
    from .tasks import TASKS

    task = TASKS[args.benchmark]
    json_path, plot_path = _out_path(args.json, "--json"), _out_path(args.plot, "--plot", ".png")
    log = Path(args.log)
    if not log.is_file():
        raise InputError(f"{args.log}: no such file")
    summary = summarize(task, read_log(task, log))
    _report(summary, json_path, plot_path)
    return 0


def _check_ray() -> None:
    try:
        from ray.util import ActorPool  # noqa: F401
    except ImportError:
        raise OptionError("--ray needs Ray (pip install 'videoxl[ray]', or pip install ray); or use --workers N") \
            from None


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_table(summary: dict) -> str:
    """The summary as text: the headline per run, then each category field with one column per run."""
    runs = summary["runs"]
    labels = list(runs)
    width = max([12] + [len(label) for label in labels])
    lines = [f"{summary['task']}"]
    head = f"{'':<28}" + "".join(f"{label:>{width + 2}}" for label in labels)
    lines.append(head)
    metric = next(iter(runs.values()))["metric"] if runs else "score"
    lines.append(f"{metric:<28}" + "".join(f"{_fmt(r['score']):>{width + 2}}" for r in runs.values()))
    for extra in ("overall", "R@0.3", "R@0.5", "R@0.7", "kv_ratio"):
        if any(extra in r for r in runs.values()):
            lines.append(f"{extra:<28}" + "".join(f"{_fmt(r.get(extra)):>{width + 2}}" for r in runs.values()))
    lines.append(f"{'scored':<28}" + "".join(f"{r['n']:>{width + 2}}" for r in runs.values()))
    lines.append(f"{'skipped':<28}" + "".join(f"{len(r['skipped']):>{width + 2}}" for r in runs.values()))
    if any("excluded_empty" in r for r in runs.values()):
        lines.append(f"{'empty answers (excluded)':<28}"
                     + "".join(f"{r.get('excluded_empty', 0):>{width + 2}}" for r in runs.values()))
    fields = list(dict.fromkeys(f for r in runs.values() for f in r.get("categories", {})))
    for field in fields:
        lines.append(f"-- {field}")
        names = sorted({c for r in runs.values() for c in r.get("categories", {}).get(field, {})})
        for name in names:
            cells = []
            for r in runs.values():
                cell = r.get("categories", {}).get(field, {}).get(name)
                cells.append("-" if cell is None else f"{_fmt(cell['score'])} ({cell['n']})")
            lines.append(f"{name[:28]:<28}" + "".join(f"{c:>{width + 2}}" for c in cells))
    if summary.get("annotation_skipped"):
        lines.append(f"annotation rows skipped: {len(summary['annotation_skipped'])}")
        lines += [f"  {s['id']}: {s['reason']}" for s in summary["annotation_skipped"]]
    for label, r in runs.items():
        lines += [f"  [{label}] skipped {s['id']}: {s['reason']}" for s in r["skipped"]]
    return "\n".join(lines)


def _report(summary: dict, json_path: Path | None, plot_path: Path | None) -> None:
    print(format_table(summary), flush=True)
    if json_path:
        json_path.write_text(json.dumps(summary, indent=2))
    if plot_path:
        from .benchmarks import plot

        plot(summary, plot_path)


def main(argv: list[str] | None = None) -> int:
    """Run the commands without ``videoxl/cli.py`` (tests, and until the CLI wires them)."""
    parser = argparse.ArgumentParser(prog="videoxl eval")
    add_parsers(parser.add_subparsers(dest="task", required=True))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as e:
        print(f"videoxl: error: {e}", file=sys.stderr)
        return 2
