"""The ``videoxl`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


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


def _kv_budget(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("--kv-budget is a fraction of the dense KV cache in (0, 1]")
    return value


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
        "use. " + DEFAULT_MODEL_NOTE))
    p.add_argument("video", help="video file (any container FFmpeg reads), image file, or 'demo'")
    p.add_argument("question")
    p.add_argument("--model", default=None, help="checkpoint folder or hub id, e.g. BAAI/Video-XL-2 "
                                                 "(default: the bundled synthetic-world model)")
    frames = p.add_argument_group("frames")
    frames.add_argument("--max-frames", type=int, default=512, help="frame budget (default 512)")
    frames.add_argument("--fps", type=float, default=1.0, help="base sampling rate (default 1)")
    frames.add_argument("--max-fps", type=float, default=4.0, help="highest rate for short videos (default 4)")
    chunking = p.add_argument_group("chunked pre-fill")
    chunking.add_argument("--chunk", type=int, default=4, help="chunk size in 4-frame groups (default 4)")
    chunking.add_argument("--window", type=int, default=3, help="previous chunks a chunk sees (default 3; -1: all)")
    decoding = p.add_argument_group("bi-level decoding")
    decoding.add_argument("--topk", type=int, default=4,
                          help="relevant chunks reloaded dense besides the first and last (default 4)")
    decoding.add_argument("--kv-budget", type=_kv_budget, help="instead of --topk: fraction of the dense KV to use")
    decoding.add_argument("--decode-chunk", type=int, default=1,
                          help="decoding chunk size in groups (default 1: 4 frames)")
    decoding.add_argument("--dense", action="store_true", help="decode with every chunk dense")
    decoding.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--explain", metavar="FILE.png", help="draw the timeline with chunk relevance and thumbnails")
    p.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    p.set_defaults(run=_ask)


def _ask(args) -> int:
    import torch

    from .engine.decode import DecodeConfig
    from .engine.prefill import PrefillConfig
    from .model import VideoXL2

    started = time.perf_counter()
    video = args.video
    if video == "demo":
        from pathlib import Path

        from .synth.demo import demo_video

        video = str(demo_video()) if not Path("demo").exists() else video
    prefill_config = PrefillConfig(chunk=args.chunk, window=None if args.window == -1 else args.window)
    if args.dense:
        decode_config = DecodeConfig(max_new_tokens=args.max_new_tokens)
    else:
        decode_config = DecodeConfig(topk=None if args.kv_budget else args.topk, kv_budget=args.kv_budget,
                                     chunk=args.decode_chunk, max_new_tokens=args.max_new_tokens)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = VideoXL2.from_pretrained(args.model or default_model(), dtype=dtype, device=args.device)
    load_s = time.perf_counter() - started
    bars = _Bars(args.progress or sys.stderr.isatty())
    try:
        session = model.ingest(video, max_frames=args.max_frames, fps=args.fps, max_fps=args.max_fps,
                               prefill_config=prefill_config, on_progress=bars, thumbnails=bool(args.explain))
    finally:
        bars.close()
    answer = session.ask(args.question, decode_config)
    stats = session.stats
    flops = session.video.stats  # pre-fill accounting: what the chunked pre-fill computed versus dense
    seconds = {"load": load_s, **stats.seconds, "answer": sum(answer.seconds.values())}
    if args.explain:
        from .explain import render_explanation

        render_explanation(args.explain, args.question, answer, session.group_times,
                           decode_config.chunk or prefill_config.chunk, session.thumbnails, stats.frames,
                           stats.tokens)
    if args.json:
        print(json.dumps({
            "answer": answer.text.strip(), "frames": stats.frames, "tokens": stats.tokens, "chunks": answer.chunks,
            "dense_chunks": len(answer.dense_chunks), "dense_chunk_indices": answer.dense_chunks,
            "kv_bytes_dense": answer.kv_bytes_dense, "kv_bytes_used": answer.kv_bytes_used,
            "prefill_attn_flops": flops.attn_flops, "dense_attn_flops": flops.dense_attn_flops,
            "prefill_total_flops": flops.total_flops, "dense_total_flops": flops.dense_total_flops,
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}))
    else:
        print(answer.text.strip())
        mb = 2 ** 20
        print(f"[{stats.frames} frames, {stats.tokens} tokens, {answer.chunks} chunks, "
              f"{len(answer.dense_chunks)} dense; KV {answer.kv_bytes_dense / mb:.2f} MB dense, "
              f"{answer.kv_bytes_used / mb:.2f} MB used; pre-fill FLOPs vs dense: attention "
              f"{flops.attn_flops / flops.dense_attn_flops:.0%}, total {flops.total_flops / flops.dense_total_flops:.0%}; "
              + ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()) + "]", file=sys.stderr)
    return EXIT_OK


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="write the demo video and print questions about it")
    p.add_argument("path", nargs="?", default="demo.mp4")
    p.set_defaults(run=_demo)


def _demo(args) -> int:
    from .synth.demo import demo_script, demo_video

    path = demo_video(args.path)
    print(path)
    for qa in demo_script()[1]:
        print(f"  videoxl ask {path} {json.dumps(qa.question)}    # expected: {qa.answer}")
    return EXIT_OK


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="benchmarks on held-out synthetic videos")
    tasks = p.add_subparsers(dest="task", required=True)
    n = tasks.add_parser("needle", help="needle in a video: dense vs chunked vs chunked + bi-level")
    n.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    n.add_argument("--quick", action="store_true", help="256 and 2,048 frames, 10 cases each (< 5 minutes)")
    n.add_argument("--lengths", help="comma-separated haystack lengths in frames "
                                     "(default 256,512,1024,2048,4096,8192)")
    n.add_argument("--cases", type=int, help="cases per length (default 50; --quick: 10)")
    n.add_argument("--json", type=str, help="write one row per length here")
    n.add_argument("--heatmap", type=str, help="write the depth x length accuracy heatmap here (PNG)")
    n.add_argument("--rows", type=str, help="keep one JSON line per case here; cases already in it are not run "
                                            "again (resume), and --json/--heatmap cover every row in it (merge)")
    n.add_argument("--workers", type=int, default=1, help="cases in parallel processes, the CPU threads shared "
                                                          "among them (default 1)")
    n.add_argument("--device")
    n.set_defaults(run=_eval_needle)
    f = tasks.add_parser("families", help="accuracy per question family (needle, grounding, order, count, detail)")
    f.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    f.add_argument("--cases", type=int, default=20, help="clips per family (default 20)")
    f.add_argument("--groups", type=int, default=16, help="4-frame groups per clip (default 16)")
    f.add_argument("--json", type=str, help="write {family: accuracy %%} here")
    f.add_argument("--device")
    f.set_defaults(run=_eval_families)


def _eval_needle(args) -> int:
    from pathlib import Path

    from .eval import needle

    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else (
        [256, 2048] if args.quick else [256, 512, 1024, 2048, 4096, 8192])
    cases = args.cases or (10 if args.quick else 50)
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    rows_path = Path(args.rows) if args.rows else None
    kept = needle.read_rows(rows_path, repair=True) if rows_path else []
    planned = {needle.key(case) for case in needle.plan(lengths, cases)}
    done_before = {needle.key(r) for r in kept} & planned
    if done_before:
        print(f"{rows_path}: {len(done_before)} of {len(planned)} cases already measured; running the rest")
    header = f"{'frames':>6} {'cases':>5} {'tokens':>7} {'dense':>6} {'chunked':>7} {'bilevel':>7} {'KV':>5} " \
             f"{'dense s':>7} {'chunk s':>7} {'bilev s':>7}"
    print(header)
    rows: list[dict] = [r for r in kept if needle.key(r) in planned]

    def report(frames):
        s = needle.summarize([r for r in rows if r["frames"] == frames])[0]
        print(f"{s['frames']:>6} {s['cases']:>5} {s['tokens']:>7} {s['acc_dense']:>6.0f} {s['acc_chunked']:>7.0f} "
              f"{s['acc_bilevel']:>7.0f} {s['kv_ratio']:>5.2f} {s['dense_s']:>7.2f} {s['chunked_s']:>7.2f} "
              f"{s['bilevel_s']:>7.2f}", flush=True)

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
               device=args.device)
    print("accuracy in %; KV: bi-level cache over dense; seconds per case after encoding (pre-fill + answer)"
          + (f"; {args.workers} worker processes sharing the CPU" if args.workers > 1 else ""))
    if args.json:
        needle.write_json(everything(), Path(args.json))
    if args.heatmap:
        needle.heatmap(everything(), Path(args.heatmap))
    return EXIT_OK


def _eval_families(args) -> int:
    from pathlib import Path

    from .eval.families import family_accuracy
    from .model import VideoXL2

    if args.cases < 1 or args.groups < 2:
        raise ValueError("--cases must be at least 1 and --groups at least 2")
    model = VideoXL2.from_pretrained(args.model or default_model(), device=args.device)
    scores = family_accuracy(model, cases=args.cases, groups=args.groups)
    print(f"{'family':<10} {'accuracy %':>10}   ({args.cases} held-out clips of {args.groups * 4} frames each)")
    for family, acc in scores.items():
        print(f"{family:<10} {acc:>10.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(scores, indent=2))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videoxl", description="Question answering over very long videos.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_ask(sub)
    _add_demo(sub)
    _add_eval(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .model.checkpoint import CheckpointError
    from .video import VideoError

    try:
        return args.run(args)
    except (VideoError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"videoxl: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # an internal failure, not the user's input
        print(f"videoxl: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
