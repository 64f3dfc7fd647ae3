"""A checkpoint folder's files, checked without torch: the folder (or hub id), config.json, the safetensors headers,
and tokenizer settings that would run code. ``videoxl ask`` refuses a broken checkpoint here, in a fraction of a
second, before it imports torch and transformers; loading (:mod:`videoxl.model.checkpoint`) runs the same checks.

The safetensors format (https://github.com/huggingface/safetensors, "Format"): 8 bytes, a little-endian header
length N; N bytes of JSON mapping each tensor name to its dtype, shape and ``data_offsets`` [begin, end) into the
data that follows; then the data. A whole file is exactly 8 + N + the largest end offset bytes long.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint folder, or a hub id downloaded through huggingface_hub (clear error when offline)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(path_or_id).startswith((".", "/", "~")) or str(path_or_id).count("/") != 1:
        raise CheckpointError(f"{path_or_id}: not a checkpoint folder (expected a folder with config.json and "
                              "*.safetensors, or a hub id such as BAAI/Video-XL-2)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_id), allow_patterns=[
            "*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]))
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        raise CheckpointError(
            f"could not download {path_or_id} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}). "
            f"Download it where the hub is reachable (huggingface-cli download {path_or_id} --local-dir DIR), "
            "copy DIR here and pass that folder instead") from None


def read_config(folder: Path) -> dict:
    """config.json as a dict; CheckpointError if it is missing or not a JSON object."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    try:
        raw = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file}: not a usable Video-XL-2 config ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_file}: not a usable Video-XL-2 config (not a JSON object)")
    return raw


def shards(folder: Path) -> list[Path]:
    """The weight files: those the index names, else every ``*.safetensors`` in the folder."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a usable shard index ({type(e).__name__}: {e})") from None
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors weights found")
    return files


def check_shard(path: Path) -> None:
    """CheckpointError naming ``path`` unless its header is whole and its length is the one the header describes
    (a file cut short, garbled, or in another format, such as a pickle renamed: never unpickled)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weight shard listed in the index is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"a header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        expected = 8 + n + max(ends, default=0)
        if expected != size:
            raise ValueError(f"the header describes {expected} bytes, the file has {size}")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({type(e).__name__}: {str(e)[:200]}); "
                              "re-download or re-save this shard") from None


def refuse_code(folder: Path) -> None:
    """CheckpointError if loading the tokenizer would need code from the folder: videoxl never runs it.

    transformers follows an ``auto_map`` in ``tokenizer_config.json`` to a Python file in the folder (and asks
    on stdin whether to run it). ``config.json``'s own ``auto_map`` (the official release has one) is harmless:
    videoxl reads config.json itself and builds its own modules.
    """
    tokenizer_config = folder / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        return
    try:
        auto_map = json.loads(tokenizer_config.read_text()).get("auto_map")
    except (ValueError, AttributeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{tokenizer_config}: not a valid JSON object ({e})") from None
    if auto_map:
        code = sorted(p.name for p in folder.glob("*.py"))
        raise CheckpointError(
            f"{tokenizer_config}: its auto_map asks to run custom tokenizer code"
            + (f" ({', '.join(code)})" if code else "") + "; videoxl never runs code from a model folder. "
            "Remove auto_map from tokenizer_config.json if the tokenizer is a standard one")


def check(path_or_id: str | os.PathLike) -> Path:
    """The checkpoint's folder, after every check that needs no torch; CheckpointError naming the first problem."""
    folder = resolve(path_or_id)
    read_config(folder)
    for shard in shards(folder):
        check_shard(shard)
    refuse_code(folder)
    return folder
