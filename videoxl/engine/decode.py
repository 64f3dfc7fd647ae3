"""Bi-level KV decoding: reload the chunks that matter dense, keep the rest sparse, then answer.

Positions come in the two reference modes (VectorSpaceLab/Video-XL
``Video-XL-2/eval/lvu/w_chunk_bilevel/.../modeling_qwen2.py`` and the streaming variant of the release):

* ``"absolute"``: every key keeps the position it had in pre-fill (a pooled key the mean of its window); the
  question continues after the full, uncompacted sequence.
* ``"contiguous"``: keys are re-indexed 0..N-1 after compaction and the question continues at N.

The default, contiguous, is the one measured as more accurate: on the bundled video model's needle benchmark
96% against 88% for absolute positions at 2,048 frames, 76% against 56% at 4,096 and 46% against 32% at
8,192; on SmolLM2's passkey benchmark 100% against 70% at 8k tokens, equal below (absolute leaves gaps of thousands
of positions between the few dense chunks, a layout the models never saw). ``benchmarks/engine.py`` and ``videoxl eval needle`` report both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch

from .. import defaults
from ..errors import InputError
from .attention import DecodeCache, DecodeStep, run_step
from .layout import embed
from .prefill import PrefilledVideo
from .rope import Rope
from .select import (SCORERS, GroupSummaries, choose_dense, chunk_ranges, confidence, content_mask, reduce_to_chunks,
                     relevance, retrieval_heads, score_groups, tail_share)


@dataclass(frozen=True)
class DecodeConfig:
    """How a question is answered from a pre-filled video.

    Selection: ``topk`` relevant chunks (besides the always-dense first and last) and/or a ``kv_budget`` (fraction
    of the dense KV) decide which chunks are reloaded dense; with neither, every chunk is dense. ``chunk`` is the
    decoding chunk size in groups (None: the pre-fill chunk size). Relevance (select.py): ``scorer`` over the
    ``heads`` ("retrieval": the model's retrieval heads, found once per model, or every head for a model where
    none was found; "all") and the question's ``score_tokens`` ("content": without the chat template; needs the
    tokenizer); with "bounds", the ``refine`` best chunks are re-ranked by the exact position-free attention mass
    of those heads over their visual keys (0: not; a fixed number of chunks, so its cost does not grow with the
    video; with ``heads="retrieval"`` only when the model has retrieval heads). With ``calibrate`` (off by default,
    docs/calibration.md), that mass is divided by the chat template's own over the same chunks (the question's tokens left out: what the
    question adds over any question, the pointwise mutual information of chunk and question; Zhao et al.,
    "Calibrate Before Use", 2021, arXiv 2102.09690); needs the tokenizer and token ids. With ``follow``, each of the
    ``follow`` best chunks brings the chunk after it, within ``topk`` (select.choose_dense); with ``follow_tail``,
    the best chunk does so only when at least that share of the scoring heads' attention over it falls on its last
    sixteenth (select.tail_share: what the question looks for runs past the chunk's end; 0.25 by default, None:
    never; README: relevance, "follow_tail"). When the chosen chunks
    stand out less than ``min_confidence`` (select.confidence), every chunk is decoded dense and the answer says so
    (None, the default: never; confidence is on a scale of its own per model, see select.py). Sparse chunks enter
    the caches (selection's and the answer's) as their pooled tokens alone unless ``sparse_stamps``, which keeps
    their timestamp tokens as the published bi-level decoding does (a cache of pooled chunks behind verbatim stamps
    leaves a small model reciting the stamps; README: relevance, "Sparse chunks without their timestamps").
    Generation: greedy when ``temperature`` is 0.
    """

    topk: int | None = None
    kv_budget: float | None = None
    chunk: int | None = None
    scorer: str = "bounds"
    heads: Literal["retrieval", "all"] = "retrieval"
    score_tokens: Literal["content", "all"] = "all"
    min_confidence: float | None = None
    refine: int = 32
    calibrate: bool = defaults.CALIBRATE
    sparse_stamps: bool = defaults.SPARSE_STAMPS
    follow: int = defaults.FOLLOW
    follow_tail: float | None = defaults.FOLLOW_TAIL
    min_relevance: float | None = None  # reload only chunks at least this fraction as relevant as the best (model
    # relevance only; an ablation, README: relevance)
    score_layers: tuple[int, ...] | None = None
    score_positions: bool = False  # keep RoPE in relevance scores (an ablation: recency then dominates)
    positions: Literal["absolute", "contiguous"] = "contiguous"
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.topk is not None and (not isinstance(self.topk, int) or self.topk < 0):
            raise InputError(f"topk must be a number of chunks >= 0, got {self.topk!r}")
        if self.kv_budget is not None and not 0 < self.kv_budget <= 1:
            raise InputError(f"kv_budget is a fraction of the dense KV in (0, 1], got {self.kv_budget!r}")
        if self.chunk is not None and (not isinstance(self.chunk, int) or self.chunk < 1):
            raise InputError(f"chunk must be a positive number of groups, got {self.chunk!r}")
        if self.scorer not in SCORERS:
            raise InputError(f"unknown scorer {self.scorer!r}; choose one of {', '.join(SCORERS)}")
        if self.heads not in ("retrieval", "all"):
            raise InputError(f"heads must be 'retrieval' or 'all', got {self.heads!r}")
        if self.score_tokens not in ("content", "all"):
            raise InputError(f"score_tokens must be 'content' or 'all', got {self.score_tokens!r}")
        if not isinstance(self.refine, int) or self.refine < 0:
            raise InputError(f"refine must be a number of chunks >= 0, got {self.refine!r}")
        if not isinstance(self.calibrate, bool):
            raise InputError(f"calibrate is True or False, got {self.calibrate!r}")
        if not isinstance(self.sparse_stamps, bool):
            raise InputError(f"sparse_stamps is True or False, got {self.sparse_stamps!r}")
        if not isinstance(self.follow, int) or self.follow < 0:
            raise InputError(f"follow must be a number of chunks >= 0, got {self.follow!r}")
        if self.follow_tail is not None and (isinstance(self.follow_tail, bool) or not 0 < self.follow_tail <= 1):
            raise InputError(f"follow_tail is a share of attention in (0, 1] or None, got {self.follow_tail!r}")
        if self.min_relevance is not None and (isinstance(self.min_relevance, bool)
                                               or not 0 < self.min_relevance <= 1):
            raise InputError(f"min_relevance is a fraction of the best chunk's relevance in (0, 1] or None, got "
                             f"{self.min_relevance!r}")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise InputError(f"min_confidence must be in [0, 1] or None, got {self.min_confidence!r}")
        if self.positions not in ("absolute", "contiguous"):
            raise InputError(f"positions must be 'absolute' or 'contiguous', got {self.positions!r}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise InputError("sampling needs temperature >= 0, 0 < top_p <= 1 and top_k >= 0")

    @property
    def selects(self) -> bool:
        return self.topk is not None or self.kv_budget is not None


@dataclass
class Answer:
    """A generated answer, with what decoding used to produce it."""

    text: str
    tokens: list[int]
    chunks: int
    dense_chunks: list[int]
    relevance: list[float | None] | None  # per chunk; None for the always-dense first and last
    kv_bytes_dense: int
    kv_bytes_used: int
    seconds: dict = field(default_factory=dict)
    confidence: float | None = None  # how much the chosen chunks stood out (select.confidence); None: no scoring
    fallback: str | None = None  # why selection was overridden (e.g. "dense: flat relevance ..."), else None
    tail: float | None = None  # with follow_tail: the best chunk's select.tail_share (>= follow_tail: the next came)

    @property
    def kv_ratio(self) -> float:
        return self.kv_bytes_used / self.kv_bytes_dense


class Decoder:
    """Answers questions about one pre-filled video; summaries for chunk scoring are shared across questions."""

    def __init__(self, model: torch.nn.Module, video: PrefilledVideo, tokenizer=None):
        self.model, self.video, self.tokenizer = model, video, tokenizer
        self.rope = Rope.of(model)
        # position-free summaries (the default), and rotated ones for the score_positions ablation
        self.summaries = {False: video.summaries or GroupSummaries(video.store, self.rope),
                          True: GroupSummaries(video.store, Rope.identity())}
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype  # compute; the store may live elsewhere (see KVStore)
        cfg = model.config
        self.scale = (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads) ** -0.5
        self._template_queries: dict[tuple, dict[int, torch.Tensor]] = {}  # per chat template, ranges and forced
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            self.eos.add(tokenizer.eos_token_id)

    # -- the mixed cache ------------------------------------------------------------------------------------------
    def _cache(self, dense_groups: torch.Tensor, positions: str, room: int, layers: int | None = None,
               sparse_stamps: bool = True) -> tuple[DecodeCache, int]:
        """Gather the mixed cache (of the first ``layers`` layers; None: all; sparse groups with their timestamps
        only with ``sparse_stamps``); returns it and the position the next token takes."""
        store = self.video.store
        from_dense, index, pos = store.layout(dense_groups, sparse_stamps)
        keys, values = [], []
        move = None
        if positions == "contiguous":  # one rotation table for every layer
            move = self.rope.table(torch.arange(pos.numel(), dtype=torch.float64) - pos, store.device, store.dtype)
        for layer in range(store.layers if layers is None else layers):
            k, v = store.gather(layer, from_dense, index)
            if move is not None:
                k = self.rope.apply(k, move)
            keys.append(k.to(self.device, self.dtype))
            values.append(v.to(self.device, self.dtype))
        cache = DecodeCache(keys, values, room)
        return cache, (store.length if positions == "absolute" else cache.length)

    def _step(self, cache: DecodeCache, embeds: torch.Tensor, position: int, capture=(), queries_only=False):
        n = embeds.shape[0]
        step = DecodeStep(cache, n, capture, queries_only)
        hidden = run_step(self.model, embeds, torch.arange(position, position + n, device=self.device), step)
        step.finish()
        return hidden, step

    # -- selection --------------------------------------------------------------------------------------------
    def question_queries(self, question: torch.Tensor, ranges: list[tuple[int, int]], forced: list[int],
                         layers: tuple[int, ...], positions: bool = False,
                         sparse_stamps: bool = True) -> dict[int, torch.Tensor]:
        """Per layer, the question's queries (H, Q, D), position-free unless ``positions``: the question is run
        once over a cache where only the ``forced`` chunks are dense (the cheap cache scoring starts from; the
        others sparse, with their timestamps if ``sparse_stamps``), up to the last scoring layer only (the
        retrieval heads of SmolLM2-135M end at layer 20 of 30)."""
        store = self.video.store
        dense_groups = torch.zeros(len(store.groups), dtype=torch.bool)
        for c in forced:
            dense_groups[ranges[c][0]:ranges[c][1]] = True
        cache, position = self._cache(dense_groups, "absolute", question.shape[0], layers=max(layers) + 1,
                                      sparse_stamps=sparse_stamps)
        _, step = self._step(cache, embed(self.model, question), position, capture=layers, queries_only=True)
        q_pos = torch.arange(position, position + question.shape[0], dtype=torch.float64)
        rope = self.summaries[positions].rope
        return {layer: rope.rotate(step.queries[layer], -q_pos) for layer in layers}

    def chunk_scores(self, queries: dict[int, torch.Tensor], scorer: str, ranges: list[tuple[int, int]],
                     chunks: list[int], heads: dict[int, list[int]] | None = None,
                     positions: bool = False) -> dict[int, torch.Tensor]:
        """Per layer, (heads, Q, len(chunks)) scores of the given decoding ``chunks`` by ``scorer`` (select.py), for
        the listed query ``heads`` of each layer (None: all)."""
        store, summaries = self.video.store, self.summaries[positions]
        counts = torch.tensor([s.end - s.visual_start for s in store.groups], dtype=torch.float64)
        subset = None
        if scorer in ("sparse", "dense") and len(chunks) < len(ranges):  # the lse scorers read only these groups
            subset = [g for c in sorted(chunks) for g in range(*ranges[c])]
            local, start = [], 0
            for c in sorted(chunks):
                local.append((start, start + ranges[c][1] - ranges[c][0]))
                start = local[-1][1]
            order = [sorted(chunks).index(c) for c in chunks]
        out = {}
        for layer, q in queries.items():
            per_group, how = score_groups(scorer, q, layer, store, summaries, self.scale,
                                          None if heads is None else heads[layer], subset)
            if subset is None:
                out[layer] = reduce_to_chunks(per_group, how, ranges, counts)[..., chunks]
            else:
                out[layer] = reduce_to_chunks(per_group, how, local, counts[subset])[..., order]
        return out

    def score(self, question: torch.Tensor, config: DecodeConfig, ranges: list[tuple[int, int]],
              forced: list[int]) -> torch.Tensor:
        """Relevance (chunks,) of each decoding chunk to the question, computed by the model (see select.py);
        the always-dense ``forced`` chunks are not scored (NaN)."""
        return self._score(question, config, ranges, forced)[0]

    def _score(self, question: torch.Tensor, config: DecodeConfig, ranges: list[tuple[int, int]],
               forced: list[int]) -> tuple[torch.Tensor, float | None]:
        """:meth:`score`, and with ``config.follow_tail`` the best chunk's :func:`select.tail_share` (else None)."""
        store = self.video.store
        scores = torch.full((len(ranges),), float("nan"))
        candidates = [c for c in range(len(ranges)) if c not in forced]
        if not candidates:
            return scores, None
        heads = None
        if config.heads == "retrieval":
            heads = retrieval_heads(self.model, self.tokenizer).heads or None  # none found: every head
        # re-ranking by exact mass needs heads that retrieve: averaged over every head the mass follows sinks and
        # recency (README: the relevance table's "exact" column), so a model without retrieval heads keeps its bounds
        refine = config.refine if (config.heads == "all" or heads is not None) else 0
        layers = config.score_layers or (tuple(sorted(heads)) if heads else tuple(range(store.layers)))
        if heads is not None:
            heads = {layer: heads.get(layer, []) for layer in layers}
            if not any(heads.values()):  # score_layers without a retrieval head: every head of those layers
                heads = None
            else:
                layers = tuple(layer for layer in layers if heads[layer])
        calibrate = config.calibrate and config.scorer == "bounds" and refine > 0
        content = None  # the question's content tokens, when there are ids to read them from
        if (config.score_tokens == "content" or calibrate) and self.tokenizer is not None \
                and not question.is_floating_point():
            content = content_mask(question, self.tokenizer)
        tokens = content if config.score_tokens == "content" else None
        queries = self.question_queries(question, ranges, forced, layers, config.score_positions,
                                        config.sparse_stamps)
        rel = relevance(self.chunk_scores(queries, config.scorer, ranges, candidates, heads, config.score_positions),
                        tokens)
        if config.scorer == "bounds" and refine and len(candidates) > 1:
            # the best bounds re-ranked by their exact attention mass (position-free): a fixed number of chunks,
            # whatever the video's length; their share of the relevance is kept, its split among them refined
            short = rel.topk(min(refine, len(candidates))).indices.tolist()
            chunks = [candidates[i] for i in short]
            template = None
            if calibrate and content is not None and 0 < int(content.sum()) < question.numel():
                template = self._template_queries_of(question[~content], ranges, forced, layers,
                                                     config.score_positions, config.sparse_stamps)
            # the template's queries ride along with the question's: the chunks' keys are read once
            n = question.shape[0]
            both = queries if template is None else {layer: torch.cat([q, template[layer]], dim=1)
                                                     for layer, q in queries.items()}
            exact_both = self.chunk_scores(both, "dense", ranges, chunks, heads, config.score_positions)
            exact = relevance({layer: s[:, :n] for layer, s in exact_both.items()}, tokens)
            if template is not None:  # calibrated: over the template's own mass on the same chunks
                prior = relevance({layer: s[:, n:] for layer, s in exact_both.items()})
                exact = exact / prior.to(exact).clamp_min(torch.finfo(exact.dtype).tiny)
                exact = exact / exact.sum()
            rel[short] = rel[short].sum() * exact.to(rel)
        scores[candidates] = rel.cpu()
        tail = None
        if config.follow_tail is not None:
            best = candidates[int(rel.argmax())]
            tail = tail_share(queries, store, self.summaries[config.score_positions], self.scale, range(*ranges[best]),
                              heads, tokens)
        return scores, tail

    def _template_queries_of(self, template: torch.Tensor, ranges: list[tuple[int, int]], forced: list[int],
                             layers: tuple[int, ...], positions: bool,
                             sparse_stamps: bool) -> dict[int, torch.Tensor]:
        """:meth:`question_queries` of a question's chat template alone (its tokens that are not content:
        select.content_mask). They do not depend on the question's content, so they are computed once per
        template, layout and forced chunks (a few per video: at most 8 kept)."""
        key = (tuple(template.tolist()), tuple(ranges), tuple(forced), layers, positions, sparse_stamps)
        queries = self._template_queries.get(key)
        if queries is None:
            if len(self._template_queries) >= 8:
                self._template_queries.pop(next(iter(self._template_queries)))
            queries = self._template_queries[key] = self.question_queries(template, ranges, forced, layers, positions,
                                                                          sparse_stamps)
        return queries

    def select(self, question: torch.Tensor, config: DecodeConfig, chunk_scores: Sequence[float] | None = None):
        """(ranges, dense chunk indices, relevance or None) for a question (after any fallback to dense)."""
        return self._select(question, config, chunk_scores)[:3]

    def _select(self, question: torch.Tensor, config: DecodeConfig, chunk_scores: Sequence[float] | None = None):
        """:meth:`select`, then the confidence (None without model scores), the fallback note (None) and the best
        chunk's tail share (None without ``follow_tail``)."""
        store = self.video.store
        ranges = chunk_ranges(len(store.groups), config.chunk or self.video.config.chunk)
        n = len(ranges)
        if chunk_scores is not None:
            if not config.selects:
                raise InputError("chunk_scores need topk or kv_budget to say how many chunks to reload dense")
            scores = _external_scores(chunk_scores, n)
        elif not config.selects:
            return ranges, list(range(n)), None, None, None, None
        forced = sorted({0, n - 1})
        follow, tail = config.follow, None
        if chunk_scores is None:
            scores, tail = self._score(question, config, ranges, forced)
            if tail is not None and tail >= config.follow_tail:
                follow = max(follow, 1)
        dense_tok = [sum(store.groups[g].end - store.groups[g].start for g in range(s, e)) for s, e in ranges]
        sparse_tok = [sum(store.groups[g].sparse_end - store.sparse_first(store.groups[g], config.sparse_stamps)
                          for g in range(s, e)) for s, e in ranges]
        budget = None if config.kv_budget is None else int(config.kv_budget * store.length) - store.prefix_length
        candidates = [c for c in range(n) if c not in forced]
        dense = choose_dense(scores, candidates, forced, config.topk, budget, dense_tok, sparse_tok, follow,
                             config.min_relevance if chunk_scores is None else None)
        sure, note = None, None
        if candidates and chunk_scores is None:
            chosen = [i for i, c in enumerate(candidates) if c in dense]
            sure = confidence(scores[candidates], chosen)
            if config.min_confidence is not None and sure < config.min_confidence:
                dense = list(range(n))
                note = f"dense: flat relevance (confidence {sure:.2f} < {config.min_confidence:.2f})"
        return ranges, dense, scores, sure, note, tail

    # -- answering --------------------------------------------------------------------------------------------
    def answer(self, question: torch.Tensor, config: DecodeConfig = DecodeConfig(),
               chunk_scores: Sequence[float] | None = None,
               on_text: Callable[[str], None] | None = None) -> Answer:
        """Answer ``question`` (token ids, or embeddings) about the video; ``on_text`` streams text pieces."""
        store = self.video.store
        t0 = time.perf_counter()
        ranges, dense, scores, sure, note, tail = self._select(question, config, chunk_scores)
        t1 = time.perf_counter()
        dense_groups = torch.zeros(len(store.groups), dtype=torch.bool)
        for c in dense:
            dense_groups[ranges[c][0]:ranges[c][1]] = True
        cache, position = self._cache(dense_groups, config.positions, question.shape[0] + config.max_new_tokens,
                                      sparse_stamps=config.sparse_stamps)
        used_bytes = cache.nbytes
        hidden, _ = self._step(cache, embed(self.model, question), position)
        position += question.shape[0]
        t2 = time.perf_counter()

        lm_head = self.model.get_output_embeddings()
        generator = None
        if config.temperature > 0:
            generator = torch.Generator(device=lm_head.weight.device)  # where the logits are
            generator.manual_seed(config.seed if config.seed is not None else torch.seed())
        text = _TextStream(self.tokenizer, config.stop, on_text)
        tokens: list[int] = []
        for i in range(config.max_new_tokens):
            with torch.inference_mode():
                logits = lm_head(hidden[-1:]).float()[0]
            token = _sample(logits, config, generator)
            if token in self.eos:
                break
            tokens.append(token)
            if text.push(tokens):
                break
            if i + 1 < config.max_new_tokens:
                hidden, _ = self._step(cache, embed(self.model, torch.tensor([token])), position)
                position += 1
        text.flush()
        t3 = time.perf_counter()
        return Answer(text.text, tokens, len(ranges), dense,
                      None if scores is None else [None if x != x else x for x in scores.tolist()],
                      store.dense_bytes, used_bytes,
                      {"select": t1 - t0, "question": t2 - t1, "generate": t3 - t2}, sure, note, tail)


