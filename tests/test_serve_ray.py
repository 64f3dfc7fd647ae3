"""videoxl serve --ray: the server as a Ray Serve application on a real local Ray cluster (2 CPUs, no dashboard),
two replicas of the bundled model over one shared disk tier, driven over HTTP by the official openai client.

Requests for a video go to the replica that holds its store; a store one replica wrote is loaded by the other with
identical tokens; two replicas pre-filling one video at once leave one store; a replica killed mid-ingest costs at
most a 503 and is restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import ray
from ray import serve

from videoxl.serve.__main__ import add_arguments
from videoxl.synth.video import write
from videoxl.synth.world import Event, Script, make_scenes

try:  # the HTTP client the openai package is built on
    import httpx2 as httpx
except ModuleNotFoundError:
    import httpx

FRAMES = 48
QUESTION = "What object appears in the video?"


def _clip(path: Path, seed: int, obj: str) -> Path:
    rng = random.Random(seed)
    script = Script(FRAMES, 4.0, 64, tuple(make_scenes(rng, FRAMES, 4.0)))
    return write(script.with_events(Event("object", 20, 26, word=obj)), path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two replicas (one core each) of the bundled model on a local Ray cluster, one shared disk tier."""
    import argparse

    from videoxl.serve.ray import APP, application

    media = tmp_path_factory.mktemp("media")
    for i, obj in enumerate(("heart", "arrow", "ring", "moon", "cross", "heart", "arrow", "ring", "moon")):
        _clip(media / f"clip{i}.mp4", i, obj)
    kv = tmp_path_factory.mktemp("kv")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    port = _free_port()
    args = parser.parse_args(["--allowed-local-media-path", str(media), "--max-frames", str(FRAMES),
                              "--disk-kv-dir", str(kv), "--replicas", "2", "--replica-cpus", "1",
                              "--port", str(port), "--request-timeout", "60"])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(args), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        _wait_for_replicas(url, 2, 120)
        yield {"url": url, "media": media, "kv": kv}
    finally:
        serve.shutdown()
        ray.shutdown()


