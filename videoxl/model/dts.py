"""DTS, Dynamic Token Synthesis (the reference's ``SiglipAE``, attribute ``sae``): 4 frames of vision features in,
one grid of tokens out.

Layout quirk of the released weights (VectorSpaceLab/Video-XL ``Video-XL-2/train/videoxl2/model/llava_arch.py``,
which views the features without permuting them): per-frame features (4G, C, H, W) become the DTS input
(G, C, 4, H, W) through a raw memory view, not a permute, so the DTS "time" axis t indexes 4 adjacent vision
channels; DTS channel c holds frame c // (C/4), vision channels 4 (c % (C/4)) + t. :func:`group_frames` does that
view; a "clean" permute would be a different function that the released weights do not compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FRAMES = 4


def group_frames(features: torch.Tensor) -> torch.Tensor:
    """(4G, C, H, W) per-frame features -> (G, C, 4, H, W) by a raw view (the released weights' layout)."""
    n, c, h, w = features.shape
    assert n % FRAMES == 0, "frames come in whole groups of 4"
    return features.contiguous().view(n // FRAMES, c, FRAMES, h, w)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class AttnBlock3D(nn.Module):
    """Single-head spatial self-attention over the H*W positions of each (group, t), residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv3d(channels, channels, 1)
        self.k = nn.Conv3d(channels, channels, 1)
        self.v = nn.Conv3d(channels, channels, 1)
        self.proj_out = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x)

        def tokens(z):  # (B, C, T, H, W) -> (B*T, H*W, C)
            return z.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)

        out = F.scaled_dot_product_attention(tokens(self.q(y)), tokens(self.k(y)), tokens(self.v(y)))
        out = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + self.proj_out(out)


class RelativePosition(nn.Module):
    """Learned embeddings of clipped relative distances: table[clip(j - i) + max] for query i, key j."""

    def __init__(self, channels: int, max_relative: int):
        super().__init__()
        self.max_relative = max_relative
        self.embeddings_table = nn.Parameter(torch.zeros(2 * max_relative + 1, channels))
        nn.init.xavier_uniform_(self.embeddings_table)

    def forward(self, length: int) -> torch.Tensor:
        r = torch.arange(length, device=self.embeddings_table.device)
        distance = (r[None, :] - r[:, None]).clamp(-self.max_relative, self.max_relative)
        return self.embeddings_table[distance + self.max_relative]  # (T_query, T_key, C)


class TemporalAttention(nn.Module):
    """Single-head attention along T at each spatial position, with Shaw-style relative positions, residual.

    Logits: (q_i . k_j) C^-1/2 plus a relative-key term that, as in the released code, is transposed: entry (i, j)
    gets q_j . table_k[clip(i - j)] C^-1/4. Values get sum_j w_ij table_v[clip(j - i)]. Softmax in float32.
    qkv and proj_out start at zero, so a fresh block is the identity.
    """

    def __init__(self, channels: int, max_relative: int = 64):
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.relative_position_k = RelativePosition(channels, max_relative)
        self.relative_position_v = RelativePosition(channels, max_relative)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        for conv in (self.qkv, self.proj_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        seq = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t)  # (B*H*W, C, T)
        q, k, v = self.qkv(self.norm(seq)).chunk(3, dim=1)
        scale = c ** -0.25
        q, k = q * scale, k * scale
        rel_k = self.relative_position_k(t)  # (T, T, C)
        rel_v = self.relative_position_v(t)
        logits = torch.einsum("nci,ncj->nij", q, k)
        logits = logits + torch.einsum("ncj,jic->nij", q, rel_k)  # the released code's transposed key term
        weights = torch.softmax(logits.float(), dim=-1).to(q.dtype)
        out = torch.einsum("nij,ncj->nci", weights, v) + torch.einsum("nij,ijc->nci", weights, rel_v)
        out = self.proj_out(out)
        return x + out.reshape(b, h, w, c, t).permute(0, 3, 4, 1, 2)


class SamePadConv3d(nn.Module):
    """3x3x3 convolution with stride (2, 1, 1) and replicate "same" padding (T: 1 before, 0 after; H, W: 1 and 1),
    padded in float32 as the reference does. Halves T."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, stride=(2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x.float(), (1, 1, 1, 1, 1, 0), mode="replicate").to(x.dtype)
        return self.conv(padded)


class DTS(nn.Module):
    """(G, C, 4, H, W) -> (G, C, 1, H, W): time embedding, then twice (spatial attn, temporal attn, strided conv)."""

    def __init__(self, channels: int, max_relative: int = 64):
        super().__init__()
        self.temporal_encoding = nn.Parameter(torch.randn(FRAMES, channels))
        self.encoder = nn.Sequential(
            AttnBlock3D(channels), TemporalAttention(channels, max_relative), SamePadConv3d(channels),
            AttnBlock3D(channels), TemporalAttention(channels, max_relative), SamePadConv3d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.temporal_encoding.T[None, :, :, None, None]  # t-th embedding on the t axis
        return self.encoder(x)
