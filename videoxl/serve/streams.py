"""Live streams on the server: ``POST /v1/streams`` starts ingesting a stream, ``GET /v1/streams`` lists them,
``DELETE /v1/streams/{id}`` stops one (a stream's JSON: ``url``, and optionally ``fps``, 1 by default,
``reconnect``, the seconds a dropped source may stay away before it has ended, 30 by default, and ``horizon`` and
``keep``, in seconds, as :class:`videoxl.live.stream.LiveOptions`); a chat completion about ``{"type": "video_url",
"video_url": {"url": "stream://ID"}}`` is answered from everything that stream has ingested (and kept) so far,
while ingest goes on, or with
``"since": "-5m"`` beside the url from that part of it (``videoxl.live.since``).

Live schemes are off unless the server names them (``--allowed-stream-schemes tcp rtsp``): a stream URL whose
scheme is not allowed is refused with 403, an unknown scheme with 400. Each stream ingests in its own threads with
its own horizon-bounded store (videoxl/live); the server's own ingests of files and stream questions share the
model on the CPU without waiting for each other.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request

from ..decoding import Generation, Selection
from ..errors import InputError
from ..live.source import LIVE_SCHEMES, LiveSource, SourceOptions, check_source
from ..live.stream import LiveOptions, LiveStream
from .protocol import ChatRequest, ServeError, completion, completion_id

PREFIX = "stream://"


@dataclass
class _Entry:
    id: str
    url: str
    fps: float
    created: float
    live: LiveStream

    def describe(self) -> dict:
        stats = self.live.stats
        return {"id": self.id, "object": "stream", "url": self.url, "fps": self.fps, "created": int(self.created),
                "status": "ingesting" if self.live.running else ("failed" if self.live.error else "ended"),
                "stream_time": round(stats.stream_time, 3), "lag": round(stats.lag, 3), "groups": stats.groups,
                "chunks": stats.chunks, "resident_chunks": stats.resident_chunks,
                "forgotten_groups": stats.forgotten_groups,
                "paused_seconds": round(stats.paused, 3), "gaps": stats.gaps,
                "error": None if self.live.error is None else str(self.live.error)}


class Streams:
    """The server's live streams, by id."""

    def __init__(self, model, allowed_schemes: tuple[str, ...] = (), max_streams: int = 4,
                 horizon: float | None = 600.0):
        unknown = [s for s in allowed_schemes if s not in LIVE_SCHEMES]
        if unknown:
            raise InputError(f"unknown stream schemes {', '.join(unknown)}: choose from {', '.join(LIVE_SCHEMES)}")
        self.model, self.allowed, self.max_streams, self.horizon = model, tuple(allowed_schemes), max_streams, horizon
        self._streams: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def add(self, body: object) -> dict:
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise ServeError(400, "a stream needs a JSON body with a 'url' (e.g. tcp://host:port)", param="url")
        url, fps = body["url"], body.get("fps", 1.0)
        if "://" not in url:
            raise ServeError(403, "streams are read from URLs only, not from the server's files", param="url")
        try:
            check_source(url)
        except InputError as e:
            raise ServeError(400, str(e), param="url") from None
        scheme = url.split("://", 1)[0].lower()
        if scheme not in self.allowed:
            raise ServeError(403, f"stream scheme {scheme!r} is not allowed on this server"
                                  f"{' (allowed: ' + ', '.join(self.allowed) + ')' if self.allowed else ''}",
                             param="url")
        try:
            source = LiveSource(url, SourceOptions(fps=fps, reconnect=body.get("reconnect", 30.0)))
            options = LiveOptions(horizon=body.get("horizon", self.horizon), keep=body.get("keep"))
        except (InputError, TypeError) as e:
            raise ServeError(400, str(e)) from None
        with self._lock:
            if sum(e.live.running for e in self._streams.values()) >= self.max_streams:
                raise ServeError(429, f"this server ingests at most {self.max_streams} streams at once")
            entry = _Entry(uuid.uuid4().hex[:16], url, float(fps), time.time(),
                           LiveStream(self.model, source, options))
            self._streams[entry.id] = entry
        entry.live.start()
        return entry.describe()

    def get(self, stream_id: str) -> _Entry:
        entry = self._streams.get(stream_id)
        if entry is None:
            raise ServeError(404, f"no stream {stream_id!r}", code="stream_not_found")
        return entry

    def list(self) -> dict:
        return {"object": "list", "data": [e.describe() for e in list(self._streams.values())]}

    def delete(self, stream_id: str) -> dict:
        entry = self.get(stream_id)
        with self._lock:
            self._streams.pop(stream_id, None)
        entry.live.close()
        return {"id": stream_id, "object": "stream", "deleted": True}

    def close(self) -> None:
        for entry in list(self._streams.values()):
            entry.live.close()

    async def chat(self, req: ChatRequest, decoding: tuple[Selection, Generation], model_name: str) -> dict:
        """A completion about a stream's ingested history (no SSE: the answer comes whole)."""
        if req.stream:
            raise ServeError(400, "answers about live streams are not streamed: send stream=false", param="stream")
        entry = self.get(req.media.url[len(PREFIX):])
        started = time.perf_counter()
        try:
            reply = await asyncio.to_thread(entry.live.ask, req.question, *decoding, since=req.media.since)
        except InputError as e:
            raise ServeError(409 if "nothing is ingested" in str(e) else 400, str(e)) from None
        answer = reply.answer
        finish = "length" if len(answer.tokens) >= decoding[1].max_new_tokens else "stop"
        usage = {"prompt_tokens": 0, "completion_tokens": len(answer.tokens), "total_tokens": len(answer.tokens)}
        report = {"stream": entry.id, "stream_start": round(reply.start, 3), "stream_time": round(reply.stream_time, 3),
                  "groups": reply.groups,
                  "dense_chunks": answer.dense_chunks, "waited": round(reply.waited, 3),
                  "seconds": {**{k: round(v, 3) for k, v in answer.seconds.items()},
                              "total": round(time.perf_counter() - started, 3)}}
        return completion(completion_id(), model_name, answer.text, finish, usage, report)


def install(app: FastAPI, streams: Streams, read_json) -> None:
    """Add the /v1/streams routes to ``app`` (``read_json(request)`` reads a bounded JSON body)."""

    @app.post("/v1/streams")
    async def add_stream(request: Request):
        body = await read_json(request)
        return await asyncio.to_thread(streams.add, body)

    @app.get("/v1/streams")
    async def list_streams():
        return streams.list()

    @app.get("/v1/streams/{stream_id}")
    async def get_stream(stream_id: str):
        return streams.get(stream_id).describe()

    @app.delete("/v1/streams/{stream_id}")
    async def delete_stream(stream_id: str):
        return await asyncio.to_thread(streams.delete, stream_id)
