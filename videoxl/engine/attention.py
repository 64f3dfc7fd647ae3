"""The attention function videoxl registers with transformers, and the steps it executes.

The model's own layers compute projections, RoPE and MLPs; at each layer they call the registered attention
function with the rotated queries and the new keys and values. The function hands them to the *step* passed down
the forward call as ``videoxl_step``: a pre-fill step writes the KVs to the :class:`KVStore` and attends to exactly
the keys the chunk pattern allows; a decode step appends to a :class:`DecodeCache` and attends to all of it.
Without a ``videoxl_step`` the function is transformers' SDPA attention, so the model's own ``forward`` and
``generate`` are unchanged once :func:`prepare` has routed the model here.

No step builds a mask. The keys a query row may see are always a union of *contiguous* key ranges, each seen whole,
plus the causal triangle of the step's own tokens. Each range is one mask-free fused-attention call that also
returns the log-sum-exp of its scores, and the parts are merged exactly::

    lse = logaddexp(lse_1, lse_2, ...)        out = sum_i exp(lse_i - lse) * out_i

(the merge of partial softmaxes that FlashAttention's split-KV "flash-decoding" uses, Dao et al. 2023). A mask-free
call runs the flash kernels directly; a boolean mask whose shape changes every chunk sent SDPA to cuDNN attention,
which spent ~1.25 ms of host time planning each call (measured on an H200: docs/performance.md).
"""

from __future__ import annotations

import logging
import math
import threading

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .store import KVStore, layer_slices

ATTENTION_NAME = "videoxl"
log = logging.getLogger(__name__)


