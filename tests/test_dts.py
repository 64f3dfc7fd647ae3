"""DTS against a straightforward re-statement: explicit loops over frames, channels and positions, no views."""

import math

import pytest
import torch

from videoxl.model.dts import DTS, group_frames


def group_norm(x: torch.Tensor, groups: int, weight, bias, eps=1e-6) -> torch.Tensor:
    """GroupNorm of one sample x (C, ...) by hand."""
    c = x.shape[0]
    out = torch.empty_like(x)
    per = c // groups
    for g in range(groups):
        part = x[g * per:(g + 1) * per]
        mean = part.mean()
        var = ((part - mean) ** 2).mean()
        out[g * per:(g + 1) * per] = (part - mean) / math.sqrt(var + eps)
    for ch in range(c):
        out[ch] = out[ch] * weight[ch] + bias[ch]
    return out


def spatial_attention(x, block):
    """AttnBlock3D: for every group and t, attention over the H*W positions."""
    b, c, t, h, w = x.shape
    out = x.clone()
    conv = lambda m, z: m.weight[:, :, 0, 0, 0] @ z + m.bias  # 1x1x1 conv on one position's channels
    for n in range(b):
        y = group_norm(x[n], 32, block.norm.weight, block.norm.bias)
        for tt in range(t):
            pos = [(i, j) for i in range(h) for j in range(w)]
            q = torch.stack([conv(block.q, y[:, tt, i, j]) for i, j in pos])
            k = torch.stack([conv(block.k, y[:, tt, i, j]) for i, j in pos])
            v = torch.stack([conv(block.v, y[:, tt, i, j]) for i, j in pos])
            att = torch.softmax(q @ k.T / math.sqrt(c), dim=1) @ v
            for p, (i, j) in enumerate(pos):
                out[n, :, tt, i, j] = x[n, :, tt, i, j] + conv(block.proj_out, att[p])
    return out


def temporal_attention(x, block):
    """TemporalAttention at every spatial position, with the released code's relative-position terms."""
    b, c, t, h, w = x.shape
    out = x.clone()
    m = block.relative_position_k.max_relative
    table_k = block.relative_position_k.embeddings_table
    table_v = block.relative_position_v.embeddings_table
    wq, bq = block.qkv.weight[:, :, 0], block.qkv.bias
    for n in range(b):
        for i in range(h):
            for j in range(w):
                seq = group_norm(x[n, :, :, i, j], 32, block.norm.weight, block.norm.bias)  # (C, T)
                qkv = wq @ seq + bq[:, None]
                q, k, v = qkv[:c], qkv[c:2 * c], qkv[2 * c:]
                logits = torch.empty(t, t)
                for a in range(t):
                    for s in range(t):
                        rel = table_k[max(-m, min(m, a - s)) + m]  # transposed: query a, key s uses q_s
                        logits[a, s] = q[:, a] @ k[:, s] / math.sqrt(c) + q[:, s] @ rel / c ** 0.25
                weights = torch.softmax(logits, dim=1)
                res = torch.zeros(c, t)
                for a in range(t):
                    for s in range(t):
                        res[:, a] += weights[a, s] * (v[:, s] + table_v[max(-m, min(m, s - a)) + m])
                out[n, :, :, i, j] = x[n, :, :, i, j] + block.proj_out.weight[:, :, 0] @ res + block.proj_out.bias[:, None]
    return out


def strided_conv(x, block):
    """3x3x3 conv, stride (2,1,1), replicate padding (T: 1 before, 0 after; H, W: 1 each side), by index clamping."""
    b, c, t, h, w = x.shape
    weight, bias = block.conv.weight, block.conv.bias
    t_out = (t + 1 - 3) // 2 + 1
    out = torch.empty(b, weight.shape[0], t_out, h, w)
    for n in range(b):
        for to in range(t_out):
            for i in range(h):
                for j in range(w):
                    acc = bias.clone()
                    for kt in range(3):
                        for ki in range(3):
                            for kj in range(3):
                                ti = min(max(2 * to + kt - 1, 0), t - 1)
                                ii = min(max(i + ki - 1, 0), h - 1)
                                jj = min(max(j + kj - 1, 0), w - 1)
                                acc = acc + weight[:, :, kt, ki, kj] @ x[n, :, ti, ii, jj]
                    out[n, :, to, i, j] = acc
    return out


def dts_by_hand(frames: torch.Tensor, dts: DTS) -> torch.Tensor:
    """frames (4G, C, H, W) -> (G, C, 1, H, W), with the raw-view input layout spelled out index by index."""
    n4, c, h, w = frames.shape
    g = n4 // 4
    x = torch.empty(g, c, 4, h, w)
    for grp in range(g):
        for ch in range(c):
            for t in range(4):
                flat = ch * 4 + t  # position of (ch, t) inside the group's 4*C channel planes
                x[grp, ch, t] = frames[4 * grp + flat // c, flat % c]
                x[grp, ch, t] += dts.temporal_encoding[t, ch]
    enc = dts.encoder
    x = spatial_attention(x, enc[0])
    x = temporal_attention(x, enc[1])
    x = strided_conv(x, enc[2])
    x = spatial_attention(x, enc[3])
    x = temporal_attention(x, enc[4])
    return strided_conv(x, enc[5])


def test_raw_view_layout():
    c = 64
    frames = torch.randn(8, c, 3, 3)
    x = group_frames(frames)
    assert x.shape == (2, c, 4, 3, 3)
    for ch in (0, 5, 17, 40, 63):
        for t in range(4):
            # DTS channel ch holds frame ch // (C/4), vision channels 4 (ch % (C/4)) + t
            torch.testing.assert_close(x[1, ch, t], frames[4 + ch // (c // 4), 4 * (ch % (c // 4)) + t])


@pytest.fixture
def float64():
    """Everything in float64 (but the softmax, float32 by design), so a comparison does not depend on the order of
    float32 sums (thread count, kernel)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_dts_matches_explicit_restatement(float64):
    torch.manual_seed(0)
    c = 64
    dts = DTS(c, max_relative=2).eval()  # a small clip distance so clipping is exercised with T = 4
    with torch.no_grad():
        for module in dts.modules():  # the zero-initialised temporal projections would hide those blocks
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv3d)):
                module.weight.normal_(0, 0.2)
                module.bias.normal_(0, 0.1)
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
        frames = torch.randn(8, c, 3, 3)
        fast = dts(group_frames(frames))
        slow = dts_by_hand(frames, dts)
    assert fast.shape == (2, c, 1, 3, 3)
    # what is left is the softmax, in float32 by design (as the released code): ~4e-5
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_fresh_temporal_attention_is_identity():
    from videoxl.model.dts import TemporalAttention

    block = TemporalAttention(32)
    x = torch.randn(2, 32, 4, 3, 3)
    torch.testing.assert_close(block(x), x)
