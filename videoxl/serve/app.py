"""The HTTP face of the server: FastAPI routes in OpenAI's shapes over a :class:`VideoQA`.

``POST /v1/chat/completions`` (JSON or SSE stream), ``GET /v1/models``, ``GET /health`` and ``GET /metrics``.
Bad input answers 4xx with OpenAI's error object and the message of the videoxl ``InputError`` or ``ServeError``
that refused it; anything else is an internal fault: 500 with a generic message (the traceback goes to the log).
With an API key, every ``/v1`` route wants ``Authorization: Bearer KEY``, compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..decoding import Generation, Selection, options
from ..engine.decode import Answer
from ..errors import InputError
from .protocol import ChatRequest, ServeError, chunk, completion, completion_id, error_body, parse_chat, parse_json
from .service import Cancel, Cancelled, Sampling, StoreGone, VideoQA
from .streams import PREFIX as STREAM_PREFIX, Streams, install as install_streams

log = logging.getLogger(__name__)


def _error(status: int, message: str, type_: str, **headers) -> JSONResponse:
    return JSONResponse(error_body(message, type_), status_code=status, headers=headers or None)


class BodyBudget:
    """The bytes of request bodies being read or handled at once, within ``limit`` (event loop only): a body
    that would pass it is refused with 429 (one body alone always fits, so the largest allowed body can pass)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def reserve(self) -> "Reservation":
        return Reservation(self)


class Reservation:
    """The bytes one request holds in a :class:`BodyBudget`; :meth:`release` (idempotent) gives them back."""

    def __init__(self, budget: BodyBudget):
        self.budget, self.held = budget, 0

    def take(self, n: int) -> None:
        if n <= self.held:
            return
        extra = n - self.held
        if self.budget.used > self.held and self.budget.used + extra > self.budget.limit:
            raise ServeError(429, f"{self.budget.used} bytes of request bodies are being handled (the limit is "
                                  f"{self.budget.limit}); retry later")
        self.budget.used += extra
        self.held = n

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0


async def _read_json(request: Request, limit: int, reservation: Reservation) -> object:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit():
        if int(size) > limit:
            raise ServeError(413, f"the request body has {size} bytes; the limit is {limit}")
        reservation.take(int(size))
    body = bytearray()
    async for block in request.stream():
        body += block
        if len(body) > limit:
            raise ServeError(413, f"the request body is larger than the limit of {limit} bytes")
        reservation.take(len(body))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ServeError(400, f"the request body is not UTF-8 ({e})") from None
    del body  # the bytes go before the JSON is parsed: at most two copies of a large body at once
    return parse_json(text)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _report(key: str, video: dict, answer: Answer, info: dict, total: float, profile: str) -> tuple[dict, dict]:
    """The ``usage`` object and videoxl's own ``videoxl`` field of a completion."""
    prompt = info["video_tokens"] + info["question_tokens"]
    usage = {"prompt_tokens": prompt, "completion_tokens": len(answer.tokens),
             "total_tokens": prompt + len(answer.tokens)}
    # the time waited for the model: the ingest's turn (when this request pre-filled) and the question's
    queue = video["seconds"].get("queue", 0.0) + info["seconds"].get("queue", 0.0)
    seconds = {**video["seconds"], **info["seconds"], **answer.seconds, "queue": queue, "total": total}
    decoded = {k: v for k, v in answer.to_dict().items() if k not in ("answer", "finish_reason")}
    return usage, {"key": key, "frames": info["frames"], "groups": info["groups"], **decoded, "profile": profile,
                   "reused": video["reused"], "shared_ingest": video["shared"], "tier": info["tier"],
                   "seconds": {k: round(v, 6) for k, v in seconds.items()}}


