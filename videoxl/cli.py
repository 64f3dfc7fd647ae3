"""The ``videoxl`` command line.

Every argument is checked before any heavy work (no frame is decoded and no weight loaded for a bad option, path
or question). Exit codes: 0 answered, 2 bad input (the message names it), 1 internal fault, 130 interrupted, 143
terminated (SIGTERM).
The module imports nothing heavy at the top, so ``videoxl --help`` answers at once.
"""

from __future__ import annotations

import sys

from . import interrupt

interrupt.install_early()  # Ctrl-C or SIGTERM before main() is running: one line, 130 or 143, no traceback

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from . import decoding, defaults  # noqa: E402
from .errors import InputError, OptionError  # noqa: E402
from .options import add_compile, device_name, rate, whole  # noqa: E402
from .outputs import ProgressBars  # noqa: E402
from .outputs import png_target as _png_target, write_atomically as _write_png_atomically  # noqa: E402

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    decoding.add_arguments(p)
    p.add_argument("--max-question-tokens", type=whole(1), default=defaults.QUESTION_TOKENS,
                   help=f"longest question accepted, in tokens (default {defaults.QUESTION_TOKENS})")
    p.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="default: the model's profile on a GPU (float16 for the released weights), else the "
                        "checkpoint's torch_dtype, else bf16 on GPU and fp32 on CPU")
    add_compile(p)
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


def _ask(args) -> int:
    from .question import check_question_text

    check_question_text(args.question)
    video = _video_argument(args.video)
    explain = _png_target(args.explain, "--explain") if args.explain else None
    given = decoding.given(args)
    decoding.options(**given)  # a bad combination is refused before anything loads

    from .model.files import check as check_checkpoint  # neither imports torch: bad input is refused at once
    from .video.reader import open_video

    source = open_video(video)
    folder = check_checkpoint(args.model or default_model())

    from .engine.prefill import PrefillConfig
    from .pipeline import ingest, load

    started = time.perf_counter()
    model = load(folder, args.device, args.dtype, args.question, args.max_question_tokens)
    model.compile_generation = args.compile
    load_s = time.perf_counter() - started
    bars = ProgressBars(args.progress or sys.stderr.isatty())
    try:
        session = ingest(model, source, max_frames=args.max_frames, fps=args.fps, max_fps=args.max_fps,
                         prefill_config=PrefillConfig(chunk=args.chunk, window=None if args.window == -1 else
                                                      args.window),
                         on_progress=bars, thumbnails=explain is not None)
    finally:
        bars.close()
    answer = session.ask(args.question, max_question_tokens=args.max_question_tokens, **given)
    report = session.report(answer, load_s)
    # the answer goes out first: nothing after it (the picture) can lose it
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        print(answer.text.strip(), flush=True)
        print(_stats_line(report), file=sys.stderr, flush=True)
    if explain is not None:
        from .explain import render_explanation

        chunk = session.options(**given)[0].chunk or session.video.config.chunk
        try:
            _write_png_atomically(explain, lambda tmp: render_explanation(
                tmp, args.question, answer, session.group_times, chunk, session.thumbnails, report["frames"],
                report["tokens"]))
        except OSError as e:
            print(f"videoxl: error: the answer is above, but --explain {explain} could not be written "
                  f"({e.strerror or e})", file=sys.stderr)
            return EXIT_INTERNAL
    return EXIT_OK


def _stats_line(r: dict) -> str:
    """The one stats line of ``videoxl ask`` (stderr): what was decoded, kept and computed, and how long it took."""
    mb = 2 ** 20
    notes = "" if r["confidence"] is None else f" (relevance confidence {r['confidence']:.2f})"
    if r["fallback"]:
        notes += f" ({r['fallback']})"
    if r["followed_tail"]:
        notes += f" (the best chunk's end holds {r['tail_share']:.0%} of its attention: the next chunk is dense too)"
    return (f"[{r['frames']} frames, {r['tokens']} tokens, {r['chunks']} chunks, {r['dense_chunks']} dense{notes}; "
            f"KV {r['kv_bytes_dense'] / mb:.2f} MB dense, {r['kv_bytes_used'] / mb:.2f} MB used; pre-fill FLOPs vs "
            f"dense: attention {r['prefill_attn_flops'] / r['dense_attn_flops']:.0%}, "
            f"total {r['prefill_total_flops'] / r['dense_total_flops']:.0%}; profile {r['profile']}; "
            + ", ".join(f"{k} {v:.2f}s" for k, v in r["seconds"].items()) + "]")


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
    from .eval.commands import add_parsers  # needle, families, mlvu, videomme, ..., rescore (light imports)

    add_parsers(p.add_subparsers(dest="task", required=True))


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


def run(argv: list[str] | None) -> int:
    """The command without the signal handling of :func:`main`: parse ``argv`` and run it; the exit code."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = _parser(argv).parse_args(argv)  # a bad option exits 2 here, naming it, before anything is loaded
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except InputError as e:
        print(f"videoxl: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # an internal fault, not the user's input
        if interrupt.received:  # a signal in an extension's import, re-raised as its own error (numpy: ImportError)
            raise KeyboardInterrupt from e
        print(f"videoxl: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> int:
    """The ``videoxl`` command; returns the exit code. Ctrl-C or SIGTERM at any moment ends it with one line and
    130 or 143, after cleaning up."""
    interrupt.install()  # from here on a signal unwinds, so files are cleaned up
    try:
        code = run(argv)
    except KeyboardInterrupt:
        interrupt.leave()
    interrupt.finished()
    return code


if __name__ == "__main__":
    sys.exit(main())
