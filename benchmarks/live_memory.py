"""Memory of a live stream over hours: what the stream holds, with and without ``keep``, side by side.

    python benchmarks/live_memory.py --json benchmarks/results/live_memory.json     # 2 hours of stream each way
    python benchmarks/live_memory.py --hours 0.5 --keep none,600                     # a quick look

The synthetic world's frames (one per second of stream) are fed to ``videoxl.live.LiveStream`` with the bundled
model as fast as it ingests them (no network: the stream's clock is the frames' own stamps), with a horizon of
``--horizon`` seconds (older groups keep only their sparse KVs) and, per run, ``keep`` (older groups forgotten;
"none": everything kept). Each run is its own process, so that RSS is its own. Every ten minutes of stream it
records what the stream holds: the KV store's buffers (dense and sparse, spare capacity included), the page
summaries of relevance scoring and pre-fill's timestamp anchors, in MB, and the process's RSS. At the end a
question is asked, and the part of the stream it covers is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def held_mb(video) -> float:
    """MB the stream's KVs, page summaries and anchors hold (buffers with their spare capacity)."""
    total = video.store.nbytes
    pages = video.summaries._pages
    if pages is not None:
        total += sum(g.buf.numel() * g.buf.element_size() for g in pages[:2] if g.buf is not None)
    if video.anchors is not None:
        total += video.anchors.index.numel() * video.anchors.index.element_size()  # store rows: the KVs are the store's
    return total / 2**20


def run_one(hours: float, horizon: float, keep: float | None) -> dict:
    import torch

    from live import rss_mb  # benchmarks/live.py
    from videoxl import DEFAULT_MODEL
    from videoxl.live.stream import LiveOptions, LiveStream
    from videoxl.model import VideoXL2
    from videoxl.synth.world import Script, make_scenes, render

    torch.set_num_threads(1)
    model = VideoXL2.from_pretrained(DEFAULT_MODEL).eval()
    seconds = int(hours * 3600)
    script = Script(seconds, 1.0, 64, tuple(make_scenes(random.Random("live-memory"), seconds, 1.0)))
    timeline = []

    def progress(stats) -> None:
        video = live._video
        if video is not None and video.anchors is not None and stats.stream_time >= 600 * len(timeline):
            timeline.append({"stream_minutes": round(stats.stream_time / 60, 1), "groups": stats.groups,
                             "groups_held": stats.groups - stats.forgotten_groups,
                             "held_mb": round(held_mb(video), 2), "rss_mb": round(rss_mb(), 1)})

    live = LiveStream(model, ((float(i), render(script, i)) for i in range(seconds)),
                      LiveOptions(horizon=horizon, keep=keep), on_progress=progress)
    live.start().wait()
    reply = live.ask("What object appears in the video?")
    return {"keep_s": keep, "horizon_s": horizon, "hours": hours, "groups": live.stats.groups,
            "busy_s": {k: round(v, 1) for k, v in live.stats.seconds.items()},
            "answer_covers_s": [reply.start, reply.stream_time], "answer_groups": reply.groups,
            "kv_mb_of_the_answer": round(reply.answer.kv_bytes_used / 2**20, 2), "timeline": timeline}


def growth(timeline: list[dict], key: str) -> float:
    """Relative growth of ``key`` from the second record on (the first hour's warm-up aside) to the last."""
    start = next((r for r in timeline if r["stream_minutes"] >= 60), timeline[0])
    return timeline[-1][key] / start[key] - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=2.0, help="hours of stream per run")
    p.add_argument("--horizon", type=float, default=600.0, help="seconds kept dense (default 10 minutes)")
    p.add_argument("--keep", default="none,1800", help="runs: seconds kept answerable, or none (default none,1800)")
    p.add_argument("--only", help=argparse.SUPPRESS)  # one run, in this process (the runs' own processes)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.only is not None:
        keep = None if args.only == "none" else float(args.only)
        args.json.write_text(json.dumps(run_one(args.hours, args.horizon, keep)))
        return
    runs = []
    for keep in args.keep.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run.json"
            subprocess.run([sys.executable, __file__, "--only", keep, "--hours", str(args.hours),
                            "--horizon", str(args.horizon), "--json", str(out)], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            runs.append(json.loads(out.read_text()))
    names = ["keep everything" if r["keep_s"] is None else f"keep {r['keep_s'] / 60:g} minutes" for r in runs]
    print(f"{'stream':>8} " + " ".join(f"{name:>30}" for name in names))
    print(f"{'minutes':>8} " + " ".join(f"{'groups held':>12}{'held MB':>9}{'RSS MB':>9}" for _ in runs))
    for i in range(max(len(r["timeline"]) for r in runs)):
        rows = [r["timeline"][i] if i < len(r["timeline"]) else None for r in runs]
        minutes = next(x for x in rows if x)["stream_minutes"]
        print(f"{minutes:>8.0f} " + " ".join(f"{x['groups_held']:>12}{x['held_mb']:>9.1f}{x['rss_mb']:>9.0f}" if x
                                             else " " * 30 for x in rows))
    for r, name in zip(runs, names):
        r["held_growth_after_first_hour"] = round(growth(r["timeline"], "held_mb"), 4)
        r["rss_growth_after_first_hour"] = round(growth(r["timeline"], "rss_mb"), 4)
        print(f"{name}: after the first hour, held {r['held_growth_after_first_hour']:+.1%}, RSS "
              f"{r['rss_growth_after_first_hour']:+.1%}; the last answer covers stream "
              f"{r['answer_covers_s'][0]:g}-{r['answer_covers_s'][1]:g} s ({r['answer_groups']} groups, "
              f"{r['kv_mb_of_the_answer']} MB of KV)")
    if args.json:
        args.json.write_text(json.dumps({"machine": "2-core CPU, 1 torch thread", "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
