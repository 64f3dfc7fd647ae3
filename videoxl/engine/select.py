"""Which chunks matter to a question: relevance scored by the model itself, and the dense/sparse choice.

The question is first run over a cheap cache (every candidate chunk sparse), keeping its queries at the scoring
layers. Each candidate chunk is then scored by how strongly those queries match its keys, with RoPE removed from
both: relevance is about content, not recency. With positions left in, the question (at the very end) prefers
nearby chunks through RoPE's long-range decay, and that bias swamps the signal: on the passkey benchmark at 8k
tokens, needles in the first third ranked 12th-24th of 52 candidates with rotated keys and 1st without
(``benchmarks/engine.py`` measures it). Queries and keys are un-rotated exactly (RoPE is a rotation).

Scorers, compared by the benchmark by how often the needle's chunk is selected:

* ``"bounds"`` (default): Quest-style upper bounds. Keys are cut into pages of 16; a page keeps the box of its keys
  (element-wise min and max), and ``sum_d max(q_d*min_d, q_d*max_d) = q.centre + |q|.radius`` bounds every q.k
  in the page. A chunk scores its best page, so one lone relevant token (a needle) lifts its chunk where a mean
  would drown it. Summaries are question-independent, computed once per video; a question then costs
  (question tokens x pages) multiply-adds, no attention matrix, so fused attention kernels stay usable.
* ``"mean"``: q . (mean key of the chunk). The cheapest summary, and the weakest (averaging hides needles).
* ``"sparse"``: log-sum-exp of q.k over the chunk's sparse (pooled) keys: its attention mass in the sparse cache.
* ``"dense"``: the same over all dense keys: the exact (position-free) attention mass, an expensive reference.

Each (layer, head, question token) turns its chunk scores into a distribution over the candidate chunks
(softmax); relevance is the average of these distributions, so heads that look everywhere contribute little and
retrieval heads decide. The lse scorers work slab by slab, never holding (queries x all keys).

Three refinements, measured on natural-prose haystacks (``benchmarks/relevance.py``):

* **Timestamp keys are left out of every score.** A chunk's timestamp KVs are kept verbatim in its sparse form, so
  reloading it dense adds only its visual (content) tokens; and stamps are alike across chunks, so a question that
  matches them ("what *number*...", "at what *time*...") would pick chunks by their stamps.
* **Only the question's content tokens score** (:func:`content_mask`): the chat template around the question
  (``<|im_end|>``, the ``assistant`` header, newlines) is the same for every question and attends to attention
  sinks and recent tokens, not to what the question asks.
* **Retrieval heads only** (:func:`retrieval_heads`): most heads look at sinks, recency or syntax; a few copy from
  the context (Wu et al., "Retrieval Head Mechanistically Explains Long-Context Factuality", 2024). They are found
  once per model on synthetic needle haystacks of random tokens (:func:`calibrate_heads`: which (layer, head)
  pairs put their best score on the needle's group) and cached on disk, keyed by the model's config and a sample
  of its weights.

:func:`confidence` says how much the chosen chunks stand out; decoding falls back to dense when it is low
(``DecodeConfig.min_confidence``), and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
import weakref
from dataclasses import dataclass

import torch

from ..errors import InputError
from .rope import Rope
from .store import KVStore

SCORERS = ("bounds", "mean", "sparse", "dense")
PAGE = 16
log = logging.getLogger(__name__)


def chunk_ranges(num_groups: int, chunk: int) -> list[tuple[int, int]]:
    """Group ranges [start, end) of decoding chunks of ``chunk`` groups."""
    return [(s, min(s + chunk, num_groups)) for s in range(0, num_groups, chunk)]


class GroupSummaries:
    """Question-independent, position-free summaries of one store's keys, kept for every later question.

    Pre-fill calls :meth:`extend` after each chunk, so the page boxes of the default scorer are built once,
    incrementally, while the video streams in; the first question pays nothing. Summaries not extended during
    pre-fill (the ``"mean"`` ablation, a store loaded from elsewhere) are brought up to date on first use.
    """

    def __init__(self, store: KVStore, rope: Rope):
        self.store, self.rope = store, rope
        self._means: _Growing | None = None
        self._pages: tuple[_Growing, _Growing, list[int]] | None = None
        self._mean_groups = 0  # groups summarized so far, per summary kind
        self._page_groups = 0
        self._owner: torch.Tensor | None = None

    def raw_dense(self, layer: int, start: int, end: int) -> torch.Tensor:
        """Un-rotated dense keys (Hkv, end - start, D) of tokens [start, end)."""
        k = self.store.dense.k[layer][:, start:end]
        return self.rope.rotate(k, -torch.arange(start, end, dtype=torch.float64))

    def raw_sparse(self, layer: int, start: int, end: int) -> torch.Tensor:
        """Un-rotated sparse keys of sparse rows [start, end)."""
        return self.rope.rotate(self.store.sparse.k[layer][:, start:end], -self.store.sparse_pos[start:end])

    def _segments(self, first_group: int, index: torch.Tensor, n: int,
                  reductions: tuple[str, ...]) -> list[list[torch.Tensor]]:
        """Reduce each layer's un-rotated keys from group ``first_group`` to the end per segment id ``index``
        (one per token) -> [reduction][layer] (Hkv, n, D). One rotation table for all layers."""
        store = self.store
        start, end = store.groups[first_group].start, store.length
        idx = index.to(store.device)
        table = None if self.rope.is_identity else self.rope.table(
            -torch.arange(start, end, dtype=torch.float64), store.device, store.dtype)
        out: list[list[torch.Tensor]] = [[] for _ in reductions]
        for layer in range(store.layers):
            k = store.dense.k[layer][:, start:end]
            if table is not None:
                k = self.rope.apply(k, table)
            where = idx[None, :, None].expand_as(k)
            for r, reduce in enumerate(reductions):
                seg = k.new_zeros(k.shape[0], n, k.shape[2])
                out[r].append(seg.scatter_reduce_(1, where, k, reduce, include_self=False))
        return out

    def means(self) -> list[torch.Tensor]:
        """Per layer (Hkv, groups, D): the mean un-rotated visual key of each group."""
        store = self.store
        done, total = self._mean_groups, len(store.groups)
        if done < total:
            # timestamp tokens go to a scratch segment (n = groups), dropped: the means are of visual keys only
            owner = torch.cat([torch.cat([torch.full((s.visual_start - s.start,), total - done),
                                          torch.full((s.end - s.visual_start,), g)])
                               for g, s in enumerate(store.groups[done:])]).long()
            new = [m[:, : total - done] for m in self._segments(done, owner, total - done + 1, ("mean",))[0]]
            self._means = self._means or _Growing(store.layers)
            self._means.append(new)
            self._mean_groups = total
        return self._means.views()

    def extend(self) -> None:
        """Summarize the groups added to the store since the last call (page boxes of the default scorer)."""
        store = self.store
        done, total = self._page_groups, len(store.groups)
        if done == total:
            return
        if self._pages is None:
            self._pages = (_Growing(store.layers), _Growing(store.layers), [])
        centre, radius, owner = self._pages
        # each page as PAGE token indices, a short last page padded with its own last token (min and max ignore
        # repeats): one gather and two reductions per layer instead of scatters
        first = store.groups[done].start
        rows, new_owner = [], []
        for g in range(done, total):
            span = store.groups[g]  # visual tokens only: timestamps stay verbatim in the sparse form
            n = span.end - span.visual_start
            pages = -(-n // PAGE)
            rows.append(span.visual_start - first
                        + torch.clamp(torch.arange(pages * PAGE).view(pages, PAGE), max=n - 1))
            new_owner += [g] * pages
        index = torch.cat(rows).flatten().to(store.device)
        table = None if self.rope.is_identity else self.rope.table(
            -torch.arange(first, store.length, dtype=torch.float64), store.device, store.dtype)
        # every layer at once: (layers, Hkv, tokens, D) -> (layers, Hkv, pages, PAGE, D)
        k = torch.stack([keys[:, first : store.length] for keys in store.dense.k])
        if table is not None:
            k = self.rope.apply(k, table)
        paged = k.index_select(2, index).unflatten(2, (-1, PAGE))
        low, high = paged.amin(3), paged.amax(3)
        centre.append(list(((high + low) / 2).unbind(0)))
        radius.append(list(((high - low) / 2).unbind(0)))
        owner.extend(new_owner)
        self._owner = None
        self._page_groups = total

    def pages(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per layer (Hkv, pages, D) centre and radius of the box of each page of PAGE un-rotated visual keys (pages
        never cross groups), and the group of each page."""
        self.extend()
        centre, radius, owner = self._pages
        if self._owner is None:
            self._owner = torch.tensor(owner)
        return centre.views(), radius.views(), self._owner


