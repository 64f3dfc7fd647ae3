"""The Video-XL-2 model: vision tower + DTS + projector (:class:`VisualEncoder`), a Qwen2 LLM, the ChatML prompt
with ``Time {t}s:`` tokens, and checkpoints in the official layout. Turning a video into a pre-filled session is the
pipeline's job (``videoxl.pipeline.ingest``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from transformers import Qwen2ForCausalLM

from .. import defaults
from ..engine.attention import prepare
from ..errors import CheckpointError, OptionError
from ..question import check_question_text, convert_times
from . import checkpoint, files
from .config import VideoXL2Config
from .vision import VisualEncoder




QUESTION_TOKENS = defaults.QUESTION_TOKENS


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
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


def checkpoint_dtype(config: dict) -> torch.dtype | None:
    """The dtype a checkpoint's config.json names (``torch_dtype``, or ``dtype`` in newer transformers), if any."""
    name = config.get("torch_dtype") or config.get("dtype") if isinstance(config, dict) else None
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def _profile_dtype(profile: str) -> torch.dtype | None:
    from ..decoding import PROFILES

    name = PROFILES[profile].gpu_dtype
    return getattr(torch, name) if name else None


def question_ids(tokenizer, question: str, max_tokens: int = QUESTION_TOKENS) -> torch.Tensor:
    """The text after the video (question and ChatML assistant header) as ids, with ``mm:ss`` times spelled out in
    seconds as the published harness writes every prompt (:func:`videoxl.question.convert_times`); OptionError if
    the question is empty, not UTF-8, or longer than ``max_tokens`` tokens."""
    question = convert_times(check_question_text(question))
    if max_tokens < 1:
        raise OptionError(f"max_question_tokens must be >= 1, got {max_tokens}")
    asked = len(tokenizer(question, add_special_tokens=False)["input_ids"])
    if asked > max_tokens:
        raise OptionError(f"the question is {asked} tokens long; the limit is {max_tokens} tokens "
                          "(max_question_tokens, --max-question-tokens)")
    ids = tokenizer(f"\n{question}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


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

    # greedy generation through the compiled fixed-shape step (engine/generate.py); None: off. The command line's
    # --compile sets it (options.add_compile)
    compile_generation: bool | None = None

    @property
    def profile(self) -> str:
        """The decoding profile (videoxl.decoding.PROFILES): ``published`` for the released weights."""
        return self.config.profile

    # -- loading and saving ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, tokenizer=None) -> "VideoXL2":
        """Load a checkpoint in the official layout from a folder or a hub id (strict; CheckpointError if not).

        Weights are read from safetensors only, and no code from the folder is ever run. ``tokenizer`` reuses one
        loaded earlier with :func:`checkpoint.load_tokenizer`. ``dtype`` defaults, on a GPU, to the profile's
        (float16 for the released weights, as every published run loads them), else to the checkpoint's own
        (config.json ``torch_dtype``), else bf16 on GPU and fp32 on CPU.
        """
        device = resolve_device(device)
        folder = files.check(path_or_id)  # the folder, config.json, the shards' headers, tokenizer code: no torch
        raw = files.read_config(folder)
        try:
            config = VideoXL2Config.from_dict(raw)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{folder / 'config.json'}: not a usable Video-XL-2 config "
                                  f"({type(e).__name__}: {e})") from None
        tokenizer = tokenizer if tokenizer is not None else checkpoint.load_tokenizer(folder)
        dtype = dtype or (device.type == "cuda" and _profile_dtype(config.profile)) or checkpoint_dtype(raw) \
            or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        shards = files.shards(folder)
        with torch.device("meta"):
            model = cls(config, tokenizer)
        checkpoint.check_keys(model, shards)
        checkpoint.load_weights(model, shards, device, dtype)
        model._materialize_buffers(device)
        prepare(model.llm)  # route attention through videoxl once, before any thread shares the model
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
