"""Video pipeline benchmark: decoding, vision encoding and chunked pre-fill of a long generated video, and memory.

    python benchmarks/video.py [--quick] [--json PATH] [--preset tiny|video-xl-2] [--frames 1000,10000]

One long synthetic video (4 fps; 10,000 frames = 41 minutes) is generated once. Each row ingests it with a frame
budget (the reference sampling rule spreads smaller budgets over the whole video) in a fresh process and reports
frames/s of decoding (incl. resize and normalization) and of vision encoding (SigLIP + DTS + projector), pre-fill
tokens/s, peak RSS (and peak GPU memory on a GPU), and the KV store. Weights are random: speed and memory do not
depend on them. On CPU the tiny configuration runs; with --preset video-xl-2 on a GPU, the real Video-XL-2 sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videoxl.llm import cache_dir  # noqa: E402


def long_video(frames: int) -> Path:
    """A deterministic synthetic video of ``frames`` frames at 4 fps (cached)."""
    import random

    from videoxl.synth import Script, write
    from videoxl.synth.world import Event, make_scenes

    path = cache_dir() / f"long-{frames}.mp4"
    if not path.is_file():
        rng = random.Random("benchmark-long-video")
        script = Script(frames, 4.0, 64, tuple(make_scenes(rng, frames, 4.0)))
        script = script.with_events(*(Event("word", f, f + 6, word="fox") for f in range(500, frames, 2000)))
        write(script, path)
    return path


def random_model(preset: str, dev: torch.device):
    """A Video-XL-2 of a preset's sizes with random weights, built on ``dev`` (bf16 on a GPU, fp32 on the CPU)."""
    from videoxl.model import VideoXL2
    from videoxl.model import preset as make_preset
    from videoxl.model.tokenizer import build_tokenizer

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tokenizer = build_tokenizer(["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", "Time 12.5s:"] * 4,
                                vocab_size=300)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with dev:
        model = VideoXL2(make_preset(preset), tokenizer).eval()
    torch.set_default_dtype(previous)
    return model


def worker(preset: str, frames: int, video: str, device: str) -> dict:
    from videoxl.engine.prefill import PrefillConfig

    dev = torch.device(device)
    model = random_model(preset, dev)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        # warm-up: kernels and the allocator, on one chunk
        model.ingest([torch.zeros(64, 64, 3, dtype=torch.uint8).numpy()] * 16, prefill_config=PrefillConfig())
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    session = model.ingest(video, max_frames=frames, prefill_config=PrefillConfig())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    s = session.stats
    store = session.video.store
    row = {
        "preset": preset, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "frames": s.frames, "groups": s.groups, "tokens": s.tokens, "chunks": s.chunks,
        "decode_fps": s.frames / s.seconds["decode"], "encode_fps": s.frames / s.seconds["encode"],
        "prefill_tokens_per_s": s.tokens / s.seconds["prefill"], "seconds": {**s.seconds, "total": wall},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_over_model_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss,
        "kv_store_mb": (store.dense_bytes + store.sparse_bytes) / 2**20,
        "kv_dense_mb": store.dense_bytes / 2**20,
    }
    if dev.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        row["model_gpu_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="both rows, tiny config (< 5 min on 2 CPU cores)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "video-xl-2", "synth"])
    parser.add_argument("--frames", default="1000,10000", help="comma-separated frame budgets")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        frames, video, preset = args.worker
        print(json.dumps(worker(preset, int(frames), video, args.device)))
        return
    budgets = [int(x) for x in args.frames.split(",")]
    t0 = time.perf_counter()
    video = long_video(max(budgets))
    print(f"video: {video} ({max(budgets)} frames at 4 fps, generated in {time.perf_counter() - t0:.1f}s)",
          flush=True)
    rows = []
    print(f"{'frames':>7} {'tokens':>8} {'decode f/s':>10} {'encode f/s':>10} {'prefill tok/s':>13} "
          f"{'peak RSS MB':>11} {'RSS-model MB':>12} {'KV store MB':>11} {'GPU MB':>8}  device")
    for frames in budgets:
        out = subprocess.run([sys.executable, __file__, "--worker", str(frames), str(video), args.preset,
                              "--device", args.device], check=True, stdout=subprocess.PIPE,
                             env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        row = json.loads(out.stdout.decode().strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['frames']:>7} {row['tokens']:>8} {row['decode_fps']:>10.0f} {row['encode_fps']:>10.0f} "
              f"{row['prefill_tokens_per_s']:>13.0f} {row['peak_rss_mb']:>11.0f} {row['rss_over_model_mb']:>12.0f} "
              f"{row['kv_store_mb']:>11.1f} {row.get('peak_gpu_mb', 0):>8.0f}  {row['device']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
