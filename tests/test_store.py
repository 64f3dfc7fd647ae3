"""Sparse KVs against a hand computation, RoPE re-rotation, and byte accounting."""

import math

import torch
from helpers import random_groups, tiny_qwen2
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from videoxl.engine.prefill import PrefillConfig, prefill
from videoxl.engine.rope import Rope


def rotate_by_hand(key: list[float], position: float, inv_freq: list[float]) -> list[float]:
    """RoPE of one key vector, pair (i, i + D/2) by pair, with Python floats."""
    half = len(key) // 2
    out = list(key)
    for i in range(half):
        a = position * inv_freq[i]
        x, y = key[i], key[i + half]
        out[i] = x * math.cos(a) - y * math.sin(a)
        out[i + half] = y * math.cos(a) + x * math.sin(a)
    return out


def test_rope_matches_transformers_and_composes():
    model = tiny_qwen2()
    rope = Rope.of(model)
    k = torch.randn(2, 6, 16)
    pos = torch.tensor([0, 3, 7, 100, 2048, 5])
    cos, sin = model.model.rotary_emb(k, pos[None])
    _, expected = apply_rotary_pos_emb(k[None], k[None], cos, sin)
    torch.testing.assert_close(rope.rotate(k, pos.double()), expected[0], atol=1e-5, rtol=1e-5)
    back = rope.rotate(rope.rotate(k, pos.double()), -pos.double())
    torch.testing.assert_close(back, k, atol=1e-5, rtol=1e-5)


def test_sparse_kvs_match_hand_computation():
    model = tiny_qwen2()
    groups = random_groups(5, hidden=64, ts_len=(3, 3), vis_len=(9, 14))  # lengths that do not divide by 4
    video = prefill(model, torch.arange(4), groups, PrefillConfig(chunk=2, window=1, pool=4))
    store = video.store
    inv_freq = Rope.of(model).inv_freq.tolist()
    for layer in range(store.layers):
        for span in store.groups:
            dense_k = store.dense.k[layer]
            dense_v = store.dense.v[layer]
            sparse_k = store.sparse.k[layer][:, span.sparse_start:span.sparse_end]
            sparse_v = store.sparse.v[layer][:, span.sparse_start:span.sparse_end]
            n_ts = span.visual_start - span.start
            # timestamp KVs verbatim
            torch.testing.assert_close(sparse_k[:, :n_ts], dense_k[:, span.start:span.visual_start])
            torch.testing.assert_close(sparse_v[:, :n_ts], dense_v[:, span.start:span.visual_start])
            visual = list(range(span.visual_start, span.end))
            windows = [visual[i:i + 4] for i in range(0, len(visual), 4)]
            assert sparse_k.shape[1] == n_ts + len(windows)
            for w, window in enumerate(windows):
                for h in range(store.kv_heads):
                    raw = [rotate_by_hand(dense_k[h, t].tolist(), -t, inv_freq) for t in window]
                    mean = [sum(col) / len(window) for col in zip(*raw)]
                    centre = sum(window) / len(window)
                    expected_k = rotate_by_hand(mean, centre, inv_freq)
                    expected_v = [sum(col) / len(window) for col in zip(*(dense_v[h, t].tolist() for t in window))]
                    torch.testing.assert_close(sparse_k[h, n_ts + w], torch.tensor(expected_k), atol=1e-5, rtol=1e-5)
                    torch.testing.assert_close(sparse_v[h, n_ts + w], torch.tensor(expected_v), atol=1e-5, rtol=1e-5)
                    assert store.sparse_pos[span.sparse_start + n_ts + w] == centre


