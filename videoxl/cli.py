"""The ``videoxl`` command line.

Every argument is checked before any heavy work (no frame is decoded and no weight loaded for a bad option, path
or question). Exit codes: 0 answered, 2 bad input (the message names it), 1 internal fault, 130 interrupted.
The module imports nothing heavy at the top, so ``videoxl --help`` answers at once.
"""

from __future__ import annotations

import signal
import sys


def _interrupted_early(signum, frame):  # Ctrl-C before main() is running: same line, same code, no traceback
    sys.stderr.write("videoxl: interrupted\n")
    sys.stderr.flush()
    import os

    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_early)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from . import defaults  # noqa: E402
from .errors import InputError, OptionError  # noqa: E402
from .options import device_name, fraction, lengths, on_off, rate, share_or_off, unit, whole  # noqa: E402

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Bars:
    """tqdm progress bars for the ingest stages, shown only on a terminal (or when forced)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bars = enabled, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            unit = "frame" if stage == "encode" else "chunk"
            bar = self.bars[stage] = tqdm(total=total, desc=f"{'decode+encode' if stage == 'encode' else stage}",
                                          unit=unit, file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


DEFAULT_MODEL_NOTE = (
    "The default model is videoxl's own small model, trained from scratch on a CPU on the synthetic world of "
    "videoxl.synth (coloured shapes on coloured backgrounds, scene cuts, object icons, stars): it answers "
    "questions about such videos (which object appears, when, which came first, how many stars, what colour or "
    "shape at a time), best at which object appears and in what order, and knows nothing else. For real videos pass --model BAAI/Video-XL-2 (or a local copy of it).")


def default_model() -> str:
    from . import DEFAULT_MODEL

    return str(DEFAULT_MODEL)


def _add_ask(sub) -> None:
    p = sub.add_parser("ask", help="answer a question about a video", description=(
        "Answer a question about a video file (or an image). VIDEO 'demo' is the demo video, generated on first "
        "use (unless a file named 'demo' exists here). " + DEFAULT_MODEL_NOTE))
    p.add_argument("video", help="video file (any container FFmpeg reads), image file, or 'demo'; local files only")
    p.add_argument("question", help="the question (UTF-8, at most --max-question-tokens tokens)")
    p.add_argument("--model", default=None, help="checkpoint folder or hub id, e.g. BAAI/Video-XL-2 "
                                                 "(default: the bundled synthetic-world model)")
    frames = p.add_argument_group("frames")
    frames.add_argument("--max-frames", type=whole(1, defaults.FRAMES_LIMIT), default=defaults.MAX_FRAMES,
                        help=f"frame budget (default {defaults.MAX_FRAMES}, at most {defaults.FRAMES_LIMIT:,})")
    frames.add_argument("--fps", type=rate, default=defaults.FPS,
                        help=f"base sampling rate (default {defaults.FPS:g})")
    frames.add_argument("--max-fps", type=rate, default=defaults.MAX_FPS,
                        help=f"highest rate for short videos (default {defaults.MAX_FPS:g})")
    chunking = p.add_argument_group("chunked pre-fill")
    chunking.add_argument("--chunk", type=whole(1), default=defaults.CHUNK,
                          help=f"chunk size in 4-frame groups (default {defaults.CHUNK})")
    chunking.add_argument("--window", type=whole(-1), default=defaults.WINDOW,
                          help=f"previous chunks a chunk sees (default {defaults.WINDOW}; -1: all)")
    decoding = p.add_argument_group("bi-level decoding")
    decoding.add_argument("--topk", type=whole(0), default=defaults.TOPK,
                          help=f"relevant chunks reloaded dense besides the first and last (default {defaults.TOPK})")
    decoding.add_argument("--kv-budget", type=fraction, help="instead of --topk: fraction of the dense KV to use")
    decoding.add_argument("--decode-chunk", type=whole(1), default=defaults.DECODE_CHUNK,
                          help=f"decoding chunk size in groups (default {defaults.DECODE_CHUNK}: 4 frames)")
    decoding.add_argument("--follow", type=whole(0), default=defaults.FOLLOW,
                          help="the N best chunks each bring the chunk after them, within --topk "
                               f"(default {defaults.FOLLOW})")
    decoding.add_argument("--follow-tail", type=share_or_off, default=defaults.FOLLOW_TAIL,
                          help="the best chunk brings the chunk after it, within --topk, when at least this share "
                               "of its attention falls on its last sixteenth "
                               f"(default {defaults.FOLLOW_TAIL}; off: never)")
    decoding.add_argument("--calibrate", type=on_off, default=defaults.CALIBRATE,
                          help="score chunks by what the question adds over its chat template alone (default "
                               f"{'on' if defaults.CALIBRATE else 'off'}; needs retrieval heads)")
    decoding.add_argument("--sparse-stamps", type=on_off, default=defaults.SPARSE_STAMPS,
                          help="sparse chunks keep their timestamp tokens in the answer's cache (default "
                               f"{'on' if defaults.SPARSE_STAMPS else 'off'}: only dense chunks carry theirs)")
    decoding.add_argument("--min-confidence", type=unit,
                          help="decode every chunk dense when the relevance confidence is below this (default: off)")
    decoding.add_argument("--dense", action="store_true", help="decode with every chunk dense")
    decoding.add_argument("--max-new-tokens", type=whole(1, defaults.NEW_TOKENS_LIMIT),
                          default=defaults.MAX_NEW_TOKENS,
                          help=f"answer length limit (default {defaults.MAX_NEW_TOKENS})")
    decoding.add_argument("--max-question-tokens", type=whole(1), default=defaults.QUESTION_TOKENS,
                          help=f"longest question accepted, in tokens (default {defaults.QUESTION_TOKENS})")
    p.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--explain", metavar="FILE.png", help="draw the timeline with chunk relevance and thumbnails")
    p.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    p.set_defaults(run=_ask)


def _video_argument(text: str) -> str:
    """The VIDEO argument checked before any work: 'demo' (written on first use), or a readable local file."""
    from .video.reader import check_file  # imports PyAV, not torch

    if text == "demo" and not Path("demo").is_file():
        from .synth.demo import demo_video

        return str(demo_video())
    return check_file(text)


def _png_target(text: str, option: str) -> Path:
    """An output picture path checked up front: ends in .png, not a folder, and its folder takes new files."""
    path = Path(text)
    if path.is_dir():
        raise OptionError(f"{option} {text}: is a folder; give a file name ending in .png")
    if path.suffix.lower() != ".png":
        raise OptionError(f"{option} {text}: must be a file name ending in .png")
    folder = path.parent
    if not folder.is_dir():
        raise OptionError(f"{option} {text}: the folder {folder} does not exist")
    try:  # the real test: root passes every permission check, a read-only file system does not
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".videoxl-check-", suffix=".png"):
            pass
    except OSError as e:
        raise OptionError(f"{option} {text}: cannot write in {folder} ({e.strerror})") from None
    return path


def _write_png_atomically(path: Path, draw) -> None:
    """Call ``draw(temporary path)``, then rename it onto ``path``: never half a picture."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".videoxl-", suffix=".png")
    os.close(fd)
    try:
        draw(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _ask(args) -> int:
    from .question import check_question_text

    check_question_text(args.question)
    video = _video_argument(args.video)
    explain = _png_target(args.explain, "--explain") if args.explain else None

    import torch

    from .engine.decode import DecodeConfig
    from .engine.prefill import PrefillConfig
    from .model import VideoXL2, checkpoint
    from .model.videoxl2 import question_ids, resolve_device
    from .pipeline import IMAGE_SUFFIXES
    from .video import probe

    device = resolve_device(args.device)
    source = video if Path(video).suffix.lower() in IMAGE_SUFFIXES else probe(video)  # a bad video fails here
    prefill_config = PrefillConfig(chunk=args.chunk, window=None if args.window == -1 else args.window)
    if args.dense:
        decode_config = DecodeConfig(max_new_tokens=args.max_new_tokens)
    else:
        decode_config = DecodeConfig(topk=None if args.kv_budget else args.topk, kv_budget=args.kv_budget,
                                     chunk=args.decode_chunk, max_new_tokens=args.max_new_tokens,
                                     follow=args.follow, follow_tail=args.follow_tail,
                                     calibrate=args.calibrate, sparse_stamps=args.sparse_stamps,
                                     min_confidence=args.min_confidence)
    started = time.perf_counter()
    folder = checkpoint.resolve(args.model or default_model())
    tokenizer = checkpoint.load_tokenizer(folder)
    question_ids(tokenizer, args.question, args.max_question_tokens)  # too long: refused before the weights load
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = VideoXL2.from_pretrained(folder, dtype=dtype, device=device, tokenizer=tokenizer)
    load_s = time.perf_counter() - started
    bars = _Bars(args.progress or sys.stderr.isatty())
    try:
        session = model.ingest(source, max_frames=args.max_frames, fps=args.fps, max_fps=args.max_fps,
                               prefill_config=prefill_config, on_progress=bars, thumbnails=explain is not None)
    finally:
        bars.close()
    answer = session.ask(args.question, decode_config, max_question_tokens=args.max_question_tokens)
    stats = session.stats
    flops = session.video.stats  # pre-fill accounting: what the chunked pre-fill computed versus dense
    seconds = {"load": load_s, **stats.seconds, "answer": sum(answer.seconds.values())}
    # the answer goes out first: nothing after it (the picture) can lose it
    if args.json:
        print(json.dumps({
            "answer": answer.text.strip(), "frames": stats.frames, "tokens": stats.tokens, "chunks": answer.chunks,
            "dense_chunks": len(answer.dense_chunks), "dense_chunk_indices": answer.dense_chunks,
            "kv_bytes_dense": answer.kv_bytes_dense, "kv_bytes_used": answer.kv_bytes_used,
            "confidence": None if answer.confidence is None else round(answer.confidence, 4),
            "fallback": answer.fallback, "tail_share": None if answer.tail is None else round(answer.tail, 4),
            "prefill_attn_flops": flops.attn_flops, "dense_attn_flops": flops.dense_attn_flops,
            "prefill_total_flops": flops.total_flops, "dense_total_flops": flops.dense_total_flops,
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}), flush=True)
    else:
        print(answer.text.strip(), flush=True)
        mb = 2 ** 20
        sure = "" if answer.confidence is None else f" (relevance confidence {answer.confidence:.2f})"
        if answer.fallback:
            sure += f" ({answer.fallback})"
        if answer.tail is not None and answer.tail >= decode_config.follow_tail:
            sure += f" (the best chunk's end holds {answer.tail:.0%} of its attention: the next chunk is dense too)"
        print(f"[{stats.frames} frames, {stats.tokens} tokens, {answer.chunks} chunks, "
              f"{len(answer.dense_chunks)} dense{sure}; KV {answer.kv_bytes_dense / mb:.2f} MB dense, "
              f"{answer.kv_bytes_used / mb:.2f} MB used; pre-fill FLOPs vs dense: attention "
              f"{flops.attn_flops / flops.dense_attn_flops:.0%}, "
              f"total {flops.total_flops / flops.dense_total_flops:.0%}; "
              + ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()) + "]", file=sys.stderr, flush=True)
    if explain is not None:
        from .explain import render_explanation

        try:
            _write_png_atomically(explain, lambda tmp: render_explanation(
                tmp, args.question, answer, session.group_times, decode_config.chunk or prefill_config.chunk,
                session.thumbnails, stats.frames, stats.tokens))
        except OSError as e:
            print(f"videoxl: error: the answer is above, but --explain {explain} could not be written "
                  f"({e.strerror or e})", file=sys.stderr)
            return EXIT_INTERNAL
    return EXIT_OK


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="write the demo video and print questions about it")
    p.add_argument("path", nargs="?", default="demo.mp4")
    p.set_defaults(run=_demo)


