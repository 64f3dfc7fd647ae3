"""A KV store with two horizons: the dense KVs of old groups are released, their sparse KVs stay; groups older
still can be forgotten altogether.

A live stream pre-fills chunk after chunk for hours. Its recent chunks stay dense (what pre-fill's window and the
newest questions need); groups older than the horizon keep only their sparse KVs (timestamps verbatim, visual
tokens pooled by ``pool``): about a quarter of their dense size, so resident dense memory stays flat.

Every reader of the store keeps addressing dense rows by their absolute position, as in :class:`KVStore`: rows
below the released range and after it are where they were (shifted down in memory), and a released row reads as
its group's sparse KV (a pooled key rotated to the row's own position, the pooled value; timestamp rows exactly).
So relevance scoring over the whole history keeps working, on the sparse form for released groups, and the
mixed caches of decoding hold released groups sparse whatever the selection chose.

Sparse KVs still grow with the stream. :meth:`HorizonStore.forget` drops the first groups' sparse KVs too (their
dense ones must be released already); sparse rows keep their absolute numbers, and no reader may ask for a
forgotten group (decoding starts at :attr:`HorizonStore.forgotten_groups` or later). With both horizons set, what a
stream holds in memory is flat: a few bytes of bookkeeping per group (its spans, its sparse rows' positions) aside.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engine.rope import Rope
from ..engine.store import KVStore, _Buffer


class _Absolute:
    """One layer's keys or values (heads, rows, dim) of a :class:`HorizonStore` read by absolute row, of which
    ``data`` holds only some rows: what readers of a plain buffer use of a tensor."""

    def __init__(self, store: "HorizonStore", layer: int, kind: str, data: torch.Tensor):
        self.store, self.layer, self.kind, self.data = store, layer, kind, data

    def missing(self) -> int:
        """Rows the logical buffer has and ``data`` does not."""
        raise NotImplementedError

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.data.shape[0], self.data.shape[1] + self.missing(), self.data.shape[2]))

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        return self.data.device

    def numel(self) -> int:
        return self.data.numel()

    def element_size(self) -> int:
        return self.data.element_size()

    def new_empty(self, *shape, **kwargs) -> torch.Tensor:
        return self.data.new_empty(*shape, **kwargs)

    def to(self, *args, **kwargs) -> "_Absolute":
        return type(self)(self.store, self.layer, self.kind, self.data.to(*args, **kwargs))

    def _rows(self, key) -> tuple[int, int]:
        assert isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None) and isinstance(key[1], slice), key
        start, stop, step = key[1].indices(self.shape[1])
        assert step == 1, key
        return start, stop


class _Tail(_Absolute):
    """Sparse rows of which the first ``store.forgotten_sparse`` (the forgotten groups') are gone."""

    def missing(self) -> int:
        return self.store.forgotten_sparse

    def __getitem__(self, key) -> torch.Tensor:
        a, b = self._rows(key)
        gone = self.store.forgotten_sparse
        assert a >= gone or a == b, "forgotten sparse rows cannot be read"
        return self.data[:, max(a - gone, 0): max(b - gone, 0)]

    def __setitem__(self, key, value: torch.Tensor) -> None:
        a, b = self._rows(key)
        gone = self.store.forgotten_sparse
        assert a >= gone, "forgotten sparse rows cannot be written"
        self.data[:, a - gone: b - gone] = value

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        """Rows by absolute number; none of them forgotten (readers start at the first group kept)."""
        assert dim == 1
        gone = self.store.forgotten_sparse
        return self.data.index_select(1, index - gone if gone else index)


class _Rows(_Absolute):
    """Dense rows of which the released range ``[store.release_start, store.release_end)`` is gone from ``data``
    (it holds the rows before and after it, contiguously) and reads as the released groups' sparse KVs."""

    def missing(self) -> int:
        return self.store.release_end - self.store.release_start

    def __getitem__(self, key) -> torch.Tensor:
        a, b = self._rows(key)
        lo, hi = self.store.release_start, self.store.release_end
        if b <= lo or hi == lo:
            return self.data[:, a:b]
        if a >= hi:
            return self.data[:, a - (hi - lo): b - (hi - lo)]
        return self.index_select(1, torch.arange(a, b, device=self.data.device))

    def __setitem__(self, key, value: torch.Tensor) -> None:
        a, b = self._rows(key)
        lo, hi = self.store.release_start, self.store.release_end
        assert a >= hi or b <= lo, "released rows are read-only"
        shift = 0 if b <= lo else hi - lo
        self.data[:, a - shift: b - shift] = value

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        assert dim == 1
        lo, hi = self.store.release_start, self.store.release_end
        if hi == lo:
            return self.data.index_select(1, index)
        index = index.to(self.data.device)
        released = (index >= lo) & (index < hi)
        physical = torch.where(index >= hi, index - (hi - lo), index)
        if not bool(released.any()):
            return self.data.index_select(1, physical)
        out = self.data.new_empty(self.data.shape[0], index.numel(), self.data.shape[2])
        kept = (~released).nonzero().squeeze(1)
        out[:, kept] = self.data.index_select(1, physical[kept])
        where = released.nonzero().squeeze(1)
        out[:, where] = self.store.released_rows(self.layer, self.kind, index[where])
        return out


class _HorizonBuffer(_Buffer):
    """A buffer read by absolute row (``rows``: :class:`_Rows` for the dense buffer, whose rows after the prefix
    can be released, :class:`_Tail` for the sparse one, whose first rows can be forgotten)."""

    def __init__(self, store: "HorizonStore", layers: int, heads: int, dim: int, dtype, device, rows=_Rows):
        super().__init__(layers, heads, dim, dtype, device)
        self.k = [rows(store, i, "k", t) for i, t in enumerate(self.k)]
        self.v = [rows(store, i, "v", t) for i, t in enumerate(self.v)]

    def reserve(self, n: int) -> None:
        if n <= self.capacity:
            return
        physical = n - (self.capacity - self.k[0].data.shape[1])
        physical = max(physical, 2 * self.k[0].data.shape[1])
        for rows in self.k + self.v:
            old = rows.data
            rows.data = old.new_empty(old.shape[0], physical, old.shape[2])
            rows.data[:, : old.shape[1]] = old

    def _tensors(self) -> list[torch.Tensor]:  # drop() works on the rows held, by physical row
        return [rows.data for rows in self.k + self.v]

    # the all-layer methods of _Buffer, a layer at a time through the absolute-row readers
    def rows(self, layers: range, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.stack([self.k[i].index_select(1, index) for i in layers]),
                torch.stack([self.v[i].index_select(1, index) for i in layers]))

    def keys(self, layers: range, start: int, end: int) -> torch.Tensor:
        return torch.stack([self.k[i][:, start:end] for i in layers])

    def block(self, layers: range, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys(layers, start, end), torch.stack([self.v[i][:, start:end] for i in layers])

    def write_block(self, layers: range, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        for i, layer in enumerate(layers):
            self.write(layer, start, k[i], v[i])

    def to(self, device: torch.device) -> None:
        for rows in self.k + self.v:
            rows.data = rows.data.to(device)


class HorizonStore(KVStore):
    """A :class:`KVStore` that can release the dense KVs of its oldest groups (:meth:`release`), keeping their
    sparse KVs, and forget older groups altogether (:meth:`forget`). Pre-fill fills it like any store
    (``prefill(..., store=HorizonStore(...))``)."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device, pool: int = 4):
        super().__init__(layers, kv_heads, head_dim, dtype, device, pool=pool)
        self.dense = _HorizonBuffer(self, layers, kv_heads, head_dim, dtype, self.device)
        self.sparse = _HorizonBuffer(self, layers, kv_heads, head_dim, dtype, self.device, rows=_Tail)
        self.release_start = self.release_end = 0  # absolute dense rows [start, end) released
        self.released_groups = 0  # the first groups, whose dense KVs are gone
        self.forgotten_groups = 0  # the first groups, whose sparse KVs are gone too
        self.forgotten_sparse = 0  # their sparse rows
        self.rope: Rope | None = None
        self._starts = torch.empty(0, dtype=torch.long)

    def add_groups(self, spans: list[tuple[int, int, int]], rope: Rope) -> None:
        self.rope = rope
        super().add_groups(spans, rope)
        self._starts = torch.tensor([g.start for g in self.groups], dtype=torch.long)

    @property
    def resident_groups(self) -> int:
        """Groups whose dense KVs are in memory."""
        return len(self.groups) - self.released_groups

    def release(self, groups: int) -> None:
        """Release the dense KVs of the first ``groups`` groups (those already released stay so)."""
        if groups <= self.released_groups:
            return
        assert groups <= len(self.groups)
        first = self.groups[0].start  # the prefix ends here; it is never released
        end = self.groups[groups - 1].end
        lo, hi = self.release_start or first, self.release_end or first
        physical_valid = self.length - (hi - lo)
        self.dense.drop(first, end - hi, physical_valid)
        self.release_start, self.release_end = first, end
        self.released_groups = groups

    def forget(self, groups: int) -> None:
        """Forget the first ``groups`` groups (those already forgotten stay so): their sparse KVs are dropped. Their
        dense KVs must be released already; no layout may start before them afterwards."""
        if groups <= self.forgotten_groups:
            return
        assert groups <= self.released_groups, "only groups whose dense KVs are released can be forgotten"
        end = self.groups[groups - 1].sparse_end
        self.sparse.drop(0, end - self.forgotten_sparse, self.sparse_length - self.forgotten_sparse)
        self.forgotten_sparse, self.forgotten_groups = end, groups

    def released_rows(self, layer: int, kind: str, rows: torch.Tensor) -> torch.Tensor:
        """Released dense rows (heads, n, dim) read from their groups' sparse KVs: a timestamp row exactly, a
        visual row as its pooled window's value, or key rotated from the window's mean position to the row's."""
        rows = rows.cpu()
        group = torch.searchsorted(self._starts, rows, right=True) - 1
        starts = self._starts[group]
        spans = [self.groups[g] for g in group.tolist()]
        visual_start = torch.tensor([s.visual_start for s in spans], dtype=torch.long)
        sparse_start = torch.tensor([s.sparse_start for s in spans], dtype=torch.long)
        is_visual = rows >= visual_start
        sparse_row = torch.where(is_visual, sparse_start + (visual_start - starts) + (rows - visual_start) // self.pool,
                                 sparse_start + rows - starts)
        buffer = self.sparse.k if kind == "k" else self.sparse.v
        out = buffer[layer].index_select(1, sparse_row.to(self.device))
        if kind == "k" and self.rope is not None:
            out = self.rope.rotate(out, rows.double() - self.sparse_pos[sparse_row])
        return out

    def _resident(self, dense_groups, first: int = 0) -> np.ndarray:
        assert first >= self.forgotten_groups, f"groups before {self.forgotten_groups} are forgotten, not {first}"
        dense = np.array(dense_groups, dtype=bool).reshape(-1)  # a copy: the caller's flags stay as they were
        dense[: self.released_groups] = False
        return dense

    def layout(self, dense_groups, sparse_stamps: bool = True,
               first: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`KVStore.layout`, with released groups sparse whatever ``dense_groups`` says."""
        return super().layout(self._resident(dense_groups, first), sparse_stamps, first)

    def mixed_tokens(self, dense_groups, sparse_stamps: bool = True) -> int:
        """As :meth:`KVStore.mixed_tokens`, with released groups sparse (for a store that has forgotten nothing)."""
        return super().mixed_tokens(self._resident(dense_groups), sparse_stamps)
