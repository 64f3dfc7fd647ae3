"""Streaming chunked pre-fill against an independent dense-mask reference (Video-XL-2's
``get_sparse_attention_mask``, VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/w_chunk``)."""

import pytest
import torch
from helpers import full_embeddings, random_groups, reference_mask, tiny_llama, tiny_qwen2
from transformers import DynamicCache

from videoxl.engine.accounting import attention_flops, causal_pairs
from videoxl.engine.layout import Group
from videoxl.engine.prefill import PrefillConfig, prefill


def masked_reference(model, prefix, groups, chunk, window, timestamps):
    """One forward of the whole sequence with the chunk pattern as a dense boolean mask."""
    mask = reference_mask(prefix.numel(), groups, chunk, window, timestamps)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        out = model(inputs_embeds=full_embeddings(model, prefix, groups)[None], attention_mask=mask[None, None],
                    cache=cache, use_cache=True)
    return out.logits[0], cache, mask


@pytest.mark.parametrize("chunk,window,timestamps,prefix_len,n_groups", [
    (4, 3, "global", 5, 11),
    (4, 3, "chunk", 5, 11),
    (3, 1, "global", 0, 10),
    (3, 1, "chunk", 7, 10),
    (2, 0, "global", 3, 9),
    (2, 0, "chunk", 3, 9),
    (1, 2, "global", 4, 7),
    (5, None, "global", 6, 13),
    (4, 1, "chunk", 1, 3),  # fewer groups than one chunk
])
def test_streaming_prefill_equals_dense_mask_reference(chunk, window, timestamps, prefix_len, n_groups):
    model = tiny_qwen2(layers=3)
    prefix = torch.randint(0, 96, (prefix_len,), generator=torch.Generator().manual_seed(3))
    groups = random_groups(n_groups, hidden=64)
    ref_logits, ref_cache, mask = masked_reference(model, prefix, groups, chunk, window, timestamps)

    video = prefill(model, prefix, groups, PrefillConfig(chunk=chunk, window=window, timestamps=timestamps),
                    keep_hidden=True)
    with torch.no_grad():
        logits = model.lm_head(torch.cat(video.hidden))
    store = video.store
    assert store.length == mask.shape[0]
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    for layer in range(3):
        torch.testing.assert_close(store.dense.k[layer][:, : store.length], ref_cache.layers[layer].keys[0],
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(store.dense.v[layer][:, : store.length], ref_cache.layers[layer].values[0],
                                   atol=1e-4, rtol=0)
    # accounting: exactly the entries the reference mask allows, and no more
    assert video.stats.pairs == int(mask.tril().sum()) == int(mask.sum())
    assert video.stats.chunks == -(-n_groups // chunk)
    assert video.stats.attn_flops == attention_flops(int(mask.sum()), model.config)
    assert video.stats.dense_pairs == causal_pairs(mask.shape[0])


@pytest.mark.parametrize("window,per_forward", [(3, 1), (3, 2), (3, 4), (1, 2), (None, 3), (2, None)])
def test_several_chunks_per_forward_equal_chunk_by_chunk_and_the_reference(window, per_forward):
    """A forward that pre-fills several chunks computes exactly the pattern of one chunk per forward."""
    model = tiny_qwen2(layers=2)
    prefix = torch.arange(4)
    groups = random_groups(13, hidden=64)
    ref_logits, _, mask = masked_reference(model, prefix, groups, 2, window, "global")
    one = prefill(model, prefix, groups, PrefillConfig(chunk=2, window=window, per_forward=1), keep_hidden=True)
    seen = []
    many = prefill(model, prefix, iter(groups), PrefillConfig(chunk=2, window=window, per_forward=per_forward),
                   keep_hidden=True, on_chunk=lambda chunks, tokens: seen.append((chunks, tokens)))
    assert len(many.hidden) == len(one.hidden) == 1 + 7  # the prefix, then one entry per chunk either way
    for a, b in zip(one.hidden, many.hidden):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.lm_head(torch.cat(many.hidden)), ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(many.store.sparse.k[1][:, : many.store.sparse_length],
                               one.store.sparse.k[1][:, : one.store.sparse_length], atol=1e-5, rtol=0)
    assert many.stats.pairs == one.stats.pairs == int(mask.sum())
    assert [c for c, _ in seen] == list(range(1, 8))  # progress is still reported chunk by chunk
    assert seen[-1][1] == many.store.length


def test_per_forward_beyond_the_window_is_refused():
    with pytest.raises(ValueError, match=r"per_forward .* window \+ 1 \(3\)"):
        PrefillConfig(window=2, per_forward=4)
    assert PrefillConfig(window=2).chunks_per_forward == 3
    assert PrefillConfig(window=0).chunks_per_forward == 1
    assert PrefillConfig(window=None).chunks_per_forward == 8


def test_window_zero_is_own_chunk_only_not_full_attention():
    """The reference code's `-0` bug made window 0 mean "everything"; here it means own chunk only."""
    model = tiny_qwen2()
    prefix = torch.arange(4)
    groups = random_groups(8, hidden=64)
    own = prefill(model, prefix, groups, PrefillConfig(chunk=2, window=0))
    full = prefill(model, prefix, groups, PrefillConfig(chunk=2, window=None))
    assert own.stats.pairs < full.stats.pairs
    assert full.stats.pairs == causal_pairs(full.stats.tokens)
    last = own.store.groups[-1]
    assert not torch.allclose(own.store.dense.k[1][:, last.start:last.end], full.store.dense.k[1][:, last.start:last.end])


def test_token_ids_and_embeddings_are_interchangeable():
    model = tiny_llama()
    prefix = torch.arange(5)
    id_groups = random_groups(6)  # visual parts as token ids
    table = model.get_input_embeddings()
    with torch.no_grad():
        emb_groups = [Group(g.timestamp, table(g.visual)) for g in id_groups]
    a = prefill(model, prefix, id_groups, PrefillConfig(chunk=2, window=1))
    b = prefill(model, prefix, emb_groups, PrefillConfig(chunk=2, window=1))
    torch.testing.assert_close(a.store.dense.k[0][:, : a.store.length], b.store.dense.k[0][:, : b.store.length])


def test_groups_may_be_a_generator_and_store_grows():
    model = tiny_qwen2()
    groups = random_groups(9, hidden=64)
    video = prefill(model, torch.arange(3), (g for g in groups), PrefillConfig(chunk=2, window=1))
    assert len(video.store.groups) == 9
    assert video.store.length == 3 + sum(len(g) for g in groups)


@pytest.mark.parametrize("kwargs,message", [
    ({"chunk": 0}, "chunk"), ({"chunk": 2.5}, "chunk"), ({"window": -1}, "window"),
    ({"timestamps": "both"}, "timestamps"), ({"pool": 0}, "pool"),
])
def test_invalid_config_is_a_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrefillConfig(**kwargs)


def test_input_without_groups_is_rejected():
    with pytest.raises(ValueError, match="no groups"):
        prefill(tiny_qwen2(), torch.arange(4), [], PrefillConfig())


def test_group_without_visual_tokens_is_rejected():
    with pytest.raises(ValueError, match="no visual tokens"):
        prefill(tiny_qwen2(), torch.arange(4), [Group(torch.arange(3), torch.empty(0, dtype=torch.long))])


def test_unsupported_model_family_is_rejected():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="unsupported model family 'gpt2'"):
        prefill(model, torch.arange(4), random_groups(2, vocab=64))


def test_full_window_equals_one_shot_forward_on_smollm2(smollm2):
    """Real weights: chunked pre-fill with a window that covers everything is the model's own forward."""
    model, tokenizer = smollm2
    prefix = torch.tensor(tokenizer("<|im_start|>user\nWatch this:")["input_ids"])
    text = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 3
    groups = [Group(torch.tensor(tokenizer(f"Time {4.0 * g:.1f}s:")["input_ids"]),
                    torch.tensor(tokenizer(" " + text)["input_ids"])[: 40 + 7 * g]) for g in range(7)]
    video = prefill(model, prefix, groups, PrefillConfig(chunk=2, window=None), keep_hidden=True)
    full = torch.cat([prefix] + [torch.cat([g.timestamp, g.visual]) for g in groups])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        ref = model(full[None], cache=cache, use_cache=True).logits[0]
        logits = model.lm_head(torch.cat(video.hidden))
    torch.testing.assert_close(logits, ref, atol=1e-3, rtol=1e-4)
    for layer in (0, 15, 29):
        torch.testing.assert_close(video.store.dense.k[layer][:, : full.numel()], cache.layers[layer].keys[0],
                                   atol=1e-4, rtol=1e-4)
    assert (logits.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("chunk,window,timestamps", [(4, 3, "global"), (2, 0, "chunk"), (3, None, "global"),
                                                     (1, 1, "chunk")])
def test_training_mask_equals_the_reference_pattern(chunk, window, timestamps):
    from videoxl.engine.pattern import chunk_mask

    groups = random_groups(9)
    expected = reference_mask(5, groups, chunk, window, timestamps, question=6)
    got = chunk_mask(5, [(g.timestamp.numel(), g.visual.numel()) for g in groups], 6, chunk, window, timestamps)
    assert torch.equal(got, expected)
