"""videoxl serve: a real server process on 127.0.0.1 with the bundled model, driven by the official openai client.

Servers: ``main`` (unbounded KV, an API key, local media and one allowed http host), ``tight`` (KV budgets a
quarter of the working set, RAM -> disk, a short queue) and ``restart`` (killed with SIGKILL mid-ingest, restarted
on the same disk folder). Answers from tight budgets and from disk must be token-identical to the main server's.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

try:  # the HTTP client the openai package is built on
    import httpx2 as httpx
except ModuleNotFoundError:
    import httpx

from helpers import decoding
from videoxl.decoding import Generation, Selection
from videoxl.pipeline import ingest
from videoxl.synth.demo import demo_script
from videoxl.synth.video import write
from videoxl.synth.world import Event, Script, make_scenes

KEY = "test-key-123"
QUESTIONS = ("What object appears in the video?", "How many times does a star appear?")
CLIP_FRAMES = 96
MB = 2**20


# -- fixtures: media, servers ---------------------------------------------------------------------------------------
def _clip(path: Path, seed: int, obj: str) -> Path:
    rng = random.Random(seed)
    script = Script(CLIP_FRAMES, 4.0, 64, tuple(make_scenes(rng, CLIP_FRAMES, 4.0)))
    return write(script.with_events(Event("object", 40, 46, word=obj), Event("star", 70, 73, x=0.3, y=0.3)), path)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """The allowed media folder: the demo video, three short clips, a FIFO and an escaping symlink."""
    root = tmp_path_factory.mktemp("media")
    write(demo_script()[0], root / "demo.mp4")
    for i, obj in enumerate(("heart", "arrow", "ring")):
        _clip(root / f"clip{i}.mp4", i, obj)
    (root / "broken.mp4").write_bytes(b"not a video at all" * 10)
    os.mkfifo(root / "fifo.mp4")
    secret = tmp_path_factory.mktemp("outside") / "secret.mp4"
    shutil.copy(root / "clip0.mp4", secret)
    (root / "escape.mp4").symlink_to(secret)
    (root / "inside.mp4").symlink_to(root / "clip0.mp4")
    return root


class Server:
    """A ``python -m videoxl.serve`` process on a free port."""

    def __init__(self, log: Path, *args: str, api_key: str | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log, self.api_key = log, api_key
        env = {**os.environ, "OMP_NUM_THREADS": "1", "VIDEOXL_API_KEY": api_key or ""}
        with open(log, "a") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "videoxl.serve", "--port", str(self.port), *args],
                                         stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)

    def client(self, api_key: str | None = None, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key or self.api_key or "none", max_retries=0,
                             timeout=120, **kw)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, parsed by prometheus_client, as {'name{label="value",...}': value}; labels
        left empty are left out."""
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for family in text_string_to_metric_families(httpx.get(self.url + "/metrics").text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()) if v)
                out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return out

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def http_media(media):
    """A plain http server on 127.0.0.1 serving the media folder (the one host the main server may fetch from);
    ``/away`` redirects to the same server as ``localhost``, a host the main server may not fetch from."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/away":
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{self.server.server_address[1]}/clip0.mp4")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(media)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def main(media, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("logs") / "main.log", "--allowed-local-media-path", str(media),
                    "--allowed-media-domains", "127.0.0.1", "--max-frames", "480", "--max-media-mb", "1",
                    api_key=KEY)
    yield server
    server.stop()


def ask(client: openai.OpenAI, url: str | None, question: str = QUESTIONS[0], frames: int | None = CLIP_FRAMES,
        uuid: str | None = None, **kw):
    part = {"type": "video_url", "video_url": {"url": url} if url else None}
    if uuid:
        part["uuid"] = uuid
    extra = dict(kw.pop("extra_body", {}))
    if frames:
        extra["media_io_kwargs"] = {"video": {"num_frames": frames}}
    return client.chat.completions.create(
        model=kw.pop("model", "synth"), max_tokens=kw.pop("max_tokens", 16), extra_body=extra,
        messages=[{"role": "user", "content": [part, {"type": "text", "text": question}]}], **kw)


@pytest.fixture(scope="module")
def reference(main, media) -> dict[tuple[str, str], tuple[str, int]]:
    """(text, completion tokens) of each clip and question on the unbounded main server."""
    client = main.client()
    out = {}
    for i in range(3):
        for q in QUESTIONS:
            r = ask(client, f"clip{i}.mp4", q)
            out[f"clip{i}.mp4", q] = (r.choices[0].message.content, r.usage.completion_tokens)
    return out


# -- answers ----------------------------------------------------------------------------------------------------------
def test_answer_then_reuse_the_store(main):
    client = main.client()
    first = ask(client, "demo.mp4", frames=None)
    assert first.choices[0].message.content == "moon"
    assert first.choices[0].finish_reason == "stop"
    report = first.videoxl
    assert not report["reused"] and report["frames"] == 480 and report["chunks"] == 120
    assert 0 < report["dense_chunks"] < report["chunks"]
    assert 0 < report["kv_bytes_used"] < report["kv_bytes_dense"]
    assert 0 <= report["confidence"] <= 1 and report["fallback"] is None  # how sure the selection was
    assert {"decode", "encode", "prefill", "select", "generate", "total"} <= set(report["seconds"])
    assert first.usage.prompt_tokens > 2900 and first.usage.completion_tokens >= 1

    again = ask(client, f"file://{main_media(main)}/demo.mp4", "When does the moon appear?", frames=None)
    assert again.videoxl["reused"] and again.videoxl["key"] == report["key"]
    assert "prefill" not in again.videoxl["seconds"]
    assert again.choices[0].message.content
    assert main.metrics()["videoxl_ingests_total"] == 1


def main_media(server: Server) -> str:
    return server.proc.args[server.proc.args.index("--allowed-local-media-path") + 1]


def test_streaming_matches_the_plain_answer(main):
    client = main.client()
    plain = ask(client, "demo.mp4", "When does the moon appear?", frames=None)
    stream = ask(client, "demo.mp4", "When does the moon appear?", frames=None, stream=True,
                 stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].videoxl["reused"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_uuid_reuse_skips_the_media(main):
    client = main.client()
    first = ask(client, "clip1.mp4", uuid="clip-one")
    assert not first.videoxl["reused"]
    again = ask(client, None, uuid="clip-one")  # no url at all: the uuid names the stored video
    assert again.videoxl["reused"] and again.videoxl["key"] == first.videoxl["key"]
    assert again.choices[0].message.content == first.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="uuid"):
        ask(client, None, uuid="never-sent")


def test_same_bytes_by_data_url_and_http_reuse_one_store(main, media, http_media, reference):
    client = main.client()
    by_path = ask(client, "clip2.mp4")
    data = "data:video/mp4;base64," + base64.b64encode((media / "clip2.mp4").read_bytes()).decode()
    by_data = ask(client, data)
    by_http = ask(client, f"{http_media}/clip2.mp4")
    assert by_data.videoxl["reused"] and by_http.videoxl["reused"]
    assert by_data.videoxl["key"] == by_http.videoxl["key"] == by_path.videoxl["key"]
    assert by_http.choices[0].message.content == reference["clip2.mp4", QUESTIONS[0]][0]


def test_image_by_path_and_data_url(main, media):
    from PIL import Image

    from videoxl.synth.world import render

    Image.fromarray(render(demo_script()[0], 340)).save(media / "frame.png")  # the moon is on this frame
    client = main.client()

    def ask_image(url):
        return client.chat.completions.create(model="synth", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTIONS[0]}]}])

    by_path = ask_image("frame.png")
    assert by_path.videoxl["groups"] == 1 and by_path.choices[0].message.content
    data = "data:image/png;base64," + base64.b64encode((media / "frame.png").read_bytes()).decode()
    by_data = ask_image(data)
    assert by_data.videoxl["reused"] and by_data.choices[0].message.content == by_path.choices[0].message.content


def test_decoding_options(main):
    client = main.client()
    dense = ask(client, "clip0.mp4", extra_body={"dense": True})
    assert dense.videoxl["dense_chunks"] == dense.videoxl["chunks"]
    budget = ask(client, "clip0.mp4", extra_body={"kv_budget": 0.5})
    assert budget.videoxl["kv_bytes_used"] <= 0.6 * budget.videoxl["kv_bytes_dense"]
    top1 = ask(client, "clip0.mp4", extra_body={"topk": 1})
    assert top1.videoxl["dense_chunks"] == 3
    assert 0 < top1.videoxl["tail_share"] <= 1 and top1.videoxl["profile"] == "videoxl"  # the bundled model's
    assert ask(client, "clip0.mp4", extra_body={"topk": None}).videoxl["dense_chunks"] == 6  # null: the default, 4
    stamped = ask(client, "clip0.mp4", extra_body={"topk": 1, "sparse_stamps": True}).videoxl
    assert stamped["dense_chunk_indices"] == top1.videoxl["dense_chunk_indices"]  # sparse chunks keep their stamps:
    assert stamped["kv_bytes_used"] > top1.videoxl["kv_bytes_used"]  # a larger cache than the default's
    unsure = ask(client, "clip0.mp4", extra_body={"topk": 1, "min_confidence": 1.0}).videoxl
    assert unsure["fallback"].startswith("dense: flat relevance") and unsure["dense_chunks"] == unsure["chunks"]
    short = ask(client, "clip0.mp4", QUESTIONS[1], max_tokens=1)
    assert short.usage.completion_tokens == 1 and short.choices[0].finish_reason == "length"
    sampled = [ask(client, "clip0.mp4", temperature=1.5, top_p=0.9, seed=7).choices[0].message.content
               for _ in range(2)]
    assert sampled[0] == sampled[1]  # same seed, same answer


def test_concurrent_requests_share_one_ingest(main):
    before = main.metrics()["videoxl_ingests_total"]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda q: ask(main.client(), "clip0.mp4", q, frames=64), QUESTIONS * 2))
    assert main.metrics()["videoxl_ingests_total"] == before + 1
    assert sum(not a.videoxl["reused"] and not a.videoxl["shared_ingest"] for a in answers) == 1
    assert len({a.videoxl["key"] for a in answers}) == 1


def test_a_long_ingest_does_not_hold_up_questions_on_ready_videos(main, reference):
    pending = threading.Thread(target=_quietly, args=(lambda: ask(main.client(), "demo.mp4", frames=400),))
    pending.start()
    try:
        deadline = time.monotonic() + 30
        while main.metrics().get("videoxl_ingesting", 0) < 1:
            assert time.monotonic() < deadline, "the ingest never started"
            time.sleep(0.02)
        r = ask(main.client(), "clip0.mp4")
        assert r.videoxl["reused"] and (r.choices[0].message.content, r.usage.completion_tokens) == \
            reference["clip0.mp4", QUESTIONS[0]]
        assert main.metrics()["videoxl_ingesting"] == 1  # answered while the long video was still pre-filling
    finally:
        pending.join()


def test_models_health_metrics(main):
    client = main.client()
    assert [m.id for m in client.models.list()] == ["synth"]
    assert httpx.get(main.url + "/health").json()["status"] == "ok"
    metrics = main.metrics()
    assert metrics['videoxl_requests_total{path="/v1/chat/completions",status="200"}'] >= 1
    assert metrics['videoxl_kv_bytes{tier="cpu"}'] > 0
    assert 'videoxl_request_seconds_count{stage="total"}' in metrics


# -- errors ------------------------------------------------------------------------------------------------------------
def _quietly(fn) -> None:
    try:
        fn()
    except openai.APIError:
        pass


def _status(fn) -> tuple[int, dict]:
    try:
        fn()
    except openai.APIStatusError as e:
        return e.status_code, e.body
    raise AssertionError("the request succeeded")


@pytest.mark.parametrize("url, status", [
    ("../clip0.mp4", 403),  # traversal
    ("/etc/passwd", 403),  # outside the folder
    ("escape.mp4", 403),  # a symlink that leads out
    ("fifo.mp4", 403),  # not a regular file
    ("file:///dev/zero", 403),
    ("http://localhost:9/x.mp4", 403),  # a host that is not allowed (never contacted)
    ("ftp://127.0.0.1/x.mp4", 400),
    ("missing.mp4", 404),
    ("broken.mp4", 400),  # not a video
])
def test_media_refusals(main, url, status):
    code, body = _status(lambda: ask(main.client(), url))
    assert code == status, body
    assert set(body) >= {"message", "type"} and "Traceback" not in json.dumps(body)


def test_redirects_are_checked_against_the_allowed_domains(main, http_media):
    code, body = _status(lambda: ask(main.client(), f"{http_media}/away"))
    assert code == 403 and "redirects" in body["message"]
    assert _status(lambda: ask(main.client(), f"{http_media}/missing.mp4"))[0] == 400


def test_symlink_inside_the_folder_is_fine(main):
    assert ask(main.client(), "inside.mp4").choices[0].message.content


def test_error_statuses(main, media):
    client = main.client()
    assert _status(lambda: ask(main.client(api_key="wrong"), "clip0.mp4"))[0] == 401
    assert httpx.post(main.url + "/v1/chat/completions", json={}).status_code == 401  # no key at all
    assert _status(lambda: ask(client, "clip0.mp4", model="gpt-4o"))[0] == 404
    assert _status(lambda: ask(client, "clip0.mp4", temperature=5))[0] == 400
    assert _status(lambda: ask(client, "clip0.mp4", extra_body={"kv_budget": 2}))[0] == 400
    assert _status(lambda: ask(client, "clip0.mp4", extra_body={"top_k": -1}))[0] == 400
    assert _status(lambda: ask(client, "clip0.mp4", extra_body={"decode_chunk": 0}))[0] == 400
    assert _status(lambda: ask(client, "clip0.mp4", extra_body={"dense": "yes"}))[0] == 400
    assert _status(lambda: ask(client, "clip0.mp4", extra_body={"sparse_stamps": 1}))[0] == 400
    assert _status(lambda: ask(client, "clip0.mp4", extra_body={"min_confidence": 1.5}))[0] == 400
    assert _status(lambda: ask(client, "clip0.mp4", frames=100_000))[0] == 400  # too many frames
    assert _status(lambda: ask(client, "clip0.mp4", max_tokens=10**6))[0] == 400
    assert _status(lambda: ask(client, "clip0.mp4", "x" * 10_000))[0] == 400
    code, body = _status(lambda: client.chat.completions.create(model="synth", messages=[
        {"role": "user", "content": "no video here"}]))
    assert code == 400 and "video" in body["message"]
    big = "data:video/mp4;base64," + base64.b64encode(b"\0" * (2 * MB)).decode()
    assert _status(lambda: ask(client, big))[0] == 413
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(main.url + "/v1/chat/completions", content=b"{" * (3 * MB), headers=headers)
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    r = httpx.post(main.url + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(main.url + "/v1/nothing-here", headers=headers).status_code == 404


def test_internal_errors_hide_the_traceback():
    """An unexpected exception answers 500 with OpenAI's error object and no traceback (in-process app)."""
    from fastapi.testclient import TestClient

    from videoxl.serve.app import create_app
    from videoxl.serve.metrics import Metrics
    from videoxl.serve.service import ServeConfig

    class Broken:
        name, config, metrics = "synth", ServeConfig(), Metrics()
        scheduler = type("S", (), {"depth": 0})()

        async def video(self, *a):
            raise RuntimeError("secret internal detail")

        def close(self):
            pass

    with TestClient(create_app(Broken()), raise_server_exceptions=False) as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "x.mp4"}}, {"type": "text", "text": "hi"}]}]})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error" and "secret" not in r.text and "Traceback" not in r.text


