"""``videoxl watch SOURCE``: ingest a live stream (or a growing file) and answer questions while it runs.

Questions come from stdin, one per line, and from ``--ask`` (asked every ``--every`` seconds of stream, and once
more when the stream ends), each about the whole stream so far or, with ``--since``, about part of it. Each answer
says the stream time it covers. Progress goes to stderr; answers to stdout, with ``--json`` one object per line
(``question``, ``answer``, ``stream_start``, ``stream_time``, ...). Imports stay light until the command runs, so
``videoxl --help`` needs no torch.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import sys
import threading
import time

from .. import decoding, defaults
from ..errors import OptionError
from ..options import device_name, rate
from . import since

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Seconds from '90', '90s', '5m' or '1.5h' (a leading '-' is allowed: '-5m' means the last five minutes)."""
    match = re.fullmatch(r"\s*-?\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive duration such as 30s, 5m or 1h, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def add_parser(sub) -> None:
    """Register ``watch`` on the CLI's subcommands."""
    p = sub.add_parser("watch", help="ingest a live stream and answer questions about it as it runs", description=(
        "Ingest a live stream (tcp://, udp://, rtsp://, rtmp://, srt://, an HLS .m3u8 URL, or a file being written "
        "with --follow) chunk by chunk, and answer questions about everything seen so far: one per line on "
        "stdin, or --ask (every --every seconds of stream, and when it ends). Groups older than --horizon keep only "
        "their sparse KVs; with --keep, groups older than that are forgotten, and memory stays flat for good."))
    p.add_argument("source", help="stream URL, or a local file with --follow")
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    p.add_argument("--fps", type=rate, default=defaults.FPS, help=f"frames kept per second (default {defaults.FPS:g})")
    p.add_argument("--follow", action="store_true", help="SOURCE is a file still being written: read it as it grows")
    p.add_argument("--horizon", type=duration, default=600.0,
                   help="keep everything dense for this much recent stream (default 10m); older groups stay sparse")
    p.add_argument("--keep", type=duration, default=None,
                   help="answer about this much recent stream at most, forgetting older groups, so that memory stays "
                        "flat however long the stream runs (at least --horizon; default: keep everything)")
    p.add_argument("--reconnect", type=duration, default=30.0,
                   help="how long a dropped source may stay away before it counts as ended (default 30s)")
    p.add_argument("--idle", type=duration, default=5.0,
                   help="with --follow: the file has ended once it has not grown for this long (default 5s)")
    p.add_argument("--ask", action="append", default=[], metavar="QUESTION", help="a question to ask (repeatable)")
    p.add_argument("--every", type=duration, help="ask the --ask questions every this much stream time")
    since.add_argument(p)
    p.add_argument("--device", type=device_name, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="one JSON object per answer")
    p.add_argument("--progress", action="store_true", help="print ingest progress to stderr even when not a terminal")
    decoding.add_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    """The ``watch`` command; returns the exit code."""
    from ..question import check_question_text
    from .source import check_source

    for question in args.ask:
        check_question_text(question)
    if args.every is not None and not args.ask:
        raise OptionError("--every needs a question to ask: give it with --ask")
    check_source(args.source, follow=args.follow)

    from ..model import VideoXL2
    from ..model.videoxl2 import resolve_device
    from .source import LiveSource, SourceOptions
    from .stream import LiveOptions, LiveStream

    options = LiveOptions(horizon=args.horizon, keep=args.keep)  # refused before the model loads
    model = VideoXL2.from_pretrained(args.model or _default_model(), device=resolve_device(args.device))
    source = LiveSource(args.source, SourceOptions(fps=args.fps, follow=args.follow, reconnect=args.reconnect,
                                                   idle=args.idle))
    show = args.progress or sys.stderr.isatty()

    def progress(stats) -> None:
        if show:
            print(f"[ingested {stats.stream_time:.1f}s of stream, lag {stats.lag:.1f}s, {stats.chunks} chunks "
                  f"({stats.resident_chunks} dense in memory), ingest paused {stats.paused:.1f}s for questions]",
                  file=sys.stderr, flush=True)

    live = LiveStream(model, source, options, on_progress=progress).start()
    config = decoding.options(model.profile, **decoding.given(args))
    questions: queue.Queue = queue.Queue()
    threading.Thread(target=_read_questions, args=(questions,), daemon=True).start()
    next_ask = args.every
    try:
        while True:
            running = live.running
            while not questions.empty():
                _answer(live, questions.get(), config, args)
            if args.every is not None and live.stats.stream_time >= next_ask:
                for question in args.ask:
                    _answer(live, question, config, args)
                while next_ask <= live.stats.stream_time:
                    next_ask += args.every
            if not running:
                break
            time.sleep(0.05)
        if live.error is not None and not live.stats.groups:
            raise OptionError(str(live.error))
        for question in args.ask:  # the final answers, at the stream's end
            _answer(live, question, config, args)
    finally:
        live.close()
    if live.error is not None:
        print(f"videoxl: warning: ingest stopped early: {live.error}", file=sys.stderr)
    return 0


def _default_model() -> str:
    from .. import DEFAULT_MODEL

    return str(DEFAULT_MODEL)


def _read_questions(out: queue.Queue) -> None:
    for line in sys.stdin:
        if line.strip():
            out.put(line.strip())


def _answer(live, question: str, config, args) -> None:
    from ..errors import InputError

    try:
        reply = live.ask(question, *config, since=args.since)
    except InputError as e:
        print(f"videoxl: {e}", file=sys.stderr, flush=True)
        return
    if args.json:
        print(json.dumps({"question": question, "answer": reply.text.strip(), "stream_start": round(reply.start, 3),
                          "stream_time": round(reply.stream_time, 3), "groups": reply.groups,
                          "dense_chunks": reply.answer.dense_chunks, "waited": round(reply.waited, 3),
                          "seconds": {k: round(v, 3) for k, v in reply.answer.seconds.items()}}), flush=True)
    else:
        covered = f"{reply.start:.1f}-" if args.since is not None else ""
        print(f"[{covered}{reply.stream_time:.1f}s] {question}\n{reply.text.strip()}", flush=True)
