"""Question-independent summaries of a KV store's keys, built while the video streams in and kept beside the store.

The default relevance scorer (``select.py``) ranks chunks by Quest-style page bounds: keys are cut into pages of
``PAGE`` tokens, and a page keeps the box of its position-free keys (element-wise min and max). Pre-fill extends
the boxes after each chunk, so the first question pays nothing for them.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from .rope import Rope
from .store import KVStore, layer_slices

PAGE = 16


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
            rows.append(span.visual_start - first + np.minimum(np.arange(pages * PAGE), n - 1))
            new_owner += [g] * pages
        index = torch.from_numpy(np.concatenate(rows)).to(store.device, non_blocking=True)
        table = None if self.rope.is_identity else self.rope.table(
            -torch.arange(first, store.length, dtype=torch.float64), store.device, store.dtype)
        # a few layers at a time (layer_slices; about 6 copies of a layer's keys live at once):
        # (layers, Hkv, tokens, D) -> (layers, Hkv, pages, PAGE, D)
        per_layer = 6 * store.kv_heads * (store.length - first) * store.head_dim * torch.finfo(store.dtype).bits // 8
        lows, highs = [], []
        for layers in layer_slices(store.layers, per_layer, store.device):
            k = store.dense.keys(layers, first, store.length)
            if table is not None:
                k = self.rope.apply(k, table)
            paged = k.index_select(2, index).unflatten(2, (-1, PAGE))
            lows.append(paged.amin(3))
            highs.append(paged.amax(3))
        low, high = (parts[0] if len(parts) == 1 else torch.cat(parts) for parts in (lows, highs))
        centre.append((high + low) / 2)  # (layers, Hkv, pages, D): a few ops for all layers
        radius.append((high - low) / 2)
        owner.extend(new_owner)
        self._owner = None
        self._page_groups = total

    def forget(self, groups: int) -> None:
        """Drop the page boxes of the first ``groups`` groups (a live stream's forgotten history; pages keep their
        groups' absolute numbers, so scores of the forgotten groups read as -inf)."""
        if self._pages is None:
            return
        centre, radius, owner = self._pages
        n = bisect.bisect_left(owner, groups)  # pages are in group order
        if n:
            centre.drop_front(n)
            radius.drop_front(n)
            del owner[:n]
            self._owner = None

    def pages(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Per layer (Hkv, pages, D) centre and radius of the box of each page of PAGE un-rotated visual keys (pages
        never cross groups), and the group of each page."""
        self.extend()
        centre, radius, owner = self._pages
        if self._owner is None:
            self._owner = torch.tensor(owner)
        return centre.views(), radius.views(), self._owner


class _Growing:
    """A (layers, Hkv, rows, D) tensor appended to along the rows, with doubling capacity (no quadratic copying);
    read as one (Hkv, rows, D) view per layer."""

    def __init__(self, layers: int):
        self.layers, self.rows = layers, 0
        self.buf: torch.Tensor | None = None
        self._views: list[torch.Tensor] | None = None

    def append(self, parts: torch.Tensor | list[torch.Tensor]) -> None:
        """Append (layers, Hkv, n, D) rows (or one (Hkv, n, D) tensor per layer)."""
        if isinstance(parts, list):
            parts = torch.stack(parts)
        n = parts.shape[2]
        if self.buf is None or self.rows + n > self.buf.shape[2]:
            capacity = max(self.rows + n, 2 * (0 if self.buf is None else self.buf.shape[2]))
            grown = parts.new_empty(parts.shape[0], parts.shape[1], capacity, parts.shape[3])
            if self.buf is not None:
                grown[:, :, : self.rows] = self.buf[:, :, : self.rows]
            self.buf = grown
        self.buf[:, :, self.rows : self.rows + n] = parts
        self.rows += n
        self._views = None

    def drop_front(self, n: int) -> None:
        """Forget the first ``n`` rows (the later ones move down; the capacity stays)."""
        self.buf[:, :, : self.rows - n] = self.buf[:, :, n: self.rows].clone()
        self.rows -= n
        self._views = None

    def views(self) -> list[torch.Tensor]:
        if self._views is None:
            self._views = list(self.buf[:, :, : self.rows].unbind(0))
        return self._views
