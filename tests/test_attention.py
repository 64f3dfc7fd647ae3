"""The attention the engine registers: mask-free parts merged by log-sum-exp, and routing without shared state."""

import threading

import pytest
import torch
from helpers import full_embeddings, random_groups, reference_mask, tiny_qwen2, decoding, heads_of
from transformers import DynamicCache

from videoxl.engine.attention import ATTENTION_NAME, attend, attend_math, attend_split, merge, prepare
from videoxl.engine.decode import Decoder
from videoxl.engine.prefill import PrefillConfig, prefill


def full_attention(q, k, v, scale, allowed):
    """Softmax attention with an explicit (n, K) boolean pattern, GQA by repeating KV heads."""
    g = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(g, 0).double(), v.repeat_interleave(g, 0).double()
    s = (q.double() @ k.transpose(1, 2)) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


@pytest.mark.parametrize("heads,kv_heads,n,keys,causal", [(4, 2, 7, 9, False), (4, 2, 5, 5, True),
                                                          (6, 1, 1, 30, False), (3, 3, 12, 12, True)])
def test_attend_returns_output_and_log_sum_exp(heads, kv_heads, n, keys, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(h, m, 16, generator=g) for h, m in ((heads, n), (kv_heads, keys), (kv_heads, keys)))
    allowed = torch.ones(n, keys, dtype=torch.bool).tril(keys - n) if causal else torch.ones(n, keys, dtype=torch.bool)
    ref_out, ref_lse = full_attention(q, k, v, 0.25, allowed)
    for fn in (attend, attend_math):
        out, lse = fn(q, k, v, 0.25, causal) if fn is attend else fn(
            q, k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0), 0.25, causal)
        assert out.shape == q.shape and lse.shape == (heads, n) and lse.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