def _demo(args) -> int:
    path = Path(args.path)
    if path.is_dir():
        raise OptionError(f"{path}: is a folder; give the demo video's file name (e.g. {path / 'demo.mp4'})")
    if not path.parent.is_dir():
        raise OptionError(f"{path}: the folder {path.parent} does not exist")
    from .synth.demo import demo_script, demo_video

    path = demo_video(path)
    print(path)
    for qa in demo_script()[1]:
        print(f"  videoxl ask {path} {json.dumps(qa.question)}    # expected: {qa.answer}")
    return EXIT_OK


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="the published long-video benchmarks, and videoxl's own on synthetic videos")
    tasks = p.add_subparsers(dest="task", required=True)
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
    n.add_argument("--follow-tail", type=share_or_off, default=defaults.FOLLOW_TAIL,
                   help=f"bi-level decoding's --follow-tail (default {defaults.FOLLOW_TAIL}), recorded in every row")
    n.add_argument("--calibrate", type=on_off, default=defaults.CALIBRATE,
                   help="bi-level decoding's --calibrate (default "
                        f"{'on' if defaults.CALIBRATE else 'off'}), recorded in every row")
    n.add_argument("--sparse-stamps", type=on_off, default=defaults.SPARSE_STAMPS,
                   help="bi-level decoding's --sparse-stamps (default "
                        f"{'on' if defaults.SPARSE_STAMPS else 'off'}), recorded in every row")
    n.add_argument("--device", type=device_name)
    n.set_defaults(run=_eval_needle)
    f = tasks.add_parser("families", help="accuracy per question family (needle, grounding, order, count, detail)")
    f.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    f.add_argument("--cases", type=whole(1), default=20, help="clips per family (default 20)")
    f.add_argument("--groups", type=whole(2), default=16, help="4-frame groups per clip (default 16)")
    f.add_argument("--json", type=str, help="write {family: accuracy %%} here")
    f.add_argument("--device", type=device_name)
    f.set_defaults(run=_eval_families)
    from .eval.commands import add_parsers as add_benchmarks  # mlvu, videomme, ..., rescore (light imports)

    add_benchmarks(tasks)


