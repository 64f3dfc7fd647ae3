"""Chunk-based pre-filling that really streams.

Groups arrive one by one (a video is decoded and encoded while earlier chunks are pre-filled). Every ``chunk``
groups form a chunk, pre-filled by one forward of the LLM over just that chunk's tokens. A chunk's tokens attend to
the prefix, causally to the chunk itself, to every token of the previous ``window`` chunks and to the timestamp
tokens of all earlier chunks; nothing else is computed, so attention memory is (chunk tokens x keys it attends to)
and total attention work grows linearly with the video once the timestamp memory is small next to the window.

No step builds a mask. What a chunk sees before it is one key buffer: the window (a slice of the KV store) and the
*anchors* (the store rows of the prefix, then of the timestamps of the chunks that left the window), gathered from
the store once per layer slice; then its own tokens (a causal square). Each is one mask-free fused-attention call,
merged exactly by log-sum-exp (attention.py). Indices are built once per chunk, on the host, and moved once.

Timestamp tokens come in two variants (VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/w_chunk``, and the streaming variant of the
Hugging Face release):

* ``"global"`` (default; the published evaluation, behind the published scores): a timestamp token attends to
  every token before it. Cheap: timestamp tokens are a few percent of the sequence.
* ``"chunk"`` (the published streaming mode): a timestamp token sees what its chunk sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal

import torch

from .. import defaults
from ..errors import InputError
from .accounting import attention_flops, causal_pairs, linear_flops_per_token
from .attention import Anchors, PrefillStep, run_step
from .layout import Group, embed, embed_all
from .rope import Rope
from .summaries import GroupSummaries
from .store import KVStore

SUPPORTED_FAMILIES = ("llama", "qwen2")
FORWARD_TOKENS = 8192  # a forward takes several chunks only while they stay within this many tokens
CPU_FORWARD_BYTES = 24 << 20  # on a CPU, a forward's activations (MLP and attention) stay within this many bytes


@dataclass(frozen=True)
class PrefillConfig:
    """How a sequence is pre-filled: chunk size in groups, window in chunks, timestamp semantics, sparse pooling.

    ``window=None`` lets every chunk see all earlier chunks (full causal attention). ``window=0`` means "own chunk
    only" (plus prefix and earlier timestamps); it never silently means "everything".

    ``per_forward`` is how many consecutive chunks one forward of the LLM pre-fills (the same attention pattern,
    fewer and larger matrix products): at most ``window + 1``, so a chunk sees the earlier chunks of its forward in
    full; None (the default) takes that many, up to 8 chunks and :func:`forward_tokens` tokens (a memory budget
    on a CPU).
    """

    chunk: int = defaults.CHUNK
    window: int | None = defaults.WINDOW
    timestamps: Literal["global", "chunk"] = "global"
    pool: int = 4
    per_forward: int | None = None

    def __post_init__(self):
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise InputError(f"chunk must be a positive number of groups, got {self.chunk!r}")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 0):
            raise InputError(f"window must be a number of chunks >= 0 or None (all), got {self.window!r}")
        if self.timestamps not in ("global", "chunk"):
            raise InputError(f"timestamps must be 'global' or 'chunk', got {self.timestamps!r}")
        if not isinstance(self.pool, int) or self.pool < 1:
            raise InputError(f"pool must be a positive integer, got {self.pool!r}")
        if self.per_forward is not None:
            most = None if self.window is None else self.window + 1
            if not isinstance(self.per_forward, int) or self.per_forward < 1 or (most and self.per_forward > most):
                raise InputError(f"per_forward must be a number of chunks from 1 to window + 1"
                                 f"{'' if most is None else f' ({most})'}, got {self.per_forward!r}")

    @property
    def chunks_per_forward(self) -> int:
        if self.per_forward is not None:
            return self.per_forward
        return min(8, 8 if self.window is None else self.window + 1)


def forward_tokens(model: torch.nn.Module, config: PrefillConfig) -> int:
    """The most tokens one pre-fill forward takes: :data:`FORWARD_TOKENS`, and unless ``config.per_forward`` is
    given, on a CPU as many as keep the forward's activations (about 3 x intermediate + 6 x hidden values per token)
    within :data:`CPU_FORWARD_BYTES`: there the KV store and the activations share host memory, and a bigger forward
    raises the peak that streaming bounds (docs/performance.md). On a GPU, speed decides: a forward of several
    chunks amortizes its launches."""
    param = next(model.parameters())
    if param.device.type == "cuda" or config.per_forward is not None:
        return FORWARD_TOKENS
    cfg = model.config
    per_token = (3 * cfg.intermediate_size + 6 * cfg.hidden_size) * param.element_size()
    return max(1, min(FORWARD_TOKENS, CPU_FORWARD_BYTES // per_token))


@dataclass
class PrefillStats:
    """What a pre-fill cost, next to what dense one-shot pre-fill of the same tokens costs."""

    tokens: int = 0
    groups: int = 0
    chunks: int = 0
    forwards: int = 0  # forwards of the LLM, the prefix's included
    pairs: int = 0
    seconds: float = 0.0
    config: object = field(default=None, repr=False)

    @property
    def dense_pairs(self) -> int:
        return causal_pairs(self.tokens)

    @property
    def attn_flops(self) -> int:
        return attention_flops(self.pairs, self.config)

    @property
    def dense_attn_flops(self) -> int:
        return attention_flops(self.dense_pairs, self.config)

    @property
    def total_flops(self) -> int:
        return self.attn_flops + linear_flops_per_token(self.config) * self.tokens

    @property
    def dense_total_flops(self) -> int:
        return self.dense_attn_flops + linear_flops_per_token(self.config) * self.tokens

    def as_dict(self) -> dict:
        return {
            "tokens": self.tokens, "groups": self.groups, "chunks": self.chunks, "seconds": self.seconds,
            "attn_flops": self.attn_flops, "dense_attn_flops": self.dense_attn_flops,
            "total_flops": self.total_flops, "dense_total_flops": self.dense_total_flops,
        }


@dataclass
class PrefilledVideo:
    """The result of pre-filling: the KV store plus what decoding needs to know about the sequence."""

    store: KVStore
    config: PrefillConfig
    stats: PrefillStats
    hidden: list[torch.Tensor] | None = None  # per step final hidden states, if asked for
    summaries: GroupSummaries | None = None  # position-free key summaries for chunk scoring, built during pre-fill
    anchors: Anchors | None = None  # what every later chunk sees (the prefix, then the timestamps), while pre-filling

    def forget(self, groups: int) -> None:
        """Forget the first ``groups`` groups for good, between chunks of a live pre-fill (a store that can:
        :meth:`videoxl.live.horizon.HorizonStore.forget`): their sparse KVs, page summaries and timestamp anchors
        are dropped; later chunks no longer see those timestamps, and no question can reach those groups."""
        store = self.store
        done = store.forgotten_groups
        if groups <= done:
            return
        stamps = sum(g.visual_start - g.start for g in store.groups[done:groups])
        store.forget(groups)
        if self.summaries is not None:
            self.summaries.forget(groups)
        if self.anchors is not None:
            self.anchors.drop(store.prefix_length, stamps)  # held anchors: the prefix, then the kept stamps

    @property
    def num_groups(self) -> int:
        return len(self.store.groups)


def check_model(model: torch.nn.Module) -> None:
    """Raise InputError unless ``model`` is a decoder-only causal LM of a family the engine drives."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise InputError(f"unsupported model family {family!r}: the engine drives {', '.join(SUPPORTED_FAMILIES)} "
                         "causal LMs")
    if getattr(config, "use_sliding_window", False):
        raise InputError("models with sliding-window attention layers are not supported")
    if not hasattr(model, "model") or not hasattr(model.model, "rotary_emb"):
        raise InputError(f"{type(model).__name__} is not a causal LM with a decoder stack (.model.rotary_emb)")


