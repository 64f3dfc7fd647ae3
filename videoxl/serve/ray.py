"""``videoxl serve --ray``: the same OpenAI-compatible server as a Ray Serve application, scaled out over replicas.

Two deployments. ``Replica`` (``--replicas`` of them) holds one model and runs the unchanged server app of
:mod:`videoxl.serve.app` in-process: a request reaches it as ASGI messages and its response goes back as a stream.
``Ingress`` (one, no model) takes HTTP from Ray Serve's proxy, computes each chat request's video key (the client's
``uuid``, or the SHA-256 of the video's bytes, as the server does) and hands the request to a replica with that key
as Ray Serve's *multiplexed model id*. Each replica reports to the ingress every half second, for ``/health`` and
``/metrics``.

Routing is Ray Serve's model multiplexing: a replica "loads" a key the first time it serves a request about that
video (:meth:`Replica.video`), which it reports to the controller at once; Ray Serve's router then sends every
request with that key to a replica that has it, and a key no replica has to the replicas holding the fewest videos,
choosing the one with the shorter queue among two (power of two choices). Nothing is routed by videoxl itself. A
replica takes as many requests as its own queue holds, so the router never spills a request to another replica
because the one with its store is busy.

With ``--disk-kv-dir`` on a folder every replica sees, each new store is written there at once (atomically, once
per video, see :mod:`videoxl.serve.tiers`) and a replica asks the folder before pre-filling a video, so a video whose
replica died or evicted it comes back from disk instead of being pre-filled again.

A replica that dies (killed, out of memory) is restarted by Ray Serve; requests it held get 503 with
``Retry-After``, and later requests go to the replicas that are up.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import AsyncIterator

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.request_router import RequestRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ..errors import InputError
from .protocol import ServeError, parse_chat

log = logging.getLogger(__name__)

APP = "videoxl"
MAX_VIDEOS_PER_REPLICA = 1 << 20  # the KV tiers decide what a replica keeps; Ray Serve only routes by it
REPORT_EVERY_S = 0.5
REPORT_STALE_S = 3.0  # a replica not heard from for this long is down
REPLICA_HEADER = "x-videoxl-replica"


class Replica:
    """One model with its KV tiers and the server app (:func:`videoxl.serve.app.create_app`) over them."""

    def __init__(self, args: argparse.Namespace, cpus: float):
        import torch

        from .build import build
        from .app import create_app

        torch.set_num_threads(max(1, int(cpus)))
        self.scratch = Path(tempfile.mkdtemp(prefix="videoxl-media-"))
        self.qa = build(args, self.scratch, write_through=args.disk_kv_dir is not None)
        self.app = create_app(self.qa)  # the ingress checks the API key
        context = serve.get_replica_context()
        self.id = context.replica_id.unique_id
        self.ingress = serve.get_deployment_handle("Ingress", context.app_name)
        self._stop = threading.Event()
        threading.Thread(target=self._report_loop, name="videoxl-report", daemon=True).start()

    @serve.multiplexed(max_num_models_per_replica=MAX_VIDEOS_PER_REPLICA)
    async def video(self, key: str) -> str:
        """Take on the video ``key`` for routing; its store is made (or found) by the request itself."""
        return key

    async def handle(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                     body: bytes) -> AsyncIterator[dict | bytes]:
        """Serve one HTTP request on the server app: yields {"status", "headers"} first, then body pieces."""
        key = serve.get_multiplexed_model_id()
        if key:
            await self.video(key)
        async for message in asgi_call(self.app, method, path, query, headers, body):
            if isinstance(message, dict):
                message["headers"].append((REPLICA_HEADER, self.id))
            yield message

    def report(self) -> dict:
        """What ``/health`` and ``/metrics`` show of this replica."""
        metrics = self.qa.metrics

        def lookups(result: str) -> int:
            return int(metrics.counter("videoxl_lookups_total", result=result))

        return {"replica": self.id, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "stores": len(self.qa.tiers.entries), "queue": self.qa.scheduler.depth,
                "ingesting": self.qa.ingesting, "hits": lookups("hit"), "shared": lookups("shared"),
                "misses": lookups("miss"), "metrics": metrics.render()}

    def _report_loop(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            try:
                self.ingress.put.remote(self.id, self.report()).result(timeout_s=5)
            except Exception as e:  # the ingress starting or restarting; the next report goes through
                log.debug("report to the ingress failed: %s", e)

    def __del__(self):  # Ray Serve stops the replica: stores in memory go to the disk tier, if there is one
        if not hasattr(self, "qa"):  # the constructor failed
            return
        self._stop.set()
        self.qa.close()
        for leftover in self.scratch.iterdir():
            leftover.unlink(missing_ok=True)
        self.scratch.rmdir()


async def asgi_call(app, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                    body: bytes) -> AsyncIterator[dict | bytes]:
    """Run one HTTP request through an ASGI app: yields {"status", "headers"} and then the body's pieces.
    Closing the iterator early tells the app that the client went away."""
    messages: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
    task = asyncio.ensure_future(app(scope, receive, messages.put))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield {"status": message["status"],
                       "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]]}
            elif message["type"] == "http.response.body" and message.get("body"):
                yield message["body"]
        task.result()
    finally:
        gone.set()
        if not task.done():
            await asyncio.wait([task], timeout=5)


class RoundRobinRouter(RequestRouter):
    """Requests to the replicas in turn, blind to videos: the baseline ``benchmarks/serve.py`` compares with."""

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        self._turn = getattr(self, "_turn", -1) + 1
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        return [[ordered[self._turn % len(ordered)]]] if ordered else []


UNAVAILABLE = (ray.exceptions.RayActorError, serve.exceptions.BackPressureError,
               serve.exceptions.DeploymentUnavailableError, serve.exceptions.ReplicaUnavailableError)


class Ingress:
    """Ray Serve's HTTP entry: answers ``/health`` and ``/metrics`` from the replicas' reports and hands every
    other request to a replica, chat completions with their video's key (see the module docstring)."""

    def __init__(self, replicas: DeploymentHandle, args: argparse.Namespace, affinity: bool = True):
        from .build import check, media_resolver, served_name

        self.config, _ = check(args)
        self.replicas, self.affinity = replicas, affinity
        self.reports: dict[str, tuple[float, dict]] = {}
        self.target = args.replicas
        self.name = served_name(args)
        self.scratch = Path(tempfile.mkdtemp(prefix="videoxl-ingress-"))
        self.resolver = media_resolver(args, self.config, self.scratch)
        api_key = args.api_key or os.environ.get("VIDEOXL_API_KEY") or None
        self.key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None

    async def __call__(self, request: Request) -> Response:
        from .app import authorized

        path = request.url.path
        if path == "/health":
            return await self.health()
        if path == "/metrics":
            return PlainTextResponse(merge_metrics(self.live(), self.target),
                                     media_type="text/plain; version=0.0.4")
        if self.key_digest is not None and path.startswith("/v1") and not authorized(
                request.headers.get("authorization", "").encode("latin-1"), self.key_digest):
            return _error(ServeError(401, "a missing or wrong API key: send 'Authorization: Bearer KEY'"),
                          {"WWW-Authenticate": "Bearer"})
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > self.config.max_body_bytes:
            return _error(ServeError(413, f"the request body has {size} bytes; the limit is "
                                          f"{self.config.max_body_bytes}"))
        body = await request.body()
        key = ""
        if self.affinity and request.method == "POST" and path == "/v1/chat/completions":
            key = await self.video_key(body)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
        replies = self.replicas.options(multiplexed_model_id=key, stream=True).handle.remote(
            request.method, path, request.url.query.encode(), headers, body)
        try:
            head = await asyncio.wait_for(replies.__anext__(), self.config.request_timeout_s)
        except UNAVAILABLE as e:
            log.warning("a replica failed while answering %s: %s", path, type(e).__name__)
            return _error(ServeError(503, "the replica serving this video went down; retry (another replica "
                                          "or its restart takes over)"))
        except asyncio.TimeoutError:
            replies.cancel()
            return _error(ServeError(503, f"no replica answered within {self.config.request_timeout_s:g} s; retry"))
        return StreamingResponse(_rest(replies), status_code=head["status"], headers=dict(head["headers"]))

    async def video_key(self, body: bytes) -> str:
        """The routing key of a chat request's video: ``uuid:...`` or ``sha256:...`` of its bytes; "" when the
        request is bad (then any replica answers it with the server's own error)."""
        try:
            req = parse_chat(json.loads(body), self.config.max_question_chars, self.config.max_tokens_limit)
            if req.media is None:
                return ""
            if req.media.uuid:
                return f"uuid:{req.media.uuid}"
            media = await asyncio.to_thread(self.resolver.resolve, req.media.url, req.media.kind)
        except (ServeError, InputError, ValueError, UnicodeDecodeError):
            return ""
        media.release()
        return f"sha256:{media.sha256}"

    def put(self, replica: str, report: dict) -> None:
        """Take a replica's report (:meth:`Replica.report`)."""
        self.reports[replica] = (time.monotonic(), report)

    def live(self) -> list[dict]:
        """Reports of the replicas heard from within ``REPORT_STALE_S``, by replica id."""
        now = time.monotonic()
        for replica in [r for r, (t, _) in self.reports.items() if now - t > REPORT_STALE_S]:
            del self.reports[replica]
        return [report for _, (_, report) in sorted(self.reports.items())]

    async def health(self) -> JSONResponse:
        replicas = [{k: v for k, v in r.items() if k != "metrics"} for r in self.live()]
        up = len(replicas)
        body = {"status": "ok" if up >= self.target else "degraded" if up else "down", "model": self.name,
                "replicas": up, "target_replicas": self.target, "queue": sum(r["queue"] for r in replicas),
                "replica_list": replicas}
        return JSONResponse(body, status_code=200 if up else 503, headers=None if up else {"Retry-After": "1"})


