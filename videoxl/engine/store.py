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

import torch

from .rope import Rope


@dataclass(frozen=True)
class GroupSpan:
    """Token ranges of one group in the dense sequence and in the sparse sequence."""

    start: int  # first timestamp token
    visual_start: int  # first visual token
    end: int
    sparse_start: int
    sparse_end: int


class _Buffer:
    """A (heads, capacity, dim) tensor pair per layer that grows by doubling; rows [0, length) are valid."""

    def __init__(self, layers: int, heads: int, dim: int, dtype: torch.dtype, device: torch.device):
        self.k = [torch.empty(heads, 0, dim, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.empty(heads, 0, dim, dtype=dtype, device=device) for _ in range(layers)]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[1]

    def reserve(self, n: int) -> None:
        if n <= self.capacity:
            return
        n = max(n, 2 * self.capacity)
        for kv in (self.k, self.v):
            for i, old in enumerate(kv):
                new = old.new_empty(old.shape[0], n, old.shape[2])
                new[:, : old.shape[1]] = old
                kv[i] = new

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer][:, start : start + k.shape[1]] = k
        self.v[layer][:, start : start + v.shape[1]] = v

    def to(self, device: torch.device) -> None:
        self.k = [t.to(device) for t in self.k]
        self.v = [t.to(device) for t in self.v]