def _chunks(groups: Iterable[Group], size: int) -> Iterator[list[Group]]:
    batch: list[Group] = []
    for group in groups:
        batch.append(group)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _forwards(chunks: Iterator[list[Group]], most: int, limit: int) -> Iterator[list[list[Group]]]:
    """Consecutive chunks taken together, up to ``most`` of them and ``limit`` tokens (a chunk larger than that goes
    alone)."""
    batch: list[list[Group]] = []
    tokens = 0
    for chunk in chunks:
        size = sum(len(g) for g in chunk)
        if batch and tokens + size > limit:
            yield batch
            batch, tokens = [], 0
        batch.append(chunk)
        tokens += size
        if len(batch) == most:  # full: pre-fill it now rather than wait for the next chunk to arrive
            yield batch
            batch, tokens = [], 0
    if batch:
        yield batch


def _prefill_prefix(model, embeds: torch.Tensor, store: KVStore, anchors: Anchors, stats: PrefillStats,
                    hidden: list[torch.Tensor] | None, expected_tokens: int) -> None:
    """Pre-fill the prompt prefix (causal; every prefix token becomes an anchor every later chunk sees)."""
    n_prefix = embeds.shape[0]
    store.reserve(max(expected_tokens, n_prefix))
    if n_prefix:
        step = PrefillStep(store, anchors, n_prefix, [(0, n_prefix, 0, 0)], [], list(range(n_prefix)))
        out = run_step(model, embeds, torch.arange(n_prefix, device=embeds.device), step)
        store.commit(n_prefix)
        step.finish()
        stats.pairs += step.pairs
        stats.forwards += 1
        if hidden is not None:
            hidden.append(out)
    store.prefix_length = n_prefix


