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

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch

from ..decoding import Generation, Selection
from ..errors import InputError
from .attention import DecodeCache, DecodeStep, run_step
from .generate import StaticStep, compile_step, compiled_graphs
from .layout import embed
from .prefill import PrefilledVideo
from .rope import Rope
from .select import (SCORERS, choose_dense, chunk_ranges, confidence, content_mask, reduce_to_chunks, relevance,
                     score_groups, tail_share)
from .summaries import GroupSummaries


@dataclass(frozen=True)
class Ablation:
    """How relevance is scored and positions laid out: the default scorer's parts and their alternatives, for the
    ablations of ``benchmarks/relevance.py`` and ``benchmarks/engine.py`` only (not a user option; select.py).

    ``scorer`` over the ``heads`` ("retrieval", or every head for a model without any; "all") and the question's
    ``score_tokens`` ("content": without the chat template); with "bounds", the ``refine`` best chunks are re-ranked
    by their exact position-free mass (0: not), divided by the chat template's own mass to the power
    ``template_prior`` (1: the full contextual calibration; 0.5 ranks them as PMI², p(c | q)² / p(c | template); 0:
    off).
    ``follow`` best chunks each bring the next; ``follow_tail``: the best one does when that share of its attention
    sits on its last sixteenth (None: never). ``min_relevance``: reload only chunks at least that fraction as
    relevant as the best. ``score_layers`` and ``score_positions`` (keep RoPE) change what is scored;
    ``positions`` is the decoding cache's position layout.
    """

    scorer: str = "bounds"
    heads: Literal["retrieval", "all"] = "retrieval"
    score_tokens: Literal["content", "all"] = "all"
    refine: int = 32
    template_prior: float = 0.75  # the prior's exponent; 1 loses a needle the prompt announced (docs/calibration.md)
    follow: int = 0
    follow_tail: float | None = 0.25
    min_relevance: float | None = None
    score_layers: tuple[int, ...] | None = None
    score_positions: bool = False
    positions: Literal["absolute", "contiguous"] = "contiguous"

    def __post_init__(self):
        assert self.scorer in SCORERS and self.heads in ("retrieval", "all") and self.refine >= 0
        assert self.score_tokens in ("content", "all") and self.positions in ("absolute", "contiguous")
        assert 0 <= self.template_prior <= 1, self.template_prior
        for share in (self.follow_tail, self.min_relevance):
            assert share is None or (not isinstance(share, bool) and 0 < share <= 1), share


DEFAULT = Ablation()


def configure(**options) -> dict:
    """Keyword arguments for :meth:`Decoder.answer` from option names of :class:`Selection`, :class:`Generation`
    and :class:`Ablation` mixed (benchmarks and tests); the rest keep their defaults."""
    parts = {"selection": Selection, "generation": Generation, "ablation": Ablation}
    out = {}
    for name, cls in parts.items():
        names = {f.name for f in dataclasses.fields(cls)}
        out[name] = cls(**{k: v for k, v in options.items() if k in names})
    unknown = set(options) - {f.name for cls in parts.values() for f in dataclasses.fields(cls)}
    assert not unknown, f"unknown decoding options {sorted(unknown)}"
    return out


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
    tail: float | None = None  # the best chunk's select.tail_share (at least follow_tail: the next came too)
    finish_reason: str = "stop"  # "length" when max_new_tokens ended it

    @property
    def kv_ratio(self) -> float:
        return self.kv_bytes_used / self.kv_bytes_dense

    def to_dict(self) -> dict:
        """The answer and its decoding, as ``--json`` and the server's ``videoxl`` field report them."""
        return {"answer": self.text.strip(), "chunks": self.chunks, "dense_chunks": len(self.dense_chunks),
                "dense_chunk_indices": self.dense_chunks, "kv_bytes_dense": self.kv_bytes_dense,
                "kv_bytes_used": self.kv_bytes_used,
                "confidence": None if self.confidence is None else round(self.confidence, 4),
                "fallback": self.fallback, "tail_share": None if self.tail is None else round(self.tail, 4),
                "finish_reason": self.finish_reason}


@dataclass
class Choice:
    """What selection decided for one question."""

    ranges: list[tuple[int, int]]  # decoding chunks as group ranges [start, end)
    dense: list[int]  # the chunks reloaded dense (after any fallback)
    relevance: list[float] | None = None  # per chunk, NaN for the forced ones; None without scoring
    confidence: float | None = None
    fallback: str | None = None
    tail: float | None = None


