"""The attention function videoxl registers with transformers, and the steps it executes.

The model's own layers compute projections, RoPE and MLPs; at each layer they call the registered attention
function with the rotated queries and the new keys and values. The function hands them to the *step* passed down
the forward call as ``videoxl_step``: a pre-fill step writes the KVs to the :class:`KVStore` and attends to exactly
the keys the chunk pattern allows (no dense mask, no wasted work); a decode step appends to a :class:`DecodeCache`
and attends to all of it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .store import KVStore

ATTENTION_NAME = "videoxl"


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float, causal=False):
    # q (H, n, D); k, v (Hkv, K, D); mask (n, K) bool or None
    out = F.scaled_dot_product_attention(
        q[None], k[None], v[None], attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
    )
    return out[0]


class PrefillStep:
    """Pre-fill of ``n`` new tokens starting at ``store.length``.

    ``plain_rows`` attend to ``past`` (indices of earlier tokens, or None for "every earlier token") and causally
    to the new tokens; ``global_rows`` (timestamp tokens in the published evaluation's semantics) attend to every
    earlier token and causally to the new ones. Row indices are local to the step.
    """

    def __init__(self, store: KVStore, n: int, plain_rows: torch.Tensor, past: torch.Tensor | None,
                 global_rows: torch.Tensor):
        self.store, self.n = store, n
        start = store.length
        self.end = start + n
        self.plain_rows, self.global_rows = plain_rows, global_rows
        local = torch.arange(n)
        if past is not None and past.numel() == start and (start == 0 or int(past[-1]) == start - 1):
            past = None  # contiguous history: read it as a slice, no gather
        self.past = past
        n_past = start if past is None else past.numel()
        self.plain_mask = None
        if plain_rows.numel():
            own = local[None, :] <= plain_rows[:, None]
            self.plain_mask = torch.cat([torch.ones(plain_rows.numel(), n_past, dtype=torch.bool), own], 1)
            self.plain_causal = n_past == 0 and plain_rows.numel() == n
        self.global_mask = None
        if global_rows.numel():
            own = local[None, :] <= global_rows[:, None]
            self.global_mask = torch.cat([torch.ones(global_rows.numel(), start, dtype=torch.bool), own], 1)
        # attention-score entries this step computes (the accounting's unit)
        self.pairs = sum(int(m.sum()) for m in (self.plain_mask, self.global_mask) if m is not None)
        self._on_device: dict | None = None

    def _device_tensors(self, device: torch.device) -> dict:
        """Masks and indices moved to the compute device once per step, not once per layer."""
        if self._on_device is None:
            move = lambda t: None if t is None else t.to(device, non_blocking=True)
            past = None if self.past is None else torch.cat([self.past, torch.arange(self.end - self.n, self.end)])
            self._on_device = {"plain_mask": move(self.plain_mask), "global_mask": move(self.global_mask),
                               "plain_rows": move(self.plain_rows), "global_rows": move(self.global_rows),
                               "past": move(past)}
        return self._on_device

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        store = self.store
        store.write(layer, k, v)
        k_all = store.dense.k[layer][:, : self.end]
        v_all = store.dense.v[layer][:, : self.end]
        d = self._device_tensors(q.device)
        if self.plain_rows.numel() == self.n and self.global_rows.numel() == 0 and self.past is None:
            return _sdpa(q, k_all, v_all, None if self.plain_causal else d["plain_mask"], scale,
                         causal=self.plain_causal)
        out = q.new_empty(q.shape)
        if self.plain_rows.numel():
            if self.past is None:
                kp, vp = k_all, v_all
            else:
                kp, vp = k_all.index_select(1, d["past"]), v_all.index_select(1, d["past"])
            rows = d["plain_rows"]
            out[:, rows] = _sdpa(q[:, rows], kp, vp, d["plain_mask"], scale)
        if self.global_rows.numel():
            rows = d["global_rows"]
            out[:, rows] = _sdpa(q[:, rows], k_all, v_all, d["global_mask"], scale)
        return out


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

    If ``capture`` names layers, the step keeps those layers' (rotated) queries for chunk scoring.
    """

    def __init__(self, cache: DecodeCache, n: int, capture: tuple[int, ...] = ()):
        self.cache, self.n, self.capture = cache, n, set(capture)
        self.queries: dict[int, torch.Tensor] = {}
        self.start = cache.length
        self.mask = None
        if n > 1:
            own = torch.arange(n)[None, :] <= torch.arange(n)[:, None]
            self.mask = torch.cat([torch.ones(n, self.start, dtype=torch.bool), own], 1)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if layer in self.capture:
            self.queries[layer] = q
        end = self.start + self.n
        self.cache.k[layer][:, self.start : end] = k
        self.cache.v[layer][:, self.start : end] = v
        mask = None if self.mask is None else self.mask.to(q.device)
        return _sdpa(q, self.cache.k[layer][:, :end], self.cache.v[layer][:, :end], mask, scale)

    def finish(self) -> None:
        self.cache.length += self.n


def videoxl_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, videoxl_step=None,
                      **kwargs):
    """transformers attention interface: (1, H, n, D) queries and (1, Hkv, n, D) new KVs -> (1, n, H, D)."""
    if videoxl_step is None:
        raise RuntimeError("the videoxl attention function needs a videoxl_step argument; run models through "
                           "videoxl.engine, or switch attn_implementation back")
    out = videoxl_step.attend(module.layer_idx, query[0], key[0], value[0], scaling)
    return out.transpose(0, 1).unsqueeze(0), None


AttentionInterface.register(ATTENTION_NAME, videoxl_attention)


@contextmanager
def videoxl_attention_enabled(model: torch.nn.Module):
    """Route the model's attention through videoxl for the duration of the block."""
    config = model.config
    saved = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = saved


def run_step(model: torch.nn.Module, embeds: torch.Tensor, positions: torch.Tensor, step) -> torch.Tensor:
    """One forward of the decoder stack over (n, hidden) embeddings; returns the final hidden states (n, hidden)."""
    with videoxl_attention_enabled(model), torch.inference_mode():
        out = model.model(inputs_embeds=embeds[None], position_ids=positions[None], use_cache=False,
                          videoxl_step=step)
    return out.last_hidden_state[0]