def test_merge_of_disjoint_key_ranges_is_exact_attention():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(4, 6, 16, generator=g)
    k, v = torch.randn(2, 40, 16, generator=g), torch.randn(2, 40, 16, generator=g)
    parts = [attend(q, k[:, :3], v[:, :3], 0.3), attend(q, k[:, 10:34], v[:, 10:34], 0.3),
             attend(q, k[:, 34:], v[:, 34:], 0.3, causal=True)]
    allowed = torch.zeros(6, 40, dtype=torch.bool)
    allowed[:, :3] = allowed[:, 10:34] = True
    allowed[:, 34:] = torch.ones(6, 6, dtype=torch.bool).tril()
    ref, _ = full_attention(q, k, v, 0.3, allowed)
    torch.testing.assert_close(merge(parts).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_two_part_merge_in_the_outputs_dtype_is_within_one_rounding(dtype):
    """Two parts (the pre-fill's own square and its past) merge in the outputs' dtype: against the exact attention,
    no further off than the exact result rounded to that dtype, twice over."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, 6, 16, generator=g).to(dtype)
    k, v = torch.randn(2, 30, 16, generator=g).to(dtype), torch.randn(2, 30, 16, generator=g).to(dtype)
    parts = [attend(q, k[:, :24], v[:, :24], 0.3), attend(q, k[:, 24:], v[:, 24:], 0.3, causal=True)]
    allowed = torch.zeros(6, 30, dtype=torch.bool)
    allowed[:, :24] = True
    allowed[:, 24:] = torch.ones(6, 6, dtype=torch.bool).tril()
    ref, _ = full_attention(q.double(), k.double(), v.double(), 0.3, allowed)
    out = merge(parts)
    assert out.dtype == dtype
    rounding = (ref.to(dtype).double() - ref).abs().max().item()
    assert (out.double() - ref).abs().max().item() <= 2 * rounding + 1e-6


@pytest.mark.parametrize("splits", [1, 2, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64: no fused kernel, segment by segment
def test_split_keys_merge_to_the_same_attention(splits, dtype):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(6, 3, 16, generator=g, dtype=dtype)
    buf = torch.randn(2, 200, 16, generator=g, dtype=dtype)  # a store buffer: the keys are a strided slice of it
    k, v = buf[:, 20:120], buf[:, 50:150]
    out, lse = attend_split(q, k, v, 0.25, splits=splits)
    ref_out, ref_lse = attend(q, k, v, 0.25)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_attend_accepts_keys_in_another_dtype():
    """A store kept in bf16 read by fp32 compute: keys are cast to the queries' dtype, not mixed."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, 5, 16, generator=g)
    k, v = torch.randn(2, 9, 16, generator=g), torch.randn(2, 9, 16, generator=g)
    out, _ = attend(q, k.bfloat16(), v.bfloat16(), 0.25)
    ref, _ = attend(q, k.bfloat16().float(), v.bfloat16().float(), 0.25)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("timestamps", ["global", "chunk"])
def test_bf16_chunked_prefill_matches_fp32_mask_reference(timestamps):
    """bf16 compute goes through the same fused kernels; within bf16 tolerance of the fp32 dense-mask forward."""
    model = tiny_qwen2(layers=2)
    prefix = torch.arange(5)
    groups = random_groups(9, hidden=64)
    mask = reference_mask(5, groups, 2, 1, timestamps)
    with torch.no_grad():
        ref = model.model(inputs_embeds=full_embeddings(model, prefix, groups)[None],
                          attention_mask=mask[None, None]).last_hidden_state[0]
    bf16 = tiny_qwen2(layers=2).to(torch.bfloat16)
    video = prefill(bf16, prefix, groups, PrefillConfig(chunk=2, window=1, timestamps=timestamps), keep_hidden=True)
    assert video.store.dtype == torch.bfloat16
    got = torch.cat(video.hidden).float()
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()


# -- routing ---------------------------------------------------------------------------------------------------
def test_prepared_model_runs_its_own_forward_and_generate_unchanged():
    model, reference = tiny_qwen2(), tiny_qwen2()
    ids = torch.randint(0, 96, (1, 23), generator=torch.Generator().manual_seed(4))
    padded = torch.ones(2, 23, dtype=torch.long)
    padded[1, :5] = 0  # left padding: the fallback must honour the attention mask
    prefill(model, torch.arange(4), random_groups(4, hidden=64), PrefillConfig(chunk=2))
    assert model.config._attn_implementation == ATTENTION_NAME
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)
        both = ids.repeat(2, 1)
        torch.testing.assert_close(model(both, attention_mask=padded).logits,
                                   reference(both, attention_mask=padded).logits, atol=1e-5, rtol=1e-5)
        a = model.generate(ids, max_new_tokens=6, do_sample=False)
        b = reference.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_steps_do_not_touch_the_shared_config():
    model = tiny_qwen2()
    prepare(model)
    seen = []

    class Spy(type(model.config)):
        pass

    config = model.config
    original = type(config)._attn_implementation

    def record(self, value):
        seen.append(value)
        original.fset(self, value)

    Spy._attn_implementation = property(original.fget, record)
    config.__class__ = Spy
    try:
        video = prefill(model, torch.arange(4), random_groups(6, hidden=64), PrefillConfig(chunk=2))
        Decoder(model, video, heads=heads_of(model)).answer(torch.arange(10, 14), **decoding(topk=1, chunk=1, max_new_tokens=3))
    finally:
        config.__class__ = Spy.__mro__[1]
    assert seen == []


def test_threads_sharing_one_model_get_serial_results():
    model = tiny_qwen2(layers=3)
    inputs = [(torch.arange(3 + i), random_groups(5 + 2 * i, hidden=64, seed=i), torch.arange(10, 15 + i))
              for i in range(2)]

    def run(i):
        prefix, groups, question = inputs[i]
        video = prefill(model, prefix, groups, PrefillConfig(chunk=2, window=1))
        answer = Decoder(model, video, heads=heads_of(model)).answer(question, **decoding(topk=1, chunk=1, max_new_tokens=6))
        return video.store.dense.k[2][:, : video.store.length].clone(), answer.tokens, answer.dense_chunks

    serial = [run(i) for i in range(2)]
    for _ in range(3):
        results: dict = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(i))) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(2):
            assert torch.equal(results[i][0], serial[i][0])
            assert results[i][1:] == serial[i][1:]


def test_generate_from_a_chunk_filled_dynamic_cache_still_works_after_prepare():
    """A plain transformers cache path (no videoxl step) on a prepared model."""
    model = tiny_qwen2()
    prepare(model)
    ids = torch.arange(20)[None]
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :12], cache=cache, use_cache=True)
        out = model(ids[:, 12:], cache=cache, use_cache=True).logits
        ref = tiny_qwen2()(ids).logits[:, 12:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
