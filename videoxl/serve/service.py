"""Pre-fill once, ask many: the videos a server holds for one model, and the questions asked about them.

A pre-filled video is keyed by what decides its KV store: the video's content (SHA-256 of its bytes, or the
client's ``uuid`` for it), the model (a fingerprint of its files), the dtype, the pre-fill configuration and the
frame sampling. A request about a video that is being pre-filled waits for that pre-fill instead of starting
another. All model work runs on the :class:`Scheduler`'s one worker thread; stores live in :class:`KVTiers`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .. import defaults
from ..decoding import Generation, Selection
from ..engine.decode import Answer
from ..engine.prefill import PrefillConfig
from ..errors import InputError
from ..pipeline import ingest
from .media import Media, MediaResolver
from .metrics import Metrics
from .protocol import MediaRef, ServeError
from .scheduler import QueueFull, Scheduler
from .tiers import KVTiers

log = logging.getLogger(__name__)

MAX_UUIDS = 100_000  # uuids remembered (each names a key); the least recently used are forgotten


@dataclass(frozen=True)
class ServeConfig:
    """The server's defaults and limits: the library's from :mod:`videoxl.defaults`, the server's own here."""

    max_frames: int = defaults.MAX_FRAMES  # default and upper limit of frames sampled per video
    fps: float = defaults.FPS
    max_fps: float = defaults.MAX_FPS
    prefill: PrefillConfig = PrefillConfig()
    max_tokens_limit: int = defaults.NEW_TOKENS_LIMIT
    decoding: dict = field(default_factory=dict)  # decoding options for every request, over the model's profile
    max_question_chars: int = 8192  # checked before tokenizing; the library then limits tokens
    max_queue: int = 16
    request_timeout_s: float = 600.0
    max_media_bytes: int = 512 * 2**20
    max_bodies_bytes: int = 2**30  # request bodies read or handled at once; beyond it new requests get 429

    @property
    def max_body_bytes(self) -> int:
        return self.max_media_bytes * 4 // 3 + 2**20  # a base64 data URL of the largest media, and the rest


@dataclass(frozen=True)
class Sampling:
    """How frames are sampled from a video (part of its key)."""

    max_frames: int
    fps: float
    max_fps: float


class StoreGone(Exception):
    """The store a question was queued for is gone (deleted from disk meanwhile, or its file was broken)."""


class Cancelled(Exception):
    """The client went away or the request ran out of time; generation stops at the next token."""


@dataclass
class Cancel:
    """Set when a request's answer is no longer wanted; checked by the worker between tokens."""

    deadline: float
    event: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.event.is_set():
            raise Cancelled("the client disconnected")
        if time.monotonic() > self.deadline:
            raise Cancelled("the request ran out of time")


def model_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over a checkpoint folder's config and weight files (small files whole; for files over 256 MiB
    their size, safetensors header and last MiB), so stores on disk are never used with other weights."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.suffix not in (".json", ".safetensors") or not path.is_file():
            continue
        size = path.stat().st_size
        h.update(f"{path.name}:{size}:".encode())
        with open(path, "rb") as f:
            if size <= 256 * 2**20:
                h.update(f.read())
            else:
                header = int.from_bytes(f.read(8), "little")
                h.update(f.read(min(header, 2**26)))
                f.seek(size - 2**20)
                h.update(f.read())
    return h.hexdigest()


