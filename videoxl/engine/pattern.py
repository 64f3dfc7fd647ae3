"""The chunk attention pattern as a dense boolean mask, for training on short sequences.

Inference never builds this (pre-fill streams, see prefill.py); training does, because sequences are short and
one masked forward per sample is the simplest way to make the sparse pattern native to a model.
"""

from __future__ import annotations

from typing import Sequence

import torch


def chunk_mask(prefix: int, groups: Sequence[tuple[int, int]], tail: int, chunk: int, window: int | None,
               timestamps: str = "global") -> torch.Tensor:
    """(L, L) bool, True where attention is allowed, for a prefix, groups of (timestamp, visual) token counts and a
    ``tail`` (question and answer) that sees everything. Same rules as pre-filling (VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/w_chunk/.../llava_qwen.py``,
    ``get_sparse_attention_mask``)."""
    owner, is_ts = [torch.full((prefix,), -1)], [torch.zeros(prefix, dtype=torch.bool)]
    for g, (ts, vis) in enumerate(groups):
        owner.append(torch.full((ts + vis,), g // chunk))
        is_ts.append(torch.cat([torch.ones(ts, dtype=torch.bool), torch.zeros(vis, dtype=torch.bool)]))
    owner.append(torch.full((tail,), -2))
    is_ts.append(torch.zeros(tail, dtype=torch.bool))
    owner, is_ts = torch.cat(owner), torch.cat(is_ts)
    n = owner.numel()
    row, col = owner[:, None], owner[None, :]
    allowed = (col == -1) | (row < 0) | is_ts[None, :]
    if timestamps == "global":
        allowed |= is_ts[:, None]
    allowed |= (row >= col) & (col >= 0) & ((row - col <= window) if window is not None else True)
    return allowed & torch.ones(n, n, dtype=torch.bool).tril()