def _external_scores(chunk_scores, n: int) -> torch.Tensor:
    """Caller-given relevance (a list, a NumPy array or a tensor on any device) -> (n,) float32 on the CPU."""
    try:
        scores = torch.as_tensor(chunk_scores).detach().to("cpu", torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"chunk_scores must be a sequence of {n} numbers, one per decoding chunk ({e})") from None
    if scores.dim() != 1 or scores.numel() != n:
        raise InputError(f"chunk_scores has shape {tuple(scores.shape)}, but the video has {n} decoding chunks: "
                         f"give {n} numbers")
    if not torch.isfinite(scores).all():
        raise InputError("chunk_scores must be finite numbers (no NaN or infinity)")
    return scores


def _sample(logits: torch.Tensor, config: DecodeConfig, generator) -> int:
    if config.temperature == 0:
        return int(logits.argmax())
    logits = logits / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    probs = torch.softmax(logits, -1)
    if config.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < config.top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class _TextStream:
    """Incremental detokenization with stop strings; text that may start a stop string is held back."""

    def __init__(self, tokenizer, stop: tuple[str, ...], on_text):
        if stop and tokenizer is None:
            raise InputError("stop strings need a tokenizer")
        self.tokenizer, self.stop, self.on_text = tokenizer, stop, on_text
        self.text, self.sent = "", 0

    def push(self, tokens: list[int]) -> bool:
        """Take the tokens so far; True when a stop string ended the answer."""
        if self.tokenizer is None:
            return False
        self.text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        hits = [self.text.find(s) for s in self.stop if s in self.text]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        if self.text.endswith("\ufffd"):  # an incomplete multi-byte character
            hold = max(hold, 1)
        self._emit(len(self.text) - hold)
        return False

    def _emit(self, upto: int) -> None:
        if self.on_text is not None and upto > self.sent:
            self.on_text(self.text[self.sent: upto])
        self.sent = max(self.sent, upto)

    def flush(self) -> None:
        self._emit(len(self.text))
