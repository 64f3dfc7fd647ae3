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
"""

from __future__ import annotations

import math

import torch

from .rope import Rope
from .store import KVStore

SCORERS = ("bounds", "mean", "sparse", "dense")
PAGE = 16


def chunk_ranges(num_groups: int, chunk: int) -> list[tuple[int, int]]:
    """Group ranges [start, end) of decoding chunks of ``chunk`` groups."""
    return [(s, min(s + chunk, num_groups)) for s in range(0, num_groups, chunk)]


class GroupSummaries:
    """Question-independent, position-free summaries of one store's keys, built lazily and kept for later questions."""

    def __init__(self, store: KVStore, rope: Rope):
        self.store, self.rope = store, rope
        self._means: list[torch.Tensor] | None = None
        self._pages: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor] | None = None

    def raw_dense(self, layer: int, start: int, end: int) -> torch.Tensor:
        """Un-rotated dense keys (Hkv, end - start, D) of tokens [start, end)."""
        k = self.store.dense.k[layer][:, start:end]
        return self.rope.rotate(k, -torch.arange(start, end, dtype=torch.float64))

    def raw_sparse(self, layer: int, start: int, end: int) -> torch.Tensor:
        """Un-rotated sparse keys of sparse rows [start, end)."""
        return self.rope.rotate(self.store.sparse.k[layer][:, start:end], -self.store.sparse_pos[start:end])

    def _segments(self, index: torch.Tensor, n: int, reductions: tuple[str, ...]) -> list[list[torch.Tensor]]:
        """Reduce each layer's un-rotated video keys per segment id ``index`` -> [reduction][layer] (Hkv, n, D)."""
        store = self.store
        first = store.groups[0].start
        idx = index.to(store.device)
        out: list[list[torch.Tensor]] = [[] for _ in reductions]
        for layer in range(store.layers):
            k = self.raw_dense(layer, first, store.length)
            where = idx[None, :, None].expand_as(k)
            for r, reduce in enumerate(reductions):
                seg = k.new_zeros(k.shape[0], n, k.shape[2])
                out[r].append(seg.scatter_reduce_(1, where, k, reduce, include_self=False))
        return out

    def means(self) -> list[torch.Tensor]:
        """Per layer (Hkv, groups, D): the mean un-rotated key of each group."""
        store = self.store
        if self._means is None:
            counts = torch.tensor([s.end - s.start for s in store.groups])
            owner = torch.repeat_interleave(torch.arange(len(store.groups)), counts)
            self._means = self._segments(owner, len(store.groups), ("mean",))[0]
        return self._means

    def pages(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per layer (Hkv, pages, D) centre and radius of the box of each page of PAGE un-rotated keys (pages never
        cross groups), and the group of each page."""
        store = self.store
        if self._pages is None:
            page_of_token, owner = [], []
            for g, span in enumerate(store.groups):
                n = span.end - span.start
                page_of_token.append(len(owner) + torch.arange(n) // PAGE)
                owner += [g] * (-(-n // PAGE))
            low, high = self._segments(torch.cat(page_of_token), len(owner), ("amin", "amax"))
            self._pages = ([(h + lo) / 2 for h, lo in zip(high, low)], [(h - lo) / 2 for h, lo in zip(high, low)],
                           torch.tensor(owner))
        return self._pages


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
    q = queries.reshape(store.kv_heads, heads // store.kv_heads * n_q, dim).to(store.device)
    if scorer == "mean":
        return (q @ summaries.means()[layer].transpose(1, 2)).float() * scale, "mean"
    if scorer == "bounds":
        centre, radius, owner = summaries.pages()
        # sum_d max(q_d lo_d, q_d hi_d) = q.centre + |q|.radius: two matmuls, (Hkv, Q', pages)
        bound = (q @ centre[layer].transpose(1, 2) + q.abs() @ radius[layer].transpose(1, 2)).float() * scale
        per_group = bound.new_full((*bound.shape[:2], len(store.groups)), -math.inf)
        per_group.scatter_reduce_(2, owner.to(bound.device).expand_as(bound), bound, reduce="amax")
        return per_group, "max"
    if scorer == "sparse":
        spans = [(s.sparse_start, s.sparse_end) for s in store.groups]
        return _group_lse(q, lambda a, b: summaries.raw_sparse(layer, a, b), spans, scale), "lse"
    if scorer == "dense":
        spans = [(s.start, s.end) for s in store.groups]
        return _group_lse(q, lambda a, b: summaries.raw_dense(layer, a, b), spans, scale), "lse"
    raise ValueError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")


def reduce_to_chunks(per_group: torch.Tensor, how: str, ranges: list[tuple[int, int]],
                     counts: torch.Tensor | None = None) -> torch.Tensor:
    cols = []
    for s, e in ranges:
        part = per_group[:, :, s:e]
        if how == "max":
            cols.append(part.amax(-1))
        elif how == "lse":
            cols.append(torch.logsumexp(part, -1))
        else:  # token-weighted mean of group means
            w = (counts[s:e] / counts[s:e].sum()).to(part)
            cols.append((part * w).sum(-1))
    return torch.stack(cols, -1)


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
