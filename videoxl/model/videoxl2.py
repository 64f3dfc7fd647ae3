"""Video-XL-2 end to end: frames -> visual tokens -> streaming chunked pre-fill -> bi-level decoding -> answer.

    model = VideoXL2.from_pretrained("path/or/BAAI/Video-XL-2")
    session = model.ingest("video.mp4")          # decode, encode and pre-fill, chunk by chunk
    print(session.ask("What happens at the end?").text)   # many questions, no re-encoding
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from transformers import Qwen2ForCausalLM

from .. import defaults
from ..engine.decode import Answer, DecodeConfig, Decoder
from ..engine.layout import Group
from ..engine.prefill import PrefillConfig, PrefilledVideo, prefill
from ..errors import CheckpointError, OptionError, VideoError
from ..question import check_question_text
from ..video import VideoInfo, check_file, check_sampling, decode_frames, plan_frames, probe
from ..video.preprocess import preprocess
from ..video.sampling import FRAMES_PER_GROUP
from . import checkpoint
from .config import VideoXL2Config
from .vision import VisualEncoder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
Progress = Callable[[str, int, int], None]  # (stage, done, total)


QUESTION_TOKENS = defaults.QUESTION_TOKENS


def available_devices() -> list[str]:
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """``spec`` as a usable torch device (None: cuda when available, else cpu); OptionError naming it if not."""
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = ", ".join(available_devices())
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(f"device {str(spec)!r} is not a device name; available here: {available}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device {str(spec)!r}: no CUDA GPU is available on this machine; available here: "
                              f"{available}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(f"device {str(spec)!r}: there are only {torch.cuda.device_count()} CUDA devices; "
                              f"available here: {available}")
    elif device.type == "mps" and "mps" not in available:
        raise OptionError(f"device {str(spec)!r}: MPS is not available on this machine; available here: {available}")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"device {str(spec)!r} is not supported; available here: {available}")
    return device


def question_ids(tokenizer, question: str, max_tokens: int = QUESTION_TOKENS) -> torch.Tensor:
    """The text after the video (question and ChatML assistant header) as ids; OptionError if the question is
    empty, not UTF-8, or longer than ``max_tokens`` tokens."""
    check_question_text(question)
    if max_tokens < 1:
        raise OptionError(f"max_question_tokens must be >= 1, got {max_tokens}")
    asked = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    if asked > max_tokens:
        raise OptionError(f"the question is {asked} tokens long; the limit is {max_tokens} tokens "
                          "(max_question_tokens, --max-question-tokens)")
    ids = tokenizer(f"\n{question}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


@dataclass
class IngestStats:
    """What ingesting one video cost."""

    frames: int = 0
    groups: int = 0
    tokens: int = 0
    chunks: int = 0
    seconds: dict = field(default_factory=lambda: {"decode": 0.0, "encode": 0.0, "prefill": 0.0})


class Session:
    """One ingested video: its KV store and decoder. Answers any number of questions without re-encoding."""

    def __init__(self, model: "VideoXL2", video: PrefilledVideo, group_times: list[float], stats: IngestStats,
                 thumbnails: list[np.ndarray] | None = None):
        self.model, self.video, self.group_times, self.stats = model, video, group_times, stats
        self.thumbnails = thumbnails
        self.decoder = Decoder(model.llm, video, model.tokenizer)

    def ask(self, question: str, config: DecodeConfig = DecodeConfig(), on_text: Callable[[str], None] | None = None,
            chunk_scores: Sequence[float] | None = None, max_question_tokens: int = QUESTION_TOKENS) -> Answer:
        """Answer a question about the video (bi-level decoding per ``config``); OptionError for an empty, non-UTF-8
        or too long question."""
        ids = self.model.question_ids(question, max_question_tokens)
        return self.decoder.answer(ids, config, chunk_scores=chunk_scores, on_text=on_text)


class VideoXL2(nn.Module):
    """The Video-XL-2 model: :class:`VisualEncoder` (SigLIP, DTS, projector, pooling) and a Qwen2 LLM."""

    def __init__(self, config: VideoXL2Config, tokenizer=None):
        super().__init__()
        if tokenizer is not None and len(tokenizer) > config.llm.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM's vocabulary only "
                             f"{config.llm.vocab_size}: use a config with vocab_size >= {len(tokenizer)}")
        self.config = config
        self.tokenizer = tokenizer
        self.visual = VisualEncoder(config)
        self.llm = Qwen2ForCausalLM(config.llm.to_qwen2())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # -- loading and saving ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, tokenizer=None) -> "VideoXL2":
        """Load a checkpoint in the official layout from a folder or a hub id (strict; CheckpointError if not).

        Weights are read from safetensors only, and no code from the folder is ever run. ``tokenizer`` reuses one
        loaded earlier with :func:`checkpoint.load_tokenizer`.
        """
        import json

        device = resolve_device(device)
        folder = checkpoint.resolve(path_or_id)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{folder}: no config.json")
        try:
            config = VideoXL2Config.from_dict(json.loads(config_file.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{config_file}: not a usable Video-XL-2 config ({type(e).__name__}: {e})") from None
        tokenizer = tokenizer if tokenizer is not None else checkpoint.load_tokenizer(folder)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        files = checkpoint.shards(folder)
        with torch.device("meta"):
            model = cls(config, tokenizer)
        checkpoint.check_keys(model, files)
        checkpoint.load_weights(model, files, device, dtype)
        model._materialize_buffers(device)
        return model.eval()

    def _materialize_buffers(self, device: torch.device) -> None:
        """Rebuild the non-persistent buffers (RoPE frequencies, SigLIP position ids) after a meta-device load."""
        rotary = self.llm.model.rotary_emb
        self.llm.model.rotary_emb = type(rotary)(config=self.llm.config).to(device)
        embeddings = self.visual.vision_tower.vision_tower.vision_model.embeddings
        embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions, device=device)[None],
                                   persistent=False)

    def save_pretrained(self, folder: str | os.PathLike, max_shard_bytes: int = 4 * 2**30) -> None:
        """Write the official layout: config.json, safetensors shards, tokenizer (atomically)."""
        checkpoint.save(self, self.config.to_dict(), Path(folder), self.tokenizer, max_shard_bytes)

    # -- encoding ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(4G, 3, S, S) preprocessed frames -> (G, tokens_per_group, llm_hidden) visual tokens."""
        return self.visual(pixels.to(self.device, self.dtype))

    def _ids(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

    def _prompt_prefix(self) -> torch.Tensor:
        return self._ids(f"<|im_start|>system\n{self.config.system_prompt}<|im_end|>\n<|im_start|>user\n")

    def question_ids(self, question: str, max_tokens: int = QUESTION_TOKENS) -> torch.Tensor:
        """The text after the video: the question and the assistant header (ChatML); see :func:`question_ids`."""
        return question_ids(self.tokenizer, question, max_tokens)

    def prompt_ids(self, group_times: Sequence[float | None], question: str) -> torch.Tensor:
        """The whole prompt as token ids, with ``tokens_per_group`` <|vision_pad|> slots after each timestamp."""
        pad = self.tokenizer.convert_tokens_to_ids("<|vision_pad|>")
        parts = [self._prompt_prefix()]
        for t in group_times:
            parts += [self.timestamp_ids(t), torch.full((self.config.tokens_per_group,), pad, dtype=torch.long)]
        return torch.cat(parts + [self.question_ids(question)])

    def embed_prompt(self, ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Embed ``ids`` and overwrite the <|vision_pad|> slots, in order, with ``visual`` (G, T, D) tokens."""
        pad = self.tokenizer.convert_tokens_to_ids("<|vision_pad|>")
        embeds = self.llm.get_input_embeddings()(ids.to(self.device))
        slots = (ids == pad).to(self.device)
        if int(slots.sum()) != visual.shape[0] * visual.shape[1]:
            raise ValueError(f"{int(slots.sum())} vision slots for {visual.shape[0] * visual.shape[1]} visual tokens")
        return embeds.masked_scatter(slots[:, None], visual.reshape(-1, visual.shape[-1]).to(embeds.dtype))

    def timestamp_ids(self, t: float | None) -> torch.Tensor:
        if t is None:  # images carry no timestamp
            return torch.empty(0, dtype=torch.long)
        return self._ids(f"Time {t}s:")

    # -- ingesting ----------------------------------------------------------------------------------------------
    def ingest(self, video: str | os.PathLike | Sequence | VideoInfo, *, max_frames: int = defaults.MAX_FRAMES,
               fps: float = defaults.FPS, max_fps: float | None = defaults.MAX_FPS, frame_times: Sequence[float] | None = None,
               prefill_config: PrefillConfig = PrefillConfig(), on_progress: Progress | None = None,
               thumbnails: bool = False) -> Session:
        """Decode, encode and pre-fill a video chunk by chunk; no more than one chunk of frames is in memory.

        ``video`` is a file path (any container FFmpeg reads; an image file becomes one untimed group), a
        :class:`VideoInfo` from :func:`videoxl.video.probe` (so a caller can refuse a bad file before loading), or a
        sequence of RGB frames (H x W x 3 uint8 arrays or PIL images), already sampled, shown at ``frame_times``
        seconds (default 0, 1, 2, ...). ``thumbnails`` keeps a small copy of each group's middle (third) frame.
        """
        if self.tokenizer is None:
            raise OptionError("the model has no tokenizer: load it with from_pretrained or pass one")
        frames, group_times, n_frames = self._frame_source(video, max_frames, fps, max_fps, frame_times)
        stats = IngestStats(frames=n_frames, groups=len(group_times))
        thumbs: list[np.ndarray] | None = [] if thumbnails else None
        encoded = self._encode_stream(frames, group_times, prefill_config.chunk, stats, thumbs, on_progress)
        groups = (Group(self.timestamp_ids(t), visual) for t, visual in encoded)
        return self._prefill(groups, group_times, stats, prefill_config, on_progress, thumbs)

    def ingest_tokens(self, visual: torch.Tensor, group_times: Sequence[float | None],
                      prefill_config: PrefillConfig = PrefillConfig()) -> Session:
        """Pre-fill visual tokens (G, tokens_per_group, hidden) encoded earlier (see :meth:`encode_video`)."""
        stats = IngestStats(frames=len(group_times) * FRAMES_PER_GROUP, groups=len(group_times))
        groups = (Group(self.timestamp_ids(t), v) for t, v in zip(group_times, visual))
        return self._prefill(groups, list(group_times), stats, prefill_config, None, None)

    def encode_video(self, video: str | os.PathLike | Sequence, *, max_frames: int = defaults.MAX_FRAMES,
                     fps: float = defaults.FPS, max_fps: float | None = defaults.MAX_FPS, frame_times: Sequence[float] | None = None,
                     batch_groups: int = 16) -> tuple[torch.Tensor, list[float | None], IngestStats]:
        """All visual tokens of a video at once: (G, tokens_per_group, hidden), group timestamps, timings."""
        frames, group_times, n_frames = self._frame_source(video, max_frames, fps, max_fps, frame_times)
        stats = IngestStats(frames=n_frames, groups=len(group_times))
        tokens = [v for _, v in self._encode_stream(frames, group_times, batch_groups, stats, None, None)]
        return torch.stack(tokens), group_times, stats

    def _encode_stream(self, frames: Iterator, group_times: list, batch_groups: int, stats: IngestStats,
                       thumbs: list | None, on_progress: Progress | None) -> Iterator[tuple[float | None, torch.Tensor]]:
        """(timestamp, visual tokens) per group, decoding and encoding ``batch_groups`` groups at a time."""
        size = self.config.vision.image_size
        total = len(group_times) * FRAMES_PER_GROUP
        done = 0
        for start in range(0, len(group_times), batch_groups):
            times = group_times[start: start + batch_groups]
            t0 = time.perf_counter()
            batch = []
            for _ in range(len(times) * FRAMES_PER_GROUP):
                frame = next(frames)
                batch.append(preprocess(frame, size))
                if thumbs is not None and len(batch) % FRAMES_PER_GROUP == 3:  # the group's middle (third) frame
                    image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame))
                    thumbs.append(np.asarray(image.convert("RGB").resize((96, 96))))
            t1 = time.perf_counter()
            tokens = self.encode(torch.stack(batch))  # (groups in batch, T, hidden)
            stats.seconds["decode"] += t1 - t0
            stats.seconds["encode"] += time.perf_counter() - t1
            done += len(batch)
            if on_progress:
                on_progress("encode", done, total)
            yield from zip(times, tokens)

    def _prefill(self, groups: Iterator[Group], group_times: list, stats: IngestStats,
                 prefill_config: PrefillConfig, on_progress: Progress | None, thumbs) -> Session:
        started = time.perf_counter()
        chunks = -(-len(group_times) // prefill_config.chunk)

        def chunk_done(done: int, tokens: int) -> None:
            if on_progress:
                on_progress("prefill", done, chunks)

        expected = 64 + len(group_times) * (self.config.tokens_per_group + 12)
        video_kv = prefill(self.llm, self._prompt_prefix(), groups, prefill_config, expected_tokens=expected,
                           on_chunk=chunk_done)
        total = time.perf_counter() - started
        stats.seconds["prefill"] = total - stats.seconds["decode"] - stats.seconds["encode"]
        stats.tokens, stats.chunks = video_kv.stats.tokens, video_kv.stats.chunks
        return Session(self, video_kv, list(group_times), stats, thumbs)

    def _frame_source(self, video, max_frames, fps, max_fps, frame_times):
        """(iterator of frames, group timestamps (None for images), number of sampled frames)."""
        check_sampling(fps, max_fps, max_frames)
        if isinstance(video, VideoInfo):
            info = video
        elif isinstance(video, (str, os.PathLike)):
            path = Path(check_file(video))
            if path.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with Image.open(path) as opened:
                        image = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
                except (OSError, ValueError, Image.DecompressionBombError) as e:
                    raise VideoError(f"{path}: not a readable image ({e})") from None
                return iter([image] * FRAMES_PER_GROUP), [None], 1
            info = probe(path)
        if isinstance(video, (str, os.PathLike, VideoInfo)):
            plan = plan_frames(info.frame_times, fps=fps, max_fps=max_fps, max_frames=max_frames)
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