# -- attention parts with their log-sum-exp ------------------------------------------------------------------------
def attend_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: q (h, n, D), k and v (h, K, D) with K >= 1 -> out (h, n, D), lse (h, n) float32.

    ``causal`` aligns the last query with the last key (lower-right), as in every step here."""
    s = (q.float() @ k.float().transpose(1, 2)) * scale  # (h, n, K)
    if causal:
        n, kk = q.shape[1], k.shape[1]
        allowed = torch.ones(n, kk, dtype=torch.bool, device=q.device).tril(kk - n)
        s = s.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(s, -1)
    return (torch.softmax(s, -1) @ v.float()).to(q.dtype), lse


_warned: set = set()


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool):
    """A fused kernel that returns the log-sum-exp; None where none applies. Inputs (1, h, n, D) / (1, h, K, D)."""
    dev = q.device.type
    if dev == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    if dev == "cuda":
        d = q.shape[-1]
        if q.dtype in (torch.float16, torch.bfloat16) and d % 8 == 0 and d <= 256:
            try:
                r = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
                return r[0], r[1]
            except RuntimeError:  # e.g. a GPU older than the flash kernels: the memory-efficient kernel below
                pass
        if q.dtype in (torch.float32, torch.float16, torch.bfloat16):
            # memory-efficient kernel: its log-sum-exp may be padded along the rows
            r = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal,
                                                                       scale=scale)
            return r[0], r[1][..., : q.shape[2]]
    return None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q (H, n, D) over k, v (Hkv, K, D), K >= 1 -> out (H, n, D), lse (H, n) float32.

    Without ``causal`` every row sees every key, and the query heads that share a KV head are stacked as rows,
    (H, n, D) -> (Hkv, G*n, D), so no kernel needs grouped-query support and no KV is copied. With ``causal``
    (used for a step's own tokens: n == K) the KVs are repeated per query head.
    """
    heads, n, dim = q.shape
    kv_heads, kk = k.shape[0], k.shape[1]
    assert kk >= 1 and heads % kv_heads == 0, (q.shape, k.shape)
    if k.dtype != q.dtype or k.device != q.device:  # a store kept elsewhere, or in another dtype
        k, v = k.to(q.device, q.dtype), v.to(q.device, q.dtype)
    if causal:
        assert n == kk, "a causal part is a step's own square"
        if kv_heads != heads and q.device.type != "cpu":  # the CPU kernel reads grouped KV heads itself
            k, v = k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0)
        qg = q
    else:
        qg = q.reshape(kv_heads, heads // kv_heads * n, dim)  # (Hkv, G*n, D)
    try:
        fused = _fused(qg[None], k[None], v[None], scale, causal)
    except RuntimeError as e:  # a kernel that refuses these shapes on this device: stay correct, say so once
        key = (q.device.type, q.dtype, dim)
        if key not in _warned:
            _warned.add(key)
            log.warning("fused attention with log-sum-exp unavailable for %s %s head_dim %d (%s); using matmuls",
                        *key, e)
        fused = None
    if fused is None:
        if k.shape[0] != qg.shape[0]:
            k, v = k.repeat_interleave(qg.shape[0] // k.shape[0], 0), v.repeat_interleave(qg.shape[0] // k.shape[0], 0)
        out, lse = attend_math(qg, k, v, scale, causal)
    else:
        out, lse = fused
    if lse.dtype != torch.float32:  # the fused kernels return it in float32 already
        lse = lse.float()
    return out.reshape(heads, n, dim), lse.reshape(heads, n)


_SMS: dict = {}


def _splits(device: torch.device, kv_heads: int, rows: int, keys: int) -> int:
    """How many key segments keep a GPU busy when few query rows meet many keys (timestamp rows over the whole
    video, a decoded token over the cache): the kernels parallelize over (batch, heads, row blocks) only."""
    if device.type != "cuda":
        return 1  # a CPU's few threads are kept busy by heads and row blocks already
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    blocks = kv_heads * -(-rows // 128)
    return max(1, min(-(-2 * _SMS[device] // blocks), keys // 4096))


def attend_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attend` without a causal part, with the keys cut into ``splits`` segments run as one batch and merged
    by log-sum-exp (split-KV "flash-decoding", Dao et al. 2023), so a few rows over many keys fill a GPU.
    ``splits=None`` chooses by device and shape (1 on a CPU)."""
    heads, n, dim = q.shape
    kv_heads, kk = k.shape[0], k.shape[1]
    if splits is None:
        splits = _splits(q.device, kv_heads, heads // kv_heads * n, kk)
    seg = -(-kk // max(1, splits))
    full = kk // seg
    if full < 2:
        return attend(q, k, v, scale)
    k, v = k.to(q.device, q.dtype), v.to(q.device, q.dtype)
    rows = heads // kv_heads * n
    qb = q.reshape(kv_heads, rows, dim)[None].expand(full, kv_heads, rows, dim).contiguous()
    kb = k[:, : full * seg].unflatten(1, (full, seg)).transpose(0, 1)  # (full, Hkv, seg, D), a view
    vb = v[:, : full * seg].unflatten(1, (full, seg)).transpose(0, 1)
    try:
        fused = _fused(qb, kb, vb, scale, False)
    except RuntimeError:
        fused = None
    if fused is None:  # no batched fused kernel here: one segment after another
        return merge_lse([attend(q, k[:, i : i + seg], v[:, i : i + seg], scale) for i in range(0, kk, seg)])
    parts = [(o.reshape(heads, n, dim), l.float().reshape(heads, n)) for o, l in zip(fused[0], fused[1])]
    if full * seg < kk:
        parts.append(attend(q, k[:, full * seg :], v[:, full * seg :], scale))
    return merge_lse(parts)


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's own tokens, causally, on 4-D inputs: q (1, H, n, D), k and v (1, Hkv, n, D) -> out (1, H, n, D),
    lse (1, H, n) float32 (the fused kernel called directly: no reshapes; :func:`attend` where none applies)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    fused = None
    if kv_heads == heads or q.device.type == "cpu":  # the CPU kernel reads grouped KV heads itself
        try:
            fused = _fused(q, k, v, scale, True)
        except RuntimeError:
            fused = None
    if fused is None:
        out, lse = attend(q[0], k[0], v[0], scale, causal=True)
        return out[None], lse[None]
    return fused[0], fused[1] if fused[1].dtype == torch.float32 else fused[1].float()


def _segments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ranges: list[tuple[int, int, int, int]],
              scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Attention of query rows ``[r0, r1)`` over keys ``[lo, hi)``, for each ``(r0, r1, lo, hi)`` of ``ranges``, on
    4-D inputs q (1, H, n, D), k and v (1, Hkv, K, D) -> per range out (1, H, rows, D), lse (1, H, rows): the fused
    kernel called on views (where the kernel or the split choice differs, :func:`attend_split`)."""
    _, heads, _, dim = q.shape
    kv_heads = k.shape[1]
    if k.dtype != q.dtype or k.device != q.device:
        k, v = k.to(q.device, q.dtype), v.to(q.device, q.dtype)
    group = heads // kv_heads
    parts = []
    for r0, r1, lo, hi in ranges:
        rows = r1 - r0
        fused = None
        if _splits(q.device, kv_heads, group * rows, hi - lo) == 1:
            try:
                fused = _fused(q[:, :, r0:r1].reshape(1, kv_heads, group * rows, dim), k[:, :, lo:hi],
                               v[:, :, lo:hi], scale, False)
            except RuntimeError:
                fused = None
        if fused is None:
            out, lse = attend_split(q[0, :, r0:r1], k[0, :, lo:hi], v[0, :, lo:hi], scale)
            parts.append((out[None], lse[None]))
            continue
        lse = fused[1] if fused[1].dtype == torch.float32 else fused[1].float()
        parts.append((fused[0].view(1, heads, rows, dim), lse.reshape(1, heads, rows)))
    return parts


def _nothing_seen(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of rows that see no key, for q (1, H, n, D): 0 and -inf, which :func:`merge` weighs 0."""
    return q.new_zeros(q.shape), torch.full(q.shape[:3], -math.inf, dtype=torch.float32, device=q.device)


def _lerp(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """Two parts merged: the second one's weight is sigmoid(lse_2 - lse_1). In the outputs' dtype (one rounding of
    that dtype, like the parts' own), so a half-precision merge moves no float32 copies."""
    return torch.lerp(o1, o2, torch.sigmoid(l2 - l1).unsqueeze(-1).to(o1.dtype))


def merge_lse(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`merge` that also returns the merged log-sum-exp."""
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:  # the common case, in a few launches
        (o1, l1), (o2, l2) = parts
        return _lerp(o1, l1, o2, l2), torch.logaddexp(l1, l2)
    lse = parts[0][1]
    for _, l in parts[1:]:
        lse = torch.logaddexp(lse, l)
    out = parts[0][0].float() * torch.exp(parts[0][1] - lse)[..., None]
    for o, l in parts[1:]:
        out += o.float() * torch.exp(l - lse)[..., None]
    return out.to(parts[0][0].dtype), lse


def merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Exact softmax attention over the union of disjoint key sets from each set's (out, lse)."""
    if len(parts) == 2:  # without the merged log-sum-exp nobody reads
        (o1, l1), (o2, l2) = parts
        return _lerp(o1, l1, o2, l2)
    return merge_lse(parts)[0]


# -- pre-fill ----------------------------------------------------------------------------------------------------
class Anchors:
    """The store rows every later token sees, in order: the prefix, then each chunk's timestamp rows.

    Pre-fill appends them as it goes; a chunk that has left the window is then seen through the first rows of this
    list, gathered from the store together with the window in one copy per layer slice (the store holds these rows
    already: no second copy of their KVs is kept).
    """

    def __init__(self):
        self.index = torch.empty(0, dtype=torch.long)  # store rows, on the host
        self.dropped = 0  # rows dropped by :meth:`drop` (a forgotten history's timestamps); rows added = both

    @property
    def length(self) -> int:
        return self.index.numel()

    def add(self, rows: torch.Tensor) -> None:
        self.index = torch.cat([self.index, rows])

    def drop(self, start: int, n: int) -> None:
        """Drop held rows [start, start + n) (the later ones move down): the timestamps of groups a live stream has
        forgotten, which later chunks then no longer see."""
        self.index = torch.cat([self.index[:start], self.index[start + n:]])
        self.dropped += n


class PrefillStep:
    """Pre-fill of ``n`` new tokens starting at ``store.length``: one or several consecutive chunks in one forward.

    ``segments`` are ``(row_start, row_end, window_start, anchor_len)``, one per chunk (rows local to the step,
    covering them in order). Every row attends causally to the step's own tokens (a chunk sees the earlier chunks of
    its step in full: a step never holds more chunks than one window), and a segment's rows also to
    ``anchors[:anchor_len]`` (prefix + timestamps of chunks out of its window) and to the contiguous window
    ``[window_start, start)`` of the store. ``global_rows`` (timestamp tokens in the published evaluation's
    semantics) attend to every earlier token instead. ``anchor_rows`` (prefix and timestamp rows of this step) are
    appended to the anchors after the forward (:meth:`finish`). Index tensors are moved to the compute device once
    per step.
    """

    def __init__(self, store: KVStore, anchors: Anchors, n: int, segments: list[tuple[int, int, int, int]],
                 global_rows: list[int], anchor_rows: list[int]):
        self.store, self.anchors, self.n = store, anchors, n
        self.start = store.length
        self.end = self.start + n
        assert segments and segments[0][0] == 0 and segments[-1][1] == n, segments
        for (_, r1, _, _), (r0, _, _, _) in zip(segments, segments[1:]):
            assert r1 == r0, segments
        for _, _, window_start, anchor_len in segments:
            assert 0 <= window_start <= self.start and 0 <= anchor_len <= anchors.length
            assert anchor_len == 0 or window_start > 0, "anchors cover the prefix only when the window does not"
        # consecutive chunks that see the same past are attended to as one block of rows
        merged: list[list[int]] = []
        for r0, r1, ws, a in segments:
            if merged and merged[-1][2:] == [ws, a]:
                merged[-1][1] = r1
            else:
                merged.append([r0, r1, ws, a])
        self.segments = [tuple(m) for m in merged]
        # every index is built here from Python ints, so nothing in the step reads a tensor's values on the host
        self.global_rows = torch.tensor(global_rows, dtype=torch.long)
        self.anchor_index = torch.tensor([self.start + r for r in anchor_rows], dtype=torch.long)
        is_global = [False] * n
        for r in global_rows:
            is_global[r] = True
        # global rows see everything before the step, unless every segment's past already is everything
        sees_all = all(a == 0 and ws == 0 for _, _, ws, a in self.segments)
        self.global_past = bool(global_rows) and self.start > 0 and not sees_all
        # what a segment sees before the step is one contiguous range of [dense[w0:start] | anchors[:A]]: its window
        # is a suffix of the first part, its anchors a prefix of the second. The global rows' past is computed
        # with their segment's rows and then replaced (a few rows of wasted work against an index per segment).
        pasts = [(r0, r1, ws, a) for r0, r1, ws, a in self.segments if a or ws < self.start]
        self.w0 = min((ws for _, _, ws, _ in pasts), default=self.start)
        self.a_max = max((a for *_, a in pasts), default=0)
        self._ranges = [(r0, r1, ws - self.w0, self.start - self.w0 + a) for r0, r1, ws, a in pasts]
        self._gaps = sum(r1 - r0 for r0, r1, _, _ in pasts) < n  # rows that see nothing before the step
        # attention-score entries the pattern gives this step's rows (the accounting's unit; not counted: a global
        # row's segment past, computed with its segment and then replaced, about T/(T+V) of the window work)
        self.pairs = n * (n + 1) // 2 + len(global_rows) * self.start
        for r0, r1, ws, a in self.segments:
            self.pairs += (r1 - r0 - sum(is_global[r0:r1])) * (a + self.start - ws)
        self._past_index: torch.Tensor | None = None  # store rows of [window | anchors[:a_max]], on the device
        self._global_rows_on: torch.Tensor | None = None  # global_rows on the compute device, moved once
        self._past_layers: range | None = None  # the layers whose past keys _past_kv holds
        self._past_kv: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | None = None

    def _rows_on(self, device: torch.device) -> torch.Tensor:
        if self._global_rows_on is None:
            self._global_rows_on = self.global_rows.to(device, non_blocking=True)
        return self._global_rows_on

    def _past_keys(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[dense[w0:start] | anchors[:A]] of one layer: a view when there are no anchors, else one gather of those
        store rows made for a slice of layers at once (:func:`layer_slices`: two ops per slice, not per layer)."""
        if self._past_layers is None or layer not in self._past_layers:
            dense = self.store.dense
            self._past_kv = None  # the previous slice's copy goes first
            per_layer = self.store.bytes_per_token // self.store.layers * (self.start - self.w0 + self.a_max)
            layers = next(s for s in layer_slices(self.store.layers, per_layer, self.store.device) if layer in s)
            if self.a_max:
                if self._past_index is None:
                    rows = torch.cat([torch.arange(self.w0, self.start), self.anchors.index[: self.a_max]])
                    self._past_index = rows.to(self.store.device, non_blocking=True)
                k, v = dense.rows(layers, self._past_index)
            else:
                k, v = dense.block(layers, self.w0, self.start)
            self._past_layers, self._past_kv = layers, (k.split(1), v.split(1))  # (1, Hkv, T, D) views
        i = layer - self._past_layers.start
        return self._past_kv[0][i], self._past_kv[1][i]

    def _past(self, layer: int, q: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(out, lse) of every row over what its segment sees before the step: one fused call per segment, on views
        of one key buffer, joined along the rows (lse -inf and out 0 where a row sees nothing before the step)."""
        if not self._ranges:
            return None
        k, v = self._past_keys(layer)
        parts = _segments(q, k, v, self._ranges, scale)
        if len(parts) == 1 and not self._gaps:
            return parts[0]
        if not self._gaps:
            return torch.cat([o for o, _ in parts], 2), torch.cat([l for _, l in parts], 2)
        out, lse = _nothing_seen(q)
        for (r0, r1, _, _), (o, l) in zip(self._ranges, parts):
            out[:, :, r0:r1], lse[:, :, r0:r1] = o, l
        return out, lse

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q (1, H, n, D), the new k and v (1, Hkv, n, D) -> out (1, H, n, D)."""
        store = self.store
        store.write(layer, k[0], v[0])
        own = _causal(q, k, v, scale)  # the step's own tokens
        past = self._past(layer, q, scale)
        if self.global_past:  # the global rows' past is everything before the step: it replaces their segment's
            rows = self._rows_on(q.device)
            k_all, v_all = store.dense.k[layer][:, : self.start], store.dense.v[layer][:, : self.start]
            (out, lse), = _segments(q.index_select(2, rows), k_all[None], v_all[None],
                                    [(0, rows.numel(), 0, self.start)], scale)
            if past is None:
                past = _nothing_seen(q)
            past[0].index_copy_(2, rows, out)
            past[1].index_copy_(2, rows, lse)
        return own[0] if past is None else merge([own, past])

    def finish(self) -> None:
        """After the forward: the step's anchor rows join the anchors (no chunk of this step reads them)."""
        self._past_layers = self._past_kv = None
        self.anchors.add(self.anchor_index)


# -- decoding ----------------------------------------------------------------------------------------------------
class DecodeCache:
    """A plain per-layer KV cache for decoding: a mixed cache gathered from the store, then the new tokens."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], room: int):
        self.length = keys[0].shape[1]
        self.k, self.v = [], []
        for k, v in zip(keys, values):
            buf_k = k.new_empty(k.shape[0], self.length + room, k.shape[2])
            buf_v = torch.empty_like(buf_k)
            buf_k[:, : self.length], buf_v[:, : self.length] = k, v
            self.k.append(buf_k)
            self.v.append(buf_v)

    @property
    def nbytes(self) -> int:
        return sum(t[:, : self.length].numel() * t.element_size() for t in self.k + self.v)


class DecodeStep:
    """``n`` new tokens appended to a :class:`DecodeCache`; they see all of it and each other causally.

    If ``capture`` names layers, the step keeps those layers' (rotated) queries for chunk scoring; with
    ``queries_only`` the forward stops once the last of them is captured (:func:`run_step` returns None), so the
    layers above it are not run and the cache needs only the layers up to it.
    """

    def __init__(self, cache: DecodeCache, n: int, capture: tuple[int, ...] = (), queries_only: bool = False):
        self.cache, self.n, self.capture = cache, n, set(capture)
        self.last = max(capture) if queries_only else None
        self.queries: dict[int, torch.Tensor] = {}
        self.start = cache.length

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q (1, H, n, D), the new k and v (1, Hkv, n, D) -> out (1, H, n, D)."""
        return self._attend(layer, q[0], k[0], v[0], scale)[None]

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if layer in self.capture:
            self.queries[layer] = q
            if layer == self.last:
                raise _Captured
        end = self.start + self.n
        cache_k, cache_v = self.cache.k[layer], self.cache.v[layer]
        cache_k[:, self.start : end] = k
        cache_v[:, self.start : end] = v
        if self.n == 1:  # one token sees everything, itself included: no causal part
            return attend_split(q, cache_k[:, :end], cache_v[:, :end], scale)[0]
        parts = [attend(q, k, v, scale, causal=True)]
        if self.start:
            parts.append(attend_split(q, cache_k[:, : self.start], cache_v[:, : self.start], scale))
        return merge(parts)

    def finish(self) -> None:
        self.cache.length += self.n


class _Captured(Exception):
    """Raised by a ``queries_only`` step once it holds every query it captures (caught by :func:`run_step`)."""


# -- the transformers hook ---------------------------------------------------------------------------------------
def videoxl_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, videoxl_step=None,
                      **kwargs):
    """transformers attention interface: (1, H, n, D) queries and (1, Hkv, n, D) new KVs -> (1, n, H, D).

    Without a ``videoxl_step`` this is transformers' SDPA attention, so a prepared model runs its own forward
    (and ``generate``) exactly as before."""
    if videoxl_step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    assert query.shape[0] == 1, "videoxl steps run one sequence at a time"
    return videoxl_step.attend(module.layer_idx, query, key, value, scaling).transpose(1, 2), None


AttentionInterface.register(ATTENTION_NAME, videoxl_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # the fallback gets the masks SDPA would
_prepare_lock = threading.Lock()
_NO_MASK = torch.ones(1, 1, 0, 0, dtype=torch.bool)  # never read: every videoxl step attends without a mask


def prepare(model: torch.nn.Module) -> None:
    """Route ``model``'s attention through videoxl, once: idempotent and thread-safe.

    Nothing is switched per call afterwards, so threads may share one model; the model's own forward keeps its
    SDPA semantics (see :func:`videoxl_attention`)."""
    config = model.config
    if config._attn_implementation == ATTENTION_NAME:
        return
    with _prepare_lock:
        if config._attn_implementation != ATTENTION_NAME:
            config._attn_implementation = ATTENTION_NAME


def run_step(model: torch.nn.Module, embeds: torch.Tensor, positions: torch.Tensor, step) -> torch.Tensor | None:
    """One forward of the decoder stack over (n, hidden) embeddings; returns the final hidden states (n, hidden),
    or None when a ``queries_only`` step stopped it early (transformers' output hooks are reset in a ``finally``)."""
    prepare(model)
    try:
        with torch.inference_mode():
            # a 4-D mask is passed through as it is: transformers then builds none, and skips its packed-sequence
            # check, which reads the positions back on the host (the step attends without a mask anyway)
            out = model.model(inputs_embeds=embeds[None], position_ids=positions[None], use_cache=False,
                              attention_mask=_NO_MASK, videoxl_step=step)
    except _Captured:
        return None
    return out.last_hidden_state[0]
