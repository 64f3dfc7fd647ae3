"""FLOP and byte arithmetic used by the statistics every run reports."""

from __future__ import annotations


def linear_flops_per_token(config) -> int:
    """Multiply-add FLOPs of one token through the projections and MLPs of every layer (embeddings excluded)."""
    h = config.hidden_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or h // heads
    per_layer = h * heads * d * 2 + h * kv_heads * d * 2 + 3 * h * config.intermediate_size
    return 2 * per_layer * config.num_hidden_layers


def attention_flops(pairs: int, config) -> int:
    """FLOPs of ``pairs`` attention-score entries (q.k and the weighted sum of v) over all heads and layers."""
    heads = config.num_attention_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 4 * d * heads * pairs * config.num_hidden_layers


def causal_pairs(n: int) -> int:
    """Attention-score entries of full causal attention over ``n`` tokens."""
    return n * (n + 1) // 2
