"""From a video to a pre-filled session: frames -> visual tokens -> streaming chunked pre-fill -> questions.

The data flow of videoxl: ``videoxl/video`` (probe, sample, decode) -> ``videoxl/model`` (vision tower, DTS,
projector, prompt) -> ``videoxl/engine`` (chunked pre-fill into the KV store, bi-level decoding) -> here (the
ingest loop and :class:`Session`) -> ``videoxl/serve`` (the HTTP server).

    session = ingest(model, "video.mp4", max_frames=2048)   # decode, encode and pre-fill, chunk by chunk
    session.ask("What happens at the end?")                  # many questions, no re-encoding
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from . import defaults
from .decoding import Generation, Selection, options
from .engine.decode import Answer, Decoder
from .engine.heads import retrieval_heads
from .engine.layout import Group
from .engine.prefill import PrefillConfig, PrefilledVideo, prefill
from .errors import OptionError, VideoError
from .model.videoxl2 import QUESTION_TOKENS, VideoXL2
from .video import VideoInfo, check_file, check_sampling, decode_frames, plan_frames, probe
from .video.reader import IMAGE_SUFFIXES, open_image
from .video.preprocess import preprocess
from .video.sampling import FRAMES_PER_GROUP

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class IngestStats:
    """What ingesting one video cost."""

    frames: int = 0
    groups: int = 0
    tokens: int = 0
    chunks: int = 0
    seconds: dict = field(default_factory=lambda: {"decode": 0.0, "encode": 0.0, "prefill": 0.0})  # busy, per stage
    waited: float = 0.0  # time the model waited for decoded frames

    def to_dict(self) -> dict:
        return {"frames": self.frames, "groups": self.groups, "tokens": self.tokens, "chunks": self.chunks,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


class Session:
    """One ingested video: its KV store and decoder. Answers any number of questions without re-encoding."""

    def __init__(self, model: VideoXL2, video: PrefilledVideo, group_times: list[float], stats: IngestStats,
                 thumbnails: list[np.ndarray] | None = None):
        self.model, self.video, self.group_times, self.stats = model, video, group_times, stats
        self.thumbnails = thumbnails
        self.decoder = Decoder(model.llm, video, model.tokenizer,
                               heads=lambda: retrieval_heads(model.llm, model.tokenizer).heads,
                               compile=model.compile_generation)

    def report(self, answer: Answer, load_seconds: float | None = None) -> dict:
        """What ``videoxl ask --json`` prints: the answer, how it was decoded, the ingest, and pre-fill's FLOPs
        beside dense pre-fill's."""
        flops = self.video.stats
        seconds = {**({} if load_seconds is None else {"load": load_seconds}), **self.stats.seconds,
                   "answer": sum(v for k, v in answer.seconds.items() if k != "compile"),  # within "generate"
                   **({"compile": answer.seconds["compile"]} if "compile" in answer.seconds else {})}
        tail = self.decoder.followed_tail(answer)
        return {**answer.to_dict(), **self.stats.to_dict(), "chunks": answer.chunks, "profile": self.model.profile,
                "followed_tail": tail, "prefill_attn_flops": flops.attn_flops,
                "dense_attn_flops": flops.dense_attn_flops, "prefill_total_flops": flops.total_flops,
                "dense_total_flops": flops.dense_total_flops, "seconds": {k: round(v, 3) for k, v in seconds.items()}}

    def options(self, **given) -> tuple[Selection, Generation]:
        """The decoding options for this model: its profile's defaults (``videoxl.decoding.PROFILES``) with the
        ``given`` ones (any field of :class:`Selection` or :class:`Generation`, by name) over them."""
        return options(self.model.profile, **given)

    def ask(self, question: str, selection: Selection | None = None, generation: Generation | None = None, *,
            on_text: Callable[[str], None] | None = None, chunk_scores: Sequence[float] | None = None,
            max_question_tokens: int = QUESTION_TOKENS, **given) -> Answer:
        """Answer a question about the video with bi-level decoding. The options are the model's profile's with
        the ``given`` ones over them (``topk=2``, ``max_new_tokens=64``, ...: :meth:`options`), or exactly the
        ``selection`` and ``generation`` passed. OptionError for an empty, non-UTF-8 or too long question, or a bad
        option."""
        default_selection, default_generation = self.options(**given)
        ids = self.model.question_ids(question, max_question_tokens)
        return self.decoder.answer(ids, selection or default_selection, generation or default_generation,
                                   chunk_scores=chunk_scores, on_text=on_text)