class Decoder:
    """Answers questions about one pre-filled video; summaries for chunk scoring are shared across questions."""

    def __init__(self, model: torch.nn.Module, video: PrefilledVideo, tokenizer=None,
                 heads: Callable[[], dict[int, list[int]]] | dict[int, list[int]] | None = None,
                 compile: bool | None = None):
        """``heads``: the model's retrieval heads per layer (heads.py), or a function that finds them on first use;
        None or empty: every head scores. ``compile``: greedy tokens come from the fixed-shape step compiled
        (engine/generate.py); None: off, until a GPU run shows it pays there (on a CPU inductor compiles for
        minutes; docs/host.md)."""
        self.model, self.video, self.tokenizer = model, video, tokenizer
        self._heads = heads
        self.rope = Rope.of(model)
        # position-free summaries (the default), and rotated ones for the score_positions ablation
        self.summaries = {False: video.summaries or GroupSummaries(video.store, self.rope),
                          True: GroupSummaries(video.store, Rope.identity())}
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype  # compute; the store may live elsewhere (see KVStore)
        self.compile = bool(compile)
        cfg = model.config
        self.scale = (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads) ** -0.5
        self._template_queries: dict[tuple, dict[int, torch.Tensor]] = {}  # per chat template, ranges and forced
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            self.eos.add(tokenizer.eos_token_id)

    # -- the mixed cache ------------------------------------------------------------------------------------------
    def _cache(self, dense_groups: list[bool], positions: str, room: int, layers: int | None = None,
               sparse_stamps: bool = True, first: int = 0) -> tuple[DecodeCache, int]:
        """Gather the mixed cache (of the first ``layers`` layers; None: all; sparse groups with their timestamps
        only with ``sparse_stamps``; groups before ``first`` left out); returns it and the position the next token
        takes."""
        store = self.video.store
        from_dense, index, pos = store.layout(dense_groups, sparse_stamps, first)
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
        others sparse, with their timestamps if ``sparse_stamps``; groups before the first range left out), up to
        the last scoring layer only (the retrieval heads of SmolLM2-135M end at layer 20 of 30)."""
        store = self.video.store
        cache, position = self._cache(_dense_flags(len(store.groups), ranges, forced), "absolute", question.shape[0],
                                      layers=max(layers) + 1, sparse_stamps=sparse_stamps, first=ranges[0][0])
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
            if subset is None:  # the groups from the first range on
                first = ranges[0][0]
                out[layer] = reduce_to_chunks(per_group[..., first:], how, [(s - first, e - first) for s, e in ranges],
                                              counts[first:])[..., chunks]
            else:
                out[layer] = reduce_to_chunks(per_group, how, local, counts[subset])[..., order]
        return out

    @staticmethod
    def followed_tail(answer: Answer, ablation: Ablation = DEFAULT) -> bool:
        """Whether the best chunk's tail share brought the chunk after it."""
        return answer.tail is not None and ablation.follow_tail is not None and answer.tail >= ablation.follow_tail

    def retrieval_heads(self) -> dict[int, list[int]] | None:
        """The retrieval heads per layer, found on first use; None: score with every head."""
        if callable(self._heads):
            self._heads = self._heads()
        return self._heads or None

    def score(self, question: torch.Tensor, ranges: list[tuple[int, int]], forced: list[int],
              sparse_stamps: bool = False, ablation: Ablation = DEFAULT) -> torch.Tensor:
        """Relevance (chunks,) of each decoding chunk to the question, computed by the model (see select.py);
        the always-dense ``forced`` chunks are not scored (NaN). The question runs over a cache where the other
        chunks are sparse (with their timestamps if ``sparse_stamps``)."""
        return torch.tensor(self._score(question, ranges, forced, sparse_stamps, ablation)[0])

    def _score(self, question: torch.Tensor, ranges: list[tuple[int, int]], forced: list[int], sparse_stamps: bool,
               ablation: Ablation) -> tuple[list[float], float | None]:
        """:meth:`score` as floats on the host, and with ``follow_tail`` the best chunk's :func:`select.tail_share`
        (else None). The host reads the device three times at most: the re-ranked chunks, the relevance, the tail
        share (tests/test_host_sync.py)."""
        config = ablation
        store = self.video.store
        scores = [float("nan")] * len(ranges)
        candidates = [c for c in range(len(ranges)) if c not in forced]
        if not candidates:
            return scores, None
        heads = self.retrieval_heads() if config.heads == "retrieval" else None
        # re-ranking by exact mass needs heads that retrieve: averaged over every head the mass follows sinks and
        # recency (docs/relevance.md: the "exact" column), so a model without retrieval heads keeps its bounds
        refine = config.refine if (config.heads == "all" or heads is not None) else 0
        layers = config.score_layers or (tuple(sorted(heads)) if heads else tuple(range(store.layers)))
        if heads is not None:
            heads = {layer: heads.get(layer, []) for layer in layers}
            if not any(heads.values()):  # score_layers without a retrieval head: every head of those layers
                heads = None
            else:
                layers = tuple(layer for layer in layers if heads[layer])
        prior = config.template_prior and config.scorer == "bounds" and refine > 0
        content = None  # the question's content tokens, when there are ids to read them from
        if (config.score_tokens == "content" or prior) and self.tokenizer is not None \
                and not question.is_floating_point():
            content = content_mask(question, self.tokenizer)
        tokens = content if config.score_tokens == "content" else None
        queries = self.question_queries(question, ranges, forced, layers, config.score_positions, sparse_stamps)
        rel = relevance(self.chunk_scores(queries, config.scorer, ranges, candidates, heads, config.score_positions),
                        tokens)
        if config.scorer == "bounds" and refine and len(candidates) > 1:
            # the best bounds re-ranked by their exact attention mass (position-free): a fixed number of chunks,
            # whatever the video's length; their share of the relevance is kept, its split among them refined
            short = rel.topk(min(refine, len(candidates))).indices.tolist()
            chunks = [candidates[i] for i in short]
            template = None
            if prior and content is not None and 0 < int(content.sum()) < question.numel():
                template = self._template_queries_of(question[~content], ranges, forced, layers,
                                                     config.score_positions, sparse_stamps)
            # the template's queries ride along with the question's: the chunks' keys are read once
            n = question.shape[0]
            both = queries if template is None else {layer: torch.cat([q, template[layer]], dim=1)
                                                     for layer, q in queries.items()}
            exact_both = self.chunk_scores(both, "dense", ranges, chunks, heads, config.score_positions)
            exact = relevance({layer: s[:, :n] for layer, s in exact_both.items()}, tokens)
            if template is not None:  # over the template's own mass on the same chunks (the prior)
                prior = relevance({layer: s[:, n:] for layer, s in exact_both.items()})
                exact = exact / prior.to(exact).clamp_min(torch.finfo(exact.dtype).tiny) ** config.template_prior
                exact = exact / exact.sum()
            rel[short] = rel[short].sum() * exact.to(rel)
        values = rel.tolist()  # the one read of the relevance
        for c, x in zip(candidates, values):
            scores[c] = x
        tail = None
        if config.follow_tail is not None:
            best = candidates[max(range(len(values)), key=values.__getitem__)]  # the first best, as argmax
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

    def select(self, question: torch.Tensor, selection: Selection = Selection(),
               chunk_scores: Sequence[float] | None = None, ablation: Ablation = DEFAULT,
               first_group: int = 0) -> Choice:
        """The decoding chunks, which are reloaded dense, and why, for a question (after any fallback to dense);
        the chunks start at ``first_group`` (the groups before it are left out of the answer)."""
        store = self.video.store
        assert 0 <= first_group < len(store.groups), first_group
        ranges = [(s + first_group, e + first_group)
                  for s, e in chunk_ranges(len(store.groups) - first_group, selection.chunk or self.video.config.chunk)]
        n = len(ranges)
        if chunk_scores is not None:
            if not selection.selects:
                raise InputError("chunk_scores need topk or kv_budget to say how many chunks to reload dense")
            scores = _external_scores(chunk_scores, n).tolist()
        elif not selection.selects:
            return Choice(ranges, list(range(n)))
        forced = sorted({0, n - 1})
        follow, tail = ablation.follow, None
        if chunk_scores is None:
            scores, tail = self._score(question, ranges, forced, selection.sparse_stamps, ablation)
            if tail is not None and tail >= ablation.follow_tail:
                follow = max(follow, 1)
        dense_tok = [sum(store.groups[g].end - store.groups[g].start for g in range(s, e)) for s, e in ranges]
        sparse_tok = [sum(store.groups[g].sparse_end - store.sparse_first(store.groups[g], selection.sparse_stamps)
                          for g in range(s, e)) for s, e in ranges]
        budget = None if selection.kv_budget is None else \
            int(selection.kv_budget * self._dense_tokens(first_group)) - store.prefix_length
        candidates = [c for c in range(n) if c not in forced]
        dense = choose_dense(scores, candidates, forced, selection.limit, budget, dense_tok, sparse_tok, follow,
                             ablation.min_relevance if chunk_scores is None else None)
        choice = Choice(ranges, dense, scores, tail=tail)
        if candidates and chunk_scores is None:
            chosen = [i for i, c in enumerate(candidates) if c in dense]
            choice.confidence = confidence([scores[c] for c in candidates], chosen)
            if selection.min_confidence is not None and choice.confidence < selection.min_confidence:
                choice.dense = list(range(n))
                choice.fallback = (f"dense: flat relevance (confidence {choice.confidence:.2f} < "
                                   f"{selection.min_confidence:.2f})")
        return choice

    # -- answering --------------------------------------------------------------------------------------------
    def answer(self, question: torch.Tensor, selection: Selection = Selection(), generation: Generation = Generation(),
               *, chunk_scores: Sequence[float] | None = None, on_text: Callable[[str], None] | None = None,
               ablation: Ablation = DEFAULT, first_group: int = 0) -> Answer:
        """Answer ``question`` (token ids, or embeddings) about the video, or about its groups from ``first_group``
        on (the earlier ones are left out of its cache); ``on_text`` streams text pieces."""
        store = self.video.store
        t0 = time.perf_counter()
        choice = self.select(question, selection, chunk_scores, ablation, first_group)
        t1 = time.perf_counter()
        cache, position = self._cache(_dense_flags(len(store.groups), choice.ranges, choice.dense), ablation.positions,
                                      question.shape[0] + generation.max_new_tokens,
                                      sparse_stamps=selection.sparse_stamps, first=first_group)
        used_bytes = cache.nbytes
        hidden, _ = self._step(cache, embed(self.model, question), position)
        position += question.shape[0]
        t2 = time.perf_counter()
        seconds = {}
        tokens, text = self._generate(cache, hidden, position, generation, on_text, seconds)
        t3 = time.perf_counter()
        scores = choice.relevance
        return Answer(text, tokens, len(choice.ranges), choice.dense,
                      None if scores is None else [None if x != x else x for x in scores],
                      self._dense_tokens(first_group) * store.bytes_per_token, used_bytes,
                      {"select": t1 - t0, "question": t2 - t1, "generate": t3 - t2, **seconds}, choice.confidence,
                      choice.fallback, choice.tail,
                      "length" if len(tokens) >= generation.max_new_tokens else "stop")

    def _dense_tokens(self, first_group: int) -> int:
        """Tokens of the whole dense cache of the groups from ``first_group`` on (the prefix included)."""
        store = self.video.store
        return store.length - (store.groups[first_group].start - store.groups[0].start)

    def _generate(self, cache: DecodeCache, hidden: torch.Tensor, position: int, generation: Generation,
                  on_text: Callable[[str], None] | None, seconds: dict) -> tuple[list[int], str]:
        """Tokens after the question's last hidden state, until EOS, a stop string or the token limit. Greedy
        tokens after the first come from the compiled fixed-shape step when :attr:`compile` is on (its compilation
        time, when it compiled, goes to ``seconds["compile"]``); each token is read on the host once."""
        lm_head = self.model.get_output_embeddings()
        generator = None
        if generation.temperature > 0:
            generator = torch.Generator(device=lm_head.weight.device)  # where the logits are
            generator.manual_seed(generation.seed if generation.seed is not None else torch.seed())
        text = _TextStream(self.tokenizer, generation.stop, on_text)
        tokens: list[int] = []
        fixed = _FixedSteps(self.model, cache, position, seconds) if self.compile and generation.temperature == 0 \
            else None
        for i in range(generation.max_new_tokens):
            if fixed is not None and fixed.next is not None:
                token = int(fixed.next)  # the stop check's read
            else:
                with torch.inference_mode():
                    logits = lm_head(hidden[-1:]).float()[0]
                token = _sample(logits, generation, generator)
            if token in self.eos:
                break
            tokens.append(token)
            if text.push(tokens):
                break
            if i + 1 < generation.max_new_tokens:
                if fixed is not None:
                    fixed.step(token)
                else:
                    hidden, _ = self._step(cache, embed(self.model, torch.tensor([token])), position)
                    position += 1
        text.flush()
        return tokens, text.text