def _lay_out(model, chunks: list[list[Group]], config: PrefillConfig, stats: PrefillStats, start: int,
             chunk_starts: list[int], anchors_after: list[int], dropped: int = 0):
    """One forward's inputs: (embeddings, timestamp mask, per-chunk segments (first row, end row, window start,
    anchors seen), timestamp rows, timestamp tokens per chunk), all counted on the host (no tensor is read back).
    ``anchors_after`` counts anchor rows written; ``dropped`` of them are gone (a forgotten history's)."""
    parts, is_ts, segments = [], [], []
    ts_rows: list[int] = []
    ts_per_chunk: list[int] = []
    rows = 0  # the forward's tokens before this chunk
    for i, batch in enumerate(chunks):
        row = rows
        for g, group in enumerate(batch):
            n_ts, n_vis = group.timestamp.shape[0], group.visual.shape[0]
            if n_vis == 0:
                raise InputError(f"group {stats.groups + sum(map(len, chunks[:i])) + g} has no visual tokens")
            ts_rows.extend(range(row, row + n_ts))
            row += n_ts + n_vis
            parts += [group.timestamp, group.visual]
            is_ts += [True] * n_ts + [False] * n_vis
        # chunks [first_visible, j) are seen in full: those before this forward as one contiguous range of the
        # store, those in it through the forward's own causal square; earlier ones through the anchors
        j = stats.chunks + i
        first_visible = 0 if config.window is None else max(0, j - config.window)
        if first_visible == 0:
            window_start, anchor_len = 0, 0  # nothing evicted yet: the whole history is one range
        else:
            window_start = chunk_starts[first_visible] if first_visible < stats.chunks else start
            anchor_len = anchors_after[first_visible - 1] - dropped
        n_chunk = sum(len(group) for group in batch)
        segments.append((rows, rows + n_chunk, window_start, anchor_len))
        ts_per_chunk.append(sum(group.timestamp.shape[0] for group in batch))
        rows += n_chunk
    return embed_all(model, parts), torch.tensor(is_ts), segments, ts_rows, ts_per_chunk


def _spans(chunks: list[list[Group]], segments, ts_per_chunk: list[int], start: int, n_ts: int, anchors: int,
           chunk_starts: list[int], anchors_after: list[int]) -> list[tuple[int, int, int]]:
    """The forward's groups as (first token, timestamp tokens, end) in the store; records where each chunk starts
    and how many anchor rows exist after it."""
    spans, offset, ts_seen = [], start, 0
    for batch, (r0, _, _, _), ts in zip(chunks, segments, ts_per_chunk):
        for group in batch:
            spans.append((offset, group.timestamp.shape[0], offset + len(group)))
            offset += len(group)
        chunk_starts.append(start + r0)
        ts_seen += ts
        anchors_after.append(anchors - n_ts + ts_seen)
    return spans


