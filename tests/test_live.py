"""Live video (videoxl/live, videoxl/serve/streams.py): real MPEG-TS streams on 127.0.0.1 sent by
``python -m videoxl.synth.stream``, ingested with the bundled model while they run.

The horizon store is checked against a plain KVStore pre-filled with the same input; the streams against the
synthetic world's known events (what was shown, and when).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from helpers import random_groups, tiny_qwen2
from videoxl.engine.prefill import PrefillConfig, prefill
from videoxl.engine.store import KVStore
from videoxl.live.horizon import HorizonStore
from videoxl.synth.stream import script_to_json
from videoxl.synth.world import Event, Script, make_scenes, render

FPS = 4.0  # the synthetic scripts' frame rate; streams are sampled at it, so every frame is seen


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here and in the processes started: reader, ingest and questions already run side by side, and
    on a busy two-core machine more threads spin against each other (a 4-frame encode: 0.08 s with one, 2 s with two
    under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model():
    from videoxl import DEFAULT_MODEL
    from videoxl.model import VideoXL2

    return VideoXL2.from_pretrained(DEFAULT_MODEL).eval()


def _script(frames: int, seed: int, *events: Event) -> Script:
    rng = random.Random(seed)
    return Script(frames, FPS, 64, tuple(make_scenes(rng, frames, FPS))).with_events(*events)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send(tmp_path: Path, script: Script, out: str, *args: str) -> subprocess.Popen:
    """Send ``script`` to ``out`` from another process (PyAV's muxer holds the GIL while it waits for a client)."""
    path = tmp_path / f"script-{time.monotonic_ns()}.json"
    path.write_text(script_to_json(script))
    return subprocess.Popen([sys.executable, "-m", "videoxl.synth.stream", str(path), out, *args], env=ENV)


def _finish(sender: subprocess.Popen) -> None:
    """Wait for a sender to end; one still waiting for a client (a failed test) is killed, not left behind."""
    try:
        sender.wait(timeout=30)
    except subprocess.TimeoutExpired:
        sender.kill()
        sender.wait()


def _tcp_stream(tmp_path: Path, script: Script, *args: str) -> tuple[str, subprocess.Popen]:
    port = _port()
    return f"tcp://127.0.0.1:{port}", _send(tmp_path, script, f"tcp://127.0.0.1:{port}?listen=1", *args)


# -- the horizon store ----------------------------------------------------------------------------------------------
def test_horizon_store_prefills_like_a_store_and_reads_released_groups_sparse():
    """Releasing old groups during pre-fill (outside the window) changes nothing pre-fill computes; a released
    group then reads as its sparse form: values pooled, timestamp keys verbatim, and decoding layouts hold it
    sparse, exactly as a plain store's layout with that group sparse."""
    model = tiny_qwen2(layers=2)
    groups = random_groups(12, hidden=64)
    prefix = torch.randint(0, 96, (5,))
    config = PrefillConfig(chunk=2, window=1, timestamps="chunk", per_forward=1)
    plain = prefill(model, prefix, groups, config).store
    cfg = model.config
    horizon = HorizonStore(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads,
                           torch.float32, "cpu")
    released = []

    def chunk_done(chunks: int, tokens: int) -> None:  # keep this chunk and the one before it (the window)
        horizon.release(max(0, (chunks - 2) * 2))
        released.append(horizon.resident_groups)

    prefill(model, prefix, groups, config, store=horizon, on_chunk=chunk_done)
    assert horizon.released_groups == 8 and max(released) <= 4  # never more than two chunks dense
    assert horizon.dense.k[0].data.shape[1] < plain.dense.k[0].shape[1]  # the memory really went
    for layer in range(cfg.num_hidden_layers):
        keep = slice(horizon.groups[8].start, horizon.length)
        torch.testing.assert_close(horizon.dense.k[layer][:, keep], plain.dense.k[layer][:, keep])
        torch.testing.assert_close(horizon.dense.v[layer][:, : plain.prefix_length],
                                   plain.dense.v[layer][:, : plain.prefix_length])
        torch.testing.assert_close(horizon.sparse.k[layer][:, : horizon.sparse_length],
                                   plain.sparse.k[layer][:, : plain.sparse_length])
    # a released group read through the dense buffer: its values are its pooled values, its stamps verbatim
    g = horizon.groups[3]
    v = horizon.dense.v[1][:, g.start: g.end]
    ts = g.visual_start - g.start
    torch.testing.assert_close(v[:, :ts], plain.dense.v[1][:, g.start: g.visual_start])
    pooled = plain.dense.v[1][:, g.visual_start: g.visual_start + 4].mean(1)
    torch.testing.assert_close(v[:, ts], pooled)
    torch.testing.assert_close(horizon.dense.k[1][:, g.start: g.visual_start], plain.dense.k[1][:, g.start: g.visual_start])
    # decoding layouts: every group asked dense, the released ones come sparse, as from a plain store told so
    wanted = [True] * len(horizon.groups)
    told = [False] * 8 + wanted[8:]
    for layer in range(cfg.num_hidden_layers):
        for a, b in zip(horizon.gather(layer, *horizon.layout(wanted)[:2]), plain.gather(layer, *plain.layout(told)[:2])):
            torch.testing.assert_close(a, b)
    assert horizon.mixed_tokens(wanted) == plain.mixed_tokens(told) < plain.mixed_tokens(wanted)


# -- streams ----------------------------------------------------------------------------------------------------------
def test_live_tcp_stream_answers_about_what_happened_and_not_what_has_not(model, tmp_path):
    """A TCP MPEG-TS stream at twice real time: asked mid-stream, the answer is the object already shown (moon at 4 s), not
    the one still to come (heart at 20 s); at the end every group is ingested, stamped by the stream's clock."""
    from videoxl.live.source import LiveSource, SourceOptions
    from videoxl.live.stream import LiveOptions, LiveStream

    script = _script(96, 1, Event("object", 16, 22, word="moon"), Event("object", 80, 86, word="heart"))
    url, sender = _tcp_stream(tmp_path, script, "--speed", "2")
    live = LiveStream(model, LiveSource(url, SourceOptions(fps=FPS, reconnect=2)), LiveOptions(horizon=None))
    live.start()
    try:
        deadline = time.monotonic() + 60
        while live.stats.stream_time < 9 and time.monotonic() < deadline:
            time.sleep(0.05)
        reply = live.ask("What object appears in the video?")
        assert reply.stream_time < 20.0, "the question came too late to test the future"
        assert reply.text.strip() == "moon"
        assert live.wait(timeout=90)
    finally:
        live.close()
        _finish(sender)
    assert live.group_times == [float(4 * i / FPS) for i in range(24)]
    assert live.stats.stream_time == 23.75 and live.stats.ended and not live.stats.gaps


def test_source_that_drops_for_three_seconds_resumes_with_a_visible_gap(model, tmp_path):
    """The sender closes at stream second 8 and comes back 3 s later with its clock moved on: ingest goes on, the
    stamps stay increasing and jump over the outage."""
    from videoxl.live.source import LiveSource, SourceOptions
    from videoxl.live.stream import LiveOptions, LiveStream

    script = _script(64, 2, Event("object", 4, 10, word="ring"))
    url, sender = _tcp_stream(tmp_path, script, "--speed", "0", "--drop", "8:3")
    source = LiveSource(url, SourceOptions(fps=2.0, reconnect=6))
    live = LiveStream(model, source, LiveOptions(horizon=None)).start()
    try:
        assert live.wait(timeout=120)
    finally:
        live.close()
        _finish(sender)
    stamps = live.group_times
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert source.stats.reconnects == 1 and len(live.stats.gaps) == 1
    before, after = live.stats.gaps[0]
    assert before == 7.5 and after == 11.0  # frames at 8.0 .. 10.5 s were lost with the connection
    assert 11.0 in [t for t in (round(s, 1) for s in stamps)] or any(7.5 < s <= 11.0 for s in stamps)
    assert max(b - a for a, b in zip(stamps, stamps[1:])) >= 3.0  # the gap is in the stamps the model sees
    assert live.stats.stream_time == 15.5  # the stream's last frame kept at 2 fps: everything after it arrived


def test_watch_follows_a_growing_file_until_it_stops(tmp_path):
    """``videoxl watch FILE --follow``: the file is written as MPEG-TS while the command reads it; it ends when the
    file stops growing, then answers the --ask question about the whole of it, as JSON."""
    script = _script(48, 3, Event("object", 20, 26, word="arrow"))
    path = tmp_path / "growing.ts"
    path.write_bytes(b"")
    writer = _send(tmp_path, script, str(path), "--speed", "2")
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "watch", str(path), "--follow", "--idle", "3",
                          "--fps", "4", "--ask", "What object appears in the video?", "--json"],
                         capture_output=True, text=True, timeout=180, env=ENV)
    _finish(writer)
    assert run.returncode == 0, run.stderr
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(answers) == 1
    assert answers[0]["question"] == "What object appears in the video?" and answers[0]["answer"] == "arrow"
    assert answers[0]["stream_time"] == 11.75 and answers[0]["groups"] == 12