def _wait_for_replicas(url: str, n: int, timeout: float, gone: str | None = None) -> dict:
    """/health once ``n`` replicas report (and ``gone``, a replica id, no longer does)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            health = httpx.get(url + "/health", timeout=5).json()
            if health["replicas"] >= n and gone not in {r["replica"] for r in health["replica_list"]}:
                return health
        except (httpx.HTTPError, KeyError, json.JSONDecodeError):
            pass
        assert time.monotonic() < deadline, f"fewer than {n} replicas came up within {timeout} s"
        time.sleep(0.5)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def _ask(url: str, video: str, question: str = QUESTION):
    """(replica id, completion) of one question."""
    raw = _client(url).chat.completions.with_raw_response.create(
        model="synth", max_tokens=8, extra_body={"media_io_kwargs": {"video": {"num_frames": FRAMES}}},
        messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                               {"type": "text", "text": question}]}])
    return raw.headers["x-videoxl-replica"], raw.parse()


def _tokens(completion) -> tuple[str, int]:
    return completion.choices[0].message.content, completion.usage.completion_tokens


def _forced(cluster: dict, video: str, key: str) -> tuple[int, dict, str]:
    """A chat request sent to the replicas with routing key ``key`` instead of its video's (status, body,
    replica id): two keys put one video on two replicas."""
    from videoxl.serve.ray import APP

    body = json.dumps({"model": "synth", "max_tokens": 8, "media_io_kwargs": {"video": {"num_frames": FRAMES}},
                       "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": video}},
                                                                 {"type": "text", "text": QUESTION}]}]}).encode()
    handle = serve.get_deployment_handle("Replica", APP)

    async def call():
        replies = handle.options(multiplexed_model_id=key, stream=True).handle.remote(
            "POST", "/v1/chat/completions", b"", [(b"content-type", b"application/json")], body)
        head, pieces = None, []
        async for piece in replies:
            if isinstance(piece, dict):
                head = piece
            else:
                pieces.append(piece)
        return head["status"], json.loads(b"".join(pieces)), dict(head["headers"])["x-videoxl-replica"]

    return asyncio.run(call())


def _stores(kv: Path) -> list[str]:
    return sorted(p.stem for p in (kv / "videoxl-kv").glob("*.json"))


def test_repeat_questions_go_to_the_replica_that_ingested(cluster):
    url = cluster["url"]
    first = {video: _ask(url, video) for video in ("clip0.mp4", "clip1.mp4", "clip2.mp4")}
    assert all(not c.videoxl["reused"] for _, c in first.values())
    assert len({replica for replica, _ in first.values()}) == 2  # new videos spread over both replicas
    for video, (replica, c) in first.items():
        again_replica, again = _ask(url, video, "When does it appear?")
        assert again_replica == replica, video
        assert again.videoxl["reused"] and again.videoxl["key"] == c.videoxl["key"]
        assert again.videoxl["tier"] == "cpu"  # answered from memory, not reloaded from disk
    deadline = time.monotonic() + 5  # replicas report every half second
    while (health := httpx.get(url + "/health").json()) and time.monotonic() < deadline:
        if sum(r["hits"] for r in health["replica_list"]) >= 3:
            break
        time.sleep(0.25)
    assert health["status"] == "ok" and health["replicas"] == 2
    assert sum(r["misses"] for r in health["replica_list"]) == 3
    assert sum(r["hits"] for r in health["replica_list"]) == 3
    metrics = httpx.get(url + "/metrics").text
    for report in health["replica_list"]:
        assert f'videoxl_stores{{replica="{report["replica"]}"}}' in metrics
        assert f'videoxl_queue_depth{{replica="{report["replica"]}"}}' in metrics
    assert 'videoxl_replicas{state="up"} 2' in metrics


def test_a_store_written_by_one_replica_is_loaded_by_the_other(cluster):
    status_a, a, replica_a = _forced(cluster, "clip3.mp4", "pin-a")
    assert status_a == 200 and not a["videoxl"]["reused"]
    assert a["videoxl"]["key"] in _stores(cluster["kv"])  # written through to the shared folder
    for attempt in range(8):  # a key no replica holds goes to the one with fewer videos: try fresh keys
        status_b, b, replica_b = _forced(cluster, "clip3.mp4", f"pin-b{attempt}")
        if replica_b != replica_a:
            break
    assert replica_b != replica_a
    assert status_b == 200 and b["videoxl"]["reused"] and b["videoxl"]["tier"] == "disk"
    assert b["videoxl"]["key"] == a["videoxl"]["key"]
    assert b["choices"][0]["message"]["content"] == a["choices"][0]["message"]["content"]
    assert b["usage"] == a["usage"]


def test_two_replicas_prefilling_one_video_at_once_leave_one_store(cluster):
    # pin two keys to different replicas, then send one new video under both keys at the same moment
    replicas = {}
    for attempt in range(8):
        _, _, replica = _forced(cluster, "clip0.mp4", f"pair{attempt}")
        replicas.setdefault(replica, f"pair{attempt}")
        if len(replicas) == 2:
            break
    assert len(replicas) == 2
    # Ray Serve's multiplexed routing is a preference, not a pin (a router that has not heard yet which replica
    # loaded a key sends it to either): a new video each try, until both requests met different replicas
    for video in ("clip4.mp4", "clip7.mp4", "clip8.mp4"):
        before = _stores(cluster["kv"])
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda key: _forced(cluster, video, key), replicas.values()))
        assert [status for status, _, _ in results] == [200, 200]
        (status, a, _), (_, b, _) = results
        assert a["videoxl"]["key"] == b["videoxl"]["key"]
        assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
        assert not (a["videoxl"]["reused"] and b["videoxl"]["reused"])  # at least one pre-filled it
        assert _stores(cluster["kv"]) == sorted([*before, a["videoxl"]["key"]])
        leftovers = [p.name for p in (cluster["kv"] / "videoxl-kv").iterdir() if p.name.startswith(".tmp-")]
        assert leftovers == []
        if {replica for _, _, replica in results} == set(replicas):
            break
    assert {replica for _, _, replica in results} == set(replicas)


def test_a_replica_killed_mid_ingest_costs_at_most_a_503_and_is_restarted(cluster):
    url = cluster["url"]
    health = _wait_for_replicas(url, 2, 60)
    pids = {r["replica"]: r["pid"] for r in health["replica_list"]}

    def ask(video: str):
        try:
            return _ask(url, video)
        except openai.APIStatusError as e:
            return e

    with ThreadPoolExecutor(4) as pool:  # two new videos being pre-filled, two held ones
        asked = [pool.submit(ask, f"clip{i}.mp4") for i in (5, 6, 0, 1)]
        time.sleep(1.0)
        victim = next(iter(pids))
        os.kill(pids[victim], signal.SIGKILL)
        results = [f.result(timeout=150) for f in asked]
    for r in results:
        if isinstance(r, openai.APIStatusError):
            assert r.status_code == 503 and r.response.headers["retry-after"] == "1", r
        else:
            assert r[1].choices[0].message.content
    _wait_for_replicas(url, 2, 120, gone=victim)  # Ray Serve restarted the killed replica
    for i in (5, 6, 0, 1):  # every video answers again, from the survivor, the restarted replica or disk
        _, c = _ask(url, f"clip{i}.mp4")
        assert c.choices[0].message.content


def test_plain_serve_does_not_import_ray_and_bad_ray_options_exit_2(tmp_path, capsys):
    from videoxl.serve.__main__ import main

    code = ("import sys, videoxl.cli, videoxl.serve.__main__, videoxl.serve.app; "
            "sys.exit(1 if 'ray' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert main(["--ray", "--replicas", "2", "--allowed-local-media-path", str(tmp_path / "absent")]) == 2
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("videoxl serve:")]
    assert len(ours) == 1 and ours[0].startswith("videoxl serve: error: ") and "not a folder" in ours[0]
    with pytest.raises(SystemExit) as exit_:
        main(["--ray", "--replicas", "0"])
    assert exit_.value.code == 2 and "--replicas" in capsys.readouterr().err