def create_app(qa: VideoQA, api_key: str | None = None, streams: Streams | None = None) -> FastAPI:
    """The ASGI app serving ``qa`` (and live ``streams``: none allowed by default); its shutdown writes memory
    stores to disk and stops the model worker and the streams."""
    streams = streams if streams is not None else Streams(None)  # no scheme allowed: never needs the model

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(streams.close)
        await asyncio.to_thread(qa.close)

    app = FastAPI(title="videoxl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics, config = qa.metrics, qa.config
    key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None

    _install_error_handlers(app)
    app.add_middleware(_Guard, key_digest=key_digest, metrics=metrics)
    bodies = BodyBudget(config.max_bodies_bytes)
    metrics.gauges["videoxl_body_bytes_in_flight"] = lambda: {(): bodies.used}

    _install_info_routes(app, qa, metrics)

    async def read_small_json(request: Request) -> object:  # a stream's request: read, then its bytes go back
        reservation = bodies.reserve()
        try:
            return await _read_json(request, config.max_body_bytes, reservation)
        finally:
            reservation.release()

    install_streams(app, streams, read_small_json)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        started = time.perf_counter()
        reservation = bodies.reserve()
        try:
            body = await _read_json(request, config.max_body_bytes, reservation)
        except ServeError as e:
            reservation.release()
            if e.status == 429:
                metrics.inc("videoxl_refused_bodies_total")
            raise
        try:
            return await _chat(qa, streams, request, parse_chat(body, config.max_question_chars,
                                                                config.max_tokens_limit), started, reservation)
        finally:
            if not getattr(request.state, "streaming", False):
                reservation.release()

    return app


def _install_error_handlers(app: FastAPI) -> None:
    """OpenAI error objects for every error a route raises (no traceback leaves the server)."""
    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError):
        headers = {"Retry-After": "1"} if e.status in (429, 503) else None
        if e.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, e: InputError):
        return _error(400, str(e), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), ServeError.TYPES.get(e.status_code, "invalid_request_error"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        return _error(400, "invalid request", "invalid_request_error")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal server error (logged on the server)", "server_error")


def _install_info_routes(app: FastAPI, qa: VideoQA, metrics) -> None:
    """``/health``, ``/metrics`` and ``/v1/models``."""
    created = int(time.time())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": qa.name, "queue": qa.scheduler.depth}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": qa.name, "object": "model", "created": created,
                                            "owned_by": "videoxl", "max_model_len": None}]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name != qa.name:
            raise ServeError(404, f"the model {name!r} does not exist; this server serves {qa.name!r}",
                             code="model_not_found")
        return {"id": qa.name, "object": "model", "created": created, "owned_by": "videoxl"}


def decode_config(qa: VideoQA, req: ChatRequest) -> tuple[Selection, Generation]:
    """The request's decoding options over the server's over the model's profile, within the server's limits."""
    given = {**qa.config.decoding, **req.decoding}
    if given.get("max_new_tokens", 0) > qa.config.max_tokens_limit:
        raise ServeError(400, f"'max_tokens' must be at most {qa.config.max_tokens_limit} on this server",
                         param="max_tokens")
    return options(qa.model.profile, **given)


async def _chat(qa: VideoQA, streams: Streams, request: Request, req: ChatRequest, started: float,
                reservation: Reservation):
    """A parsed chat completion: the answer (or an SSE stream of it) about the request's video or live stream."""
    if req.model is not None and req.model != qa.name:
        raise ServeError(404, f"the model {req.model!r} does not exist; this server serves {qa.name!r}",
                         param="model", code="model_not_found")
    if req.media is None:
        raise ServeError(400, "no video: add a video_url (or image_url) part to a user message",
                         param="messages")
    if (req.media.url or "").startswith(STREAM_PREFIX):  # a live stream: its history so far
        return await streams.chat(req, decode_config(qa, req), qa.name)
    if req.media.since is not None:
        raise ServeError(400, f"'{req.media.where}.{req.media.kind}_url.since' is for live streams (stream://ID) only",
                         param="messages")
    frames = req.num_frames or qa.config.max_frames
    if frames > qa.config.max_frames:
        raise ServeError(400, f"{frames} frames asked for; this server samples at most {qa.config.max_frames}",
                         param="media_io_kwargs")
    sampling = Sampling(frames, req.fps or qa.config.fps, req.max_fps or qa.config.max_fps)
    decoding = decode_config(qa, req)
    cancel = Cancel(time.monotonic() + qa.config.request_timeout_s)
    key, video = await qa.video(req.media, sampling, cancel, owner=_owner(request))
    qa.metrics.observe("videoxl_request_seconds", time.perf_counter() - started, stage="video_ready")
    cid = completion_id()
    if req.stream:
        request.state.streaming = True  # the stream gives the body's bytes back when it ends
        return StreamingResponse(_stream(qa, key, video, req, sampling, decoding, cancel, cid, started,
                                         reservation.release),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(reservation.release))
    watcher = asyncio.create_task(_watch(request, cancel))
    try:
        key, video, answer, info = await _answer(qa, key, video, req, sampling, decoding, cancel)
    except Cancelled as e:
        raise ServeError(504 if "time" in str(e) else 400, str(e)) from None
    finally:
        watcher.cancel()
    total = time.perf_counter() - started
    qa.metrics.observe("videoxl_request_seconds", total, stage="total")
    usage, report = _report(key, video, answer, info, total, qa.model.profile)
    return completion(cid, qa.name, answer.text, answer.finish_reason, usage, report)


