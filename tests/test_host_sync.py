"""The hot loops never make the host wait for the device: checked on the CPU by counting ATen ops.

A ``TorchDispatchMode`` (``videoxl.engine.dispatch.OpCounter``) sees every op the host issues, whatever the device;
in strict mode it fails at the first synchronising op (``.item()``, ``nonzero``, boolean-mask indexing, ``if t:``,
``.tolist()``) beyond what a loop is allowed: nothing in pre-fill, one stop check per generated token.
"""

import pytest
import torch
from helpers import random_groups, tiny_llama, tiny_qwen2

from videoxl.engine.attention import DecodeCache, DecodeStep, run_step
from videoxl.engine.dispatch import HostSync, OpCounter
from videoxl.engine.layout import embed
from videoxl.engine.prefill import PrefillConfig, prefill


def test_counter_sees_every_kind_of_host_read():
    t = torch.arange(6.0)
    with OpCounter() as counter:
        t[0].item()
        bool(t.any())
        t.nonzero()
        t[t > 2]
        t.tolist()
        torch.repeat_interleave(torch.tensor([1, 2]))
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)  # size given: no wait
        t.index_select(0, torch.tensor([1, 2]))  # plain index ops: no wait
    assert counter.syncs["_local_scalar_dense"] >= 2
    assert counter.syncs["nonzero"] == 1 and counter.syncs["index[bool]"] == 1 and counter.syncs["tolist"] == 1
    assert counter.syncs["repeat_interleave"] == 1
    assert counter.views >= 1 and counter.total > counter.sync_total
    with pytest.raises(HostSync, match="nonzero"):
        with OpCounter(strict=True, allow_syncs=0):
            t.nonzero()


@pytest.mark.parametrize("timestamps", ["global", "chunk"])
@pytest.mark.parametrize("window", [1, None])
def test_prefill_issues_no_host_sync(timestamps, window):
    model = tiny_qwen2(layers=2)
    prefix, groups = torch.arange(5), random_groups(14, hidden=64)
    config = PrefillConfig(chunk=2, window=window, timestamps=timestamps)
    reference = prefill(model, prefix, groups, config)  # also reads the model's rotation once (cached per model)
    with OpCounter(strict=True) as counter:
        video = prefill(model, prefix, groups, config)
    assert counter.sync_total == 0 and counter.total > 0
    n = reference.store.length
    assert video.store.length == n and video.stats.pairs == reference.stats.pairs
    assert video.stats.forwards == reference.stats.forwards > 1
    for layer in range(2):
        torch.testing.assert_close(video.store.dense.k[layer][:, :n], reference.store.dense.k[layer][:, :n])
        torch.testing.assert_close(video.store.sparse.v[layer][:, : video.store.sparse_length],
                                   reference.store.sparse.v[layer][:, : reference.store.sparse_length])
    assert torch.equal(video.store.sparse_pos, reference.store.sparse_pos)


def test_generation_steps_sync_only_for_the_stop_check():
    model = tiny_llama()
    torch.manual_seed(3)
    layers, kv_heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    past = 40
    keys = [torch.randn(kv_heads, past, head_dim) for _ in range(layers)]
    values = [torch.randn(kv_heads, past, head_dim) for _ in range(layers)]
    new_tokens = 12
    lm_head = model.get_output_embeddings()

    def generate(cache, counter=None):
        tokens, position = [5], past
        hidden = None
        for _ in range(new_tokens):
            step = DecodeStep(cache, 1)
            hidden = run_step(model, embed(model, torch.tensor(tokens[-1:])), torch.arange(position, position + 1),
                              step)
            step.finish()
            position += 1
            with torch.inference_mode():
                logits = lm_head(hidden[-1:])[0]
            if counter is not None:
                counter.allow(1)  # the stop check: the token is read on the host once per step
            tokens.append(int(logits.argmax()))
        return tokens

    want = generate(DecodeCache(keys, values, new_tokens))
    with OpCounter(strict=True) as counter:
        got = generate(DecodeCache(keys, values, new_tokens), counter)
    assert got == want
    assert counter.sync_total == new_tokens


@pytest.mark.parametrize("heads", ["retrieval", "all"])  # "all": every head scores, so the best bounds are re-ranked
def test_answering_reads_the_device_a_few_times_whatever_the_video_length(heads):
    """Selection and the question's pre-fill read the device at most 10 times in all (the re-ranked chunks, the
    relevance, the tail share, then the first token), however many chunks the video has; each further generated
    token adds one read, its stop check. The layout of the mixed cache is host bookkeeping (NumPy)."""
    from videoxl.engine.decode import Decoder, configure

    model = tiny_qwen2(layers=2)
    syncs = {}
    for groups in (12, 48):
        video = prefill(model, torch.arange(5), random_groups(groups, hidden=64), PrefillConfig(chunk=2, window=2))
        decoder = Decoder(model, video, heads={0: [0, 2], 1: [1]})
        decoder.eos = set()  # random weights: exactly the tokens asked for
        question = torch.arange(10, 18)
        for new_tokens in (1, 6):
            options = configure(topk=3, chunk=1, heads=heads, max_new_tokens=new_tokens)
            want = decoder.answer(question, **options)
            with OpCounter(strict=True, allow_syncs=10 + new_tokens - 1) as counter:
                got = decoder.answer(question, **options)
            assert (got.tokens, got.dense_chunks) == (want.tokens, want.dense_chunks)
            assert len(got.tokens) == new_tokens and 4 < len(got.dense_chunks) < groups
            syncs[groups, new_tokens] = counter.sync_total
    assert syncs[12, 1] == syncs[48, 1] <= 10  # not one read per chunk
    assert syncs[48, 6] - syncs[48, 1] == 5  # one stop check per further token
