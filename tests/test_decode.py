"""Bi-level decoding: selection, exactness when everything is dense, generation controls."""

import pytest
import torch
from helpers import random_groups, tiny_qwen2, decoding, heads_of

from videoxl.engine.decode import Decoder
from videoxl.engine.layout import Group
from videoxl.engine.prefill import PrefillConfig, prefill

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def passkey_groups(tokenizer, n_groups: int, needle_group: int, key: str, per_group: int = 100):
    groups = []
    for g in range(n_groups):
        text = FILLER * 5
        if g == needle_group:
            text = FILLER + f"The pass key is {key}. Remember it. {key} is the pass key. " + FILLER * 3
        groups.append(Group(torch.tensor(tokenizer(f"Time {4.0 * g:.1f}s:")["input_ids"]),
                            torch.tensor(tokenizer(" " + text)["input_ids"])[:per_group]))
    return groups


def ids(tokenizer, text):
    return torch.tensor(tokenizer(text)["input_ids"])


PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
QUESTION = "\nWhat is the pass key? Answer with the number only.<|im_end|>\n<|im_start|>assistant\nThe pass key is"


@pytest.fixture(scope="module")
def passkey_video(smollm2):
    model, tokenizer = smollm2
    groups = passkey_groups(tokenizer, 16, 9, "48213")
    video = prefill(model, ids(tokenizer, PREFIX), groups, PrefillConfig(chunk=2, window=1))
    return model, tokenizer, groups, video


