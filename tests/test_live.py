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


def test_forgetting_drops_the_oldest_groups_and_later_chunks_no_longer_see_their_timestamps():
    """A second horizon: groups whose dense KVs are released can be forgotten between chunks. Their sparse rows, page
    boxes and timestamp anchors leave memory, and the chunks pre-filled afterwards equal a dense-mask reference in
    which those timestamps are hidden from them; decoding layouts start at the first group kept."""
    from helpers import full_embeddings, reference_mask
    from transformers import DynamicCache

    model = tiny_qwen2(layers=2)
    groups = random_groups(12, hidden=64)
    prefix = torch.randint(0, 96, (5,))
    config = PrefillConfig(chunk=2, window=1, timestamps="chunk", per_forward=1)
    cfg = model.config
    store = HorizonStore(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads,
                         torch.float32, "cpu")
    seen, held = {}, []

    def chunk_done(chunks: int, tokens: int) -> None:
        store.release(max(0, (chunks - 2) * 2))  # this chunk and the window stay dense
        if chunks >= 4:
            seen["video"].forget((chunks - 2) * 2)  # after chunk 4: groups 0-3; after chunk 5: 0-5
        held.append((seen["video"].anchors.length, store.sparse.k[0].data.shape[1]))

    video = prefill(model, prefix, groups, config, store=store, on_chunk=chunk_done, keep_hidden=True,
                    on_start=lambda v: seen.update(video=v))
    assert store.forgotten_groups == 8 and store.released_groups == 8
    # the reference: the chunk pattern, minus the forgotten timestamps for the chunks pre-filled after each forget
    mask = reference_mask(5, groups, 2, 1, "chunk")
    starts = [5 + sum(len(g) for g in groups[:i]) for i in range(13)]
    for chunk, forgotten in ((4, 4), (5, 6)):  # chunks 4 and 5 (0-based) came after the forgets of 4 and 6 groups
        for g in range(forgotten):
            ts = groups[g].timestamp.shape[0]
            mask[starts[2 * chunk]: starts[2 * chunk + 2], starts[g]: starts[g] + ts] = False
    cache = DynamicCache(config=cfg)
    with torch.no_grad():
        ref = model(inputs_embeds=full_embeddings(model, prefix, groups)[None], attention_mask=mask[None, None],
                    cache=cache, use_cache=True)
        logits = model.lm_head(torch.cat(video.hidden))
    torch.testing.assert_close(logits, ref.logits[0], atol=1e-4, rtol=0)
    kept = slice(starts[8], starts[12])  # the groups still dense
    for layer in range(cfg.num_hidden_layers):
        torch.testing.assert_close(store.dense.k[layer][:, kept], cache.layers[layer].keys[0][:, kept], atol=1e-4, rtol=0)
    # what is held: the anchors hold the prefix and the kept groups' stamps, the sparse buffer the kept groups' rows
    stamps = [g.timestamp.shape[0] for g in groups]
    assert [a for a, _ in held] == [5 + sum(stamps[:2 * c]) for c in (1, 2, 3)] + \
        [5 + sum(stamps[f: 2 * c]) for c, f in ((4, 4), (5, 6), (6, 8))]
    first_kept = store.groups[8].sparse_start
    physical = store.sparse_length - store.forgotten_sparse
    assert store.forgotten_sparse == first_kept and physical == sum(g.sparse_end - g.sparse_start
                                                                    for g in store.groups[8:])
    centre, _, owner = video.summaries.pages()
    assert owner.tolist() == sorted(owner.tolist()) and int(owner.min()) == 8 and centre[0].shape[1] == owner.numel()
    # decoding reads the kept groups exactly as a plain store of the same KVs would: dense rows and sparse rows
    from_dense, index, _ = store.layout([True] * 12, first=8)
    for layer in range(cfg.num_hidden_layers):
        k, v = store.gather(layer, from_dense, index)
        torch.testing.assert_close(k[:, 5:], cache.layers[layer].keys[0][:, kept], atol=1e-4, rtol=0)
    with pytest.raises(AssertionError, match="forgotten"):
        store.layout([True] * 12, first=7)


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
    growing = tmp_path / "growing.ts"
    growing.write_bytes(b"")
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "watch", str(growing), "--follow", "--keep", "1m"],
                         capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 2 and "keep (60 s) must be at least the horizon (600.0 s)" in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


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