# -- KV tiers and load ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tight(media, tmp_path_factory):
    """Budgets a quarter of the working set: no store stays in RAM after its question; disk holds two of three."""
    folder = tmp_path_factory.mktemp("tight")
    server = Server(folder / "server.log", "--allowed-local-media-path", str(media), "--cpu-kv-gb",
                    str(1.3 * MB / 2**30), "--disk-kv-dir", str(folder / "kv"), "--disk-kv-gb",
                    str(4.2 * MB / 2**30), "--max-queue", "4")
    yield server
    server.stop()


def test_eviction_to_disk_and_back_is_token_identical(tight, reference):
    client = tight.client()

    def check(clip: str, reused: bool, tier: str | None = None):
        for q in QUESTIONS:
            r = ask(client, clip, q)
            assert (r.choices[0].message.content, r.usage.completion_tokens) == reference[clip, q]
            assert r.videoxl["reused"] == reused
            if tier:
                assert r.videoxl["tier"] == tier
            reused, tier = True, "disk"  # the second question finds the first one's store on disk

    check("clip0.mp4", False)
    check("clip1.mp4", False)
    check("clip0.mp4", True, "disk")  # RAM -> disk -> back
    check("clip2.mp4", False)  # the disk holds two stores: clip1's, least recently used, is deleted
    check("clip1.mp4", False)
    m = tight.metrics()
    assert m['videoxl_kv_events_total{event="evicted",tier="cpu",to="disk"}'] >= 3
    assert m['videoxl_kv_events_total{event="evicted",tier="disk",to="none"}'] >= 1
    assert m['videoxl_kv_events_total{event="loaded",tier="disk"}'] >= 3
    assert m['videoxl_kv_bytes{tier="cpu"}'] <= m['videoxl_kv_budget_bytes{tier="cpu"}']
    assert m['videoxl_kv_bytes{tier="disk"}'] <= m['videoxl_kv_budget_bytes{tier="disk"}']


