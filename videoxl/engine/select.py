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
* **Optionally, only the question's content tokens score** (:func:`content_mask`, ``score_tokens="content"``):
  without the chat template around the question (``<|im_end|>``, the ``assistant`` header, newlines). Not the
  default: it changed nothing on SmolLM2's prose haystacks, and on the bundled video model the template's last
  tokens are the ones that find the needle (needle group selected in 1 of 10 cases at 2,048 frames without them,
  9 of 10 with them).
* **Retrieval heads only** (:func:`retrieval_heads`): most heads look at sinks, recency or syntax; a few copy from
  the context (Wu et al., "Retrieval Head Mechanistically Explains Long-Context Factuality", 2024). They are found
  once per model on synthetic needle haystacks of random tokens (:func:`calibrate_heads`: which (layer, head)
  pairs put their best score on the needle's group) and cached on disk, keyed by the model's config and a sample
  of its weights.

With ``"bounds"``, the ``DecodeConfig.refine`` (32) chunks with the best bounds are then re-ranked by their exact
position-free attention mass at the retrieval heads (a model without any keeps its bounds: over every head the mass
follows sinks and recency): bounds are loose (a page's box bounds 16 keys at once), the
mass is not, and reading the dense keys of a fixed number of chunks costs the same at any video length. On the
prose haystacks at 8k tokens the needle's group of ``multikey`` was outside the best 16 bounds in both cases and
inside the best 32.

**Calibrated by the chat template** (``DecodeConfig.calibrate``, off by default; decode.py): some chunks draw any
question's attention (prose about values and numbers, groups near an instruction to memorize them), and with
several needles that look alike they outrank all but the first needle. The re-ranked chunks' mass is therefore
divided by the mass the question's chat template alone (its non-content tokens: ``<|im_end|>``, the ``assistant``
header) puts on the same chunks, and renormalized: ``p(chunk | question) / p(chunk | template)``, the pointwise
mutual information of chunk and question, as contextual calibration does for few-shot labels (Zhao et al.,
"Calibrate Before Use", 2021). Dividing bounds instead fails (a box's bound is no probability): only the exact
masses of the short list are calibrated. The template's queries are computed once per video, and read the
short list's keys in the same pass as the question's. It is off by default because the template's attention is
not question-free when the text before the video says what to look for ("There is a pass key hidden in the
following text"): the template alone then puts 55-82% of its mass on the needle, as much as the question does, the
ratio is flat, and the needle's chunk is not reloaded (``benchmarks/calibration.py``; docs/calibration.md).

:func:`confidence` says how much the chosen chunks stand out; decoding falls back to dense when it is low
(``DecodeConfig.min_confidence``), and says so. Its scale depends on how peaked the scoring heads are and on
calibration: 0.22-0.47 on SmolLM2's retrieval heads with the needle found before calibration, lower with it
(calibrated relevance is flatter; README: relevance, the fallback), 0.01-0.07 on the bundled video model, where
every head scores.
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
TAIL = 16  # tail_share: the last sixteenth of a chunk's visual tokens
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
                 scale: float, heads: list[int] | None = None,
                 groups: list[int] | None = None) -> tuple[torch.Tensor, str]:
    """Per-group scores (H', Q, groups') of one layer's un-rotated queries (H, Q, D), from the groups' visual keys,
    and how groups combine into chunks. ``heads`` keeps only those query heads (H' of them; None: all), ``groups``
    only those groups (lse scorers only; None: all)."""
    n_heads, n_q, dim = queries.shape
    if heads is None:  # (H, Q, D) -> (Hkv, G*Q, D): the query heads sharing a KV head stacked as rows
        q, kv = queries.reshape(store.kv_heads, n_heads // store.kv_heads * n_q, dim), None
        out_heads = n_heads
    else:  # (H', Q, D), each against its own KV head
        q, kv = queries[torch.tensor(heads, device=queries.device)], torch.tensor(heads) // (n_heads // store.kv_heads)
        out_heads = len(heads)

    def per_head(t: torch.Tensor) -> torch.Tensor:  # (Hkv, n, D) -> the KV head of each scoring row group
        return t if kv is None else t.index_select(0, kv.to(t.device))

    # queries go where the keys or summaries they meet are, in their dtype (the store may have moved since)
    if scorer == "mean":
        means = per_head(summaries.means()[layer])
        q = q.to(means.device, means.dtype)
        return ((q @ means.transpose(1, 2)).float() * scale).reshape(out_heads, n_q, -1), "mean"
    if scorer == "bounds":
        centre, radius, owner = summaries.pages()
        c, r = per_head(centre[layer]), per_head(radius[layer])
        q = q.to(c.device, c.dtype)
        # sum_d max(q_d lo_d, q_d hi_d) = q.centre + |q|.radius: two matmuls, (rows, Q', pages)
        bound = (q @ c.transpose(1, 2) + q.abs() @ r.transpose(1, 2)).float() * scale
        per_group = bound.new_full((*bound.shape[:2], len(store.groups)), -math.inf)
        per_group.scatter_reduce_(2, owner.to(bound.device).expand_as(bound), bound, reduce="amax")
        return per_group.reshape(out_heads, n_q, -1), "max"
    q = q.to(store.device, store.dtype)
    chosen = store.groups if groups is None else [store.groups[g] for g in groups]
    if scorer == "sparse":
        spans = [(s.sparse_start + s.visual_start - s.start, s.sparse_end) for s in chosen]
        out = _group_lse(q, lambda a, b: per_head(summaries.raw_sparse(layer, a, b)), spans, scale)
        return out.reshape(out_heads, n_q, -1), "lse"
    if scorer == "dense":
        spans = [(s.visual_start, s.end) for s in chosen]
        out = _group_lse(q, lambda a, b: per_head(summaries.raw_dense(layer, a, b)), spans, scale)
        return out.reshape(out_heads, n_q, -1), "lse"
    raise InputError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")


def tail_share(queries: dict[int, torch.Tensor], store: KVStore, summaries: GroupSummaries, scale: float,
               groups: range, heads: dict[int, list[int]] | None = None, tokens: torch.Tensor | None = None) -> float:
    """The share of a chunk's attention that falls on the last ``1/TAIL`` of its visual tokens (``n / TAIL`` tokens;
    the token that boundary cuts counts by its part): per (layer, head, question token) a softmax over the chunk's
    position-free dense keys, averaged over them all (``heads`` per layer, None: all; ``tokens`` (Q,) bool keeps
    those question tokens). Uniform attention gives ``1/TAIL`` whatever the chunk's length;
    a share well above it says that what the question looks for sits at the chunk's end and may go on in the next
    chunk. It reads one chunk's keys: no attention over the whole video."""
    keep = tokens if tokens is not None and bool(tokens.any()) else None
    spans = [(store.groups[g].visual_start, store.groups[g].end) for g in groups]
    n = sum(b - a for a, b in spans)
    weight = torch.zeros(n)
    whole, part = divmod(n, TAIL)
    weight[n - whole:] = 1.0
    if part:
        weight[n - whole - 1] = part / TAIL
    shares = []
    for layer, q in queries.items():
        chosen = list(range(q.shape[0])) if heads is None else heads[layer]
        if not chosen:
            continue
        k = torch.cat([summaries.raw_dense(layer, a, b) for a, b in spans], dim=1)  # (Hkv, n, D)
        kv = torch.tensor(chosen) // (q.shape[0] // k.shape[0])
        qh = q[torch.tensor(chosen, device=q.device)].to(k.device, k.dtype)  # (h, Q, D)
        if keep is not None:
            qh = qh[:, keep.to(qh.device)]
        att = torch.softmax((qh @ k[kv.to(k.device)].transpose(1, 2)).float() * scale, dim=-1)  # (h, Q', n)
        shares.append((att @ weight.to(att.device)).flatten())
    return float(torch.cat(shares).mean()) if shares else 0.0


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


def relevance(per_layer_chunk_scores: dict[int, torch.Tensor], tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Average over layers, heads and question tokens of each one's softmax over chunks -> (chunks,) summing to 1.

    ``per_layer_chunk_scores`` maps a layer to its (heads, Q, chunks) scores; ``tokens`` (Q,) bool keeps only those
    question tokens (None or none set: all)."""
    dists = []
    for s in per_layer_chunk_scores.values():
        if tokens is not None and bool(tokens.any()):
            s = s[:, tokens.to(s.device)]
        dists.append(torch.softmax(s.float(), dim=-1).reshape(-1, s.shape[-1]))
    return torch.cat(dists).mean(0)


def confidence(relevance: torch.Tensor, chosen: list[int]) -> float:
    """How much the ``chosen`` chunks stand out, from a relevance distribution over the candidates (chunks,):
    the share of relevance they hold beyond what ``k`` of ``n`` chunks hold when scores are flat,
    ``(mass - k/n) / (1 - k/n)``, clipped to [0, 1]. 0: they hold no more than any k chunks; 1: all of it.
    Choosing none or all of them leaves nothing to doubt (1)."""
    n, k = relevance.numel(), len(chosen)
    if k == 0 or k >= n:
        return 1.0
    p = relevance.double() / relevance.double().sum()
    mass = float(p[torch.tensor(chosen)].sum())
    return min(1.0, max(0.0, (mass - k / n) / (1 - k / n)))


def content_mask(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """(Q,) bool: the question tokens that say what is asked. Special tokens, the role name after a turn start
    (``<|im_start|>assistant``) and whitespace-only tokens (the newlines of the chat template) are left out."""
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    starts = {i for i in special if "start" in str(tokenizer.convert_ids_to_tokens(i))}
    keep, in_role = [], False
    for token in ids.tolist():
        text = tokenizer.decode([token])
        if token in special:
            keep.append(False)
            in_role = token in starts
            continue
        if in_role:  # the role name runs to the end of its line
            keep.append(False)
            in_role = "\n" not in text
            continue
        keep.append(bool(text.strip()))
    return torch.tensor(keep, dtype=torch.bool)


def choose_dense(relevance: torch.Tensor, candidates: list[int], forced: list[int], topk: int | None,
                 token_budget: int | None, tokens_if_dense: list[int], tokens_if_sparse: list[int],
                 follow: int = 0, min_relevance: float | None = None) -> list[int]:
    """The chunks to reload dense: ``forced`` ones, then candidates by relevance while ``topk`` and the budget
    allow. With ``follow``, each of the ``follow`` best picks brings the candidate chunk right after it next (what
    it leads into: the value of a key cut by a chunk boundary, the rest of an event), within the same ``topk`` and
    budget. With ``min_relevance``, a candidate below that fraction of the best one's relevance is not reloaded
    (a chunk brought by ``follow`` is)."""
    dense = set(forced)
    used = sum(tokens_if_dense[c] if c in dense else tokens_if_sparse[c] for c in range(len(tokens_if_dense)))
    allowed = set(candidates)
    picked = 0
    queue = [(c, False) for c in sorted(candidates, key=lambda c: -float(relevance[c]))]  # (chunk, a follower?)
    floor = -math.inf
    if min_relevance is not None and queue:
        floor = min_relevance * float(relevance[queue[0][0]])
    while queue:
        if topk is not None and picked >= topk:
            break
        c, follower = queue.pop(0)
        if not follower and float(relevance[c]) < floor:
            break  # the queue is in relevance order: nothing after it clears the floor either
        extra = tokens_if_dense[c] - tokens_if_sparse[c]
        if c in dense or (token_budget is not None and used + extra > token_budget):
            continue
        dense.add(c)
        used += extra
        picked += 1
        if follow > 0 and not follower:
            follow -= 1
            if c + 1 in allowed and c + 1 not in dense:
                queue.insert(0, (c + 1, True))
    return sorted(dense)


# -- retrieval heads ----------------------------------------------------------------------------------------------
CALIBRATION = "needle-random-v3"  # changes when the calibration haystacks change, so cached lists are redone


@dataclass(frozen=True)
class RetrievalHeads:
    """The (layer, query head) pairs whose own scores find a needle, found once per model by :func:`calibrate_heads`.

    ``hit_rate[layer][head]`` is the fraction of calibration haystacks in which that head alone ranked the needle's
    group first among the candidates; ``heads`` maps each layer to its selected heads (layers without any absent).
    """

    heads: dict[int, list[int]]
    hit_rate: list[list[float]]
    cases: int

    @property
    def count(self) -> int:
        return sum(len(h) for h in self.heads.values())

    def to_json(self) -> str:
        return json.dumps({"calibration": CALIBRATION, "cases": self.cases, "hit_rate": self.hit_rate,
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
    h.update(CALIBRATION.encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(p.detach().flatten()[:16].double().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def calibrate_heads(model: torch.nn.Module, tokenizer=None, cases: int = 8, groups: int = 10,
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
    from .decode import Decoder
    from .layout import Group
    from .prefill import prefill

    if cases < 1 or groups < 3 or group_tokens < 12:
        raise InputError("calibration needs cases >= 1, groups >= 3 and group_tokens >= 12")
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
        log.info("no head found the needle in %d%% of the calibration cases: scoring with every head",
                    round(100 * min_hit))
    heads = {layer: keep[layer].nonzero().flatten().tolist() for layer in range(layers) if keep[layer].any()}
    return RetrievalHeads(heads, [[round(float(x), 4) for x in row] for row in rate], cases)


_found: "weakref.WeakKeyDictionary[torch.nn.Module, RetrievalHeads]" = weakref.WeakKeyDictionary()
_found_lock = threading.Lock()


def retrieval_heads(model: torch.nn.Module, tokenizer=None) -> RetrievalHeads:
    """The retrieval heads of ``model``: from memory, from the disk cache (``cache_dir()/retrieval-heads``, keyed by
    :func:`model_key`), or calibrated now (seconds for small models) and cached."""
    from ..llm import cache_dir

    with _found_lock:
        if model in _found:
            return _found[model]
        path = cache_dir() / "retrieval-heads" / f"{model_key(model)}.json"
        try:
            found = RetrievalHeads.from_json(path.read_text())
        except (OSError, ValueError, KeyError):
            log.info("finding the retrieval heads of this model (once; cached in %s)", path.parent)
            found = calibrate_heads(model, tokenizer)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
                tmp.write_text(found.to_json())
                tmp.replace(path)
            except OSError as e:  # a read-only cache: still usable, found again next time
                log.warning("could not cache the retrieval heads in %s (%s)", path, e)
        _found[model] = found
        return found
