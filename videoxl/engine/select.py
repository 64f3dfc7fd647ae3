"""Which chunks matter to a question: relevance scored by the model itself, and the dense/sparse choice.

The question is first run over a cheap cache (every candidate chunk sparse), keeping its queries at the scoring
layers. Each candidate chunk is then scored by how strongly those queries match its keys, with RoPE removed from
both: relevance is about content, not recency (with positions left in, the question at the very end prefers nearby
chunks through RoPE's long-range decay; ``docs/relevance.md``). Queries and keys are un-rotated exactly.

The default scorer:

1. **Page bounds** (Quest-style; ``summaries.py``): a page of 16 keys keeps the box of its keys, and
   ``q.centre + |q|.radius`` bounds every q.k in the page. A chunk scores its best page, so one lone relevant token
   (a needle) lifts its chunk where a mean would drown it. A question costs (question tokens x pages)
   multiply-adds, no attention matrix.
2. **Retrieval heads only** (``heads.py``): each (layer, head, question token) turns its chunk scores into a
   distribution over the candidates (softmax); relevance is the average of these distributions.
3. **Re-ranking**: the 32 chunks with the best bounds are re-ranked by their exact position-free attention mass at
   the retrieval heads (a fixed number of chunks: the cost does not grow with the video), over the template prior
   below.
4. **Follow the tail**: when the best chunk's attention sits on its last sixteenth (:func:`tail_share`), what the
   question looks for runs past its end, and the chunk after it is reloaded too.

The template prior (``Ablation.template_prior``): the re-ranked mass divided by the mass the question's chat
template alone puts on the same chunks, to a power: ``p(chunk | question) / p(chunk | template) ** 0.75`` by
default, so that chunks which draw any question's attention do not outrank the ones this question asks about
(contextual calibration, Zhao et al., "Calibrate Before Use", 2021, is the power 1). The template's attention is
not question-free, though, when the text before the video says what to look for ("There is a pass key hidden in
the following text"): the template alone then puts 55-82% of its mass on the needle, as the question does, and the
full ratio is flat; the tempered one keeps the needle on top (``benchmarks/engine.py``'s passkey cases: 65% found
with the power 1, 100% with 0.75; docs/calibration.md).

Timestamp keys are left out of every score: stamps are alike across chunks, and a question about "time" would pick
chunks by their stamps. The other scorers (``"mean"``, ``"sparse"``, ``"dense"``) and switches exist for the
ablations of ``benchmarks/relevance.py`` only (``decode.Ablation``).

:func:`confidence` says how much the chosen chunks stand out; decoding falls back to dense when it is low
(``Selection.min_confidence``). Its scale depends on how peaked the scoring heads are: about 0.2-0.5 on SmolLM2's
retrieval heads, 0.01-0.07 on the bundled video model, where every head scores.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import InputError
from .store import KVStore
from .summaries import GroupSummaries

SCORERS = ("bounds", "mean", "sparse", "dense")
TAIL = 16  # tail_share: the last sixteenth of a chunk's visual tokens


def chunk_ranges(num_groups: int, chunk: int) -> list[tuple[int, int]]:
    """Group ranges [start, end) of decoding chunks of ``chunk`` groups."""
    return [(s, min(s + chunk, num_groups)) for s in range(0, num_groups, chunk)]


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
    sizes = [e - s for s, e in ranges]  # on the host: nothing here waits for the device
    assert sum(sizes) == per_group.shape[-1] and ranges[0][0] == 0
    chunk_of = torch.repeat_interleave(torch.arange(len(ranges)), torch.tensor(sizes),
                                       output_size=sum(sizes)).to(per_group.device)  # (groups,)
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


def confidence(relevance: Sequence[float] | torch.Tensor, chosen: list[int]) -> float:
    """How much the ``chosen`` chunks stand out, from a relevance distribution over the candidates (chunks,):
    the share of relevance they hold beyond what ``k`` of ``n`` chunks hold when scores are flat,
    ``(mass - k/n) / (1 - k/n)``, clipped to [0, 1]. 0: they hold no more than any k chunks; 1: all of it.
    Choosing none or all of them leaves nothing to doubt (1)."""
    values = relevance.tolist() if isinstance(relevance, torch.Tensor) else list(relevance)
    n, k = len(values), len(chosen)
    if k == 0 or k >= n:
        return 1.0
    mass = math.fsum(values[i] for i in chosen) / math.fsum(values)
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


def choose_dense(relevance: Sequence[float], candidates: list[int], forced: list[int], topk: int | None,
                 token_budget: int | None, tokens_if_dense: list[int], tokens_if_sparse: list[int],
                 follow: int = 0, min_relevance: float | None = None) -> list[int]:
    """The chunks to reload dense: ``forced`` ones, then candidates by ``relevance`` (floats on the host, one per
    chunk) while ``topk`` and the budget allow. With ``follow``, each of the ``follow`` best picks brings the candidate chunk right after it next (what
    it leads into: the value of a key cut by a chunk boundary, the rest of an event), within the same ``topk`` and
    budget. With ``min_relevance``, a candidate below that fraction of the best one's relevance is not reloaded
    (a chunk brought by ``follow`` is)."""
    dense = set(forced)
    used = sum(tokens_if_dense[c] if c in dense else tokens_if_sparse[c] for c in range(len(tokens_if_dense)))
    allowed = set(candidates)
    picked = 0
    queue = [(c, False) for c in sorted(candidates, key=lambda c: -relevance[c])]  # (chunk, a follower?)
    floor = -math.inf
    if min_relevance is not None and queue:
        floor = min_relevance * relevance[queue[0][0]]
    while queue:
        if topk is not None and picked >= topk:
            break
        c, follower = queue.pop(0)
        if not follower and relevance[c] < floor:
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