class KVStore:
    """Dense and sparse KVs of a pre-filled sequence, with the byte accounting of both.

    Owns its buffers: pre-fill writes through :meth:`write`, decoding reads through :meth:`gather`. The store may
    live on another device than the model (``to("cpu")`` after pre-fill); gathered caches go to the compute device.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device, pool: int = 4):
        if pool < 1:
            raise ValueError(f"pool must be a positive integer, got {pool}")
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

    # -- writing (pre-fill) ------------------------------------------------------------------------------------
    def reserve(self, tokens: int) -> None:
        self.dense.reserve(tokens)
        if self.is_timestamp.numel() < self.dense.capacity:
            grown = torch.zeros(self.dense.capacity, dtype=torch.bool)
            grown[: self.is_timestamp.numel()] = self.is_timestamp
            self.is_timestamp = grown

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one layer's KVs (kv_heads, n, head_dim) for the tokens after ``length``; see :meth:`commit`."""
        self.dense.write(layer, self.length, k.to(self.device, self.dtype), v.to(self.device, self.dtype))

    def commit(self, n: int, is_timestamp: torch.Tensor | None = None) -> None:
        """Declare the ``n`` tokens written to every layer as part of the sequence."""
        if is_timestamp is not None:
            self.is_timestamp[self.length : self.length + n] = is_timestamp
        self.length += n

    def add_groups(self, spans: list[tuple[int, int, int]], rope: Rope) -> None:
        """Register groups whose dense KVs are written, given as (start, timestamp_tokens, end), and compute their
        sparse KVs: all groups of a chunk in one pass per layer."""
        ts_index, vis_index, windows, sparse_rows, pooled_pos, new_spans = [], [], [], [], [], []
        n_sparse = self.sparse_length
        for start, timestamp_tokens, end in spans:
            visual_start = start + timestamp_tokens
            n_visual = end - visual_start
            n_pooled = -(-n_visual // self.pool)
            s0 = n_sparse
            ts_index.append(torch.arange(start, visual_start))
            vis_index.append(torch.arange(visual_start, end))
            # pooled token w of this group lands on sparse row s0 + timestamp_tokens + w
            windows.append(s0 + timestamp_tokens + torch.arange(n_visual) // self.pool)
            sparse_rows.append(torch.arange(s0, s0 + timestamp_tokens))
            pos = torch.arange(visual_start, end, dtype=torch.float64)
            w = torch.arange(n_visual) // self.pool
            pooled_pos.append(torch.cat([
                torch.arange(start, visual_start, dtype=torch.float64),
                torch.zeros(n_pooled, dtype=torch.float64).index_add_(0, w, pos) / torch.bincount(w).double()]))
            n_sparse = s0 + timestamp_tokens + n_pooled
            new_spans.append(GroupSpan(start, visual_start, end, s0, n_sparse))
        first = self.sparse_length
        self.sparse.reserve(n_sparse)
        ts_index, vis_index = torch.cat(ts_index), torch.cat(vis_index)
        windows, sparse_rows = torch.cat(windows), torch.cat(sparse_rows)
        positions = torch.cat(pooled_pos)  # every new sparse row's position, in order
        counts = torch.bincount(windows - first, minlength=n_sparse - first).to(self.device, self.dtype)
        vis_pos = vis_index.double()
        dev = self.device
        ts_d, vis_d, win_d, rows_d = (t.to(dev) for t in (ts_index, vis_index, windows - first, sparse_rows))
        pooled = (counts > 0).nonzero().squeeze(1)
        for layer in range(self.layers):
            k_raw = rope.rotate(self.dense.k[layer].index_select(1, vis_d), -vis_pos)  # un-rotate before averaging
            k_new = torch.zeros(self.kv_heads, n_sparse - first, self.head_dim, dtype=self.dtype, device=dev)
            v_new = torch.zeros_like(k_new)
            k_new.index_add_(1, win_d, k_raw)
            v_new.index_add_(1, win_d, self.dense.v[layer].index_select(1, vis_d))
            k_new[:, pooled] /= counts[pooled][None, :, None]
            v_new[:, pooled] /= counts[pooled][None, :, None]
            k_new[:, pooled] = rope.rotate(k_new[:, pooled], positions[pooled.cpu()])
            k_new[:, rows_d - first] = self.dense.k[layer].index_select(1, ts_d)  # timestamps verbatim
            v_new[:, rows_d - first] = self.dense.v[layer].index_select(1, ts_d)
            self.sparse.write(layer, first, k_new, v_new)
        self.sparse_pos = torch.cat([self.sparse_pos[:first], positions])
        self.sparse_length = n_sparse
        self.groups.extend(new_spans)

    def to(self, device) -> "KVStore":
        """Move the stored KVs (e.g. to CPU memory after a GPU pre-fill)."""
        self.device = torch.device(device)
        self.dense.to(self.device)
        self.sparse.to(self.device)
        return self

    # -- reading (decoding) -------------------------------------------------------------------------------------
    def layout(self, dense_groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Indices and positions of a mixed cache: the prefix, then each group dense or sparse, in order.

        Returns (from_dense (N,) bool, index (N,) into the dense or sparse buffer, positions (N,) float64).
        """
        parts_dense, parts_index, parts_pos = [torch.ones(self.prefix_length, dtype=torch.bool)], [], []
        parts_index.append(torch.arange(self.prefix_length))
        parts_pos.append(torch.arange(self.prefix_length, dtype=torch.float64))
        for g, span in enumerate(self.groups):
            if dense_groups[g]:
                n = span.end - span.start
                parts_dense.append(torch.ones(n, dtype=torch.bool))
                parts_index.append(torch.arange(span.start, span.end))
                parts_pos.append(torch.arange(span.start, span.end, dtype=torch.float64))
            else:
                n = span.sparse_end - span.sparse_start
                parts_dense.append(torch.zeros(n, dtype=torch.bool))
                parts_index.append(torch.arange(span.sparse_start, span.sparse_end))
                parts_pos.append(self.sparse_pos[span.sparse_start : span.sparse_end])
        return torch.cat(parts_dense), torch.cat(parts_index), torch.cat(parts_pos)

    def gather(self, layer: int, from_dense: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (kv_heads, N, head_dim) of one layer for a layout made by :meth:`layout`."""
        n = index.numel()
        k = self.dense.k[layer].new_empty(self.kv_heads, n, self.head_dim)
        v = torch.empty_like(k)
        d_rows = from_dense.nonzero().squeeze(1).to(self.device)
        s_rows = (~from_dense).nonzero().squeeze(1).to(self.device)
        idx = index.to(self.device)
        k[:, d_rows] = self.dense.k[layer].index_select(1, idx[d_rows])
        v[:, d_rows] = self.dense.v[layer].index_select(1, idx[d_rows])
        if s_rows.numel():
            k[:, s_rows] = self.sparse.k[layer].index_select(1, idx[s_rows])
            v[:, s_rows] = self.sparse.v[layer].index_select(1, idx[s_rows])
        return k, v

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

    def mixed_tokens(self, dense_groups: torch.Tensor) -> int:
        """Length of the mixed cache that keeps the given groups dense and the others sparse."""
        n = self.prefix_length
        for g, span in enumerate(self.groups):
            n += (span.end - span.start) if dense_groups[g] else (span.sparse_end - span.sparse_start)
        return n