def test_keep_holds_memory_flat_over_a_forty_minute_stream(model):
    """Forty minutes of stream (a frame every 4 s of stream) with a one-minute horizon and two minutes kept: what the
    stream holds (groups with any KV, sparse rows, page boxes, timestamp anchors) stops growing once two minutes
    have streamed, while the stream goes on four times longer than the first ten minutes; answers cover what is
    kept, and a range reaching further back covers the same."""
    from videoxl.errors import OptionError
    from videoxl.live.stream import LiveOptions, LiveStream

    script = _script(9600, 5)  # 40 minutes at 4 fps
    frames = ((i / FPS, render(script, i)) for i in range(0, script.frames, 16))  # 600 frames: 150 groups
    held = []

    def progress(stats) -> None:
        video = live._video
        if video is not None and video.anchors is not None:
            store = video.store
            held.append((stats.groups, stats.groups - stats.forgotten_groups, store.sparse.k[0].data.shape[1],
                         store.sparse_length - store.forgotten_sparse, video.summaries.pages()[0][0].shape[1],
                         video.anchors.length))

    live = LiveStream(model, frames, LiveOptions(horizon=60.0, keep=120.0, chunk=1, window=1), on_progress=progress)
    assert live.start().wait(timeout=240)
    assert live.stats.groups == 150 and live.stats.stream_time == 2396.0
    steady = [h for h in held if h[0] >= 40]  # two minutes are about 8 groups of 16 s; 40 are ten minutes
    assert len(steady) > 100
    for column in range(1, 6):  # each held quantity: its largest over the last 30 minutes is within 10% of the
        late = max(h[column] for h in steady)  # first ten's (stamps grow a token longer at 1000 s: "Time 1000.0s:")
        early = max(h[column] for h in held if 8 < h[0] < 40)
        assert early <= late <= 1.1 * early, (column, early, late, held)
    assert max(h[1] for h in steady) <= 9  # groups held: two minutes of them and the chunk being written
    reply = live.ask("What object appears in the video?")
    kept = live.stats.groups - live.stats.forgotten_groups
    assert reply.groups == kept <= 9 and reply.start >= 2396.0 - 120 - 16 and reply.stream_time == 2396.0
    assert reply.answer.kv_bytes_dense < live._video.store.length * live._video.store.bytes_per_token / 10
    assert live.ask("What object appears in the video?", since="-30m").start == reply.start
    with pytest.raises(OptionError, match="keep"):
        LiveOptions(horizon=600.0, keep=60.0)


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
    listed, answered about through chat completions (stream://ID; with ``since``, about its last seconds, a range
    not reached yet 409, a bad one 400, one beside a file 400), and deleted."""
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
        status, body = _request("POST", base + "/v1/streams", {"url": "tcp://127.0.0.1:9", "keep": 30})
        assert status == 400 and "keep (30 s) must be at least the horizon (600.0 s)" in body["error"]["message"], body
        script = _script(48, 5, Event("object", 12, 18, word="heart"))
        url, sender = _tcp_stream(tmp_path, script, "--speed", "0")
        status, stream = _request("POST", base + "/v1/streams", {"url": url, "fps": 4, "reconnect": 4,
                                                                  "horizon": 8, "keep": 3600})
        assert status == 200 and stream["status"] == "ingesting" and stream["forgotten_groups"] == 0, stream
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
        assert reply["videoxl"]["stream_time"] == 11.75 and reply["videoxl"]["stream_start"] == 0.0

        def since(url: str, value) -> tuple[int, dict]:
            return _request("POST", base + "/v1/chat/completions", {"messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": url, "since": value}},
                {"type": "text", "text": "What object appears in the video?"}]}]})

        status, reply = since(f"stream://{stream['id']}", "-5s")  # the last 5 s: the groups from 7 s on
        assert status == 200, reply
        assert (reply["videoxl"]["stream_start"], reply["videoxl"]["stream_time"], reply["videoxl"]["groups"]) == \
            (7.0, 11.75, 5)
        status, reply = since(f"stream://{stream['id']}", "60")
        assert status == 409 and "stream time 60 s" in reply["error"]["message"], reply
        status, reply = since(f"stream://{stream['id']}", "-5 minutes")
        assert status == 400 and "'-5 minutes'" in reply["error"]["message"], reply
        status, reply = since("clip.mp4", "-5m")
        assert status == 400 and "stream://ID" in reply["error"]["message"], reply
        assert _request("DELETE", f"{base}/v1/streams/{stream['id']}")[0] == 200
        assert _request("GET", base + "/v1/streams")[1]["data"] == []
        assert _request("DELETE", f"{base}/v1/streams/{stream['id']}")[0] == 404
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        if sender is not None:
            _finish(sender)


# -- since: a question about part of the stream ----------------------------------------------------------------------
def test_since_parses_stretches_and_stream_times_alike_in_python_the_cli_and_requests(tmp_path):
    """'-90s', '-5m', '-1h', '-1m30s' are stretches back from the newest frame, '120' a stream time; the CLI flag
    and the request field read them with the library's one parser, and refuse anything else naming it."""
    from videoxl.cli import _parser
    from videoxl.errors import OptionError
    from videoxl.live.since import Since, parse_since
    from videoxl.serve.protocol import ServeError, parse_chat

    def body(since) -> dict:
        return {"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "stream://s", "since": since}}, {"type": "text", "text": "q"}]}]}

    forms = {"-90s": Since(last=90.0), "-5m": Since(last=300.0), "-1h": Since(last=3600.0),
             "-1m30s": Since(last=90.0), "-1h2m3.5s": Since(last=3723.5), "120": Since(start=120.0),
             "0": Since(start=0.0), "7.5": Since(start=7.5)}
    for text, since in forms.items():
        assert parse_since(text) == since
        assert _parser(["watch", "x", "--since", text]).parse_args(["watch", "x", "--since", text]).since == since
        assert parse_chat(body(text), 8192, 4096).media.since == since
    assert parse_chat(body(120), 8192, 4096).media.since == Since(start=120.0)
    assert parse_chat(body(None), 8192, 4096).media.since is None
    assert Since(last=300.0).begin(1000.0) == 700.0 and Since(start=120.0).begin(1000.0) == 120.0
    for bad in ("-5x", "5m", "-90", "-0s", "-", "-1s30m", "yesterday", "", "-5m ago", True, -3, float("nan"), [1]):
        with pytest.raises(OptionError, match="since must be"):
            parse_since(bad)
        with pytest.raises(ServeError) as e:
            parse_chat(body(bad), 8192, 4096)
        assert e.value.status == 400 and "video_url.since'" in e.value.message and repr(bad) in e.value.message
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "watch", str(tmp_path / "x.ts"), "--follow",
                          "--since", "-5x"], capture_output=True, text=True, timeout=60, env=ENV)
    assert run.returncode == 2 and "--since" in run.stderr and "'-5x'" in run.stderr, run.stderr