def test_all_dense_bilevel_equals_hf_generate(smollm2):
    model, tokenizer = smollm2
    groups = passkey_groups(tokenizer, 6, 3, "71932", per_group=60)
    prefix, question = ids(tokenizer, PREFIX), ids(tokenizer, QUESTION)
    video = prefill(model, prefix, groups, PrefillConfig(chunk=2, window=None))
    decoder = Decoder(model, video, tokenizer, heads=heads_of(model, tokenizer))
    # every chunk selected dense through the selection path (k covers all candidates)
    answer = decoder.answer(question, **decoding(topk=10, max_new_tokens=12))
    assert answer.dense_chunks == [0, 1, 2]
    full = torch.cat([prefix] + [torch.cat([g.timestamp, g.visual]) for g in groups] + [question])
    with torch.no_grad():
        hf = model.generate(full[None], max_new_tokens=12, do_sample=False)[0, full.numel():].tolist()
    hf = hf[: hf.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in hf else hf
    assert answer.tokens == hf
    assert "71932" in answer.text


def test_all_dense_selection_equals_plain_chunked_decoding(passkey_video):
    model, tokenizer, _, video = passkey_video
    decoder = Decoder(model, video, tokenizer, heads=heads_of(model, tokenizer))
    question = ids(tokenizer, QUESTION)
    plain = decoder.answer(question, **decoding(max_new_tokens=8))
    selected = decoder.answer(question, **decoding(topk=100, max_new_tokens=8))
    budget = decoder.answer(question, **decoding(kv_budget=1.0, max_new_tokens=8))
    contiguous = decoder.answer(question, **decoding(topk=100, positions="contiguous", max_new_tokens=8))
    assert plain.tokens == selected.tokens == budget.tokens == contiguous.tokens
    assert plain.kv_bytes_used == plain.kv_bytes_dense == video.store.dense_bytes


def test_model_scored_selection_finds_the_needle_and_answers(passkey_video):
    model, tokenizer, groups, video = passkey_video
    decoder = Decoder(model, video, tokenizer, heads=heads_of(model, tokenizer))
    answer = decoder.answer(ids(tokenizer, QUESTION), **decoding(topk=1, max_new_tokens=8))
    needle_chunk = 9 // 2
    assert answer.dense_chunks == [0, needle_chunk, 7]
    assert max(range(1, 7), key=lambda c: answer.relevance[c]) == needle_chunk
    assert answer.relevance[0] is None and answer.relevance[7] is None
    assert "48213" in answer.text
    assert answer.kv_bytes_used < 0.62 * answer.kv_bytes_dense


def test_external_scores_pick_dense_chunks(passkey_video):
    model, tokenizer, _, video = passkey_video
    decoder = Decoder(model, video, tokenizer, heads=heads_of(model, tokenizer))
    scores = [0.0, 0.1, 0.9, 0.2, 0.8, 0.0, 0.3, 0.0]
    answer = decoder.answer(ids(tokenizer, QUESTION), **decoding(topk=2, max_new_tokens=2), chunk_scores=scores)
    assert answer.dense_chunks == [0, 2, 4, 7]
    store = video.store
    dense_groups = torch.zeros(16, dtype=torch.bool)
    for c in answer.dense_chunks:
        dense_groups[2 * c: 2 * c + 2] = True
    # sparse chunks without their timestamps (the default), or with them
    assert answer.kv_bytes_used == store.mixed_tokens(dense_groups, sparse_stamps=False) * store.bytes_per_token
    stamped = decoder.answer(ids(tokenizer, QUESTION), **decoding(topk=2, max_new_tokens=2, sparse_stamps=True),
                             chunk_scores=scores)
    assert stamped.dense_chunks == answer.dense_chunks
    assert stamped.kv_bytes_used == store.mixed_tokens(dense_groups) * store.bytes_per_token > answer.kv_bytes_used
    with pytest.raises(ValueError, match="8 decoding chunks"):
        decoder.answer(ids(tokenizer, QUESTION), **decoding(topk=2), chunk_scores=scores[:5])
    with pytest.raises(ValueError, match="topk or kv_budget"):
        decoder.answer(ids(tokenizer, QUESTION), **decoding(), chunk_scores=scores)


def test_kv_budget_bounds_the_mixed_cache(passkey_video):
    model, tokenizer, _, video = passkey_video
    decoder = Decoder(model, video, tokenizer, heads=heads_of(model, tokenizer))
    for budget in (0.5, 0.6, 0.8):  # the always-dense first and last chunks alone take 48%
        answer = decoder.answer(ids(tokenizer, QUESTION), **decoding(kv_budget=budget, max_new_tokens=1))
        assert answer.kv_bytes_used <= budget * answer.kv_bytes_dense
    # decoding chunks are independent of the pre-fill chunks
    fine = decoder.answer(ids(tokenizer, QUESTION), **decoding(topk=1, chunk=1, max_new_tokens=1))
    assert fine.chunks == 16 and len(fine.dense_chunks) == 3


def test_stop_strings_callback_and_max_tokens():
    model = tiny_qwen2()

    class CharTokenizer:  # a real (if trivial) tokenizer: token t is the letter chr(97 + t % 26)
        eos_token_id = None

        def decode(self, tokens, skip_special_tokens=True):
            return "".join(chr(97 + t % 26) for t in tokens)

    video = prefill(model, torch.arange(4), random_groups(6, hidden=64), PrefillConfig(chunk=2))
    decoder = Decoder(model, video, CharTokenizer(), heads=heads_of(model))
    question = torch.arange(10, 15)
    free = decoder.answer(question, **decoding(max_new_tokens=12))
    assert len(free.tokens) == 12 and len(free.text) == 12
    stop = free.text[5:7]
    pieces = []
    stopped = decoder.answer(question, **decoding(max_new_tokens=12, stop=(stop,)), on_text=pieces.append)
    assert stopped.text == free.text[: free.text.find(stop)]
    assert "".join(pieces) == stopped.text
    assert stop not in "".join(pieces)


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = tiny_qwen2()
    video = prefill(model, torch.arange(4), random_groups(6, hidden=64), PrefillConfig(chunk=2))
    decoder = Decoder(model, video, heads=heads_of(model))
    q = torch.arange(10, 15)
    greedy = decoder.answer(q, **decoding(max_new_tokens=10)).tokens
    a = decoder.answer(q, **decoding(max_new_tokens=10, temperature=2.0, seed=1)).tokens
    b = decoder.answer(q, **decoding(max_new_tokens=10, temperature=2.0, seed=1)).tokens
    c = decoder.answer(q, **decoding(max_new_tokens=10, temperature=2.0, seed=2)).tokens
    assert a == b and a != c
    assert decoder.answer(q, **decoding(max_new_tokens=10, temperature=1.0, top_k=1, seed=3)).tokens == greedy
    assert decoder.answer(q, **decoding(max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=3)).tokens == greedy


@pytest.mark.parametrize("kwargs,message", [
    ({"topk": -1}, "topk"), ({"kv_budget": 1.5}, "kv_budget"), ({"kv_budget": 0}, "kv_budget"),
    ({"chunk": 0}, "chunk"), ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 0}, "top_p"),
    ({"sparse_stamps": "no"}, "sparse_stamps"), ({"temperature": float("nan")}, "temperature"),
    ({"seed": 10**30}, "seed"), ({"topk": 2.5}, "topk"), ({"stop": ("",)}, "stop"), ({"beams": 2}, "beams"),
])
def test_invalid_decoding_options(kwargs, message):
    from videoxl.decoding import options
    from videoxl.errors import OptionError

    with pytest.raises(OptionError, match=message):
        options(**kwargs)


@pytest.mark.parametrize("kwargs", [{"scorer": "oracle"}, {"positions": "rope"}, {"refine": -1}])
def test_invalid_ablation_is_an_internal_error(kwargs):
    from videoxl.engine.decode import Ablation

    with pytest.raises(AssertionError):  # benchmarks only: its invariants are asserted
        Ablation(**kwargs)
