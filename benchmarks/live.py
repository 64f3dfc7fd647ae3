"""Live ingest on this machine: a synthetic stream sent in real time over local TCP (MPEG-TS), watched with the
bundled model, against the same video ingested as a finished file.

    python benchmarks/live.py --json benchmarks/results/live.json            # 10 minutes of stream, real time
    python benchmarks/live.py --minutes 2 --speed 4 --json /tmp/live.json    # a quick look

The stream (``python -m videoxl.synth.stream``, another process) shows three objects, 9, 5 and 1 minutes before the
end question (``moon``, ``heart``, ``ring``; 2 s each). It is sampled at ``--fps`` (1) and ingested by
``videoxl.live.LiveStream`` with a horizon (``--horizon``, 2 minutes: older groups keep only their sparse KVs).
Every ``--every`` seconds of stream a question is asked while ingest goes on. Reported over time: ingest lag (stream
time read minus stream time pre-filled), the question's latency (and how long it waited for the model), ingest's
pause for questions, resident dense chunks and the process's RSS. At the end, still ingesting, the order of every pair of
objects is asked, both ways round ("Which appears first, the moon or the heart?": the bundled model answers open
questions about objects and their order, not multiple choice), and again of the same video written as a file and
ingested whole by ``videoxl.pipeline.ingest`` at the same sampling (the strongest reference: the engine with the
whole video at hand). The file is written from the same script; sampling is one frame per second in both.
One torch thread (a busy two-core machine spins with two).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from videoxl import DEFAULT_MODEL
from videoxl.live.source import LiveSource, SourceOptions
from videoxl.live.stream import LiveOptions, LiveStream
from videoxl.model import VideoXL2
from videoxl.pipeline import ingest
from videoxl.synth.questions import QA, is_correct
from videoxl.synth.stream import script_to_json
from videoxl.synth.video import write
from videoxl.synth.world import Event, Script, make_scenes

FPS = 4.0  # the script's frame rate
OBJECTS = (("moon", 9), ("heart", 5), ("ring", 1))  # shown this many minutes before the end question


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_script(minutes: float, ask_at: float) -> tuple[Script, list[QA]]:
    """The script, and the synthetic world's order questions about every pair of its objects, both ways round
    ("Which appears first, the moon or the heart?"): each answer needs both objects' moments."""
    frames = int(minutes * 60 * FPS)
    script = Script(frames, FPS, 64, tuple(make_scenes(random.Random("live-bench"), frames, FPS)))
    events, when = [], {}
    for word, before in OBJECTS:
        ago = before * 60 if ask_at - before * 60 >= 10 else ask_at * before / 10  # short runs: scaled down
        second = 4 * round((ask_at - ago) / 4)  # a group's first second at 1 fps
        events.append(Event("object", int(second * FPS), int(second * FPS) + 8, word=word))
        when[word] = before
    qas = []
    for x, y in itertools.permutations(when, 2):
        first = x if when[x] > when[y] else y
        qas.append(QA("order", f"Which appears first, the {x} or the {y}?", first,
                      meta={"pair": f"{when[x]}/{when[y]} min before" if when[x] > when[y]
                            else f"{when[y]}/{when[x]} min before"}))
    return script.with_events(*events), qas


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--speed", type=float, default=1.0, help="times real time")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--horizon", type=float, default=120.0, help="seconds of stream kept dense")
    p.add_argument("--every", type=float, default=60.0, help="seconds of stream between questions while ingesting")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = VideoXL2.from_pretrained(DEFAULT_MODEL).eval()
    ask_at = args.minutes * 60 - 10  # the end questions come while the last seconds still stream in
    script, qas = make_script(args.minutes, ask_at)
    work = Path(tempfile.mkdtemp(prefix="videoxl-live-bench-"))
    (work / "script.json").write_text(script_to_json(script))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = subprocess.Popen([sys.executable, "-m", "videoxl.synth.stream", str(work / "script.json"),
                               f"tcp://127.0.0.1:{port}?listen=1", "--speed", str(args.speed)])
    source = LiveSource(f"tcp://127.0.0.1:{port}", SourceOptions(fps=args.fps, reconnect=5))
    live = LiveStream(model, source, LiveOptions(horizon=args.horizon)).start()
    timeline, questions, live_answers = [], [], []
    started, next_ask, next_sample = time.monotonic(), args.every, 0.0
    while live.running:
        now = time.monotonic() - started
        stats = live.stats
        if now >= next_sample:
            timeline.append({"wall": round(now, 1), "source_time": stats.source_time, "stream_time": stats.stream_time,
                             "lag": round(stats.lag, 2), "resident_chunks": stats.resident_chunks,
                             "chunks": stats.chunks, "rss_mb": round(rss_mb(), 1)})
            next_sample += 5.0 / args.speed
        if stats.stream_time >= next_ask and stats.groups and stats.stream_time < ask_at:
            t0 = time.perf_counter()
            paused = stats.paused
            reply = live.ask("What object appears in the video?")
            questions.append({"stream_time": reply.stream_time, "latency": round(time.perf_counter() - t0, 3),
                              "waited": round(reply.waited, 3), "answer": reply.text.strip(),
                              "ingest_paused_total": round(paused, 3)})
            next_ask += args.every
        if stats.source_time >= ask_at and not live_answers:
            for qa in qas:
                reply = live.ask(qa.question)
                live_answers.append({"question": qa.question, "expected": qa.answer, "answer": reply.text.strip(),
                                     "pair": qa.meta["pair"], "stream_time": reply.stream_time,
                                     "correct": is_correct(qa, reply.text)})
        time.sleep(0.05)
    live.wait()
    sender.wait(timeout=60)
    video = write(script, work / "stream.mp4")
    t0 = time.perf_counter()
    session = ingest(model, str(video), max_frames=int(args.minutes * 60 * args.fps), fps=args.fps, max_fps=args.fps)
    file_ingest = time.perf_counter() - t0
    file_answers = []
    for qa in qas:
        text = session.ask(qa.question).text.strip()
        file_answers.append({"question": qa.question, "expected": qa.answer, "answer": text,
                             "pair": qa.meta["pair"], "correct": is_correct(qa, text)})
    first_minute = [r["rss_mb"] for r in timeline if r["source_time"] >= 60 / 1] or [timeline[-1]["rss_mb"]]
    lags = [r["lag"] for r in timeline if r["source_time"] > 0]
    result = {
        "minutes": args.minutes, "speed": args.speed, "fps": args.fps, "horizon_s": args.horizon,
        "machine": "2-core CPU, shared (load average about 20 while measured), 1 torch thread",
        "live": {"groups": live.stats.groups, "chunks": live.stats.chunks,
                 "most_resident_chunks": live.stats.most_resident_chunks, "paused_s": round(live.stats.paused, 2),
                 "busy_s": {k: round(v, 2) for k, v in live.stats.seconds.items()},
                 "lag_max": max(lags, default=0.0), "lag_last_minute_max": max(lags[-12:], default=0.0),
                 "rss_mb_after_first_minute": first_minute[0], "rss_mb_end": timeline[-1]["rss_mb"],
                 "rss_growth_after_first_minute": round(timeline[-1]["rss_mb"] / first_minute[0] - 1, 4),
                 "answers": live_answers, "accuracy": sum(a["correct"] for a in live_answers) / len(qas)},
        "file": {"ingest_s": round(file_ingest, 2), "answers": file_answers,
                 "accuracy": sum(a["correct"] for a in file_answers) / len(qas)},
        "questions_while_ingesting": questions,
        "timeline": timeline,
    }
    print(f"{'objects shown':24}{'live stream':>14}{'file':>10}")
    for pair in sorted({qa.meta["pair"] for qa in qas}, reverse=True):
        row = [sum(a["correct"] for a in answers if a["pair"] == pair) /
               sum(1 for a in answers if a["pair"] == pair) for answers in (live_answers, file_answers)]
        print(f"{pair:24}{row[0]:>14.0%}{row[1]:>10.0%}")
    print(f"{'all':24}{result['live']['accuracy']:>14.0%}{result['file']['accuracy']:>10.0%}")
    print(f"ingest lag: max {result['live']['lag_max']:.1f}s, last minute max {result['live']['lag_last_minute_max']:.1f}s")
    lat = [q["latency"] for q in questions]
    if lat:
        print(f"question latency while ingesting: median {sorted(lat)[len(lat) // 2]:.2f}s, max {max(lat):.2f}s "
              f"({len(lat)} questions); ingest paused {live.stats.paused:.1f}s in all")
    print(f"RSS: {result['live']['rss_mb_after_first_minute']:.0f} MB after the first minute, "
          f"{result['live']['rss_mb_end']:.0f} MB at the end "
          f"({result['live']['rss_growth_after_first_minute']:+.1%}); dense chunks resident at most "
          f"{live.stats.most_resident_chunks} of {live.stats.chunks}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