class VideoQA:
    """Pre-filled videos of one model and the questions about them (see the module docstring)."""

    def __init__(self, model, name: str, fingerprint: str, config: ServeConfig, tiers: KVTiers,
                 resolver: MediaResolver, metrics: Metrics):
        self.model, self.name, self.fingerprint, self.config = model, name, fingerprint, config
        self.tiers, self.resolver, self.metrics = tiers, resolver, metrics
        self.scheduler = Scheduler(config.max_queue)
        self.pending: dict[str, asyncio.Future] = {}  # key -> the ingest in flight (event loop only)
        self.uuids: OrderedDict[tuple, str] = OrderedDict()  # (owner, uuid, sampling) -> key, least recent first
        self.ingesting = 0
        metrics.gauges["videoxl_ingesting"] = lambda: {(): self.ingesting}
        metrics.gauges["videoxl_queue_depth"] = lambda: {(): self.scheduler.depth}
        metrics.gauges["videoxl_kv_bytes"] = lambda: {(("tier", t),): b for t, b in tiers.usage().items()}
        metrics.gauges["videoxl_kv_budget_bytes"] = lambda: {(("tier", t),): b for t, b in tiers.budget.items()}

    def key(self, content: str, sampling: Sampling) -> str:
        blob = json.dumps({"model": self.fingerprint, "dtype": str(self.model.dtype), "content": content,
                           "prefill": asdict(self.config.prefill), "sampling": asdict(sampling)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    def _submit(self, fn: Callable[[], object], question: bool) -> asyncio.Future:
        try:
            return asyncio.wrap_future(self.scheduler.submit(fn, question))
        except QueueFull as e:
            raise ServeError(429, f"the server is busy ({e}); retry later") from None

    # -- videos -------------------------------------------------------------------------------------------------
    async def video(self, ref: MediaRef, sampling: Sampling, cancel: Cancel, owner: str = "") -> tuple[str, dict]:
        """The key of the pre-filled video ``ref`` names, pre-filling it first if no store has it; and what that
        cost: {"reused": bool, "shared": bool, "seconds": {...}}.

        A video is keyed by its content. A ``uuid`` names the video last sent with it by the same ``owner`` (a
        digest of the client's API key), so a later request may send the uuid alone; a uuid sent with other
        media names the new video from then on (its media is always fetched and hashed, never trusted).
        """
        named = (owner, ref.uuid, sampling) if ref.uuid else None
        if ref.url is None:
            key = self.uuids.get(named)
            if key is None or (key not in self.tiers and key not in self.pending):
                raise ServeError(404, f"no video with uuid {ref.uuid!r} (and this sampling) is stored: send its "
                                      "url together with the uuid once", param="messages")
            self.uuids.move_to_end(named)
            return key, await self._wait(key, cancel)
        started = time.perf_counter()
        media = await asyncio.to_thread(self.resolver.resolve, ref.url, ref.kind)
        fetched = time.perf_counter() - started
        key = self.key(f"sha256:{media.sha256}", sampling)
        if named is not None:
            self.uuids[named] = key
            self.uuids.move_to_end(named)
            while len(self.uuids) > MAX_UUIDS:
                self.uuids.popitem(last=False)
        if key in self.tiers or key in self.pending:
            media.release()
            info = await self._wait(key, cancel)
            info["seconds"]["media"] = fetched
            return key, info
        submitted = time.perf_counter()
        try:
            future = self._submit(lambda: self._ingest(key, media, sampling, ref.where, submitted), question=False)
        except ServeError:
            media.release()
            raise
        self.pending[key] = future
        future.add_done_callback(lambda _: self.pending.pop(key, None))
        seconds = await self._until(future, cancel)
        return key, {"reused": False, "shared": False, "seconds": {"media": fetched, **seconds}}

    async def _wait(self, key: str, cancel: Cancel) -> dict:
        if key not in self.pending:
            return {"reused": True, "shared": False, "seconds": {}}
        seconds = await self._until(self.pending[key], cancel)
        return {"reused": False, "shared": True, "seconds": dict(seconds)}

    @staticmethod
    async def _until(future: asyncio.Future, cancel: Cancel):
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, cancel.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise ServeError(504, "the request ran out of time while the video was being pre-filled") from None

    def _ingest(self, key: str, media: Media, sampling: Sampling, where: str, submitted: float) -> dict:
        """On the worker: decode, encode and pre-fill; questions about ready videos run between chunks."""
        queued = time.perf_counter() - submitted
        self.ingesting += 1
        try:
            session = ingest(self.model, str(media.path), max_frames=sampling.max_frames, fps=sampling.fps,
                                        max_fps=sampling.max_fps, prefill_config=self.config.prefill,
                                        on_progress=lambda *_: self.scheduler.serve_questions())
        except InputError as e:
            if not media.temporary:
                raise
            # the file is the server's scratch copy: name the request's media part instead of its path
            raise type(e)(str(e).replace(str(media.path), where)) from None
        finally:
            self.ingesting -= 1
            media.release()
        self.tiers.add(key, session)
        self.metrics.inc("videoxl_ingests_total")
        log.info("pre-filled %s: %d frames, %d tokens, %.2f s", key, session.stats.frames, session.stats.tokens,
                 sum(session.stats.seconds.values()))
        return {"queue": queued, **session.stats.seconds}

    # -- questions ------------------------------------------------------------------------------------------------
    async def answer(self, key: str, question: str, config: tuple[Selection, Generation], cancel: Cancel,
                     on_text: Callable[[str], None] | None = None) -> tuple[Answer, dict]:
        """Answer a question about a pre-filled video on the worker; ``on_text`` gets text pieces there."""
        submitted = time.perf_counter()

        def stream(piece: str) -> None:
            cancel.check()
            if on_text is not None:
                on_text(piece)

        def job():
            cancel.check()
            started = time.perf_counter()
            try:
                session, found = self.tiers.checkout(key)
            except KeyError:
                raise StoreGone(key) from None
            try:
                loaded = time.perf_counter()
                answer = session.ask(question, *config, on_text=stream)
                question_tokens = int(self.model.question_ids(question).numel())
            finally:
                self.tiers.release(key)
            return answer, {"tier": found, "video_tokens": session.video.store.length,
                            "question_tokens": question_tokens, "frames": session.stats.frames,
                            "groups": len(session.group_times),
                            "seconds": {"queue": started - submitted, "load": loaded - started}}

        future = self._submit(job, question=True)
        try:
            answer, info = await asyncio.wait_for(asyncio.shield(future),
                                                  max(0.0, cancel.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            cancel.event.set()
            raise ServeError(504, "the request ran out of time while answering") from None
        except (asyncio.CancelledError, Cancelled):
            cancel.event.set()
            self.metrics.inc("videoxl_cancelled_total")
            raise
        self.metrics.inc("videoxl_reuses_total", tier=info["tier"])
        self.metrics.inc("videoxl_generated_tokens_total", len(answer.tokens))
        return answer, info

    def close(self) -> None:
        """Write the stores held in memory to disk (when there is a disk tier) and stop the worker."""
        try:
            written = self.scheduler.call(self.tiers.flush)
            if written:
                log.info("wrote %d stores to disk before stopping", written)
        finally:
            self.scheduler.stop()
