"""The per-group KV store: dense KVs of every token, and sparse (pooled) KVs of every group, for every layer.

Layout of the sequence it holds: a prefix, then groups (timestamp tokens, then visual tokens). Dense keys are kept
rotated at their absolute position. Sparse KVs of a group are its timestamp KVs verbatim plus its visual KVs
average-pooled along the sequence by ``pool`` (kernel = stride, a trailing partial window averaged on its own).
Pooling happens on un-rotated keys; the pooled key is then rotated at the mean position of its window, so dense
and sparse keys obey one convention: "rotated at the position recorded beside it".

Chunks (for pre-fill and for decoding) are ranges of groups, so any chunking is a view over the same store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .rope import Rope


@dataclass(frozen=True)
class GroupSpan:
    """Token ranges of one group in the dense sequence and in the sparse sequence."""

    start: int  # first timestamp token
    visual_start: int  # first visual token
    end: int
    sparse_start: int
    sparse_end: int


SLICE_BYTES = 4 << 20  # transient bytes the work on a forward's KVs (pooling, summaries, past keys) may take at once
# on a CPU, where they add to the peak that streaming bounds (docs/performance.md)
GPU_SLICE_BYTES = 256 << 20  # the same on a GPU: below a 7B forward's own activations (~0.4 GB for 2,448 tokens)


def layer_slices(layers: int, bytes_per_layer: int, device: torch.device) -> list[range]:
    """The layers in consecutive slices whose work of ``bytes_per_layer`` each stays within :data:`SLICE_BYTES`
    together (:data:`GPU_SLICE_BYTES` on a GPU): all layers at once cost more transient memory than a pre-fill
    forward on a CPU (a peak above dense pre-fill's), one at a time costs a launch per op per layer (on a GPU, where
    launches decide, slices are larger)."""
    budget = GPU_SLICE_BYTES if torch.device(device).type == "cuda" else SLICE_BYTES
    step = max(1, budget // max(1, bytes_per_layer))
    return [range(lo, min(lo + step, layers)) for lo in range(0, layers, step)]


class _Buffer:
    """Keys and values of every layer, one (layers, heads, capacity, dim) tensor each, growing by doubling; rows
    [0, length) are valid. ``k[layer]`` and ``v[layer]`` are one layer's views (a list lookup, no op); :meth:`rows`,
    :meth:`block` and :meth:`write_block` work on several layers at once (a few ops per forward, not per layer)."""

    def __init__(self, layers: int, heads: int, dim: int, dtype: torch.dtype, device: torch.device):
        self.K = torch.empty(layers, heads, 0, dim, dtype=dtype, device=device)
        self.V = torch.empty_like(self.K)
        self._views()

    def _views(self) -> None:
        self.k, self.v = list(self.K.unbind(0)), list(self.V.unbind(0))

    def assign(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Hold exactly these per-layer tensors (heads, rows, dim) (capacity = rows)."""
        self.K, self.V = torch.stack(keys), torch.stack(values)
        self._views()

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]

    def reserve(self, n: int) -> None:
        if n <= self.capacity:
            return
        n = max(n, 2 * self.capacity)
        self.k = self.v = []  # their views would keep the old tensors alive (one is copied at a time)
        for name in ("K", "V"):
            old = getattr(self, name)
            new = old.new_empty(old.shape[0], old.shape[1], n, old.shape[3])
            new[:, :, : old.shape[2]] = old
            setattr(self, name, new)
            del old, new
        self._views()

    def drop(self, start: int, n: int, valid: int) -> None:
        """Forget rows [start, start + n) of the first ``valid``, moving the later ones down (the capacity stays)."""
        for t in self._tensors():
            t[..., start: valid - n, :] = t[..., start + n: valid, :].clone()

    def _tensors(self) -> list[torch.Tensor]:
        return [self.K, self.V]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer][:, start : start + k.shape[1]] = k
        self.v[layer][:, start : start + v.shape[1]] = v

    def rows(self, layers: range, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``index`` of ``layers``: (layers, heads, len(index), dim) keys and values (copies)."""
        lo, hi = layers.start, layers.stop
        return self.K[lo:hi].index_select(2, index), self.V[lo:hi].index_select(2, index)

    def keys(self, layers: range, start: int, end: int) -> torch.Tensor:
        """Keys of rows [start, end) of ``layers``, (layers, heads, end - start, dim) (a view here)."""
        return self.K[layers.start: layers.stop, :, start:end]

    def block(self, layers: range, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`keys` and the values beside them."""
        return self.keys(layers, start, end), self.V[layers.start: layers.stop, :, start:end]

    def write_block(self, layers: range, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write (layers, heads, n, dim) keys and values to rows [start, start + n) of ``layers``."""
        lo, hi, end = layers.start, layers.stop, start + k.shape[2]
        self.K[lo:hi, :, start:end] = k
        self.V[lo:hi, :, start:end] = v

    def to(self, device: torch.device) -> None:
        self.K, self.V = self.K.to(device), self.V.to(device)
        self._views()


class KVStore:
    """Dense and sparse KVs of a pre-filled sequence, with the byte accounting of both.

    Owns its buffers: pre-fill writes through :meth:`write`, decoding reads through :meth:`gather`. The store may
    live on another device than the model (``to("cpu")`` after pre-fill); gathered caches go to the compute device.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device, pool: int = 4):
        if pool < 1:
            raise InputError(f"pool must be a positive integer, got {pool}")
        self.layers, self.kv_heads, self.head_dim, self.dtype = layers, kv_heads, head_dim, dtype
        self.device = torch.device(device)
        self.pool = pool
        self.dense = _Buffer(layers, kv_heads, head_dim, dtype, self.device)
        self.sparse = _Buffer(layers, kv_heads, head_dim, dtype, self.device)
        self.sparse_pos = torch.empty(0, dtype=torch.float64)
        self.is_timestamp = torch.empty(0, dtype=torch.bool)
        self.length = 0
        self.sparse_length = 0
        self.prefix_length = 0
        self.groups: list[GroupSpan] = []
        self.expected = 0  # the dense tokens the store was reserved for (0: unknown)
        self._rows_memo: tuple | None = None  # the last layout's rows on the device (see _rows_of)
        self._host_rows: tuple | None = None  # the last layout's dense and sparse rows, worked out on the host

    # -- writing (pre-fill) ------------------------------------------------------------------------------------
    def reserve(self, tokens: int) -> None:
        """Room for ``tokens`` dense tokens (the sparse buffer follows at its first growth: :meth:`add_groups`)."""
        self.expected = max(self.expected, tokens)
        self.dense.reserve(tokens)
        if self.is_timestamp.numel() < self.dense.capacity:
            grown = torch.zeros(self.dense.capacity, dtype=torch.bool)
            grown[: self.is_timestamp.numel()] = self.is_timestamp
            self.is_timestamp = grown

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one layer's KVs (kv_heads, n, head_dim) for the tokens after ``length``; see :meth:`commit`."""
        if k.dtype != self.dtype or k.device != self.device:
            k, v = k.to(self.device, self.dtype), v.to(self.device, self.dtype)
        self.dense.write(layer, self.length, k, v)

    def commit(self, n: int, is_timestamp: torch.Tensor | None = None) -> None:
        """Declare the ``n`` tokens written to every layer as part of the sequence."""
        if is_timestamp is not None:
            self.is_timestamp[self.length : self.length + n] = is_timestamp
        self.length += n

    def add_groups(self, spans: list[tuple[int, int, int]], rope: Rope) -> None:
        """Register groups whose dense KVs are written, given as (start, timestamp_tokens, end), and compute their
        sparse KVs: all groups of a chunk in one pass per layer."""
        first = self.sparse_length
        ts_index, vis_index, windows, sparse_rows, pooled, counts, positions, new_spans, n_sparse = \
            _pooling_plan(spans, first, self.pool)
        self._reserve_sparse(n_sparse, spans[-1][2])
        ts_index, vis_index, windows = (torch.from_numpy(np.concatenate(x)) for x in (ts_index, vis_index, windows))
        positions = torch.tensor(positions, dtype=torch.float64)  # every new sparse row's position, in order
        pooled = torch.tensor(pooled, dtype=torch.long)
        dev = self.device
        # indices, divisors and rotation tables built once per call on the store's device, and the arithmetic done
        # on a (layers, kv_heads, tokens, dim) stack of a few layers: a handful of kernels per slice
        n_vis = vis_index.numel()
        gather = torch.cat([vis_index, ts_index]).to(dev)
        win_d, pooled_d = windows.to(dev), pooled.to(dev)
        rows_d = torch.tensor(sparse_rows, dtype=torch.long).to(dev)
        divisor = torch.tensor(counts).to(dev, self.dtype)[:, None]
        unrotate = rope.table(-vis_index.double(), dev, self.dtype)
        rerotate = rope.table(positions[pooled], dev, self.dtype)
        # a few layers at a time (layer_slices): about 6 copies of a layer's gathered keys and values live at once
        per_layer = 6 * 2 * self.kv_heads * gather.numel() * self.head_dim * torch.finfo(self.dtype).bits // 8
        for layers in layer_slices(self.layers, per_layer, self.device):
            lo, hi = layers.start, layers.stop
            k_all, v_all = self.dense.rows(layers, gather)  # (l, Hkv, vis + ts, D)
            k_new = torch.zeros((hi - lo, self.kv_heads, n_sparse - first, self.head_dim), dtype=self.dtype,
                                device=dev)
            v_new = torch.zeros_like(k_new)
            k_new.index_add_(2, win_d, rope.apply(k_all[:, :, :n_vis], unrotate))  # un-rotate before averaging
            v_new.index_add_(2, win_d, v_all[:, :, :n_vis])
            k_new[:, :, pooled_d] = rope.apply(k_new[:, :, pooled_d] / divisor, rerotate)
            v_new[:, :, pooled_d] /= divisor
            k_new[:, :, rows_d] = k_all[:, :, n_vis:]  # timestamps verbatim
            v_new[:, :, rows_d] = v_all[:, :, n_vis:]
            del k_all, v_all
            self.sparse.write_block(layers, first, k_new, v_new)
        self.sparse_pos = torch.cat([self.sparse_pos[:first], positions])
        self.sparse_length = n_sparse
        self.groups.extend(new_spans)

    def _reserve_sparse(self, n_sparse: int, dense_end: int) -> None:
        """Room for ``n_sparse`` sparse rows, the groups so far ending at dense row ``dense_end``. When the expected
        length is known, grow once to the sparse rows it will take (the rows so far scaled up, with a margin), not by
        doublings that each copy the buffer while the old one is alive."""
        room = n_sparse
        video = dense_end - self.prefix_length  # the prefix has no sparse rows: scale by the video's tokens only
        if self.sparse.capacity < n_sparse and 0 < video and dense_end < self.expected:
            room = max(room, int(n_sparse * (self.expected - self.prefix_length) / video * 1.05) + 1)
        self.sparse.reserve(room)

    def to(self, device) -> "KVStore":
        """Move the stored KVs (e.g. to CPU memory after a GPU pre-fill)."""
        self.device = torch.device(device)
        self.dense.to(self.device)
        self.sparse.to(self.device)
        return self

    # -- reading (decoding) -------------------------------------------------------------------------------------
    def sparse_first(self, span: GroupSpan, sparse_stamps: bool) -> int:
        """First row of a sparse group in the sparse buffer: its timestamp's, or without ``sparse_stamps`` its
        first pooled token's."""
        return span.sparse_start + (0 if sparse_stamps else span.visual_start - span.start)

    def layout(self, dense_groups, sparse_stamps: bool = True,
               first: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Indices and positions of a mixed cache: the prefix, then each group from ``first`` on dense or sparse, in
        order (earlier groups are left out); a sparse group without its timestamp tokens unless ``sparse_stamps``.
        ``dense_groups``: one bool per group (a list).

        Returns (from_dense (N,) bool, index (N,) into the dense or sparse buffer, positions (N,) float64), on the
        host. The layout is host bookkeeping, worked out with NumPy from the group spans: no op here reads a
        device tensor, so nothing waits for the device (tests/test_host_sync.py).
        """
        spans = np.array([[g.start, g.end, self.sparse_first(g, sparse_stamps), g.sparse_end]
                          for g in self.groups[first:]], dtype=np.int64).reshape(-1, 4)
        dense = np.asarray(dense_groups, dtype=bool).reshape(-1)[first:]
        row0 = np.where(dense, spans[:, 0], spans[:, 2])  # each group's first row in its buffer
        lengths = np.where(dense, spans[:, 1], spans[:, 3]) - row0
        # row r of group g reads its buffer at row0[g] + (r - where group g begins in the mixed cache)
        begins = np.cumsum(lengths) - lengths
        prefix = np.arange(self.prefix_length, dtype=np.int64)
        index = np.concatenate([prefix, np.repeat(row0 - begins, lengths) + np.arange(int(lengths.sum()))])
        from_dense = np.concatenate([np.ones(self.prefix_length, dtype=bool), np.repeat(dense, lengths)])
        d_rows, s_rows = torch.from_numpy(np.flatnonzero(from_dense)), torch.from_numpy(np.flatnonzero(~from_dense))
        index_t = torch.from_numpy(index)
        positions = index_t.double()
        positions[s_rows] = self.sparse_pos[index_t[s_rows]]  # a sparse row: its pooled window's mean position
        from_dense_t = torch.from_numpy(from_dense)
        self._host_rows = (from_dense_t, index_t, d_rows, s_rows)
        return from_dense_t, index_t, positions

    def gather(self, layer: int, from_dense: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (kv_heads, N, head_dim) of one layer for a layout made by :meth:`layout`."""
        n = index.numel()
        k = self.dense.k[layer].new_empty(self.kv_heads, n, self.head_dim)
        v = torch.empty_like(k)
        d_rows, s_rows, idx = self._rows_of(from_dense, index)
        k[:, d_rows] = self.dense.k[layer].index_select(1, idx[d_rows])
        v[:, d_rows] = self.dense.v[layer].index_select(1, idx[d_rows])
        if s_rows.numel():
            k[:, s_rows] = self.sparse.k[layer].index_select(1, idx[s_rows])
            v[:, s_rows] = self.sparse.v[layer].index_select(1, idx[s_rows])
        return k, v

    def _rows_of(self, from_dense: torch.Tensor, index: torch.Tensor):
        """The dense and sparse rows of a layout, and its index, on the store's device: copied there once per
        layout (without waiting: host-to-device copies of host memory need no sync) and reused for every layer."""
        memo = self._rows_memo
        if memo is None or memo[0] is not from_dense or memo[1] is not index or memo[2] != self.device:
            host = self._host_rows
            if host is not None and host[0] is from_dense and host[1] is index:
                d_rows, s_rows = host[2], host[3]
            else:  # a layout this store did not make last
                d_rows, s_rows = from_dense.nonzero().squeeze(1), (~from_dense).nonzero().squeeze(1)
            rows = tuple(t.to(self.device, non_blocking=True) for t in (d_rows, s_rows, index))
            memo = self._rows_memo = (from_dense, index, self.device, rows)
        return memo[3]

    def mixed_tokens(self, dense_groups, sparse_stamps: bool = True) -> int:
        """Length of the mixed cache that keeps the given groups dense and the others sparse (see :meth:`layout`)."""
        n = self.prefix_length
        for g, span in enumerate(self.groups):
            n += (span.end - span.start) if dense_groups[g] else \
                (span.sparse_end - self.sparse_first(span, sparse_stamps))
        return n

    # -- accounting ---------------------------------------------------------------------------------------------
    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token costs across all layers (keys and values)."""
        return self.layers * 2 * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    @property
    def dense_bytes(self) -> int:
        return self.length * self.bytes_per_token

    @property
    def sparse_bytes(self) -> int:
        return self.sparse_length * self.bytes_per_token

    # -- moving and saving (serving keeps stores in tiers: GPU, CPU memory, disk) -------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes the store's buffers hold now, spare capacity included (what it costs where it lives)."""
        buffers = self.dense.k + self.dense.v + self.sparse.k + self.sparse.v
        return sum(t.numel() * t.element_size() for t in buffers) + self.sparse_pos.nbytes + self.is_timestamp.nbytes

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The valid rows only, as named tensors (safetensors-ready: contiguous, no spare capacity, no Python
        objects); :meth:`from_state_dict` rebuilds an identical store."""
        state = {
            "shape": torch.tensor([self.layers, self.kv_heads, self.head_dim, self.pool, self.length,
                                   self.sparse_length, self.prefix_length]),
            "groups": torch.tensor([[g.start, g.visual_start, g.end, g.sparse_start, g.sparse_end]
                                    for g in self.groups], dtype=torch.long).reshape(-1, 5),
            "sparse_pos": self.sparse_pos[: self.sparse_length].clone(),
            "is_timestamp": self.is_timestamp[: self.length].clone(),
        }
        for layer in range(self.layers):
            state[f"dense.k.{layer}"] = self.dense.k[layer][:, : self.length].contiguous()
            state[f"dense.v.{layer}"] = self.dense.v[layer][:, : self.length].contiguous()
            state[f"sparse.k.{layer}"] = self.sparse.k[layer][:, : self.sparse_length].contiguous()
            state[f"sparse.v.{layer}"] = self.sparse.v[layer][:, : self.sparse_length].contiguous()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], device) -> "KVStore":
        """A store on ``device`` holding exactly the tensors of :meth:`state_dict` (capacity = length)."""
        layers, kv_heads, head_dim, pool, length, sparse_length, prefix_length = state["shape"].tolist()
        dtype = state["dense.k.0"].dtype
        store = cls(layers, kv_heads, head_dim, dtype, device, pool=pool)
        device = store.device
        for name in ("dense", "sparse"):
            getattr(store, name).assign([state[f"{name}.k.{i}"].to(device) for i in range(layers)],
                                        [state[f"{name}.v.{i}"].to(device) for i in range(layers)])
        for name, n in (("dense", length), ("sparse", sparse_length)):
            for t in getattr(store, name).k + getattr(store, name).v:
                assert t.shape == (kv_heads, n, head_dim), f"{name} KVs of shape {tuple(t.shape)}"
        store.sparse_pos = state["sparse_pos"].to(torch.float64).clone()
        store.is_timestamp = state["is_timestamp"].to(torch.bool).clone()
        store.length, store.sparse_length, store.prefix_length = length, sparse_length, prefix_length
        store.groups = [GroupSpan(*row) for row in state["groups"].tolist()]
        return store


def _pooling_plan(spans: list[tuple[int, int, int]], first: int, pool: int):
    """Where the sparse rows of groups given as (start, timestamp tokens, end) come from, from the spans' Python ints
    (no tensor is read back): per group the timestamp and visual rows, each visual row's pooled window, the rows
    the timestamps take, the pooled rows with their token counts, every new row's position, the groups' spans, and
    the sparse length after them (the new rows start at ``first``)."""
    ts_index, vis_index, windows, sparse_rows, pooled, counts, positions, new_spans = ([] for _ in range(8))
    n_sparse = first
    for start, timestamp_tokens, end in spans:
        visual_start = start + timestamp_tokens
        n_visual = end - visual_start
        n_pooled = -(-n_visual // pool)
        s0 = n_sparse
        ts_index.append(np.arange(start, visual_start))
        vis_index.append(np.arange(visual_start, end))
        # pooled token w of this group lands on sparse row s0 + timestamp_tokens + w
        windows.append(s0 - first + timestamp_tokens + np.arange(n_visual) // pool)
        sparse_rows.extend(range(s0 - first, s0 - first + timestamp_tokens))
        positions.extend(float(p) for p in range(start, visual_start))
        for w in range(n_pooled):
            count = min(pool, n_visual - w * pool)
            pooled.append(s0 - first + timestamp_tokens + w)
            counts.append(count)
            positions.append(visual_start + w * pool + (count - 1) / 2)  # the window's mean position
        n_sparse = s0 + timestamp_tokens + n_pooled
        new_spans.append(GroupSpan(start, visual_start, end, s0, n_sparse))
    return ts_index, vis_index, windows, sparse_rows, pooled, counts, positions, new_spans, n_sparse
