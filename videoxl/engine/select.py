"""Which chunks matter to a question: relevance scored by the model itself, and the dense/sparse choice.

The question is first run over a cheap cache (every candidate chunk sparse), keeping its rotated queries at the
scoring layers. Each candidate chunk is then scored by how much attention those queries would pay it:

* ``"bounds"`` (default): Quest-style upper bounds. Keys are cut into pages of 16 dense keys; a page keeps its
  element-wise min and max key, and ``sum_d max(q_d*min_d, q_d*max_d)`` bounds every q.k in the page from above.
  A chunk scores its best page. One lone relevant token (a needle) lifts its page's bound, where a mean would
  drown it among hundreds of tokens. Summaries are question-independent: computed once per video, then each
  question costs (question tokens x pages), nothing like an attention matrix.
* ``"mean"``: q . (mean key of the chunk). The cheapest summary, and the weakest (averaging hides needles).
* ``"sparse"``: log-sum-exp of q.k over the chunk's sparse (pooled) keys, i.e. its attention mass in the sparse
  cache; computed slab by slab, so no (queries x keys) matrix of the whole cache exists at once.
* ``"dense"``: the same over the dense keys: the exact attention mass, an expensive reference for the others.

Each (layer, head, question token) turns its chunk scores into a distribution over chunks (softmax); relevance is
the average of these distributions, so heads that look everywhere contribute little and retrieval heads decide.
The benchmark (``benchmarks/engine.py``) measures all four by how often the needle's chunk is selected.
"""

from __future__ import annotations

import math

import torch

from .store import KVStore

SCORERS = ("bounds", "mean", "sparse", "dense")
PAGE = 16


def chunk_ranges(num_groups: int, chunk: int) -> list[tuple[int, int]]:
    """Group ranges [start, end) of decoding chunks of ``chunk`` groups."""
    return [(s, min(s + chunk, num_groups)) for s in range(0, num_groups, chunk)]


class GroupSummaries:
    """Question-independent per-group key summaries of one store, built lazily and kept for later questions."""

    def __init__(self, store: KVStore):
        self.store = store
        self._means: list[torch.Tensor] | None = None
        self._pages: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor] | None = None

    def _segments(self, index: torch.Tensor, n: int, reduce: str) -> list[torch.Tensor]:
        """Reduce the dense keys of the video tokens per segment id ``index`` -> per layer (Hkv, n, D)."""
        store = self.store
        first = store.groups[0].start
        idx = index.to(store.device)
        out = []
        for layer in range(store.layers):
            k = store.dense.k[layer][:, first:store.length]
            seg = k.new_zeros(k.shape[0], n, k.shape[2])
            out.append(seg.scatter_reduce_(1, idx[None, :, None].expand_as(k), k, reduce, include_self=False))
        return out

    def means(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per layer (Hkv, groups, D) mean dense key of each group, and token counts (groups,)."""
        store = self.store
        counts = torch.tensor([s.end - s.start for s in store.groups], dtype=torch.float64)
        if self._means is None:
            owner = torch.repeat_interleave(torch.arange(len(store.groups)), counts.long())
            self._means = self._segments(owner, len(store.groups), "mean")
        return self._means, counts

    def pages(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per layer (Hkv, pages, D) centre and radius of the key box of each page of PAGE tokens (pages never
        cross groups), and the group of each page."""
        store = self.store
        if self._pages is None:
            page_of_token, owner = [], []
            for g, span in enumerate(store.groups):
                n = span.end - span.start
                page_of_token.append(len(owner) + torch.arange(n) // PAGE)
                owner += [g] * (-(-n // PAGE))
            page_of_token = torch.cat(page_of_token)
            low = self._segments(page_of_token, len(owner), "amin")
            high = self._segments(page_of_token, len(owner), "amax")
            self._pages = ([(h + lo) / 2 for h, lo in zip(high, low)], [(h - lo) / 2 for h, lo in zip(high, low)],
                           torch.tensor(owner))
        return self._pages


def _group_lse(q: torch.Tensor, keys: torch.Tensor, spans: list[tuple[int, int]], scale: float,
               slab: int = 4096) -> torch.Tensor:
    """log-sum-exp of scaled q.k per key span; q (Hkv, Q, D), keys (Hkv, N, D) -> (Hkv, Q, spans)."""
    out = q.new_full((q.shape[0], q.shape[1], len(spans)), -math.inf, dtype=torch.float32)
    i = 0
    while i < len(spans):
        j = i
        while j < len(spans) and spans[j][1] - spans[i][0] <= slab:
            j += 1
        j = max(j, i + 1)
        lo, hi = spans[i][0], spans[j - 1][1]
        logits = (q @ keys[:, lo:hi].transpose(1, 2)).float() * scale  # (Hkv, Q, hi-lo), one slab at a time
        for s in range(i, j):
            a, b = spans[s][0] - lo, spans[s][1] - lo
            out[:, :, s] = torch.logsumexp(logits[:, :, a:b], dim=-1)
        i = j
    return out


def score_groups(scorer: str, queries: torch.Tensor, layer: int, store: KVStore, summaries: GroupSummaries,
                 scale: float) -> tuple[torch.Tensor, str]:
    """Per-group scores (Hkv, G*Q, groups) of one layer's queries (H, Q, D), and how groups combine into chunks."""
    heads, n_q, dim = queries.shape
    q = queries.reshape(store.kv_heads, heads // store.kv_heads * n_q, dim).to(store.device)
    if scorer == "mean":
        means, _ = summaries.means()
        return (q @ means[layer].transpose(1, 2)).float() * scale, "mean"
    if scorer == "bounds":
        centre, radius, owner = summaries.pages()
        # sum_d max(q_d lo_d, q_d hi_d) = q.centre + |q|.radius: two matmuls, (Hkv, Q', pages)
        bound = (q @ centre[layer].transpose(1, 2) + q.abs() @ radius[layer].transpose(1, 2)).float() * scale
        per_group = bound.new_full((*bound.shape[:2], len(store.groups)), -math.inf)
        per_group.scatter_reduce_(2, owner.to(bound.device).expand_as(bound), bound, reduce="amax")
        return per_group, "max"
    if scorer == "sparse":
        spans = [(s.sparse_start, s.sparse_end) for s in store.groups]
        return _group_lse(q, store.sparse.k[layer], spans, scale), "lse"
    if scorer == "dense":
        spans = [(s.start, s.end) for s in store.groups]
        return _group_lse(q, store.dense.k[layer], spans, scale), "lse"
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