class _Growing:
    """Per-layer (Hkv, rows, D) tensors appended to along the rows, with doubling capacity (no quadratic copying)."""

    def __init__(self, layers: int):
        self.layers, self.rows = layers, 0
        self.bufs: list[torch.Tensor] | None = None

    def append(self, parts: list[torch.Tensor]) -> None:
        n = parts[0].shape[1]
        if self.bufs is None or self.rows + n > self.bufs[0].shape[1]:
            capacity = max(self.rows + n, 2 * (0 if self.bufs is None else self.bufs[0].shape[1]))
            grown = [p.new_empty(p.shape[0], capacity, p.shape[2]) for p in parts]
            if self.bufs is not None:
                for new, old in zip(grown, self.bufs):
                    new[:, : self.rows] = old[:, : self.rows]
            self.bufs = grown
        for buf, p in zip(self.bufs, parts):
            buf[:, self.rows : self.rows + n] = p
        self.rows += n

    def views(self) -> list[torch.Tensor]:
        return [b[:, : self.rows] for b in self.bufs]


def _group_lse(q: torch.Tensor, keys, spans: list[tuple[int, int]], scale: float, slab: int = 4096) -> torch.Tensor:
    """log-sum-exp of scaled q.k per key span; q (Hkv, Q, D), keys(a, b) -> (Hkv, b - a, D) -> (Hkv, Q, spans)."""
    out = q.new_full((q.shape[0], q.shape[1], len(spans)), -math.inf, dtype=torch.float32)
    i = 0
    while i < len(spans):
        j = i
        while j < len(spans) and spans[j][1] - spans[i][0] <= slab:
            j += 1
        j = max(j, i + 1)
        lo, hi = spans[i][0], spans[j - 1][1]
        logits = (q @ keys(lo, hi).transpose(1, 2)).float() * scale  # (Hkv, Q, hi-lo), one slab at a time
        for s in range(i, j):
            a, b = spans[s][0] - lo, spans[s][1] - lo
            out[:, :, s] = torch.logsumexp(logits[:, :, a:b], dim=-1)
        i = j
    return out


