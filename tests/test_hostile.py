"""The server and the CLI under hostile input, load and faults, each case through a real ``videoxl serve`` on
127.0.0.1 or the real ``videoxl`` command: forged metrics, pixel bombs, many large bodies at once, a disk tier
pointed at someone else's files, a reused uuid, an edited store manifest, an ingest under a steady stream of
questions, malformed requests, and SIGTERM at several moments."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import pytest

from test_serve import KEY, Server, _clip, _status, ask, httpx

MB = 2**20
QUESTION = "What object appears in the video?"


def _bomb(path: Path, width: int, height: int, frames: int = 2) -> Path:
    """A tiny H.264 file of black ``width`` x ``height`` frames (a few kilobytes: black compresses to nothing)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast"}
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane, value in zip(frame.planes, (16, 128, 128)):
            plane.update(bytes([value]) * plane.buffer_size)
        for _ in range(frames):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _memory(pid: int, field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak since the last reset) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def _reset_peak(pid: int) -> int:
    """Reset the process's peak-RSS counter (Linux ``clear_refs`` 5); the resident bytes now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _memory(pid, "VmRSS")


def _post(server: Server, content: bytes | str, key: str | None = KEY) -> httpx.Response:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return httpx.post(server.url + "/v1/chat/completions", content=content, headers=headers, timeout=120)


def _body(url: str, question: str = QUESTION, frames: int = 32, **fields) -> dict:
    return {"model": "synth", "max_tokens": 8, "media_io_kwargs": {"video": {"num_frames": frames}},
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                      {"type": "text", "text": question}]}], **fields}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    for i, obj in enumerate(("heart", "arrow", "ring")):
        _clip(root / f"clip{i}.mp4", i, obj)
    _bomb(root / "bomb.mp4", 6144, 4096)  # 25 million pixels a frame, 3 KB
    from PIL import Image

    Image.new("1", (12000, 12000)).save(root / "big.png")  # 144 million pixels, 17 KB
    return root


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    """The bundled model with an API key, the files folder, one allowed domain, 8 MB media and 24 MB of bodies
    in flight."""
    log = tmp_path_factory.mktemp("logs") / "hostile.log"
    s = Server(log, "--allowed-local-media-path", str(files), "--allowed-media-domains", "example.com",
               "--max-media-mb", "8", "--max-bodies-mb", "24", "--max-frames", "96", api_key=KEY)
    yield s
    s.stop()


# -- security ----------------------------------------------------------------------------------------------------------
def test_a_forged_metrics_label_writes_nothing(server):
    from prometheus_client.parser import text_string_to_metric_families

    forged = "/v1/x%22%7D%201e9%0Avideoxl_queue_depth%2099999%0A%23"
    assert httpx.get(server.url + forged).status_code == 401
    for i in range(20):  # junk paths, with and without the key
        httpx.get(f"{server.url}/v1/junk{i}")
        httpx.get(f"{server.url}/junk{i}", headers={"Authorization": f"Bearer {KEY}"})
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    assert [s.value for s in families["videoxl_queue_depth"].samples] == [0]
    paths = {s.labels["path"] for s in families["videoxl_requests"].samples}
    assert paths <= {"/v1/chat/completions", "/v1/models", "/health", "/metrics", "other"}, paths
    assert len(families["videoxl_requests"].samples) <= 4


def test_a_pixel_bomb_as_data_url_is_refused_from_its_header(server, files):
    _post(server, json.dumps(_body("clip0.mp4")))  # warm: the first request's own allocations
    before = _reset_peak(server.proc.pid)
    data = "data:video/mp4;base64," + base64.b64encode((files / "bomb.mp4").read_bytes()).decode()
    started = time.perf_counter()
    r = _post(server, json.dumps(_body(data)))
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "4096 x 4096" in message and "6144 x 4096" in message
    assert "messages[0].content[0]" in message and tempfile.gettempdir() not in message  # no scratch path
    assert time.perf_counter() - started < 10
    assert _memory(server.proc.pid, "VmHWM") - before < 60 * MB  # one decoded frame alone would take 75 MB RGB


def test_a_pixel_bomb_file_and_image_exit_2(files):
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "ask", files / "bomb.mp4", QUESTION],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "larger than the limit" in run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "ask", files / "big.png", QUESTION],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "12000 x 12000" in run.stderr and "Warning" not in run.stderr and "site-packages" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_concurrent_large_bodies_are_bounded(server):
    """Eight 10 MB bodies at once with 24 MB allowed in flight: the rest get 429, and the server's peak memory
    grows by a bounded amount (all eight read and decoded at once took about 50 MB each)."""
    junk = "data:video/mp4;base64," + base64.b64encode(os.urandom(7 * MB + 512 * 1024)).decode()
    body = json.dumps(_body(junk))
    _post(server, json.dumps(_body("clip0.mp4")))  # warm: the first request's own allocations
    before = _reset_peak(server.proc.pid)
    with ThreadPoolExecutor(8) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: _post(server, body), range(8))]
    assert set(statuses) <= {400, 429} and 429 in statuses and 400 in statuses, statuses
    grown = _memory(server.proc.pid, "VmHWM") - before
    assert grown < 160 * MB, grown / MB


# -- malformed requests: 400, never 500 --------------------------------------------------------------------------------
def _raw(fields: str, url: str = "clip0.mp4") -> str:
    body = json.dumps(_body(url))
    return body[:-1] + ", " + fields + "}"


MALFORMED = {
    "deep": _raw('"extra": ' + "[" * 100_000 + "]" * 100_000),
    "seed": _raw('"seed": ' + "7" * 5000),
    "max_tokens": _raw('"max_tokens": 1' + "0" * 400),
    "topk": _raw('"topk": 1' + "0" * 400),
    "nan": _raw('"temperature": NaN'),
    "userinfo": json.dumps(_body("http://127.0.0.1:18001\\@example.com/x.mp4")),
    "empty url": json.dumps(_body("")),
    "zero-width question": json.dumps(_body("clip0.mp4", "\u200b\u200b")),
    "response_format": _raw('"response_format": {"type": "json_object"}'),
    "tools": _raw('"tools": [{"type": "function", "function": {"name": "f"}}]'),
    "logprobs": _raw('"logprobs": true'),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_requests_get_400(server, case):
    r = _post(server, MALFORMED[case])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and "Traceback" not in r.text


# -- data loss and wrong answers ---------------------------------------------------------------------------------------
def test_a_reused_uuid_with_other_media_answers_about_the_new_media(server):
    client = server.client()
    first = ask(client, "clip0.mp4", uuid="u1", frames=32)
    other = ask(client, "clip1.mp4", uuid="u1", frames=32)
    plain = ask(client, "clip1.mp4", frames=32)  # clip1 without a uuid: its own content key
    assert other.videoxl["key"] == plain.videoxl["key"] != first.videoxl["key"]
    assert other.choices[0].message.content == plain.choices[0].message.content
    assert ask(client, None, uuid="u1", frames=32).videoxl["key"] == plain.videoxl["key"]  # the uuid now names clip1


@pytest.fixture(scope="module")
def tier(files, tmp_path_factory):
    """A disk tier pointed at a copy of a model folder (its files must survive untouched), with its own temporary
    folder holding the scratch folder of a server that was killed (pid 999999999: none)."""
    folder, scratch = tmp_path_factory.mktemp("tier"), tmp_path_factory.mktemp("tmp")
    user = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"weights",
            "tokenizer.json": b"{}", "tokenizer_config.json": b"{}", ".tmp-notes": b"mine"}
    for name, data in user.items():
        (folder / name).write_bytes(data)
    (scratch / "videoxl-media-999999999-abc").mkdir()
    (scratch / "videoxl-media-999999999-abc" / "media-x.mp4").write_bytes(b"x")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(scratch)
    try:
        s = Server(folder / "server.log", "--allowed-local-media-path", str(files), "--cpu-kv-gb", "0",
                   "--disk-kv-dir", str(folder))
    finally:
        os.environ.pop("TMPDIR") if old is None else os.environ.__setitem__("TMPDIR", old)
    yield s, folder, user, scratch
    s.stop()


def test_the_disk_tier_touches_only_its_own_subfolder(tier, tmp_path):
    server, folder, user, _ = tier
    ask(server.client(), "clip2.mp4", frames=32)  # written to disk at once (no RAM budget)
    assert list((folder / "videoxl-kv").glob("*.json"))
    assert {n: (folder / n).read_bytes() for n in user} == user
    stray = folder / "videoxl-kv" / "notes.txt"
    stray.write_text("a user's file")
    run = subprocess.run([sys.executable, "-m", "videoxl.serve", "--port", "0", "--disk-kv-dir", str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "notes.txt" in run.stderr, run.stderr
    assert stray.read_text() == "a user's file"
    stray.unlink()


@pytest.mark.parametrize("edit", ["meta field", "rebuilds badly"])
def test_an_edited_manifest_is_discarded_and_the_video_pre_filled_again(tier, edit):
    from videoxl.serve.tiers import _manifest_digest

    server, folder, _, _ = tier
    first = ask(server.client(), "clip1.mp4", frames=32)
    path = folder / "videoxl-kv" / f"{first.videoxl['key']}.json"
    manifest = json.loads(path.read_text())
    if edit == "meta field":
        manifest["meta"]["group_times"][1] = 99.0  # a timestamp the answer would read
    else:  # a manifest whose checksum is right but which does not rebuild: discarded, never a 500
        del manifest["meta"]["prefill_config"]
        manifest["checksum"] = _manifest_digest(manifest)
    path.write_text(json.dumps(manifest))
    again = ask(server.client(), "clip1.mp4", frames=32)
    assert not again.videoxl["reused"]
    assert again.choices[0].message.content == first.choices[0].message.content
    assert ("checksum" if edit == "meta field" else "cannot rebuild") in server.log.read_text()


# -- availability ------------------------------------------------------------------------------------------------------
def test_an_ingest_under_sustained_questions_waits_a_bounded_time(server):
    ask(server.client(), "clip0.mp4", frames=64)  # ready
    stop = threading.Event()

    def pester():
        while not stop.is_set():
            ask(server.client(), "clip0.mp4", frames=64, max_tokens=4)

    threads = [threading.Thread(target=pester) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # the queue is full of questions now
        started = time.perf_counter()
        fresh = ask(server.client(), "clip2.mp4", frames=48)
        waited = time.perf_counter() - started
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not fresh.videoxl["reused"]
    queue = fresh.videoxl["seconds"]["queue"]
    assert waited < 20, waited  # questions first, but an ingest waits at most about a second for its turn
    assert 0 < queue <= waited


# -- signals and the cache ---------------------------------------------------------------------------------------------
def _leftovers(*folders) -> list[Path]:
    return [p for folder in folders for p in Path(folder).rglob("*") if p.name.startswith((".partial-", ".videoxl-"))]


@pytest.mark.parametrize("after", [0.4, 2.0, 4.0])
def test_sigterm_exits_143_with_one_line_and_no_leftovers(tmp_path, after):
    env = {**os.environ, "VIDEOXL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "videoxl.cli", "ask", "demo", QUESTION, "--explain",
                             tmp_path / "why.png"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip(f"the run finished within {after} s, before the signal")
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["videoxl: terminated"], stderr
    assert not _leftovers(tmp_path)


def test_server_stops_on_sigterm_and_sweeps_dead_scratch_folders(tier, files):
    server, _, _, scratch = tier
    assert not (scratch / "videoxl-media-999999999-abc").exists()  # swept at start
    data = "data:video/mp4;base64," + base64.b64encode((files / "clip0.mp4").read_bytes()).decode()
    assert ask(server.client(), data, frames=32).choices[0].message.content
    ours = [p.name for p in scratch.glob("videoxl-media-*")]
    assert len(ours) == 1 and ours[0].startswith(f"videoxl-media-{server.proc.pid}-")
    server.stop()
    assert server.proc.returncode == 143
    assert list(scratch.glob("videoxl-media-*")) == []  # its own scratch folder is gone too


def test_cache_variable_empty_means_the_default_and_unwritable_exits_2(tmp_path):
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = {**os.environ, "VIDEOXL_CACHE": "", "HOME": str(home)}
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "ask", "demo", QUESTION, "--model",
                          tmp_path / "no-model"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no-model" in run.stderr, run.stderr
    assert list(work.iterdir()) == [] and (home / ".cache" / "videoxl" / "demo.mp4").is_file()
    (tmp_path / "a-file").write_text("not a folder")
    env["VIDEOXL_CACHE"] = str(tmp_path / "a-file")
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "ask", "demo", QUESTION], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "VIDEOXL_CACHE" in run.stderr and "a-file" in run.stderr, run.stderr
    assert "internal error" not in run.stderr
