"""End-to-end ingest of real 1080p H.264 files: decode, encode and pre-fill overlapped, against the decoder alone.

    python benchmarks/ingest.py --json $OUT/ingest.json                 # Video-XL-2 sizes on CUDA
    python benchmarks/ingest.py --quick --json /tmp/ingest.json         # tiny model on the CPU, short files
    python benchmarks/ingest.py --quick --decode-only --repeats 3       # the reader alone against ffmpeg, no model

Two files stand in for a 10-minute and a 1-hour recording: one minute of 1080p30 H.264 (FFmpeg's ``testsrc2``
pattern, written with PyAV/libx264 at its ``veryfast`` preset: B-frames, a keyframe every 2 s), repeated by stream
copy (no re-encoding) to the length. Each is ingested through ``videoxl.pipeline.ingest`` with a frame budget
(default 2,048; the reference sampling rule spreads it over the file), and the row reports each stage's busy
seconds (decode + resize in the background thread, vision encoding, pre-fill), the wall time, and the time of the
slowest stage alone, so the overlap shows as ``wall / slowest``. Beside it: decoding and preprocessing the same
frames alone (no model), and the time the decoder itself takes for the whole file (``vs decoder`` is that time over
ours; the goal is at least 0.8): ``ffmpeg -threads 0 -i FILE -f null -`` when the ffmpeg program is
installed, else PyAV decoding every frame without conversion. Weights are random: speed does not depend on them.

``--decode-only`` leaves the model out and times, alternating, ``repeats`` times each: ffmpeg's full decode, the
reader (``decode_frames``: the sampled frames as RGB arrays) with and without skipping unreferenced frames, and the
same followed by the pipeline's resize to ``--size`` pixels.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from videoxl.llm import cache_dir  # noqa: E402


def minute_of_1080p(path: Path, seconds: int = 60, fps: int = 30) -> Path:
    """``seconds`` of 1080p H.264 with moving, detailed content (cached): libx264 ``veryfast`` (3 B-frames, some of
    them references), a keyframe every 2 s."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.mp4")
    graph = av.filter.Graph()
    src = graph.add("testsrc2", f"size=1920x1080:rate={fps}:duration={seconds}")
    sink = graph.add("buffersink")
    src.link_to(sink)
    graph.configure()
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.codec_context.options = {"preset": "veryfast", "crf": "23", "g": str(2 * fps)}
        while True:
            try:
                frame = graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            frame = frame.reformat(format="yuv420p")
            # testsrc2 marks every frame I and libx264 obeys the mark: clear it, or every frame is a keyframe
            frame.pts, frame.pict_type = None, av.video.frame.PictureType.NONE
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)
    return path


def repeat(source: Path, times: int, path: Path) -> Path:
    """``source`` played ``times`` times in a row, by stream copy (cached)."""
    if path.is_file():
        return path
    tmp = path.with_suffix(".partial.mp4")
    with av.open(str(source)) as probe:
        vin = probe.streams.video[0]
        duration = max(p.pts + (p.duration or 0) for p in probe.demux(vin) if p.pts is not None)
    with av.open(str(tmp), "w") as out:
        vout = None
        for k in range(times):
            with av.open(str(source)) as src:
                vin = src.streams.video[0]
                if vout is None:
                    vout = out.add_stream_from_template(vin)
                for packet in src.demux(vin):
                    if packet.pts is None:
                        continue
                    packet.pts += k * duration
                    packet.dts += k * duration
                    packet.stream = vout
                    out.mux(packet)
    tmp.rename(path)
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def decoder_speed(path: Path, frames: int) -> dict:
    """Frames per second of the decoder on its own, over the whole file."""
    if shutil.which("ffmpeg"):
        cpu0, t0 = _children_cpu(), time.perf_counter()
        subprocess.run(["ffmpeg", "-v", "error", "-threads", "0", "-i", str(path), "-f", "null", "-"], check=True)
        seconds = time.perf_counter() - t0
        return {"decoder": "ffmpeg -threads 0 -f null", "decoder_full_s": seconds, "decoder_fps": frames / seconds,
                "decoder_cpu_s": _children_cpu() - cpu0}
    t0 = time.perf_counter()
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        n = sum(1 for _ in c.decode(stream))
    seconds = time.perf_counter() - t0
    return {"decoder": "PyAV, no conversion (ffmpeg not installed)", "decoder_full_s": seconds,
            "decoder_fps": n / seconds}


def decode_only(path: Path, max_frames: int, size: int | None, skip_unused: bool = True) -> float:
    """Seconds to decode (and with ``size``, preprocess as the pipeline's decode thread does) the sampled frames
    alone, no model."""
    from videoxl.pipeline import IngestStats, _decoded_batches
    from videoxl.video import decode_frames, plan_frames, probe

    info = probe(path)
    plan = plan_frames(info.frame_times, max_frames=max_frames)
    t0 = time.perf_counter()
    frames = decode_frames(info, plan.indices, skip_unused=skip_unused)
    if size is None:
        for _ in frames:
            pass
    else:
        for _ in _decoded_batches(frames, plan.group_times, 4, size, None, False, IngestStats()):
            pass
    return time.perf_counter() - t0