def score_groups(scorer: str, queries: torch.Tensor, layer: int, store: KVStore, summaries: GroupSummaries,
                 scale: float) -> tuple[torch.Tensor, str]:
    """Per-group scores (Hkv, G*Q, groups) of one layer's un-rotated queries (H, Q, D), and how groups combine
    into chunks."""
    heads, n_q, dim = queries.shape
    # queries go where the keys or summaries they meet are, in their dtype (the store may have moved since)
    q = queries.reshape(store.kv_heads, heads // store.kv_heads * n_q, dim)
    if scorer == "mean":
        means = summaries.means()[layer]
        q = q.to(means.device, means.dtype)
        return (q @ means.transpose(1, 2)).float() * scale, "mean"
    if scorer == "bounds":
        centre, radius, owner = summaries.pages()
        q = q.to(centre[layer].device, centre[layer].dtype)
        # sum_d max(q_d lo_d, q_d hi_d) = q.centre + |q|.radius: two matmuls, (Hkv, Q', pages)
        bound = (q @ centre[layer].transpose(1, 2) + q.abs() @ radius[layer].transpose(1, 2)).float() * scale
        per_group = bound.new_full((*bound.shape[:2], len(store.groups)), -math.inf)
        per_group.scatter_reduce_(2, owner.to(bound.device).expand_as(bound), bound, reduce="amax")
        return per_group, "max"
    q = q.to(store.device, store.dtype)
    if scorer == "sparse":
        spans = [(s.sparse_start, s.sparse_end) for s in store.groups]
        return _group_lse(q, lambda a, b: summaries.raw_sparse(layer, a, b), spans, scale), "lse"
    if scorer == "dense":
        spans = [(s.start, s.end) for s in store.groups]
        return _group_lse(q, lambda a, b: summaries.raw_dense(layer, a, b), spans, scale), "lse"
    raise InputError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")


def reduce_to_chunks(per_group: torch.Tensor, how: str, ranges: list[tuple[int, int]],
                     counts: torch.Tensor | None = None) -> torch.Tensor:
    """Per-group scores (..., groups) -> per-chunk scores (..., chunks) for chunks given as group ranges: the max,
    the log-sum-exp, or the token-weighted mean (``counts`` tokens per group). One scatter over all chunks."""
    sizes = torch.tensor([e - s for s, e in ranges])
    assert int(sizes.sum()) == per_group.shape[-1] and ranges[0][0] == 0
    chunk_of = torch.repeat_interleave(torch.arange(len(ranges)), sizes).to(per_group.device)  # (groups,)
    owner = chunk_of.expand_as(per_group)
    shape = (*per_group.shape[:-1], len(ranges))
    if how in ("max", "lse"):
        top = per_group.new_full(shape, -math.inf).scatter_reduce_(-1, owner, per_group, "amax")
        if how == "max":
            return top
        shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        mass = per_group.new_zeros(shape).scatter_add_(-1, owner, torch.exp(per_group - shift.gather(-1, owner)))
        return torch.log(mass) + shift
    assert counts is not None, "the mean needs token counts"
    counts = counts.to(per_group.device, per_group.dtype)
    totals = torch.zeros(len(ranges), dtype=counts.dtype, device=counts.device).index_add_(0, chunk_of, counts)
    return per_group.new_zeros(shape).scatter_add_(-1, owner, per_group * (counts / totals[chunk_of]))


def relevance(per_layer_chunk_scores: list[torch.Tensor]) -> torch.Tensor:
    """Average over layers, heads and question tokens of each one's softmax over chunks -> (chunks,) summing to 1."""
    dists = [torch.softmax(s.float(), dim=-1).reshape(-1, s.shape[-1]) for s in per_layer_chunk_scores]
    return torch.cat(dists).mean(0)


def choose_dense(relevance: torch.Tensor, candidates: list[int], forced: list[int], topk: int | None,
                 token_budget: int | None, tokens_if_dense: list[int], tokens_if_sparse: list[int]) -> list[int]:
    """The chunks to reload dense: ``forced`` ones, then candidates by relevance while ``topk`` and the budget allow."""
    dense = set(forced)
    used = sum(tokens_if_dense[c] if c in dense else tokens_if_sparse[c] for c in range(len(tokens_if_dense)))
    picked = 0
    for c in sorted(candidates, key=lambda c: -float(relevance[c])):
        if topk is not None and picked >= topk:
            break
        extra = tokens_if_dense[c] - tokens_if_sparse[c]
        if token_budget is not None and used + extra > token_budget:
            continue
        dense.add(c)
        used += extra
        picked += 1
    return sorted(dense)
