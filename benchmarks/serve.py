"""Serving benchmark: first question (ingest included) against a repeat question on the same video, and throughput.

    python benchmarks/serve.py [--frames 2048] [--requests 24] [--json benchmarks/results/serve.json]
    python benchmarks/serve.py --ray --replicas 2 [--frames 128] [--json benchmarks/results/serve_ray.json]

Starts ``python -m videoxl.serve`` with the bundled model on 127.0.0.1 and drives it with the official ``openai``
client. A deterministic synthetic video of ``--frames`` frames at 4 fps is generated once (cached). The first
question pays for decoding, encoding and pre-filling the whole video; repeat questions reuse its KV store (median
of ``--repeats``). Throughput: ``--requests`` questions on the ready video from 1 and from 4 concurrent clients.
Each row has frames, first_s, repeat_s, speedup, clients, requests_per_s, and the latency percentiles; the KV
bytes a question read (bi-level decoding) stand beside the dense store's, with the bytes/s that implies.

``--ray`` measures ``videoxl serve --ray`` on a local Ray cluster with one core per replica: 1 and ``--replicas``
replicas, 4 and 16 clients, each run on 8 fresh videos with 40 questions of which 80% go to a video asked about
before. Routing by video (Ray Serve's model multiplexing, the product) runs beside plain round robin. Rows: replicas,
routing, clients, first_s and repeat_s (median latency of questions that pre-filled their video and of those that
did not), requests_per_s, and hit_rate: the share of repeat questions (all but one per video) that found their
video's store on the replica they reached (held, or being pre-filled there for another question).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videoxl.llm import cache_dir  # noqa: E402

QUESTIONS = ("What object appears in the video?", "How many times does a star appear?",
             "When does the moon appear?")


def bench_video(frames: int, seed: int = 0) -> Path:
    """A deterministic synthetic video of ``frames`` frames at 4 fps with a moon and three stars (cached)."""
    from videoxl.synth.video import write
    from videoxl.synth.world import Event, Script, make_scenes

    path = cache_dir() / "serve-bench" / (f"video-{frames}.mp4" if seed == 0 else f"video-{frames}-{seed}.mp4")
    if not path.is_file():
        rng = random.Random("benchmark-serve" if seed == 0 else f"benchmark-serve-{seed}")
        script = Script(frames, 4.0, 64, tuple(make_scenes(rng, frames, 4.0)))
        stars = [Event("star", f, f + 3, x=0.3, y=0.4) for f in (frames // 5, frames // 2, 4 * frames // 5)]
        write(script.with_events(Event("object", frames * 2 // 3, frames * 2 // 3 + 6, word="moon"), *stars), path)
    return path


def start_server(media: Path, frames: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "videoxl.serve", "--port", str(port), "--max-frames", str(frames),
                             "--allowed-local-media-path", str(media), "--max-queue", "64", "--log-level", "warning"],
                            cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the server did not start")
            time.sleep(0.2)


def workload(videos: list[Path], questions: int, repeat_share: float, seed: int) -> list[Path]:
    """The video of each question: every video once, and ``repeat_share`` of the questions on a video already
    asked about, in a seeded order."""
    rng = random.Random(seed)
    new, seen, out = list(videos), [], []
    for i in range(questions):
        left = questions - i
        if new and (not seen or left <= len(new) or rng.random() >= repeat_share):
            seen.append(new.pop(0))
            out.append(seen[-1])
        else:
            out.append(rng.choice(seen))
    return out


def ray_run(url: str, jobs: list[Path], clients: int) -> dict:
    """Drive one deployment with ``clients`` concurrent clients; a 503 is retried after its Retry-After."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
    retries = [0]

    def ask(video: Path):
        for _ in range(10):
            started = time.perf_counter()
            try:
                r = client.chat.completions.create(
                    model="synth", max_tokens=16, messages=[{"role": "user", "content": [
                        {"type": "video_url", "video_url": {"url": video.name}},
                        {"type": "text", "text": QUESTIONS[0]}]}])
                return time.perf_counter() - started, r
            except openai.APIStatusError as e:
                if e.status_code != 503:
                    raise
                retries[0] += 1
                time.sleep(float(e.response.headers.get("retry-after", 1)))
        raise RuntimeError("10 answers of 503 in a row")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(ask, jobs))
    wall = time.perf_counter() - started
    firsts = [s for s, r in done if not r.videoxl["reused"] and not r.videoxl["shared_ingest"]]
    repeats = [s for s, r in done if r.videoxl["reused"] or r.videoxl["shared_ingest"]]
    # each video is pre-filled at least once; every other question on it is a repeat, a hit unless it pre-filled
    videos = len(set(jobs))
    return {"clients": clients, "requests": len(done), "requests_per_s": round(len(done) / wall, 2),
            "first_s": round(statistics.median(firsts), 3) if firsts else None,
            "repeat_s": round(statistics.median(repeats), 4) if repeats else None, "ingests": len(firsts),
            "hit_rate": round(len(repeats) / (len(done) - videos), 3), "retries_503": retries[0]}


