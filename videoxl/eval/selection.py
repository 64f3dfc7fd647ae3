"""The published bi-level selection files, and the decoding each sample gets in each evaluation mode.

A selection file (VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/w_chunk_bilevel/selected_infos/*.json``) maps a
question category to ``null`` or ``{"config": {"selected_topk": k, "selected_chunk_size": B, "compression": 4,
"relevance oracle": ...}, "selected_unit_indices": {"<video file>_<question>": [unit, ...]}}``. The published
harness (``lmms_eval/models/videoxl2.py`` ``get_mapping_dict``, ``language_model/llava_qwen.py`` ``forward``):

* merges every non-null category into one ``key -> (units, config)`` map; the category itself is not used again
  (here it names the plan, and a file none of whose categories is the task's is refused as another benchmark's:
  each task names the category field of its published files, ``Task.selection_field``);
* maps unit u (8 frames, 2 groups) to decoding block ``u // (B / 2) + 1``, block 0 being the system prefix and
  blocks 1..N the video in chunks of B groups (the last one shorter); the dense blocks are 0, 1, N and the mapped
  ones (a block past N matches nothing); an empty unit list leaves every block dense;
* runs a question with no entry (its category null, or absent) through the plain model: full attention in
  pre-fill, every KV dense in decoding.

videoxl's decoder numbers only the video chunks (its chunk c is the published block c + 1; the prefix is always
kept dense) and always keeps its first and last chunk dense. :func:`oracle_scores` turns a published dense set into
per-chunk scores (1 for the chosen chunks, 0 for the others) and a top-k that make ``Decoder.select`` choose
exactly that set, through the public ``Session.ask(..., chunk_scores=...)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError


@dataclass(frozen=True)
class Entry:
    """One question's published selection: its units (best first) and its category's config."""

    units: tuple[int, ...]
    topk: int | None  # selected_topk; null in the "mmvid" oracle's entries (the published code never reads it)
    chunk: int  # selected_chunk_size, in 4-frame groups
    compression: int
    category: str


@dataclass(frozen=True)
class Selection:
    """A selection file: ``entries`` by key, and which categories it names (null ones included)."""

    path: str
    entries: dict = field(default_factory=dict)
    null_categories: tuple[str, ...] = ()

    def get(self, key: str | None) -> Entry | None:
        return self.entries.get(key) if key is not None else None

    @property
    def categories(self) -> set[str]:
        """Every category the file names, null ones included."""
        return {e.category for e in self.entries.values()} | set(self.null_categories)


def check_categories(selection: Selection, task_name: str, field: str | None, labels: set[str]) -> None:
    """InputError when none of the file's categories is one of the task's ``field`` labels: the file is another
    benchmark's (each publishes its own, keyed by the category field its task names)."""
    if not labels or not selection.categories or selection.categories & labels:
        return
    theirs = ", ".join(sorted(selection.categories)[:4])
    ours = ", ".join(sorted(labels)[:4])
    raise InputError(f"--selection {selection.path}: none of its categories ({theirs}, ...) is a {task_name} "
                     f"{field} ({ours}, ...): is it another benchmark's selection file?")