def load(model: str | os.PathLike, device: str | None = None, dtype: str | None = None, question: str | None = None,
         max_question_tokens: int = QUESTION_TOKENS) -> VideoXL2:
    """Load a checkpoint (folder or hub id) on ``device`` (None: cuda when available); a ``question`` given is
    checked against the tokenizer first, so a question too long is refused before the weights load."""
    from .model import checkpoint, files
    from .model.videoxl2 import question_ids, resolve_device

    resolved = resolve_device(device)
    folder = files.resolve(model)  # from_pretrained checks the files
    tokenizer = checkpoint.load_tokenizer(folder)
    if question is not None:
        question_ids(tokenizer, question, max_question_tokens)
    return VideoXL2.from_pretrained(folder, dtype=getattr(torch, dtype) if dtype else None, device=resolved,
                                    tokenizer=tokenizer)


def ingest(model: VideoXL2, video: str | os.PathLike | Sequence | VideoInfo, *,
           max_frames: int = defaults.MAX_FRAMES, fps: float = defaults.FPS, max_fps: float | None = defaults.MAX_FPS,
           frame_times: Sequence[float] | None = None, prefill_config: PrefillConfig = PrefillConfig(),
           on_progress: Progress | None = None,
           thumbnails: bool = False, remainder: str = "pad") -> Session:
    """Decode, encode and pre-fill a video chunk by chunk; at most three chunks of frames are in memory.

    ``video`` is a file path (any container FFmpeg reads; an image file becomes one group at ``Time 0.0s:``), a
    :class:`VideoInfo` from :func:`videoxl.video.probe` (so a caller can refuse a bad file before loading), or a
    sequence of RGB frames (H x W x 3 uint8 arrays or PIL images), already sampled, shown at ``frame_times``
    seconds (default 0, 1, 2, ...). ``thumbnails`` keeps a small copy of each group's middle (third) frame.
    ``remainder`` completes a video file's last group of sampled frames (:func:`videoxl.video.plan_frames`:
    "pad", or "drop" as the published evaluation harness).
    """
    if model.tokenizer is None:
        raise OptionError("the model has no tokenizer: load it with from_pretrained or pass one")
    frames, group_times, n_frames = _frame_source(video, max_frames, fps, max_fps, frame_times, remainder)
    stats = IngestStats(frames=n_frames, groups=len(group_times))
    thumbs: list[np.ndarray] | None = [] if thumbnails else None
    encoded = _encode_stream(model, frames, group_times, prefill_config.chunk, stats, thumbs, on_progress)
    groups = (Group(model.timestamp_ids(t), visual) for t, visual in encoded)
    return _prefill(model, groups, group_times, stats, prefill_config, on_progress, thumbs)


def ingest_tokens(model: VideoXL2, visual: torch.Tensor, group_times: Sequence[float | None],
                  prefill_config: PrefillConfig = PrefillConfig()) -> Session:
    """Pre-fill visual tokens (G, tokens_per_group, hidden) encoded earlier (see :func:`encode_video`)."""
    stats = IngestStats(frames=len(group_times) * FRAMES_PER_GROUP, groups=len(group_times))
    groups = (Group(model.timestamp_ids(t), v) for t, v in zip(group_times, visual))
    return _prefill(model, groups, list(group_times), stats, prefill_config, None, None)


def encode_video(model: VideoXL2, video: str | os.PathLike | Sequence, *, max_frames: int = defaults.MAX_FRAMES,
                 fps: float = defaults.FPS, max_fps: float | None = defaults.MAX_FPS,
                 frame_times: Sequence[float] | None = None,
                 batch_groups: int = 16,
                 remainder: str = "pad") -> tuple[torch.Tensor, list[float | None], IngestStats]:
    """All visual tokens of a video at once: (G, tokens_per_group, hidden), group timestamps, timings."""
    frames, group_times, n_frames = _frame_source(video, max_frames, fps, max_fps, frame_times, remainder)
    stats = IngestStats(frames=n_frames, groups=len(group_times))
    tokens = [v for _, v in _encode_stream(model, frames, group_times, batch_groups, stats, None, None)]
    return torch.stack(tokens), group_times, stats

_DONE = object()


# long: the producer thread and the consumer share the queue, the stop event and the pool
def _decoded_batches(frames: Iterator, group_times: list, batch_groups: int, size: int, thumbs: list | None,
                     pin: bool, stats: IngestStats, ahead: int = 2) -> Iterator[tuple[list, torch.Tensor]]:
    """(timestamps, preprocessed frames (4 * groups, 3, size, size)) per batch of ``batch_groups`` groups, decoded
    and preprocessed in a background thread at most ``ahead`` batches in front of the consumer, so decoding runs
    while the model encodes and pre-fills (PyAV and torch release the GIL) and memory stays bounded. The thread's
    busy time is ``stats.seconds["decode"]``; the consumer's waits are ``stats.waited``."""
    batches: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    resizers = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="videoxl-resize")

    def put(item) -> bool:
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for start in range(0, len(group_times), batch_groups):
                times = group_times[start: start + batch_groups]
                t0 = time.perf_counter()
                raw = [next(frames) for _ in range(len(times) * FRAMES_PER_GROUP)]
                # the reference's bicubic resize of full-size frames is the costly part (about 30 frames/s per
                # core at 1080p): spread it over the cores; PIL releases the GIL while it resizes
                pixels = torch.stack(list(resizers.map(lambda frame: preprocess(frame, size), raw)))
                if thumbs is not None:
                    for frame in raw[2::FRAMES_PER_GROUP]:  # each group's middle (third) frame
                        image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame))
                        thumbs.append(np.asarray(image.convert("RGB").resize((96, 96))))
                if pin:  # page-locked, so the copy to the GPU is asynchronous
                    pixels = pixels.pin_memory()
                stats.seconds["decode"] += time.perf_counter() - t0
                if not put((times, pixels)):
                    return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it where the caller can see it
            put(e)
        finally:
            resizers.shutdown(wait=False, cancel_futures=True)
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="videoxl-decode", daemon=True)
    worker.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = batches.get()
            stats.waited += time.perf_counter() - t0
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)