def main_ray(args: argparse.Namespace) -> None:
    """``--ray``: 1 and ``--replicas`` replicas, 4 and 16 clients, video routing and round robin (module doc)."""
    import ray
    from ray import serve

    from videoxl.serve.__main__ import add_arguments
    from videoxl.serve.ray import APP, application

    frames = args.frames or 128
    t0 = time.perf_counter()
    videos = [bench_video(frames, seed) for seed in range(1, 17)]
    print(f"16 videos of {frames} frames ready in {time.perf_counter() - t0:.1f}s", flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=args.replicas, include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for replicas, routing in [(1, "video"), (args.replicas, "video"), (args.replicas, "round-robin")]:
            parser = argparse.ArgumentParser()
            add_arguments(parser)
            serve_args = parser.parse_args([
                "--allowed-local-media-path", str(videos[0].parent), "--max-frames", str(frames),
                "--replicas", str(replicas), "--replica-cpus", "1", "--port", str(port), "--max-queue", "64"])
            serve.run(application(serve_args, affinity=routing == "video"), name=APP, route_prefix="/")
            deadline = time.monotonic() + 300
            while True:  # until every replica reports (503 while none is up yet)
                try:
                    with urllib.request.urlopen(url + "/health", timeout=5) as r:
                        if json.loads(r.read())["replicas"] >= replicas:
                            break
                except urllib.error.HTTPError as e:
                    if e.code != 503 or time.monotonic() > deadline:
                        raise
                time.sleep(0.5)
            for clients, chosen in ((4, videos[:8]), (16, videos[8:])):  # fresh videos: no store yet
                row = {"replicas": replicas, "routing": routing, "frames": frames,
                       **ray_run(url, workload(chosen, 40, 0.8, seed=clients), clients)}
                print(row, flush=True)
                rows.append(row)
            serve.delete(APP)
    finally:
        serve.shutdown()
        ray.shutdown()
    one = {r["clients"]: r["requests_per_s"] for r in rows if r["replicas"] == 1}
    for r in rows:
        r["throughput_vs_1"] = round(r["requests_per_s"] / one[r["clients"]], 2)
    print(f"{'replicas':>8} {'routing':>11} {'clients':>7} {'first s':>8} {'repeat s':>9} {'req/s':>7} "
          f"{'vs 1':>5} {'hit rate':>8} {'ingests':>7} {'503s':>5}")
    for r in rows:
        print(f"{r['replicas']:>8} {r['routing']:>11} {r['clients']:>7} {r['first_s'] or 0:>8.2f} "
              f"{r['repeat_s'] or 0:>9.3f} {r['requests_per_s']:>7.2f} {r['throughput_vs_1']:>5.2f} "
              f"{r['hit_rate']:>8.0%} {r['ingests']:>7} {r['retries_503']:>5}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": f"{os.cpu_count()} CPU cores, load average "
                                                    f"{os.getloadavg()[0]:.1f} at the end", "rows": rows},
                                        indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default 2048; 128 with --ray)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--requests", type=int, default=24, help="questions per throughput row")
    parser.add_argument("--ray", action="store_true", help="videoxl serve --ray on a local Ray cluster")
    parser.add_argument("--replicas", type=int, default=2, help="replicas (one core each) under --ray")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    if args.ray:
        return main_ray(args)
    args.frames = args.frames or 2048

    import openai

    t0 = time.perf_counter()
    video = bench_video(args.frames)
    print(f"video: {video} ({args.frames} frames at 4 fps, ready in {time.perf_counter() - t0:.1f}s)", flush=True)
    proc, url = start_server(video.parent, args.frames)
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)

    def ask(question: str) -> tuple[float, object]:
        started = time.perf_counter()
        r = client.chat.completions.create(
            model="synth", max_tokens=16, extra_body={"media_io_kwargs": {"video": {"num_frames": args.frames}}},
            messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video.name}},
                                                   {"type": "text", "text": question}]}])
        return time.perf_counter() - started, r

    try:
        first_s, first = ask(QUESTIONS[0])
        assert not first.videoxl["reused"]
        repeats = [ask(QUESTIONS[i % len(QUESTIONS)]) for i in range(1, args.repeats + 1)]
        assert all(r.videoxl["reused"] for _, r in repeats)
        repeat_s = statistics.median(s for s, _ in repeats)
        report = first.videoxl
        print(f"first answer: {first.choices[0].message.content!r}; server stages (s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items()))
        rows = []
        for clients in (1, 4):
            questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                done = list(pool.map(ask, questions))
            wall = time.perf_counter() - started
            latencies = sorted(s for s, _ in done)
            kv_used = statistics.mean(r.videoxl["kv_bytes_used"] for _, r in done)
            rows.append({
                "frames": report["frames"], "tokens": first.usage.prompt_tokens, "first_s": round(first_s, 3),
                "repeat_s": round(repeat_s, 4), "speedup": round(first_s / repeat_s, 1), "clients": clients,
                "requests": len(done), "requests_per_s": round(len(done) / wall, 2),
                "p50_s": round(latencies[len(latencies) // 2], 4),
                "p90_s": round(latencies[int(0.9 * len(latencies))], 4),
                "kv_bytes_used": int(kv_used), "kv_bytes_dense": report["kv_bytes_dense"],
                "kv_read_bytes_per_s": int(kv_used * len(done) / wall),
                "ingest_s": {k: round(report["seconds"][k], 3) for k in ("decode", "encode", "prefill")},
                "device": "cpu", "threads": os.environ.get("OMP_NUM_THREADS", "all"),
            })
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    print(f"{'frames':>6} {'first s':>8} {'repeat s':>9} {'speedup':>8} {'clients':>7} {'req/s':>7} {'p50 s':>7} "
          f"{'p90 s':>7} {'KV read/answer':>14} {'KV dense':>9} {'KV read/s':>10}")
    for r in rows:
        print(f"{r['frames']:>6} {r['first_s']:>8.2f} {r['repeat_s']:>9.3f} {r['speedup']:>7.0f}x {r['clients']:>7} "
              f"{r['requests_per_s']:>7.1f} {r['p50_s']:>7.3f} {r['p90_s']:>7.3f} "
              f"{r['kv_bytes_used'] / 2**20:>11.1f} MB {r['kv_bytes_dense'] / 2**20:>6.1f} MB "
              f"{r['kv_read_bytes_per_s'] / 2**20:>6.0f} MB/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
