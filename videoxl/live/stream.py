"""Streaming ingest: pre-fill a live source chunk by chunk as it arrives, answer questions about everything seen so
far while ingest goes on, in bounded memory.

Pre-fill uses the published streaming mode (``timestamps="chunk"``: a timestamp token sees what its chunk sees), so
a chunk needs nothing that has not arrived; the store grows chunk by chunk. Groups older than the ``horizon`` keep
only their sparse KVs (:class:`~videoxl.live.horizon.HorizonStore`), so the dense KVs in memory stay flat; with
``keep``, groups older than that are forgotten (their sparse KVs, page summaries and timestamps dropped), so all
the stream holds stays flat, and questions cover the last ``keep`` seconds.

Three threads share the work: a reader (source -> sampled frames -> preprocessed 4-frame groups, a bounded queue
ahead), the ingest thread (encode a chunk's groups, then pre-fill it under the model lock) and the callers of
:meth:`LiveStream.ask` (bi-level selection over the whole history, then generation, under the same lock). A
question waits at most one chunk's pre-fill; ingest waits while a question is answered, and
``LiveStats.paused`` says for how long.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .. import defaults
from ..decoding import Generation, Selection, options
from ..engine.decode import Answer, Decoder
from ..engine.heads import retrieval_heads
from ..engine.layout import Group
from ..engine.prefill import PrefillConfig, PrefilledVideo, prefill
from ..errors import OptionError, VideoError
from ..model.videoxl2 import QUESTION_TOKENS, VideoXL2
from ..video.preprocess import preprocess
from ..video.sampling import FRAMES_PER_GROUP
from .horizon import HorizonStore
from .since import Since, parse_since
from .source import LiveSource

log = logging.getLogger(__name__)

_DONE = object()


@dataclass(frozen=True)
class LiveOptions:
    """How a stream is ingested: pre-fill chunking, the horizon of dense memory and the history kept at all."""

    horizon: float | None = 600.0  # seconds of stream kept dense; older groups keep their sparse KVs (None: all)
    keep: float | None = None  # seconds of stream kept answerable; older groups are forgotten (None: everything)
    chunk: int = defaults.CHUNK  # pre-fill chunk, in 4-frame groups
    window: int = defaults.WINDOW  # earlier chunks a chunk attends to in full
    queue_groups: int = 64  # sampled groups the reader may hold ahead of ingest

    def __post_init__(self):
        if self.horizon is not None and not (isinstance(self.horizon, (int, float)) and self.horizon > 0):
            raise OptionError(f"horizon must be a positive number of seconds or None, got {self.horizon!r}")
        if self.keep is not None:
            if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) or not self.keep > 0:
                raise OptionError(f"keep must be a positive number of seconds or None, got {self.keep!r}")
            if self.horizon is None or self.keep < self.horizon:
                raise OptionError(f"keep ({self.keep:g} s) must be at least the horizon ({self.horizon} s): only "
                                  "groups already sparse can be forgotten")
        if not isinstance(self.queue_groups, int) or self.queue_groups < 1:
            raise OptionError(f"queue_groups must be a positive integer, got {self.queue_groups!r}")
        self.prefill_config  # validates chunk and window

    @property
    def prefill_config(self) -> PrefillConfig:
        return PrefillConfig(chunk=self.chunk, window=self.window, timestamps="chunk", per_forward=1)


@dataclass
class LiveStats:
    """Where ingest stands: what is pre-filled, what is resident, how far behind the source it runs."""

    groups: int = 0
    chunks: int = 0
    resident_chunks: int = 0  # chunks whose dense KVs are in memory
    forgotten_groups: int = 0  # the first groups, dropped for good (LiveOptions.keep)
    most_resident_chunks: int = 0
    stream_time: float = 0.0  # seconds of stream pre-filled (the last pre-filled frame's stamp)
    source_time: float = 0.0  # stamp of the newest frame read from the source
    paused: float = 0.0  # seconds ingest waited while questions were answered
    questions: int = 0
    seconds: dict = field(default_factory=lambda: {"encode": 0.0, "prefill": 0.0})
    gaps: list = field(default_factory=list)  # (stamp before, stamp after) of each outage of the source
    ended: bool = False

    @property
    def lag(self) -> float:
        """Seconds of stream read but not yet pre-filled."""
        return max(0.0, self.source_time - self.stream_time)

    def as_dict(self) -> dict:
        return {**asdict(self), "lag": self.lag}


@dataclass
class LiveAnswer:
    """An answer about the stream from ``start`` (its first group's stamp) up to ``stream_time`` seconds (the last
    frame it covers)."""

    question: str
    answer: Answer
    start: float
    stream_time: float
    groups: int  # groups the answer was chosen from
    waited: float  # seconds the question waited for the model (a chunk's pre-fill at most)

    @property
    def text(self) -> str:
        return self.answer.text


class LiveStream:
    """One live source being ingested into a growing, horizon-bounded store; :meth:`ask` at any time."""

    def __init__(self, model: VideoXL2, source: LiveSource | Iterable[tuple[float, np.ndarray]],
                 options: LiveOptions = LiveOptions(), on_progress: Callable[[LiveStats], None] | None = None):
        if model.tokenizer is None:
            raise OptionError("the model has no tokenizer: load it with from_pretrained or pass one")
        self.model, self.source, self.options, self.on_progress = model, source, options, on_progress
        self.stats = LiveStats()
        self.error: BaseException | None = None
        self._lock = threading.Lock()  # the model: one pre-fill chunk or one question at a time
        self._groups: queue.Queue = queue.Queue(maxsize=options.queue_groups)
        self._stop = threading.Event()
        self._video: PrefilledVideo | None = None
        self._decoder: Decoder | None = None
        self._ends: list[float] = []  # per pre-filled group, its last frame's stamp
        self._stamps: list[float] = []  # per pre-filled group, its timestamp (its first frame's, to 0.1 s)
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "LiveStream":
        """Start reading and ingesting in background threads."""
        for target, name in ((self._read, "videoxl-live-read"), (self._ingest, "videoxl-live-ingest")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the source has ended and its last chunk is pre-filled; False on timeout. Raises what stopped
        ingest, if anything did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
        if self.error is not None:
            raise self.error
        return True

    def close(self) -> None:
        """Stop reading and ingesting (what is ingested stays answerable)."""
        self._stop.set()
        if isinstance(self.source, LiveSource):
            self.source.close()
        for thread in self._threads:
            thread.join(timeout=10)

    @property
    def group_times(self) -> list[float]:
        """The ``Time {t}s:`` stamp of every pre-filled group, in order."""
        return list(self._stamps)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # -- questions ------------------------------------------------------------------------------------------------
    def ask(self, question: str, selection: Selection | None = None, generation: Generation | None = None, *,
            on_text: Callable[[str], None] | None = None, max_question_tokens: int = QUESTION_TOKENS,
            since: str | float | Since | None = None, **given) -> LiveAnswer:
        """Answer a question about everything ingested so far (bi-level selection over the whole history kept, then
        generation), or with ``since`` ('-5m', '120': :mod:`videoxl.live.since`) about the groups that began in that
        range. The options are the model's profile's with the ``given`` ones over them (as
        :meth:`videoxl.pipeline.Session.ask`), or exactly the ``selection`` and ``generation`` passed. OptionError
        before the first chunk is pre-filled, before anything is ingested in the range, or for a bad question or
        option."""
        since = None if since is None else parse_since(since)
        default_selection, default_generation = options(self.model.profile, **given)
        selection, generation = selection or default_selection, generation or default_generation
        ids = self.model.question_ids(question, max_question_tokens)
        t0 = time.perf_counter()
        with self._lock:
            waited = time.perf_counter() - t0
            if self._decoder is None or not self._ends:
                if self.error is not None:
                    raise OptionError(f"the stream failed before anything was ingested: {self.error}")
                raise OptionError("nothing is ingested yet: ask again once the first chunk is pre-filled")
            # a range reaching back past the kept history covers what is kept (the answer's start says from where)
            first = max(0 if since is None else self._first_since(since), self.stats.forgotten_groups)
            groups, stream_time = len(self._ends) - first, self._ends[-1]
            answer = self._decoder.answer(ids, selection, generation, on_text=on_text, first_group=first)
            self.stats.questions += 1
        return LiveAnswer(question, answer, self._stamps[first], stream_time, groups, waited)

    def _first_since(self, since: Since) -> int:
        """The first group that began in the range; OptionError when none has been ingested yet."""
        begin = since.begin(self._ends[-1])
        first = bisect.bisect_left(self._stamps, begin)  # stamps only grow
        if first == len(self._stamps):
            raise OptionError(f"nothing is ingested from stream time {begin:g} s on yet (the newest group began at "
                              f"{self._stamps[-1]:g} s): ask again later, or move since back")
        return first

    # -- reading --------------------------------------------------------------------------------------------------
    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._groups.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        """Source -> (group stamp, last frame stamp, (4, 3, S, S) pixels) on the queue; then _DONE."""
        size = self.model.config.vision.image_size
        frames = self.source.frames() if isinstance(self.source, LiveSource) else iter(self.source)
        batch: list[tuple[float, torch.Tensor]] = []
        try:
            for t, frame in frames:
                if self._stop.is_set():
                    break
                self.stats.source_time = max(self.stats.source_time, float(t))
                batch.append((float(t), preprocess(frame, size)))
                if len(batch) == FRAMES_PER_GROUP:
                    if not self._put(self._group(batch)):
                        return
                    batch = []
            if batch:  # the last group, padded with its last frame as a finished video's is
                batch += [batch[-1]] * (FRAMES_PER_GROUP - len(batch))
                self._put(self._group(batch))
        except BaseException as e:  # handed to the ingest thread, which reports it
            self._put(e)
        finally:
            if isinstance(self.source, LiveSource):
                self.stats.gaps = list(self.source.stats.gaps)
            self._put(_DONE)

    @staticmethod
    def _group(batch: list[tuple[float, torch.Tensor]]) -> tuple[float, float, torch.Tensor]:
        return round(batch[0][0], 1), batch[-1][0], torch.stack([pixels for _, pixels in batch])

    # -- ingesting ------------------------------------------------------------------------------------------------
    def _chunks(self) -> Iterator[list[tuple[float, float, torch.Tensor]]]:
        """Chunks of sampled groups as they arrive (the last one possibly short)."""
        batch = []
        while True:
            item = self._groups.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            batch.append(item)
            if len(batch) == self.options.chunk:
                yield batch
                batch = []
        if batch:
            yield batch

    def _encoded_groups(self, holding: list[bool]) -> Iterator[Group]:
        """Groups for pre-fill, a whole chunk at a time, each chunk encoded and then the model lock taken (pre-fill
        runs the chunk before it asks for more; ``on_chunk`` gives the lock back)."""
        for chunk in self._chunks():
            t0 = time.perf_counter()
            visual = self.model.encode(torch.cat([pixels for _, _, pixels in chunk]))  # (4G, 3, S, S) -> (G, T, D)
            self.stats.seconds["encode"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            self._lock.acquire()
            holding[0] = True
            self.stats.paused += time.perf_counter() - t0
            self._pending = [(t, end) for t, end, _ in chunk]
            self._started = time.perf_counter()
            for (t, _, _), tokens in zip(chunk, visual):
                yield Group(self.model.timestamp_ids(t), tokens)

    def _ingest(self) -> None:
        holding = [False]
        store = HorizonStore(self.model.llm.config.num_hidden_layers, self.model.llm.config.num_key_value_heads,
                             self._head_dim(), self.model.dtype, self.model.device, pool=4)

        def started(video: PrefilledVideo) -> None:
            self._video = video

        def chunk_done(chunks: int, tokens: int) -> None:
            self.stats.seconds["prefill"] += time.perf_counter() - self._started
            self._stamps += [t for t, _ in self._pending]
            self._ends += [end for _, end in self._pending]
            if self._decoder is None:
                self._decoder = Decoder(self.model.llm, self._video, self.model.tokenizer,
                                        heads=lambda: retrieval_heads(self.model.llm, self.model.tokenizer).heads,
                                        compile=self.model.compile_generation)
            self._release(store, chunks)
            self.stats.groups, self.stats.chunks = len(self._ends), chunks
            self.stats.stream_time = self._ends[-1]
            holding[0] = False
            self._lock.release()
            if self.on_progress is not None:
                self.on_progress(self.stats)

        try:
            prefill(self.model.llm, self.model._prompt_prefix(), self._encoded_groups(holding),
                    self.options.prefill_config, on_chunk=chunk_done, store=store, on_start=started)
        except BaseException as e:  # kept for wait() and ask() to report
            self.error = e if self._ends else VideoError(f"nothing was ingested from the stream ({e})")
            log.warning("live ingest stopped: %s", self.error)
        finally:
            if holding[0]:
                self._lock.release()
            self.stats.ended = True
            self._stop.set()
            if self.on_progress is not None:
                self.on_progress(self.stats)

    def _head_dim(self) -> int:
        cfg = self.model.llm.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def _release(self, store: HorizonStore, chunks: int) -> None:
        """Release the dense KVs of whole chunks older than the horizon, keeping the window pre-fill reads; forget
        whole chunks older than ``keep``."""
        chunk = self.options.chunk
        if self.options.horizon is not None:
            old = bisect.bisect_left(self._ends, self._ends[-1] - self.options.horizon)  # stamps only grow
            keep_from = min(old // chunk, chunks - self.options.window - 1) * chunk
            if keep_from > store.released_groups:
                store.release(keep_from)
        if self.options.keep is not None:
            old = bisect.bisect_left(self._ends, self._ends[-1] - self.options.keep)
            self._video.forget(min(old // chunk * chunk, store.released_groups))
            self.stats.forgotten_groups = store.forgotten_groups
        resident = -(-store.resident_groups // chunk)
        self.stats.resident_chunks = resident
        self.stats.most_resident_chunks = max(self.stats.most_resident_chunks, resident)