def compare_decoding(files: dict, budget: int, size: int, repeats: int, json_path: Path | None) -> None:
    """The reader against ffmpeg's full decode, each variant in turn, ``repeats`` rounds; medians of the wall time
    and of the CPU time (all threads; less disturbed than the wall time when other jobs share the cores)."""
    from videoxl.video import plan_frames, probe

    variants = {"reader, all frames": (None, False), "reader, skip unreferenced": (None, True),
                f"+ resize {size}, all frames": (size, False), f"+ resize {size}, skip unreferenced": (size, True)}
    rows = []
    print(f"{'file':<7} {'frames':>6} {'sampled':>7} {'variant':<32} {'wall s':>6} {'runs s':<20} {'vs ffmpeg':>9} "
          f"{'CPU s':>6} {'vs ffmpeg':>9}", flush=True)
    for name, path in files.items():
        info = probe(path)
        sampled = len(plan_frames(info.frame_times, max_frames=budget).indices)
        ffmpeg = "ffmpeg -threads 0 (all frames)"
        runs = {label: ([], []) for label in [ffmpeg, *variants]}  # wall seconds, CPU seconds
        for _ in range(repeats):
            full = decoder_speed(path, info.frames)
            runs[ffmpeg][0].append(full["decoder_full_s"])
            runs[ffmpeg][1].append(full.get("decoder_cpu_s", float("nan")))
            for label, (resize, skip) in variants.items():
                cpu0 = time.process_time()
                runs[label][0].append(decode_only(path, budget, resize, skip))
                runs[label][1].append(time.process_time() - cpu0)
        base_wall, base_cpu = (float(np.median(x)) for x in runs[ffmpeg])
        for label, (wall, cpu) in runs.items():
            median_wall, median_cpu = float(np.median(wall)), float(np.median(cpu))
            rows.append({"file": name, "frames": info.frames, "sampled": sampled, "variant": label,
                         "median_s": median_wall, "runs_s": wall, "speed_vs_ffmpeg": base_wall / median_wall,
                         "median_cpu_s": median_cpu, "runs_cpu_s": cpu, "cpu_vs_ffmpeg": base_cpu / median_cpu})
            print(f"{name:<7} {info.frames:>6} {sampled:>7} {label:<32} {median_wall:>6.2f} "
                  f"{' '.join(f'{x:.2f}' for x in wall):<20} {base_wall / median_wall:>9.2f} {median_cpu:>6.2f} "
                  f"{base_cpu / median_cpu:>9.2f}", flush=True)
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(rows, indent=2))
    print("seconds, medians; vs ffmpeg = ffmpeg's full decode / the variant (the goal: >= 0.8 of the wall time); "
          "variants alternate within each round")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model on the CPU; 1- and 3-minute files, 256 frames")
    parser.add_argument("--frames", type=int, help="frame budget per file (default 2048; --quick 256)")
    parser.add_argument("--decode-only", action="store_true", help="no model: the reader against ffmpeg")
    parser.add_argument("--repeats", type=int, default=3, help="--decode-only rounds (default 3)")
    parser.add_argument("--size", type=int, default=384, help="--decode-only resize (default 384, Video-XL-2's)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from videoxl.engine.prefill import PrefillConfig
    from videoxl.pipeline import ingest

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.quick else "cpu"))
    budget = args.frames or (256 if args.quick else 2048)
    folder = cache_dir() / "ingest-benchmark"
    minute = minute_of_1080p(folder / "minute-1080p-gop60.mp4")
    if args.quick:
        files = {"1 min": minute, "3 min": repeat(minute, 3, folder / "3min-1080p-gop60.mp4")}
    else:
        files = {"10 min": repeat(minute, 10, folder / "10min-1080p-gop60.mp4"),
                 "60 min": repeat(minute, 60, folder / "60min-1080p-gop60.mp4")}
    if args.decode_only:
        compare_decoding(files, budget, args.size, args.repeats, args.json)
        return

    from video import random_model  # benchmarks/video.py

    model = random_model("tiny" if args.quick else "video-xl-2", device)
    size = model.config.vision.image_size
    ingest(model, [np.zeros((64, 64, 3), np.uint8)] * 16, prefill_config=PrefillConfig())  # warm-up

    rows = []
    print(f"{'file':<7} {'frames':>6} {'decode':>7} {'encode':>7} {'prefill':>7} {'wall':>7} {'wall/slowest':>12} "
          f"{'decode alone':>12} {'frames/s':>9} {'full decode':>11} {'vs decoder':>10}", flush=True)
    for name, path in files.items():
        n_frames = sum(1 for _ in av.open(str(path)).demux(video=0)) - 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        session = ingest(model, path, max_frames=budget, prefill_config=PrefillConfig())
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        busy = {k: session.stats.seconds[k] for k in ("decode", "encode", "prefill")}
        alone = decode_only(path, budget, size)
        row = {"file": name, "path_frames": n_frames, "frames": session.stats.frames, "tokens": session.stats.tokens,
               **{f"{k}_busy_s": v for k, v in busy.items()}, "wall_s": wall,
               "wall_over_slowest": wall / max(busy.values()), "decode_alone_s": alone,
               "decode_alone_fps": session.stats.frames / alone, **decoder_speed(path, n_frames),
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "model": "tiny" if args.quick else "video-xl-2"}
        row["speed_vs_decoder"] = row["decoder_full_s"] / alone  # >= 1: the sampled frames take less than a full decode
        rows.append(row)
        print(f"{name:<7} {row['frames']:>6} {busy['decode']:>7.2f} {busy['encode']:>7.2f} {busy['prefill']:>7.2f} "
              f"{wall:>7.2f} {row['wall_over_slowest']:>12.2f} {alone:>12.2f} {row['decode_alone_fps']:>9.1f} "
              f"{row['decoder_full_s']:>11.2f} {row['speed_vs_decoder']:>10.2f}", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2))
    print("seconds; busy = each stage's own time (decoding runs in a background thread); full decode: the whole file "
          "by " + rows[-1]["decoder"] + "; vs decoder = full decode time / decode alone")


if __name__ == "__main__":
    main()
