"""Retrieval heads: the few attention heads that copy from the context, found once per model and cached on disk.

Most heads look at sinks, recency or syntax; a few retrieve (Wu et al., "Retrieval Head Mechanistically Explains
Long-Context Factuality", 2024). Relevance (``select.py``) scores chunks with these heads only; they are found on
synthetic needle haystacks of random tokens by running the real pre-fill and decoder over them, so this module
sits above the decoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import threading
import weakref
from dataclasses import dataclass

import torch

from ..cache import cache_dir, exclusive
from ..errors import InputError
from .decode import Decoder
from .layout import Group
from .prefill import prefill
from .select import chunk_ranges

log = logging.getLogger(__name__)


PROBE = "needle-random-v3"  # changes when the probe haystacks change, so cached lists are redone


@dataclass(frozen=True)
class RetrievalHeads:
    """The (layer, query head) pairs whose own scores find a needle, found once per model by :func:`find_retrieval_heads`.

    ``hit_rate[layer][head]`` is the fraction of probe haystacks in which that head alone ranked the needle's
    group first among the candidates; ``heads`` maps each layer to its selected heads (layers without any absent).
    """

    heads: dict[int, list[int]]
    hit_rate: list[list[float]]
    cases: int

    @property
    def count(self) -> int:
        return sum(len(h) for h in self.heads.values())

    def to_json(self) -> str:
        return json.dumps({"probe": PROBE, "cases": self.cases, "hit_rate": self.hit_rate,
                           "heads": {str(k): v for k, v in self.heads.items()}})

    @classmethod
    def from_json(cls, text: str) -> "RetrievalHeads":
        data = json.loads(text)
        return cls({int(k): list(v) for k, v in data["heads"].items()}, data["hit_rate"], data["cases"])


def model_key(model: torch.nn.Module) -> str:
    """A short hash of a model's architecture and a sample of its weights (the first values of every tensor)."""
    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "torch_dtype", "dtype")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(PROBE.encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(p.detach().flatten()[:16].double().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def find_retrieval_heads(model: torch.nn.Module, tokenizer=None, cases: int = 8, groups: int = 10,
                    group_tokens: int = 64, min_hit: float = 0.75, seed: int = 0,
                    scorer: str = "dense") -> RetrievalHeads:
    """Find the retrieval heads of ``model`` on synthetic needle haystacks of random tokens.

    Each haystack is ``groups`` groups of ``group_tokens`` random ids (a ``Time {t}s:`` stamp before each when a
    tokenizer is given); one group, at a depth that sweeps the haystack, hides a random 6-token key followed by a
    4-token value; the question is 4 random tokens and the key. The haystack is pre-filled as a video is (chunked,
    default :class:`PrefillConfig`) and the question scored as in decoding (no RoPE, visual keys, one group per
    chunk, first and last forced dense) by ``scorer``: by default the exact position-free attention mass, affordable
    on these short haystacks and a sharper test of what a head attends to than the bounds used at decoding time
    (with bounds no SmolLM2 head reached 40%; with the mass 11 of 270 reached 100%). A head hits when its scores,
    averaged over the question tokens, put the needle's group first. Heads hitting in at least ``min_hit`` of the
    cases are kept; if none does, the list is empty and decoding scores with every head (the bundled video model:
    its best head hit 25%). Random tokens keep the haystacks unlike any evaluation text and make this work for any
    vocabulary.
    """
    if cases < 1 or groups < 3 or group_tokens < 12:
        raise InputError("the probe needs cases >= 1, groups >= 3 and group_tokens >= 12")
    rng = random.Random(seed)
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    size = len(tokenizer) if tokenizer is not None else model.config.vocab_size
    vocab = [i for i in range(min(size, model.config.vocab_size)) if i not in special]

    def ids(n: int) -> list[int]:
        return [rng.choice(vocab) for _ in range(n)]

    cfg = model.config
    layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    hits = torch.zeros(layers, n_heads)
    for case in range(cases):
        target = 1 + case % (groups - 2)
        key, value = ids(6), ids(4)
        parts = []
        for g in range(groups):
            body = ids(group_tokens)
            if g == target:
                at = rng.randrange(group_tokens - 10)
                body[at: at + 10] = key + value
            stamp = (tokenizer(f"Time {4.0 * g:.1f}s:", add_special_tokens=False)["input_ids"] if tokenizer
                     is not None else ids(3))
            parts.append(Group(torch.tensor(stamp), torch.tensor(body)))
        video = prefill(model, torch.tensor(ids(8)), parts)
        decoder = Decoder(model, video, tokenizer)
        ranges = chunk_ranges(groups, 1)
        queries = decoder.question_queries(torch.tensor(ids(4) + key), ranges, [0, groups - 1], tuple(range(layers)))
        per_layer = decoder.chunk_scores(queries, scorer, ranges, list(range(1, groups - 1)))
        for layer, s in per_layer.items():  # (H, Q, candidates): groups 1 .. groups-2
            best = torch.softmax(s.float(), -1).mean(1).argmax(-1) + 1
            hits[layer] += (best == target).float().cpu()
    rate = hits / cases
    keep = rate >= min_hit
    if not keep.any():
        log.info("no head found the needle in %d%% of the probe haystacks: scoring with every head",
                    round(100 * min_hit))
    heads = {layer: keep[layer].nonzero().flatten().tolist() for layer in range(layers) if keep[layer].any()}
    return RetrievalHeads(heads, [[round(float(x), 4) for x in row] for row in rate], cases)


_found: "weakref.WeakKeyDictionary[torch.nn.Module, RetrievalHeads]" = weakref.WeakKeyDictionary()
_found_lock = threading.Lock()


def _read(path) -> RetrievalHeads | None:
    try:
        return RetrievalHeads.from_json(path.read_text())
    except (OSError, ValueError, KeyError):
        return None


def _find_and_cache(model: torch.nn.Module, tokenizer, path) -> RetrievalHeads:
    log.info("finding the retrieval heads of this model (once; cached in %s)", path.parent)
    found = find_retrieval_heads(model, tokenizer)
    try:
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(found.to_json())
        tmp.replace(path)
    except OSError as e:  # a read-only cache: still usable, found again next time
        log.warning("could not cache the retrieval heads in %s (%s)", path, e)
    return found


def retrieval_heads(model: torch.nn.Module, tokenizer=None) -> RetrievalHeads:
    """The retrieval heads of ``model``: from memory, from the disk cache (``cache_dir()/retrieval-heads``, keyed by
    :func:`model_key`), or found now (seconds for small models) and cached."""
    with _found_lock:
        if model in _found:
            return _found[model]
        path = cache_dir() / "retrieval-heads" / f"{model_key(model)}.json"
        found = _read(path)
        if found is None:
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
            with exclusive(path.with_suffix(".lock")):  # another process finding them: wait, then read theirs
                found = _read(path) or _find_and_cache(model, tokenizer, path)
        _found[model] = found
        return found
