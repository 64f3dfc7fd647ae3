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


def _add_ask(sub) -> None:
    p = sub.add_parser("ask", help="answer a question about a video",
                       description="Answer a question about a video file (or an image).")
    p.add_argument("video", help="video file (any container FFmpeg reads) or image file")
    p.add_argument("question")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id (e.g. BAAI/Video-XL-2)")
    p.add_argument("--max-frames", type=int, default=512, help="frame budget (default 512)")
    p.add_argument("--fps", type=float, default=1.0, help="base sampling rate (default 1)")
    p.add_argument("--max-fps", type=float, default=4.0, help="highest sampling rate for short videos (default 4)")
    p.add_argument("--chunk", type=int, default=4, help="pre-fill chunk size in 4-frame groups (default 4)")
    p.add_argument("--window", type=int, default=3, help="previous chunks each chunk attends to (default 3; -1: all)")
    p.add_argument("--topk", type=int, help="relevant chunks reloaded dense besides the first and last")
    p.add_argument("--kv-budget", type=_kv_budget, help="fraction of the dense KV cache decoding may use")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    p.set_defaults(run=_ask)


def _ask(args) -> int:
    import torch

    from .engine.decode import DecodeConfig
    from .engine.prefill import PrefillConfig
    from .model import VideoXL2

    started = time.perf_counter()
    prefill_config = PrefillConfig(chunk=args.chunk, window=None if args.window == -1 else args.window)
    decode_config = DecodeConfig(topk=args.topk, kv_budget=args.kv_budget, max_new_tokens=args.max_new_tokens)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = VideoXL2.from_pretrained(args.model, dtype=dtype, device=args.device)
    load_s = time.perf_counter() - started
    bars = _Bars(args.progress or sys.stderr.isatty())
    try:
        session = model.ingest(args.video, max_frames=args.max_frames, fps=args.fps, max_fps=args.max_fps,
                               prefill_config=prefill_config, on_progress=bars)
    finally:
        bars.close()
    answer = session.ask(args.question, decode_config)
    stats = session.stats
    seconds = {"load": load_s, **stats.seconds, "answer": sum(answer.seconds.values())}
    if args.json:
        print(json.dumps({
            "answer": answer.text, "frames": stats.frames, "tokens": stats.tokens, "chunks": answer.chunks,
            "dense_chunks": len(answer.dense_chunks), "dense_chunk_indices": answer.dense_chunks,
            "kv_bytes_dense": answer.kv_bytes_dense, "kv_bytes_used": answer.kv_bytes_used,
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}))
    else:
        print(answer.text.strip())
        mb = 2 ** 20
        print(f"[{stats.frames} frames, {stats.tokens} tokens, {answer.chunks} chunks, "
              f"{len(answer.dense_chunks)} dense; KV {answer.kv_bytes_dense / mb:.1f} MB dense, "
              f"{answer.kv_bytes_used / mb:.1f} MB used; "
              + ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items()) + "]", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videoxl", description="Question answering over very long videos.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_ask(sub)
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