def test_eight_clients_on_three_videos(tight, reference):
    """Every request is answered (token-identical to the unbounded run) or refused with 429/503; none is lost."""
    jobs = [(f"clip{i % 3}.mp4", QUESTIONS[i % 2]) for i in range(24)]

    def run(job):
        clip, q = job
        try:
            r = ask(tight.client(), clip, q)
            return 200, (r.choices[0].message.content, r.usage.completion_tokens) == reference[clip, q]
        except openai.APIStatusError as e:
            return e.status_code, None

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    assert len(results) == 24 and {s for s, _ in results} <= {200, 429, 503}
    assert all(same for s, same in results if s == 200)
    assert sum(s == 200 for s, _ in results) >= 8
    m = tight.metrics()
    assert m['videoxl_kv_bytes{tier="cpu"}'] <= m['videoxl_kv_budget_bytes{tier="cpu"}']
    assert m['videoxl_kv_bytes{tier="disk"}'] <= m['videoxl_kv_budget_bytes{tier="disk"}']


def test_a_uuid_names_a_video_only_for_the_bearer_token_that_sent_it(tight, reference):
    """On a server without an API key every client's token is its own namespace: another token cannot reach a
    video by its uuid, and its own video of the same uuid does not replace the first."""
    alice, bob = tight.client(api_key="alice"), tight.client(api_key="bob")
    first = ask(alice, "clip1.mp4", QUESTIONS[0], uuid="mine")
    with pytest.raises(openai.NotFoundError, match="uuid"):
        ask(bob, None, QUESTIONS[0], uuid="mine")
    assert ask(bob, "clip2.mp4", QUESTIONS[0], uuid="mine").videoxl["key"] != first.videoxl["key"]
    again = ask(alice, None, QUESTIONS[0], uuid="mine")
    assert again.videoxl["key"] == first.videoxl["key"]
    assert (again.choices[0].message.content, again.usage.completion_tokens) == reference["clip1.mp4", QUESTIONS[0]]