def test_watch_refuses_a_bad_source_with_exit_2(tmp_path):
    for source, words in (("ftp://127.0.0.1/x", "unsupported live scheme 'ftp'"),
                          (str(tmp_path / "none.ts"), "no such file")):
        run = subprocess.run([sys.executable, "-m", "videoxl.cli", "watch", source, "--follow"],
                             capture_output=True, text=True, timeout=60, env=ENV)
        assert run.returncode == 2 and words in run.stderr and run.stderr.count("\n") == 1, run.stderr


def test_horizon_bounds_resident_chunks_over_a_ten_minute_stream(model):
    """Ten minutes of stream fed faster than real time (a frame every 4 s of stream): with a one-minute horizon
    the chunks kept dense stay bounded while the stream grows, and the released past still answers."""
    from videoxl.live.stream import LiveOptions, LiveStream

    script = _script(2400, 4, Event("object", 240, 280, word="moon"))  # 10 minutes at 4 fps; moon at 60-70 s
    frames = ((i / FPS, render(script, i)) for i in range(0, script.frames, 16))  # 150 frames: 38 groups
    counts = []
    live = LiveStream(model, frames, LiveOptions(horizon=60.0, chunk=1, window=1),
                      on_progress=lambda stats: counts.append(stats.resident_chunks))
    live.start()
    assert live.wait(timeout=240)
    assert live.stats.chunks == 38 and live.stats.stream_time == 596.0
    # a minute of stream is about 4 groups of 16 s (a group counts while its last frame is within the minute;
    # releases go a whole chunk at a time, and never into the window pre-fill still reads)
    assert counts[:4] == [1, 2, 3, 4] and set(counts[4:]) <= {4, 5} and live.stats.most_resident_chunks <= 5
    assert live.stats.resident_chunks <= 5 and live.stats.chunks - live.stats.resident_chunks >= 33
    reply = live.ask("What object appears in the video?")  # the released past is still there, sparse
    assert reply.stream_time == 596.0 and reply.groups == 38
    assert reply.answer.kv_bytes_used < reply.answer.kv_bytes_dense


