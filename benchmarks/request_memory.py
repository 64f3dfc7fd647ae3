"""Peak server memory per request: how much one request (or a burst of them) can raise ``videoxl serve``'s RSS.

    python benchmarks/request_memory.py [--json benchmarks/results/request_memory.json]

Starts ``python -m videoxl.serve`` with the bundled model on 127.0.0.1 (``--max-media-mb 300``), warms it with one
question, then for each case resets the process's peak-RSS counter (``/proc/PID/clear_refs``), sends the request(s)
and reads the peak (``VmHWM``) back: the row's ``peak_growth_mb`` is that peak minus the resident memory just
before. Cases: ``data:`` bodies of junk bytes (refused as not a video after decoding the base64: the body costs),
a 4096 x 4096 video (the largest frame size accepted) pre-filled and answered, a 6144 x 4096 pixel bomb (refused
from its header), and eight large bodies at once (bounded by ``--max-bodies-mb``). Linux only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def black_video(path: Path, width: int, height: int, frames: int) -> Path:
    """An H.264 file of black frames: a few kilobytes whatever the size."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast"}
        for i in range(frames):
            black = av.VideoFrame(width, height, "yuv420p")
            for plane, level in zip(black.planes, (16, 128, 128)):
                plane.update(bytes([level]) * plane.buffer_size)
            black.pts = i
            out.mux(stream.encode(black))
        out.mux(stream.encode())
    return path


def chat(url: str, media: str, timeout: float = 600) -> int:
    body = json.dumps({"model": "synth", "max_tokens": 8, "media_io_kwargs": {"video": {"num_frames": 16}},
                       "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": media}},
                                                                 {"type": "text", "text": "What object appears?"}]}]})
    request = urllib.request.Request(url + "/v1/chat/completions", body.encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def data_url(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="request-memory-"))
    black_video(folder / "k4.mp4", 4096, 4096, 8)
    black_video(folder / "bomb.mp4", 6144, 4096, 8)
    black_video(folder / "small.mp4", 64, 64, 16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "videoxl.serve", "--port", str(port), "--max-media-mb", "300",
                             "--allowed-local-media-path", str(folder), "--log-level", "warning"], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.5)
        chat(url, "small.mp4")  # warm: first-request allocations are not the cases' own

        def measure(name: str, bodies: list[str], body_mb: float) -> None:
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            before = _status_kb(proc.pid, "VmRSS")
            started = time.perf_counter()
            with ThreadPoolExecutor(len(bodies)) as pool:
                statuses = list(pool.map(lambda media: chat(url, media), bodies))
            growth = (_status_kb(proc.pid, "VmHWM") - before) / 1024
            rows.append({"case": name, "requests": len(bodies), "body_mb": round(body_mb, 1),
                         "statuses": sorted(statuses), "peak_growth_mb": round(growth, 1),
                         "seconds": round(time.perf_counter() - started, 2)})
            print(f"{name:<34} {len(bodies):>3} {body_mb:>8.1f} {growth:>15.1f} {rows[-1]['seconds']:>8.2f}  "
                  f"{','.join(map(str, sorted(set(statuses))))}", flush=True)

        print(f"{'case':<34} {'req':>3} {'body MB':>8} {'peak growth MB':>15} {'seconds':>8}  statuses")
        for size in (16, 64, 256):
            junk = data_url(os.urandom(size * MB))
            measure(f"data: junk {size} MB", [junk], len(junk) / MB)
            del junk
        k4 = data_url((folder / "k4.mp4").read_bytes())
        measure("4096x4096 video, 8 frames (data:)", [k4], len(k4) / MB)
        bomb = data_url((folder / "bomb.mp4").read_bytes())
        measure("6144x4096 pixel bomb (data:)", [bomb], len(bomb) / MB)
        junk = data_url(os.urandom(64 * MB))
        measure("8 x data: junk 64 MB at once", [junk] * 8, 8 * len(junk) / MB)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": f"{os.cpu_count()} CPUs", "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