def read_selection(paths: str | Path | list) -> Selection:
    """Read one published selection file, or several merged (Video-MME and LVBench publish one per duration or video
    type; their keys are disjoint); InputError naming what is wrong."""
    if isinstance(paths, (list, tuple)):
        parts = [read_selection(p) for p in paths]
        entries = {k: v for part in parts for k, v in part.entries.items()}
        return Selection(",".join(p.path for p in parts), entries,
                         tuple(dict.fromkeys(c for p in parts for c in p.null_categories)))
    path = Path(paths)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputError(f"--selection {path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"--selection {path}: expected a JSON object from category to null or a selection")
    entries, nulls = {}, []
    for category, item in data.items():
        if item is None:
            nulls.append(category)
            continue
        try:
            config = item["config"]
            k = config.get("selected_topk")
            k = None if k is None else int(k)
            chunk, compression = int(config["selected_chunk_size"]), int(config.get("compression", 4))
            assert chunk >= 1 and compression >= 1 and (k is None or k >= 0)
            for key, units in item["selected_unit_indices"].items():
                entries[key] = Entry(tuple(int(u) for u in units), k, chunk, compression, category)
        except (KeyError, TypeError, ValueError, AssertionError, AttributeError):
            raise InputError(f"--selection {path}: category {category!r} is neither null nor "
                             '{"config": {"selected_chunk_size", "compression"}, '
                             '"selected_unit_indices": {...}}') from None
    return Selection(str(path), entries, tuple(nulls))


def published_dense_blocks(units, chunk: int, blocks: int) -> list[int] | None:
    """The published dense decoding blocks (0 = prefix, 1..``blocks`` = video chunks of ``chunk`` groups) for a
    question's units; None when every block is dense (no units)."""
    mapped = []
    for u in units:
        b = u // (chunk / 2) + 1  # a float, as published; 3.0 and 3 are the same block
        if b not in mapped:
            mapped.append(b)
    if not mapped:
        return None
    return sorted({0, 1, blocks} | {int(b) for b in mapped if b <= blocks})


def oracle_scores(dense_blocks: list[int], chunks: int) -> tuple[list[float], int]:
    """(scores per videoxl decoding chunk, topk) that make the decoder keep exactly ``dense_blocks``."""
    chosen = {b - 1 for b in dense_blocks if 1 <= b <= chunks}
    forced = {0, chunks - 1}
    return [1.0 if c in chosen else 0.0 for c in range(chunks)], len(chosen - forced)


def decode_chunks(groups: int, chunk: int) -> int:
    return -(-groups // chunk)


@dataclass(frozen=True)
class Plan:
    """How one sample is pre-filled and decoded in a run."""

    prefill: dict  # PrefillConfig fields: chunk, window (None: full attention), pool
    decode: dict  # videoxl.decoding.Selection fields: topk, chunk (empty: every chunk dense)
    chunk_scores: list[float] | None = None
    dense_blocks: list[int] | None = None  # the published numbering (0 = prefix), oracle runs only
    note: str = ""

    def to_json(self) -> dict:
        out = {"prefill": self.prefill, "decode": self.decode}
        if self.dense_blocks is not None:
            out["dense_blocks"] = self.dense_blocks
        if self.chunk_scores is not None:
            last = len(self.chunk_scores) - 1
            out["dense_chunks"] = [c for c, s in enumerate(self.chunk_scores) if s > 0 or c in (0, last)]
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Run:
    """An evaluation mode: ``dense``, ``chunked`` or ``bilevel`` (oracle ``selection``, or in-model relevance with
    ``topk`` chunks, or ``topk="auto"``: each question's k and chunk size from ``selection``)."""

    mode: str = "bilevel"
    selection: Selection | None = None
    topk: int | str | None = None
    decode_chunk: int | None = None
    kv_budget: float | None = None

    def __post_init__(self):
        if self.mode not in ("dense", "chunked", "bilevel"):
            raise InputError(f"--mode must be dense, chunked or bilevel, got {self.mode!r}")
        if self.topk == "auto" and self.selection is None:
            raise InputError("--topk auto takes each question's k and chunk size from a --selection file: give one")
        in_model = (self.topk, self.decode_chunk, self.kv_budget)
        if self.mode != "bilevel" and (self.selection is not None or any(x is not None for x in in_model)):
            raise InputError(f"--selection, --topk, --decode-chunk and --kv-budget are for --mode bilevel, "
                             f"not {self.mode}")
        if self.selection is not None and (self.topk not in (None, "auto") or self.decode_chunk or self.kv_budget):
            raise InputError("with --selection, decoding follows the file (oracle), or each question's k and chunk "
                             "size with the model's relevance (--topk auto); --topk N, --decode-chunk and "
                             "--kv-budget are for runs without a selection file")

    @property
    def label(self) -> str:
        if self.mode != "bilevel":
            return self.mode
        if self.topk == "auto":
            return "bilevel-model-auto"
        if self.selection is not None:
            return "bilevel-oracle"
        return f"bilevel-model-k{self.topk}" if self.kv_budget is None else f"bilevel-model-kv{self.kv_budget:g}"

    def plan(self, selection_key: str | None, groups: int, prefill: tuple[int, int], bilevel: tuple[int, int],
             default_topk: int = 4, default_chunk: int = 4, category: str | None = None) -> Plan:
        """The sample's plan, given its selection key and its number of 4-frame groups. ``prefill`` and
        ``bilevel`` are the task's published (chunk, window) of the chunked and bi-level runs; ``category`` (the
        sample's, as the selection files name it) only annotates the plan."""
        full = {"chunk": bilevel[0], "window": None, "pool": 4}
        if self.mode == "dense":
            return Plan(full, {})
        if self.mode == "chunked":
            return Plan({"chunk": prefill[0], "window": prefill[1], "pool": 4}, {})
        if self.selection is None:
            return Plan({"chunk": bilevel[0], "window": bilevel[1], "pool": 4},
                        {"topk": None if self.kv_budget is not None else (self.topk if self.topk is not None
                                                                          else default_topk),
                         "kv_budget": self.kv_budget, "chunk": self.decode_chunk or default_chunk})
        entry = self.selection.get(selection_key)
        if entry is None:
            why = (f"category {category} is null in the selection file" if category in self.selection.null_categories
                   else "no selection entry")
            return Plan(full, {}, note=f"{why}: dense, full attention (as published)")
        chunked = {"chunk": bilevel[0], "window": bilevel[1], "pool": entry.compression}
        chunks = decode_chunks(groups, entry.chunk)
        blocks = published_dense_blocks(entry.units, entry.chunk, chunks)
        if self.topk == "auto":  # a null selected_topk: as many chunks as the question's own units choose
            k = entry.topk if entry.topk is not None else (oracle_scores(blocks, chunks)[1] if blocks else None)
            return Plan(chunked, {"topk": k, "chunk": entry.chunk}, note=f"category {entry.category}")
        if blocks is None:
            return Plan(chunked, {}, dense_blocks=list(range(chunks + 1)), note="empty unit list: every chunk dense")
        scores, k = oracle_scores(blocks, chunks)
        return Plan(chunked, {"topk": k, "chunk": entry.chunk}, scores, blocks, note=f"category {entry.category}")