def authorized(header: bytes, key_digest: bytes) -> bool:
    """Whether an ``Authorization`` header carries the API key whose SHA-256 is ``key_digest`` (constant time)."""
    scheme, _, token = header.decode("latin-1").partition(" ")
    given = hashlib.sha256(token.strip().encode("latin-1")).digest()
    return scheme.lower() == "bearer" and hmac.compare_digest(given, key_digest)


ROUTES = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")


def _owner(request: Request) -> str:
    """Whose uuids a request may use: a digest of its bearer token (so a uuid never crosses API keys)."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    return hashlib.sha256(token.encode("latin-1", "replace")).hexdigest()[:16]


class _Guard:
    """ASGI middleware: the API-key check on /v1 routes, and request counts and latencies for the metrics."""

    def __init__(self, app, key_digest: bytes | None, metrics):
        self.app, self.key_digest, self.metrics = app, key_digest, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, started, status = scope["path"], time.perf_counter(), [500]
        label = path if path in ROUTES else "other"  # a fixed set of label values, whatever the client sends
        if self.key_digest is not None and path.startswith("/v1"):
            if not authorized(dict(scope["headers"]).get(b"authorization", b""), self.key_digest):
                error = ServeError(401, "a missing or wrong API key: send 'Authorization: Bearer KEY'")
                self.metrics.inc("videoxl_requests_total", path=label, status=401)
                response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if path == "/v1/chat/completions":
                self.metrics.inc("videoxl_requests_total", path=path, status=status[0])
                self.metrics.observe("videoxl_request_seconds", time.perf_counter() - started, stage="response")


async def _watch(request: Request, cancel: Cancel) -> None:
    """Set ``cancel`` when the client disconnects before its answer is ready."""
    while not await request.is_disconnected():
        await asyncio.sleep(0.2)
    cancel.event.set()


async def _answer(qa: VideoQA, key: str, video: dict, req: ChatRequest, sampling: Sampling, decoding: tuple[Selection, Generation],
                  cancel: Cancel, on_text=None) -> tuple[str, dict, Answer, dict]:
    """Answer from the store ``key``; if that store vanished meanwhile (its file broken, or deleted to keep the
    disk budget), pre-fill the video again once and answer from the new store."""
    try:
        return (key, video, *await qa.answer(key, req.question, decoding, cancel, on_text))
    except StoreGone:
        log.info("the store %s is gone; pre-filling the video again", key)
    key, video = await qa.video(req.media, sampling, cancel)
    try:
        return (key, video, *await qa.answer(key, req.question, decoding, cancel, on_text))
    except StoreGone:
        raise ServeError(503, "the video's KV store was evicted twice while the request waited; retry") from None


async def _stream(qa: VideoQA, key: str, video: dict, req: ChatRequest, sampling: Sampling,
                  decoding: tuple[Selection, Generation], cancel: Cancel, cid: str, started: float, release):
    """SSE chunks as OpenAI sends them: the role, content deltas, the finish reason (with videoxl's report),
    optionally a usage chunk, then ``[DONE]``. Leaving early (the client went away) cancels the generation."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    created = int(time.time())
    task = asyncio.ensure_future(_answer(qa, key, video, req, sampling, decoding, cancel,
                                         on_text=lambda p: loop.call_soon_threadsafe(pieces.put_nowait, p)))
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    try:
        yield _sse(chunk(cid, qa.name, created, {"role": "assistant", "content": ""}))
        while (piece := await pieces.get()) is not None:
            yield _sse(chunk(cid, qa.name, created, {"content": piece}))
        try:
            key, video, answer, info = task.result()
        except ServeError as e:
            yield _sse(e.body())
        except (InputError, Cancelled) as e:
            yield _sse(error_body(str(e), "invalid_request_error"))
        except Exception:
            log.exception("internal error while streaming an answer")
            yield _sse(error_body("internal server error (logged on the server)", "server_error"))
        else:
            total = time.perf_counter() - started
            qa.metrics.observe("videoxl_request_seconds", total, stage="total")
            usage, report = _report(key, video, answer, info, total, qa.model.profile)
            yield _sse(chunk(cid, qa.name, created, {}, answer.finish_reason, videoxl=report))
            if req.include_usage:
                yield _sse(chunk(cid, qa.name, created, None, usage=usage))
        yield "data: [DONE]\n\n"
    finally:
        cancel.event.set()
        release()