@pytest.fixture(scope="module")
def twelve_seconds(model):
    """A finished stream of 12 s at 4 fps (12 groups, stamped 0..11 s), heart at 1-2.5 s and moon at 8-9.5 s."""
    from videoxl.live.stream import LiveOptions, LiveStream

    script = _script(48, 6, Event("object", 4, 10, word="heart"), Event("object", 32, 38, word="moon"))
    live = LiveStream(model, ((i / FPS, render(script, i)) for i in range(script.frames)), LiveOptions(horizon=None))
    assert live.start().wait(timeout=120)
    assert live.group_times == [float(g) for g in range(12)] and live.stats.stream_time == 11.75
    yield live
    live.close()


def test_since_leaves_the_groups_before_the_range_out_of_the_answer(twelve_seconds):
    """With since, the answer's cache holds the prompt prefix and the groups that began in the range, and nothing of
    those before (counted in tokens); selection ranks only the chunks inside; the answer reports the range it covers
    and is about that range."""
    from videoxl.errors import OptionError

    live, question = twelve_seconds, "What object appears in the video?"
    store = live._video.store
    bytes_per_token = store.bytes_per_token

    def dense_tokens(first: int) -> int:  # the prefix and every group from ``first`` on, dense
        return store.prefix_length + sum(g.end - g.start for g in store.groups[first:])

    whole = live.ask(question, dense=True)
    assert (whole.start, whole.stream_time, whole.groups) == (0.0, 11.75, 12)
    assert whole.answer.kv_bytes_used == dense_tokens(0) * bytes_per_token == store.length * bytes_per_token
    for since, first in (("-5s", 7), ("-1m30s", 0), ("4", 4), (4.5, 5), ("11", 11)):
        reply = live.ask(question, dense=True, since=since)
        begin = 11.75 - 5 if since == "-5s" else 0.0 if since == "-1m30s" else float(since)
        assert reply.start == float(first) >= begin and reply.stream_time == 11.75 and reply.groups == 12 - first
        assert reply.answer.kv_bytes_used == reply.answer.kv_bytes_dense == dense_tokens(first) * bytes_per_token
        assert reply.answer.chunks == 12 - first
    selected = live.ask(question, since="-5s", topk=1)  # chunks are the groups from 7 s on; first and last forced
    dense = selected.answer.dense_chunks
    assert selected.answer.chunks == len(selected.answer.relevance) == 5 and len(dense) == 3 and {0, 4} <= set(dense)
    groups = store.groups[7:]
    used = store.prefix_length + sum(g.end - g.start if c in dense else g.sparse_end - g.sparse_start
                                     - (g.visual_start - g.start) for c, g in enumerate(groups))
    assert selected.answer.kv_bytes_used == used * bytes_per_token < dense_tokens(7) * bytes_per_token
    # the whole stream answers the first object; a range after it, the second
    assert live.ask(question).text.strip() == "heart"
    assert selected.text.strip() == live.ask(question, since="3").text.strip() == "moon"
    with pytest.raises(OptionError, match="nothing is ingested from stream time 12 s on yet"):
        live.ask(question, since="12")