def _encode_stream(model: VideoXL2, frames: Iterator, group_times: list, batch_groups: int, stats: IngestStats,
                   thumbs: list | None, on_progress: Progress | None) -> Iterator[tuple[float | None, torch.Tensor]]:
    """(timestamp, visual tokens) per group, encoding ``batch_groups`` groups at a time while the next batches
    are decoded in the background."""
    total = len(group_times) * FRAMES_PER_GROUP
    done = 0
    pin = model.device.type == "cuda"
    for times, pixels in _decoded_batches(frames, group_times, batch_groups, model.config.vision.image_size,
                                          thumbs, pin, stats):
        t0 = time.perf_counter()
        tokens = model.encode(pixels)  # (4 * groups, 3, S, S) -> (groups, T, hidden)
        if tokens.is_cuda:  # the vision tower's GPU work counts as encoding, not as the pre-fill that follows
            torch.cuda.synchronize(tokens.device)
        stats.seconds["encode"] += time.perf_counter() - t0
        done += pixels.shape[0]
        if on_progress:
            on_progress("encode", done, total)
        yield from zip(times, tokens)


def _prefill(model: VideoXL2, groups: Iterator[Group], group_times: list, stats: IngestStats,
             prefill_config: PrefillConfig, on_progress: Progress | None, thumbs) -> Session:
    started = time.perf_counter()
    chunks = -(-len(group_times) // prefill_config.chunk)

    def chunk_done(done: int, tokens: int) -> None:
        if on_progress:
            on_progress("prefill", done, chunks)

    expected = 64 + len(group_times) * (model.config.tokens_per_group + 12)
    video_kv = prefill(model.llm, model._prompt_prefix(), groups, prefill_config, expected_tokens=expected,
                       on_chunk=chunk_done)
    total = time.perf_counter() - started
    # busy times: decoding overlaps the rest in its own thread, so the stages add up to more than the wall time
    stats.seconds["prefill"] = total - stats.seconds["encode"] - stats.waited
    stats.seconds["ingest"] = total
    stats.tokens, stats.chunks = video_kv.stats.tokens, video_kv.stats.chunks
    return Session(model, video_kv, list(group_times), stats, thumbs)


def _frame_source(video, max_frames, fps, max_fps, frame_times, remainder="pad"):
    """(iterator of frames, group timestamps, number of sampled frames). A single image is one group of four copies
    at time 0.0, as the published evaluation times image inputs (``Time 0.0s:``; VectorSpaceLab/Video-XL
    ``Video-XL-2/eval/lvu/*/lmms_eval/models/videoxl2.py``)."""
    check_sampling(fps, max_fps, max_frames)
    if isinstance(video, VideoInfo):
        info = video
    elif isinstance(video, (str, os.PathLike)):
        path = Path(check_file(video))
        if path.suffix.lower() in IMAGE_SUFFIXES:
            with open_image(path) as opened:
                try:
                    image = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
                except (OSError, ValueError) as e:
                    raise VideoError(f"{path}: not a readable image ({e})") from None
            return iter([image] * FRAMES_PER_GROUP), [0.0], 1  # "Time 0.0s:", as the published eval
        info = probe(path)
    if isinstance(video, (str, os.PathLike, VideoInfo)):
        plan = plan_frames(info.frame_times, fps=fps, max_fps=max_fps, max_frames=max_frames,
                           native_fps=info.native_fps, remainder=remainder)
        return decode_frames(info, plan.indices), plan.group_times, len(plan.indices)
    frames = list(video)
    if not frames:
        raise VideoError("no frames given")
    times = list(frame_times) if frame_times is not None else [float(i) for i in range(len(frames))]
    if len(times) != len(frames):
        raise OptionError(f"{len(frames)} frames but {len(times)} frame_times")
    pad = (-len(frames)) % FRAMES_PER_GROUP
    frames += [frames[-1]] * pad
    times += [times[-1]] * pad
    group_times = [round(times[g], 1) for g in range(0, len(frames), FRAMES_PER_GROUP)]
    return (np.asarray(f) if not isinstance(f, Image.Image) else f for f in frames), group_times, len(frames)