def new_store(model: torch.nn.Module, config: PrefillConfig) -> KVStore:
    """An empty :class:`KVStore` shaped for ``model``'s layers and KV heads, on its device and in its dtype."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    param = next(model.parameters())
    return KVStore(cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim, param.dtype, param.device,
                   pool=config.pool)


def _forward(model, store: KVStore, anchors: Anchors, embeds: torch.Tensor, is_ts: torch.Tensor, segments,
             ts_rows: list[int], timestamps: str) -> tuple[torch.Tensor, int]:
    """Run one forward of chunks at the end of ``store`` and commit its KVs: (hidden states, attended pairs)."""
    start, n = store.length, embeds.shape[0]
    store.reserve(start + n)
    step = PrefillStep(store, anchors, n, segments, ts_rows if timestamps == "global" else [], ts_rows)
    out = run_step(model, embeds, torch.arange(start, start + n, device=embeds.device), step)
    store.commit(n, is_ts)
    step.finish()
    return out, step.pairs


def prefill(
    model: torch.nn.Module,
    prefix: torch.Tensor,
    groups: Iterable[Group],
    config: PrefillConfig = PrefillConfig(),
    expected_tokens: int = 0,
    on_chunk: Callable[[int, int], None] | None = None,
    keep_hidden: bool = False,
    store: KVStore | None = None,
    on_start: Callable[[PrefilledVideo], None] | None = None,
) -> PrefilledVideo:
    """Pre-fill ``prefix`` then ``groups`` chunk by chunk into a new :class:`KVStore`.

    ``groups`` may be a generator: at most one forward's chunks of groups are held at a time. ``expected_tokens``
    pre-sizes the store. ``on_chunk(chunks_done, tokens_done)`` reports progress. ``keep_hidden`` keeps each chunk's
    final hidden states (for tests and for scoring heads that read them). ``store`` is an empty store to fill
    (default: a new :class:`KVStore`; a live stream passes one that bounds its memory). ``on_start`` receives the
    :class:`PrefilledVideo` this call returns before the first chunk: it grows chunk by chunk, and answers
    questions about what has been pre-filled so far between chunks (in ``on_chunk``)."""
    check_model(model)
    param, rope = next(model.parameters()), Rope.of(model)
    store = store if store is not None else new_store(model, config)
    assert store.length == 0 and store.pool == config.pool, "pre-fill needs an empty store pooling as configured"
    stats = PrefillStats(config=model.config)
    hidden: list[torch.Tensor] | None = [] if keep_hidden else None
    started = time.perf_counter()
    anchors = Anchors()
    summaries = GroupSummaries(store, rope)
    video = PrefilledVideo(store, config, stats, hidden, summaries, anchors)
    if on_start is not None:
        on_start(video)
    _prefill_prefix(model, embed(model, prefix), store, anchors, stats, hidden, expected_tokens)

    chunk_starts: list[int] = []  # first token of each chunk
    anchors_after: list[int] = []  # anchor rows (prefix + timestamps) up to the end of each chunk
    for chunks in _forwards(_chunks(groups, config.chunk), config.chunks_per_forward, forward_tokens(model, config)):
        start = store.length
        embeds, is_ts, segments, ts_rows, ts_per_chunk = _lay_out(model, chunks, config, stats, start, chunk_starts,
                                                                  anchors_after, anchors.dropped)
        out, pairs = _forward(model, store, anchors, embeds, is_ts, segments, ts_rows, config.timestamps)
        store.add_groups(_spans(chunks, segments, ts_per_chunk, start, len(ts_rows), anchors.length + anchors.dropped,
                                chunk_starts, anchors_after), rope)
        summaries.extend()
        stats.pairs += pairs
        stats.tokens = store.length
        stats.forwards += 1
        for batch, (r0, r1, _, _) in zip(chunks, segments):
            stats.groups += len(batch)
            stats.chunks += 1
            if hidden is not None:
                hidden.append(out[r0:r1])
            if on_chunk is not None:
                on_chunk(stats.chunks, start + r1)

    if stats.groups == 0:
        raise InputError("the input has no groups: chunked pre-fill needs at least one group of visual tokens")
    stats.tokens = store.length
    stats.seconds = time.perf_counter() - started
    video.anchors = None  # only later chunks read them
    return video