async def _rest(replies) -> AsyncIterator[bytes]:
    try:
        async for piece in replies:
            yield piece
    except UNAVAILABLE as e:  # the status line is sent; the client sees the body end early
        log.warning("a replica failed while streaming an answer: %s", type(e).__name__)


def _error(e: ServeError, headers: dict | None = None) -> JSONResponse:
    if e.status in (429, 503):
        headers = {"Retry-After": "1", **(headers or {})}
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def merge_metrics(reports: list[dict], target: int) -> str:
    """The replicas' Prometheus texts as one, each sample labelled with its ``replica``, plus replica counts."""
    lines = ["# HELP videoxl_replicas Model replicas reporting now, and how many the application wants.",
             "# TYPE videoxl_replicas gauge", f'videoxl_replicas{{state="up"}} {len(reports)}',
             f'videoxl_replicas{{state="target"}} {target}']
    seen = set()
    for report in reports:
        label = f'replica="{report["replica"]}"'
        for line in report["metrics"].splitlines():
            if line.startswith("#"):
                if line not in seen:
                    seen.add(line)
                    lines.append(line)
                continue
            name, _, rest = line.partition(" ")
            if "{" in name:
                name = name.replace("{", "{" + label + ",", 1)
            else:
                name = f"{name}{{{label}}}"
            lines.append(f"{name} {rest}")
    return "\n".join(lines) + "\n"