def test_sigkill_mid_ingest_then_restart(media, tmp_path, reference):
    """Complete stores survive a SIGKILL and are reused after a restart; the interrupted ingest and broken store
    files (cut short, another model, leftovers of a write) are discarded with a log line, never loaded."""
    args = ("--allowed-local-media-path", str(media), "--cpu-kv-gb", "0", "--disk-kv-dir", str(tmp_path / "kv"))
    kv = tmp_path / "kv" / "videoxl-kv"  # the tier's own subfolder
    server = Server(tmp_path / "first.log", *args)
    try:
        done = ask(server.client(), "clip0.mp4")
        assert (done.choices[0].message.content, done.usage.completion_tokens) == reference["clip0.mp4", QUESTIONS[0]]
        key = done.videoxl["key"]
        assert (kv / f"{key}.json").is_file()
        flipped = ask(server.client(), "clip1.mp4").videoxl["key"]
        pending = threading.Thread(target=_quietly, args=(lambda: ask(server.client(), "demo.mp4", frames=None),))
        pending.start()
        deadline = time.monotonic() + 30
        while server.metrics().get("videoxl_ingesting", 0) < 1:
            assert time.monotonic() < deadline, "the ingest never started"
            time.sleep(0.05)
    finally:
        server.stop(signal.SIGKILL)
    pending.join()
    assert len(list(kv.glob("*.json"))) == 2  # only the complete stores

    with open(kv / f"{flipped}.safetensors", "r+b") as f:  # same size, other bytes: caught by the SHA-256
        f.seek(f.seek(0, 2) // 2)
        f.write(b"\x7f" * 64)

    manifest = json.loads((kv / f"{key}.json").read_text())
    cut, other = "a" * 40, "b" * 40
    shutil.copy(kv / f"{key}.safetensors", kv / f"{cut}.safetensors")
    with open(kv / f"{cut}.safetensors", "r+b") as f:
        f.truncate(manifest["bytes"] // 2)
    (kv / f"{cut}.json").write_text(json.dumps({**manifest, "key": cut}))
    shutil.copy(kv / f"{key}.safetensors", kv / f"{other}.safetensors")
    (kv / f"{other}.json").write_text(json.dumps({**manifest, "key": other, "model": "0" * 64}))
    (kv / f".tmp-1-2-{key}.safetensors").write_bytes(b"half a write")
    (kv / f"{'c' * 40}.safetensors").write_bytes(b"no manifest")

    server = Server(tmp_path / "second.log", *args)
    try:
        log = (tmp_path / "second.log").read_text()
        assert "cut short" in log and "another model" in log and "unfinished write" in log
        assert sorted(p.stem for p in kv.iterdir() if p.name != ".videoxl-kv-tier") == \
            sorted([key, key, flipped, flipped])
        again = ask(server.client(), "clip0.mp4")
        assert again.videoxl["reused"] and again.videoxl["tier"] == "disk"
        assert again.choices[0].message.content == done.choices[0].message.content
        redone = ask(server.client(), "clip1.mp4")
        assert not redone.videoxl["reused"] and "SHA-256" in (tmp_path / "second.log").read_text()
        assert (redone.choices[0].message.content, redone.usage.completion_tokens) == \
            reference["clip1.mp4", QUESTIONS[0]]
        demo = ask(server.client(), "demo.mp4", frames=None)
        assert not demo.videoxl["reused"] and demo.choices[0].message.content == "moon"
    finally:
        server.stop()


# -- the model worker, in process with a stand-in model --------------------------------------------------------------
class _FakeSession:
    """Answers by streaming one piece every 5 ms, ``pieces`` times."""

    def __init__(self, pieces: int):
        from types import SimpleNamespace

        self.pieces, self.group_times = pieces, [0.0]
        self.video = SimpleNamespace(store=SimpleNamespace(length=10))
        self.stats = SimpleNamespace(frames=4, tokens=10, seconds={"prefill": 0.3})

    def ask(self, question, selection=None, generation=None, on_text=None):
        from videoxl.engine.decode import Answer

        for _ in range(self.pieces):
            time.sleep(0.005)
            on_text("x")
        return Answer("x" * self.pieces, [1] * self.pieces, 1, [0], None, 1, 1, {})


class _FakeModel:
    """Ingests take ten 30 ms chunks, reporting progress after each."""

    dtype = "float32"

    def __init__(self):
        self.ingests = 0

    def ingest(self, path, on_progress, **kw):
        self.ingests += 1
        for i in range(10):
            time.sleep(0.03)
            on_progress("prefill", i + 1, 10)
        return _FakeSession(1)

    def question_ids(self, question):
        import torch

        return torch.zeros(3)


class _FakeTiers:
    budget: dict = {}
    disk = None  # no disk tier shared with other servers

    def __init__(self, pieces: int):
        self.keys, self.pieces = set(), pieces

    def __contains__(self, key):
        return key in self.keys

    def add(self, key, session):
        self.keys.add(key)

    def checkout(self, key):
        return _FakeSession(self.pieces), "cpu"

    def release(self, key):
        pass

    def usage(self):
        return {}


def _fake_qa(monkeypatch, pieces: int = 1):
    from videoxl.serve import service
    from videoxl.serve.media import Media
    from videoxl.serve.metrics import Metrics
    from videoxl.serve.service import ServeConfig, VideoQA

    monkeypatch.setattr(service, "ingest", lambda model, path, on_progress, **kw: model.ingest(path, on_progress))

    resolver = type("R", (), {"resolve": lambda self, url, kind: Media(Path(url), "sha-" + url)})()
    return VideoQA(_FakeModel(), "fake", "fp", ServeConfig(), _FakeTiers(pieces), resolver, Metrics())


def test_worker_cancels_a_generation_whose_client_left(monkeypatch):
    import asyncio

    from videoxl.serve.service import Cancel, Cancelled

    qa, received = _fake_qa(monkeypatch, pieces=200), []
    cancel = Cancel(time.monotonic() + 60)

    def on_text(piece):
        received.append(piece)
        if len(received) == 3:
            cancel.event.set()  # what the SSE stream does when the client goes away

    started = time.perf_counter()
    with pytest.raises(Cancelled):
        asyncio.run(qa.answer("k", "q", (Selection(), Generation()), cancel, on_text))
    assert len(received) == 3 and time.perf_counter() - started < 0.5
    assert qa.metrics.counter("videoxl_cancelled_total") == 1
    with pytest.raises(Cancelled):  # a cancelled request still in the queue never runs
        asyncio.run(qa.answer("k", "q", (Selection(), Generation()), cancel))
    assert len(received) == 3
    qa.scheduler.stop()


def test_worker_answers_questions_between_ingest_chunks_and_ingests_once(monkeypatch):
    import asyncio

    from videoxl.serve.protocol import MediaRef
    from videoxl.serve.service import Cancel, Sampling

    qa = _fake_qa(monkeypatch)
    qa.tiers.keys.add("ready")
    sampling = Sampling(8, 1.0, 4.0)

    async def scenario():
        cancel = Cancel(time.monotonic() + 60)
        ingests = [asyncio.create_task(qa.video(MediaRef("video", "a.mp4", None), sampling, cancel))
                   for _ in range(3)]
        for _ in range(100):
            if qa.ingesting:
                break
            await asyncio.sleep(0.01)
        assert qa.ingesting == 1
        await qa.answer("ready", "q", (Selection(), Generation()), cancel)
        still_ingesting = qa.ingesting
        results = await asyncio.gather(*ingests)
        return still_ingesting, results

    still_ingesting, results = asyncio.run(scenario())
    assert still_ingesting == 1  # the question did not wait for the 300 ms ingest
    assert qa.model.ingests == 1 and len({key for key, _ in results}) == 1
    assert sorted(info["shared"] for _, info in results) == [False, True, True]
    qa.scheduler.stop()


# -- KV tiers in process: the GPU -> CPU -> disk chain, and the store's state dict -----------------------------------
@pytest.fixture(scope="module")
def model():
    from videoxl import DEFAULT_MODEL, VideoXL2

    return VideoXL2.from_pretrained(DEFAULT_MODEL, device="cpu")


def test_store_state_dict_round_trip(model, media):
    import torch

    from videoxl.engine.store import KVStore

    store = ingest(model, str(media / "clip0.mp4"), max_frames=32).video.store
    copy = KVStore.from_state_dict(store.state_dict(), "cpu")
    assert copy.nbytes < store.nbytes  # no spare capacity
    a, b = store.state_dict(), copy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert copy.groups == store.groups and (copy.length, copy.prefix_length) == (store.length, store.prefix_length)


def test_tiers_chain_gpu_cpu_disk_and_back_token_identical(model, media, tmp_path):
    from videoxl.engine.store import KVStore
    from videoxl.serve.tiers import DiskStores, KVTiers

    config = decoding(topk=4, chunk=1, max_new_tokens=16)
    sessions = [ingest(model, str(media / f"clip{i}.mp4"), max_frames=32) for i in range(3)]
    expected = [s.ask(QUESTIONS[0], **config).tokens for s in sessions]
    size = KVStore.from_state_dict(sessions[0].video.store.state_dict(), "cpu").nbytes
    events = []
    tiers = KVTiers(model, int(1.5 * size), int(1.5 * size), DiskStores(tmp_path, "fp"), 10 * size,
                    on_event=lambda name, **labels: events.append((name, labels.get("tier"), labels.get("to"))))
    tiers.home, tiers.memory_tiers = "gpu", ["gpu", "cpu"]  # the three-tier chain, on a CPU-only machine
    for i, session in enumerate(sessions):
        tiers.add(f"k{i}", session)
    assert [tiers.entries[f"k{i}"].memory for i in range(3)] == [None, "cpu", "gpu"]
    found = []
    for i in (0, 0, 1, 2, 0, 2):
        session, tier = tiers.checkout(f"k{i}")
        found.append(tier)
        assert session.ask(QUESTIONS[0], **config).tokens == expected[i]
        tiers.release(f"k{i}")
        used = tiers.usage()
        assert used["gpu"] <= 1.5 * size and used["cpu"] <= 1.5 * size
    assert set(found) == {"gpu", "cpu", "disk"}
    assert {("evicted", "gpu", "cpu"), ("evicted", "cpu", "disk"), ("loaded", "disk", None)} <= set(events)

    again = KVTiers(model, size, size, DiskStores(tmp_path, "fp"), 10 * size)  # a restart finds the disk copies
    assert {k for k, e in again.entries.items() if e.memory is None} >= {"k0"}
    session, tier = again.checkout("k0")
    assert tier == "disk" and session.ask(QUESTIONS[0], **config).tokens == expected[0]
    assert KVTiers(model, size, size, DiskStores(tmp_path, "other model"), 10 * size).entries == {}


def test_a_client_that_disconnects_cancels_its_generation_over_http(media, tiny_checkpoint, tmp_path):
    """A real server with the tiny random checkpoint (it rambles instead of stopping): a streaming client reads one
    chunk and hangs up; the server stops generating at once instead of running to max_tokens."""
    server = Server(tmp_path / "tiny.log", "--model", str(tiny_checkpoint), "--allowed-local-media-path", str(media),
                    "--max-tokens-limit", "4096")
    try:
        body = {"model": "tiny", "stream": True, "max_tokens": 4096, "media_io_kwargs": {"video": {"num_frames": 32}},
                "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "clip1.mp4"}},
                                                          {"type": "text", "text": QUESTIONS[0]}]}]}
        with httpx.Client(timeout=120) as http:
            with http.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: {") and '"content"' in line:
                        break  # the first piece of text: hang up now
        deadline = time.monotonic() + 60
        while server.metrics().get("videoxl_cancelled_total", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        metrics = server.metrics()
        assert metrics.get("videoxl_cancelled_total", 0) == 1
        assert metrics.get("videoxl_generated_tokens_total", 0) < 4096  # stopped early, not at max_tokens
        # and the model is free again: a full non-streaming answer on the same video comes back
        done = ask(server.client(), "clip1.mp4", frames=32, model="tiny", max_tokens=8)
        assert done.choices[0].finish_reason in ("length", "stop")
    finally:
        server.stop()