def _eval_needle(args) -> int:
    if args.heatmap:
        _png_target(args.heatmap, "--heatmap")
    from .eval import needle

    lengths = args.lengths or ([256, 2048] if args.quick else [256, 512, 1024, 2048, 4096, 8192])
    cases = args.cases or (10 if args.quick else 50)
    rows_path = Path(args.rows) if args.rows else None
    kept = needle.read_rows(rows_path, repair=True) if rows_path else []

    def spelled(value):  # as the option takes it
        return "off" if value in (None, False) else "on" if value is True else str(value)

    # each row records its decoding; rows written before an option hold none: they were decoded without it
    # (follow_tail off, calibrate off) or, for sparse_stamps, with it (sparse chunks kept their timestamps)
    decoding = {"follow_tail": (args.follow_tail, None), "calibrate": (args.calibrate, False),
                "sparse_stamps": (args.sparse_stamps, True)}
    for name, (value, before) in decoding.items():
        other = sorted({spelled(r.get(name, before)) for r in kept if r.get(name, before) != value})
        if other:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{rows_path} holds rows decoded with {flag} {', '.join(other)}, not {spelled(value)}: "
                             "keep each decoding's rows in a file of its own")
    planned = {needle.key(case) for case in needle.plan(lengths, cases, haystack=args.haystack)}
    done_before = {needle.key(r) for r in kept} & planned
    if done_before:
        print(f"{rows_path}: {len(done_before)} of {len(planned)} cases already measured; running the rest")
    header = f"{'haystack':>9} {'frames':>6} {'cases':>5} {'tokens':>7} {'dense':>6} {'chunked':>7} {'bilevel':>7} " \
             f"{'found':>5} {'KV':>5} {'dense s':>7} {'chunk s':>7} {'bilev s':>7}"
    print(header)
    rows: list[dict] = [r for r in kept if needle.key(r) in planned]

    def report(frames):
        s = needle.summarize([r for r in rows if r["frames"] == frames])[0]
        print(f"{s['haystack']:>9} {s['frames']:>6} {s['cases']:>5} {s['tokens']:>7} {s['acc_dense']:>6.0f} "
              f"{s['acc_chunked']:>7.0f} {s['acc_bilevel']:>7.0f} {s['needle_selected']:>5.0f} {s['kv_ratio']:>5.2f} "
              f"{s['dense_s']:>7.2f} {s['chunked_s']:>7.2f} {s['bilevel_s']:>7.2f}", flush=True)

    def everything():  # what --json and --heatmap cover: this run's rows, or all rows kept in --rows
        return needle.read_rows(rows_path) if rows_path else rows

    def on_case(row):
        rows.append(row)
        if rows_path:
            needle.append_row(rows_path, row)
        if sum(r["frames"] == row["frames"] for r in rows) == cases:
            report(row["frames"])
            if args.json:  # after every length, so a long run keeps what it measured
                needle.write_json(everything(), Path(args.json))

    for frames in lengths:
        if sum(r["frames"] == frames for r in rows) == cases:
            report(frames)
    needle.run(args.model or default_model(), lengths, cases, on_case=on_case, skip=done_before, workers=args.workers,
               device=args.device, haystack=args.haystack,
               bilevel=dataclasses.replace(needle.BILEVEL, **{name: value for name, (value, _) in decoding.items()}))
    print("accuracy in %; found: cases whose needle chunk was dense in bi-level decoding; KV: bi-level cache over "
          "dense; seconds per case after encoding (pre-fill + answer)"
          + (f"; {args.workers} worker processes sharing the CPU" if args.workers > 1 else ""))
    if args.json:  # every haystack kept in --rows, one row per haystack and length
        needle.write_json(everything(), Path(args.json))
    if args.heatmap:
        needle.heatmap([r for r in everything() if needle.haystack_of(r) == args.haystack], Path(args.heatmap))
    return EXIT_OK


