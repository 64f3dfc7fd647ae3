"""A generation step with fixed shapes, so that it compiles into one graph (the gpt-fast pattern).

Each generated token runs the decoder over the preallocated :class:`DecodeCache` *whole*: the new key and value
are written at a position held in a tensor, and the step attends to every row of the buffer under a mask of the
rows written so far. No shape depends on how many tokens came before, no value is read on the host, so the step
can be compiled whole with ``torch.compile(fullgraph=True)``: inductor fuses the per-element work into a few
kernels per layer (a CUDA graph, one launch per token, also needs the cache's addresses fixed: :func:`compile_step`).
The host reads each token once, for the stop check.

The step is written against the model's own modules (norms, projections, MLPs, rotary embedding) of the Llama and
Qwen2 families, so it computes what the model computes; ``tests/test_generate.py`` holds it to the eager decoding
path token for token.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
import torch.nn.functional as F

from .attention import DecodeCache

log = logging.getLogger(__name__)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticStep(torch.nn.Module):
    """One greedy token over a :class:`DecodeCache` of fixed capacity: ``(token (1,), at (1,), position (1,))`` ->
    the next token (1,), where ``at`` is the cache row the token's KVs go to and ``position`` its RoPE position."""

    def __init__(self, model: torch.nn.Module, cache: DecodeCache):
        super().__init__()
        self.model = model
        self.k, self.v = cache.k, cache.v
        cfg = model.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scale = self.head_dim ** -0.5
        self.rows = torch.arange(cache.k[0].shape[1], device=cache.k[0].device)
        with torch.inference_mode():  # unwritten rows are masked, but 0 x NaN from uninitialised memory is NaN
            for t in self.k + self.v:
                t[:, cache.length:].zero_()

    def forward(self, token: torch.Tensor, at: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        inner = self.model.model
        x = inner.embed_tokens(token)[None]  # (1, 1, hidden)
        cos, sin = inner.rotary_emb(x, position[None])  # (1, 1, D)
        cos, sin = cos[:, None], sin[:, None]
        visible = (self.rows <= at)[None, None, None]  # (1, 1, 1, capacity): the rows written so far
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, 1, self.heads, self.head_dim).transpose(1, 2)  # (1, H, 1, D)
            k = attn.k_proj(h).view(1, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            self.k[i].index_copy_(1, at, k[0])
            self.v[i].index_copy_(1, at, v[0])
            o = F.scaled_dot_product_attention(q, self.k[i][None], self.v[i][None], attn_mask=visible,
                                               scale=self.scale, enable_gqa=self.kv_heads != self.heads)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.model.get_output_embeddings()(inner.norm(x))[0, -1]
        return logits.argmax(-1, keepdim=True)


def compiled_graphs() -> int:
    """Graphs ``torch.compile`` has compiled in this process so far (a step that raises it compiled)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def compile_step(step: StaticStep) -> Callable:
    """``step`` under ``torch.compile(fullgraph=True)``: one graph, its per-element work fused by inductor (on CUDA
    and on a CPU). Not yet a CUDA graph (``mode="reduce-overhead"``): a question's cache is a new tensor, and a
    CUDA graph replays fixed addresses, so it needs one cache buffer per model reused by every question (to do,
    docs/host.md). Later questions with caches of the same shape reuse the compiled code; a new shape recompiles
    once, then dynamic shapes take over (torch's automatic dynamic shapes)."""
    return torch.compile(step, fullgraph=True)


def greedy(model: torch.nn.Module, cache: DecodeCache, first: int, position: int, max_new_tokens: int,
           stop: Callable[[int], bool] = lambda token: False, compiled: bool = False) -> tuple[list[int], float]:
    """Greedy tokens after ``first`` (already chosen), whose KVs go to ``cache.length`` at RoPE ``position``:
    ``first`` itself, then up to ``max_new_tokens - 1`` more, ending early after a token for which ``stop`` is
    true (that token is not kept). Returns the tokens and the seconds the first step took (compilation, if
    ``compiled`` and this cache's shapes are new)."""
    assert cache.length + max_new_tokens - 1 <= cache.k[0].shape[1], "the cache has no room for the tokens"
    step = StaticStep(model, cache)
    run = compile_step(step) if compiled else step
    device = cache.k[0].device
    tokens = [first]
    first_s = 0.0
    with torch.inference_mode():
        token = torch.tensor([first], device=device)
        at = torch.tensor([cache.length], device=device)
        pos = torch.tensor([position], device=device)
        for i in range(max_new_tokens - 1):
            t0 = time.perf_counter()
            token = run(token, at, pos)
            if i == 0:
                first_s = time.perf_counter() - t0
            cache.length += 1
            at += 1
            pos += 1
            value = int(token)  # the one read per token: the stop check
            if stop(value):
                break
            tokens.append(value)
    return tokens, first_s