def test_without_since_or_with_a_range_over_everything_the_answer_is_the_same(twelve_seconds):
    live, question = twelve_seconds, "What object appears in the video?"
    plain, everything = live.ask(question, topk=2), live.ask(question, topk=2, since="-1h")
    for reply in (plain, everything):
        assert (reply.start, reply.stream_time, reply.groups) == (0.0, 11.75, 12)
    assert plain.answer.to_dict() == everything.answer.to_dict() and plain.answer.relevance == everything.answer.relevance


def test_watch_since_answers_about_the_stream_s_last_seconds(tmp_path):
    """``videoxl watch FILE --since -5s``: the final answer covers the groups of the last five seconds, and says so."""
    script = _script(48, 6, Event("object", 4, 10, word="heart"), Event("object", 32, 38, word="moon"))
    path = tmp_path / "written.ts"
    _finish(_send(tmp_path, script, str(path), "--speed", "0"))
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "watch", str(path), "--follow", "--idle", "1",
                          "--fps", "4", "--since", "-5s", "--ask", "What object appears in the video?", "--json"],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert run.returncode == 0, run.stderr
    [answer] = [json.loads(line) for line in run.stdout.splitlines()]
    assert (answer["stream_start"], answer["stream_time"], answer["groups"]) == (7.0, 11.75, 5)
    assert answer["answer"] == "moon"