def application(args: argparse.Namespace, affinity: bool = True):
    """The Ray Serve application the options describe: ``--replicas`` model replicas of ``--replica-cpus`` cores
    (and one GPU each when the model runs on CUDA) behind one ingress. ``affinity=False`` routes requests round
    robin instead of by video (the benchmark's baseline)."""
    import torch

    from ray.serve.config import RequestRouterConfig

    gpu = args.device.startswith("cuda") if args.device else torch.cuda.is_available()
    cpus = args.replica_cpus or (1 if gpu else 2)
    options = {"num_cpus": cpus, "num_gpus": 1 if gpu else 0}
    replica = serve.deployment(
        Replica, name="Replica", num_replicas=args.replicas, ray_actor_options=options,
        max_ongoing_requests=max(32, 2 * args.max_queue),  # the replica's own queue refuses with 429 beyond
        **({} if affinity else {"request_router_config": RequestRouterConfig(
            request_router_class=RoundRobinRouter)})).bind(args, cpus)
    ingress = serve.deployment(Ingress, name="Ingress", num_replicas=1, max_ongoing_requests=4096,
                               ray_actor_options={"num_cpus": 0},
                               logging_config={"enable_access_log": False})  # not a line per replica report
    return ingress.bind(replica, args, affinity)


def serve_ray(args: argparse.Namespace) -> int:
    """``videoxl serve --ray``: deploy on the cluster at ``args.ray`` (a local one for "local") and serve until
    interrupted; the exit code."""
    import sys

    from .build import check

    try:
        check(args)
        if args.disk_kv_dir:
            Path(args.disk_kv_dir).mkdir(parents=True, exist_ok=True)
    except (InputError, ValueError, OSError) as e:
        print(f"videoxl serve: error: {e}", file=sys.stderr)
        return 2
    ray.init(address=None if args.ray == "local" else args.ray, include_dashboard=False,
             logging_level=args.log_level.upper())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(application(args), name=APP, route_prefix="/")
        log.info("serving %d replicas at http://%s:%d/v1", args.replicas, args.host, args.port)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        serve.delete(APP)
        ray.shutdown()
    return 0