class _FixedSteps:
    """Greedy tokens from :class:`~videoxl.engine.generate.StaticStep` compiled, over a question's cache: the
    token stays on the device from one step to the next."""

    def __init__(self, model: torch.nn.Module, cache: DecodeCache, position: int, seconds: dict):
        self.cache, self.seconds = cache, seconds
        self.run = compile_step(StaticStep(model, cache))
        device = cache.k[0].device
        self.at = torch.tensor([cache.length], device=device)
        self.position = torch.tensor([position], device=device)
        self.next: torch.Tensor | None = None

    def step(self, token: int) -> None:
        current = self.next if self.next is not None else torch.tensor([token], device=self.at.device)
        graphs = compiled_graphs()
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.next = self.run(current, self.at, self.position)
            self.at += 1
            self.position += 1
        if compiled_graphs() != graphs:  # this step compiled (a new model or cache shape): report what it cost
            self.seconds["compile"] = self.seconds.get("compile", 0.0) + time.perf_counter() - t0
        self.cache.length += 1


def _dense_flags(groups: int, ranges: list[tuple[int, int]], chunks: Sequence[int]) -> list[bool]:
    """One flag per group: True for the groups of the given decoding ``chunks`` (group ranges)."""
    flags = [False] * groups
    for c in chunks:
        start, end = ranges[c]
        flags[start:end] = [True] * (end - start)
    return flags


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


def _sample(logits: torch.Tensor, config: Generation, generator) -> int:
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