def test_byte_accounting_counts_every_layer_head_and_token():
    model = tiny_qwen2(layers=3)
    groups = random_groups(6, hidden=64)
    video = prefill(model, torch.arange(4), groups, PrefillConfig(chunk=2, window=1))
    store = video.store
    per_token = 3 * 2 * 2 * 16 * 4  # layers x (k, v) x kv heads x head dim x fp32 bytes
    assert store.bytes_per_token == per_token
    assert store.dense_bytes == (4 + sum(len(g) for g in groups)) * per_token
    expected_sparse = sum(g.timestamp.numel() + -(-g.visual.shape[0] // 4) for g in groups)
    assert store.sparse_bytes == expected_sparse * per_token
    all_sparse = torch.zeros(6, dtype=torch.bool)
    assert store.mixed_tokens(all_sparse) == 4 + expected_sparse
    assert store.mixed_tokens(~all_sparse) == store.length


def test_mixed_cache_layout_follows_the_groups_in_order():
    model = tiny_qwen2()
    video = prefill(model, torch.arange(4), random_groups(7, hidden=64), PrefillConfig(chunk=2, window=1))
    store = video.store
    dense_groups = [True, False, False, True, False, True, True]
    want_dense, want_index, want_pos = [True] * 4, list(range(4)), [float(p) for p in range(4)]
    for g, span in enumerate(store.groups):  # group by group, as the decoder reads them
        rows = range(span.start, span.end) if dense_groups[g] else range(span.sparse_start, span.sparse_end)
        want_dense += [bool(dense_groups[g])] * len(rows)
        want_index += list(rows)
        want_pos += [float(r) if dense_groups[g] else float(store.sparse_pos[r]) for r in rows]
    from_dense, index, pos = store.layout(dense_groups)
    assert from_dense.tolist() == want_dense and index.tolist() == want_index and pos.tolist() == want_pos
    assert index.numel() == store.mixed_tokens(dense_groups)
    # without the timestamps of sparse groups: their pooled rows alone, at the same positions
    want_dense, want_index, want_pos = [True] * 4, list(range(4)), [float(p) for p in range(4)]
    for g, span in enumerate(store.groups):
        stamp = span.visual_start - span.start
        rows = range(span.start, span.end) if dense_groups[g] else range(span.sparse_start + stamp, span.sparse_end)
        want_dense += [bool(dense_groups[g])] * len(rows)
        want_index += list(rows)
        want_pos += [float(r) if dense_groups[g] else float(store.sparse_pos[r]) for r in rows]
    from_dense, index, pos = store.layout(dense_groups, sparse_stamps=False)
    assert from_dense.tolist() == want_dense and index.tolist() == want_index and pos.tolist() == want_pos
    assert index.numel() == store.mixed_tokens(dense_groups, sparse_stamps=False) < store.mixed_tokens(dense_groups)


def test_sparse_buffer_grows_once_when_the_length_is_known():
    """The sparse buffer is sized from the first forward's sparse rows per *video* token: a long prefix (which has no
    sparse rows) must not make the estimate fall short and double the buffer near the end."""
    model = tiny_qwen2()
    groups = random_groups(12, hidden=64, ts_len=(3, 3), vis_len=(12, 12))
    prefix = torch.arange(60)  # longer than a chunk
    tokens = 60 + sum(len(g) for g in groups)
    video = prefill(model, prefix, groups, PrefillConfig(chunk=1, window=1, per_forward=1), expected_tokens=tokens)
    store = video.store
    assert store.sparse_length == 12 * (3 + 3)  # each group: 3 timestamps + 12 visual tokens pooled by 4
    assert store.sparse_length <= store.sparse.capacity <= store.sparse_length * 1.1  # one growth, no doubling


def test_a_cpu_forward_keeps_its_activations_within_the_budget():
    from videoxl.engine import prefill as prefill_module

    model = tiny_qwen2()
    cfg = model.config
    per_token = (3 * cfg.intermediate_size + 6 * cfg.hidden_size) * 4
    assert prefill_module.forward_tokens(model, PrefillConfig()) == min(prefill_module.FORWARD_TOKENS,
                                                       prefill_module.CPU_FORWARD_BYTES // per_token)
    budget = 3 * 15 * per_token  # room for three 15-token groups per forward
    old = prefill_module.CPU_FORWARD_BYTES
    prefill_module.CPU_FORWARD_BYTES = budget
    try:
        video = prefill(model, torch.arange(4), random_groups(8, hidden=64, ts_len=(3, 3), vis_len=(12, 12)),
                        PrefillConfig(chunk=1, window=7))
    finally:
        prefill_module.CPU_FORWARD_BYTES = old
    assert video.stats.forwards == 1 + 3  # the prefix, then 3 + 3 + 2 groups (window 7 alone would take all 8)