def _eval_families(args) -> int:
    from .eval.families import family_accuracy
    from .model import VideoXL2

    model = VideoXL2.from_pretrained(args.model or default_model(), device=args.device)
    scores = family_accuracy(model, cases=args.cases, groups=args.groups)
    print(f"{'family':<10} {'accuracy %':>10}   ({args.cases} held-out clips of {args.groups * 4} frames each)")
    for family, acc in scores.items():
        print(f"{family:<10} {acc:>10.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(scores, indent=2))
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the option and what is wrong with it, not the whole usage."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="videoxl", description="Question answering over very long videos.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_ask(sub)
    _add_demo(sub)
    _add_eval(sub)
    from .live.watch import add_parser as add_watch  # light: no torch until the command runs

    add_watch(sub)
    if argv is not None and argv[:1] == ["serve"]:
        from .serve.__main__ import add_parser as add_serve

        add_serve(sub)
    else:  # listed without importing the server (and torch), so --help stays instant
        sub.add_parser("serve", help="serve video QA over an OpenAI-compatible HTTP API")
    return parser


def _run(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = _parser(argv).parse_args(argv)  # a bad option exits 2 here, naming it, before anything is loaded
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except InputError as e:
        print(f"videoxl: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # an internal fault, not the user's input
        if _interrupts:  # Ctrl-C inside an extension's import, which re-raised it as its own error (numpy: ImportError)
            raise KeyboardInterrupt from e
        print(f"videoxl: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INTERNAL


_interrupts: list[int] = []  # SIGINTs received since main() began


def _interrupt(signum, frame):
    _interrupts.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The ``videoxl`` command; returns the exit code. Ctrl-C at any moment ends it with one line and 130."""
    signal.signal(signal.SIGINT, _interrupt)  # from here on Ctrl-C unwinds, so files are cleaned up
    try:
        return _run(argv)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while shutting down stays quiet too
        print("videoxl: interrupted", file=sys.stderr)
        # Leave now: an interrupt that landed inside an extension's own Python call (torch's import runs some) marks
        # the interpreter, which would otherwise end itself by SIGINT (-2) instead of 130. Everything that had to be
        # cleaned up was, while the exception unwound.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
