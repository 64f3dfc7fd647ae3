"""Checkpoints in the official Video-XL-2 layout (the module tree of VectorSpaceLab/Video-XL
``Video-XL-2/train/videoxl2/model/llava_arch.py``, as published in ``BAAI/Video-XL-2``): config.json, safetensors
shards, tokenizer files.

Key layout: ``lm_head.weight``; ``model.{embed_tokens,layers.N,norm}.*`` (Qwen2);
``model.vision_tower.vision_tower.vision_model.*`` (SigLIP, no head, 26 layers); ``model.sae.*`` (DTS);
``model.mm_projector.{0,2}.*``. Loading is strict: a missing, unexpected or wrongly shaped key is an error naming it.
The exception is keys a release may carry for modules videoxl does not use: ``model.image_newline`` (created by the
official model class when ``unpad`` merging is configured) and ``model.text_mlp.*`` (defined by the official eval
class, never called; VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/*/videoxl2/videoxl2/model/llava_arch.py``): they are
skipped with a warning that names them.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .files import refuse_code, resolve, shards  # noqa: F401 (re-exported: checkpoint.resolve, .shards)

# created by the official model classes but never used: tolerated (skipped, with a warning naming them) when present
IGNORED_PREFIXES = ("model.text_mlp.", "model.image_newline")
log = logging.getLogger(__name__)
VISUAL_PREFIXES = ("model.vision_tower.", "model.sae.", "model.mm_projector.")


def to_checkpoint_key(name: str) -> str:
    """Our parameter name -> the official key."""
    if name.startswith("visual."):
        return "model." + name[len("visual."):]
    if name.startswith("llm."):
        return name[len("llm."):]
    raise KeyError(name)


def from_checkpoint_key(key: str) -> str:
    """The official key -> our parameter name."""
    if key.startswith(VISUAL_PREFIXES):
        return "visual." + key[len("model."):]
    return "llm." + key


def check_keys(module: torch.nn.Module, files: list[Path]) -> None:
    """Compare checkpoint keys and shapes with the module's, before anything is loaded."""
    expected = {to_checkpoint_key(n): tuple(t.shape) for n, t in module.state_dict().items()}
    found: dict[str, tuple[int, ...]] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: weight shard listed in the index is missing")
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    found[key] = tuple(sf.get_slice(key).get_shape())
        except Exception as e:  # SafetensorError, OSError: a truncated, garbled or foreign file (never unpickled)
            raise CheckpointError(f"{f}: not a valid safetensors file ({_reason(e)}); re-download or re-save "
                                  "this shard") from None
    unused = sorted(k for k in found if k.startswith(IGNORED_PREFIXES))
    if unused:
        log.warning("%s: skipping %d checkpoint key(s) of modules videoxl does not use: %s", files[0].parent,
                    len(unused), ", ".join(unused[:8]) + (f" (+{len(unused) - 8} more)" if len(unused) > 8 else ""))
    found = {k: v for k, v in found.items() if not k.startswith(IGNORED_PREFIXES)}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:8])}" + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:8])}" + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    for k in wrong[:8]:
        problems.append(f"{k} has shape {list(found[k])}, the config expects {list(expected[k])}")
    if problems:
        raise CheckpointError(f"{files[0].parent}: checkpoint does not match the config: " + "; ".join(problems))


def load_weights(module: torch.nn.Module, files: list[Path], device: torch.device, dtype: torch.dtype) -> None:
    """Assign the shards' tensors to ``module`` (built on the meta device), shard by shard."""
    for f in files:
        try:
            tensors = load_file(str(f), device=str(device))
        except Exception as e:  # the header was fine (check_keys) but the data is not: a file cut short
            raise CheckpointError(f"{f}: not a valid safetensors file ({_reason(e)}); re-download or re-save "
                                  "this shard") from None
        state = {from_checkpoint_key(k): v.to(dtype) if v.is_floating_point() else v
                 for k, v in tensors.items() if not k.startswith(IGNORED_PREFIXES)}
        module.load_state_dict(state, strict=False, assign=True)


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e)[:200]}"


def load_tokenizer(folder: Path):
    """The folder's tokenizer, with remote code refused (see :func:`refuse_code`); CheckpointError if unusable."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    refuse_code(folder)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it warns that config.json's llava_qwen type is unknown to it: expected
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:
        raise CheckpointError(f"{folder}: no usable tokenizer files ({_reason(e)})") from None
    finally:
        hf_logging.set_verbosity(level)


def save(module: torch.nn.Module, config_dict: dict, folder: Path, tokenizer=None,
         max_shard_bytes: int = 4 * 2**30) -> None:
    """Write config.json, safetensors shards (with an index when several) and the tokenizer, atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        state, seen = {}, set()
        for name, t in module.state_dict().items():
            t = t.detach().cpu().contiguous()
            state[to_checkpoint_key(name)] = t.clone() if t.data_ptr() in seen else t  # tied weights
            seen.add(t.data_ptr())
        groups, size = [[]], 0
        for key, tensor in state.items():
            nbytes = tensor.numel() * tensor.element_size()
            if groups[-1] and size + nbytes > max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(key)
            size += nbytes
        if len(groups) == 1:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, keys in enumerate(groups):
                name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
                save_file({k: state[k] for k in keys}, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in keys})
            (tmp / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}, indent=1))
        (tmp / "config.json").write_text(json.dumps(config_dict, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.chmod(0o755)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
