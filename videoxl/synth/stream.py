"""A synthetic script sent as a live MPEG-TS stream: over TCP to one client (``tcp://127.0.0.1:PORT?listen=1``), or
into a file that grows as it is written. Tests and ``benchmarks/live.py`` watch it with ``videoxl watch``.

Run as ``python -m videoxl.synth.stream SCRIPT.json|demo OUT [--speed S] [--drop AT:FOR]``. ``--speed`` paces frames at S
times real time (0: as fast as the reader takes them); ``--drop AT:FOR`` closes the stream at stream second AT,
stays away FOR wall seconds, then listens again with the clock moved on by FOR seconds (the frames in between are
lost, as a camera's are during a network outage).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import av

from .world import Event, Scene, Script, render


def script_to_json(script: Script) -> str:
    return json.dumps(asdict(script))


def script_from_json(text: str) -> Script:
    d = json.loads(text)
    return Script(d["frames"], d["fps"], d["size"], tuple(Scene(**s) for s in d["scenes"]),
                  tuple(Event(**e) for e in d["events"]))


class _Flushing:
    """A file the muxer writes through, flushed at every write, so a reader following it sees each packet."""

    def __init__(self, path: str):
        self.file = open(path, "wb")

    def write(self, data: bytes) -> int:
        n = self.file.write(data)
        self.file.flush()
        return n

    def close(self) -> None:
        self.file.close()


def send(script: Script, out: str, frames: range, speed: float, started: float) -> None:
    """Send ``frames`` of ``script`` to ``out``, frame i due ``i / (fps * speed)`` seconds after ``started``."""
    sink = None if "://" in out else _Flushing(out)
    container = av.open(out if sink is None else sink, "w", format="mpegts")
    try:
        stream = container.add_stream("libx264", rate=Fraction(script.fps).limit_denominator(1000))
        stream.width = stream.height = script.size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.codec_context.options = {"crf": "16", "preset": "veryfast", "tune": "zerolatency"}
        for i in frames:
            if speed > 0:
                time.sleep(max(0.0, started + i / (script.fps * speed) - time.monotonic()))
            frame = av.VideoFrame.from_ndarray(render(script, i), format="rgb24")
            frame.pts, frame.time_base = round(i * 1000 / script.fps), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
        if sink is not None:
            sink.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m videoxl.synth.stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("script", help="the script, as written by script_to_json, or 'demo' (the demo video's)")
    parser.add_argument("out", help="tcp://127.0.0.1:PORT?listen=1, or a file to grow")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time; 0: as fast as possible")
    parser.add_argument("--drop", default=None, help="AT:FOR, an outage at stream second AT for FOR seconds")
    args = parser.parse_args(argv)
    if args.script == "demo":
        from .demo import demo_script

        script = demo_script()[0]
    else:
        script = script_from_json(Path(args.script).read_text())
    started = time.monotonic()
    if args.drop is None:
        send(script, args.out, range(script.frames), args.speed, started)
        return
    at, away = (float(x) for x in args.drop.split(":"))
    cut, resume = round(at * script.fps), round((at + away) * script.fps)
    send(script, args.out, range(min(cut, script.frames)), args.speed, started)
    time.sleep(away)
    send(script, args.out, range(min(resume, script.frames), script.frames), args.speed, started)


if __name__ == "__main__":
    main()
