"""What the engine consumes: a prefix, then groups of timestamp tokens and visual tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass
class Group:
    """One timestamped group: timestamp tokens, then visual tokens.

    Each part is either token ids (1-D long tensor) or embeddings (2-D float tensor, one row per token), so text
    stands in for video in benchmarks and a vision model plugs its projected features in directly.
    """

    timestamp: torch.Tensor
    visual: torch.Tensor

    def __len__(self) -> int:
        return self.timestamp.shape[0] + self.visual.shape[0]


def embed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Token ids (n,) -> embeddings (n, hidden); embeddings pass through (cast to the model's dtype and device)."""
    table = model.get_input_embeddings()
    if tokens.dtype in (torch.int32, torch.int64):
        if tokens.dim() != 1:
            raise InputError(f"token ids must be 1-D, got shape {tuple(tokens.shape)}")
        with torch.inference_mode():
            return table(tokens.to(table.weight.device))
    if tokens.dim() != 2 or tokens.shape[1] != table.embedding_dim:
        raise InputError(
            f"embeddings must have shape (tokens, {table.embedding_dim}), got {tuple(tokens.shape)}")
    return tokens.to(table.weight.device, table.weight.dtype)


def embed_all(model: torch.nn.Module, parts: list[torch.Tensor]) -> torch.Tensor:
    """:func:`embed` of several parts, concatenated in order: the token ids of every part are looked up in one call
    (one launch, not one per part)."""
    ids = [p for p in parts if p.dtype in (torch.int32, torch.int64)]
    for p in ids:
        if p.dim() != 1:
            raise InputError(f"token ids must be 1-D, got shape {tuple(p.shape)}")
    table = embed(model, torch.cat(ids)) if ids else None
    out, at = [], 0
    for p in parts:
        if p.dtype in (torch.int32, torch.int64):
            out.append(table[at: at + p.shape[0]])
            at += p.shape[0]
        else:
            out.append(embed(model, p))
    return torch.cat(out) if len(out) > 1 else out[0]