# -- the server ---------------------------------------------------------------------------------------------------------
def _request(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_streams_obey_the_allow_list_and_answer_from_the_stream(tmp_path):
    """A server allowing tcp only: udp and rtsp streams get 403 and a file path 403; a tcp stream is ingested,
    listed, answered about through chat completions (stream://ID), and deleted."""
    port = _port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "videoxl.serve", "--port", str(port),
                               "--allowed-stream-schemes", "tcp"], stdout=log, stderr=log, env=ENV)
    base = f"http://127.0.0.1:{port}"
    sender = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.2)
        for url in ("udp://127.0.0.1:1234", "rtsp://127.0.0.1/cam", "/etc/passwd"):
            status, body = _request("POST", base + "/v1/streams", {"url": url})
            assert status == 403 and body["error"]["type"] == "permission_error", body
        assert _request("POST", base + "/v1/streams", {"url": "gopher://x"})[0] == 400
        script = _script(48, 5, Event("object", 12, 18, word="heart"))
        url, sender = _tcp_stream(tmp_path, script, "--speed", "0")
        status, stream = _request("POST", base + "/v1/streams", {"url": url, "fps": 4, "reconnect": 4})
        assert status == 200 and stream["status"] == "ingesting", stream
        deadline = time.monotonic() + 90
        while _request("GET", f"{base}/v1/streams/{stream['id']}")[1]["status"] == "ingesting":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        listed = _request("GET", base + "/v1/streams")[1]["data"]
        assert [s["id"] for s in listed] == [stream["id"]] and listed[0]["groups"] == 12
        status, reply = _request("POST", base + "/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": f"stream://{stream['id']}"}},
            {"type": "text", "text": "What object appears in the video?"}]}]})
        assert status == 200, reply
        assert reply["choices"][0]["message"]["content"].strip() == "heart"
        assert reply["videoxl"]["stream_time"] == 11.75
        assert _request("DELETE", f"{base}/v1/streams/{stream['id']}")[0] == 200
        assert _request("GET", base + "/v1/streams")[1]["data"] == []
        assert _request("DELETE", f"{base}/v1/streams/{stream['id']}")[0] == 404
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        if sender is not None:
            _finish(sender)
