"""Store and compute apart: every place where stored tensors meet compute tensors converts explicitly.

No GPU is needed to catch a device mix-up: a store in one dtype and compute in another fails on exactly the same
lines (PyTorch refuses to mix dtypes in matmuls, attention and index writes as it refuses to mix devices). The
float64 model below is the "second device"; tests/test_gpu.py repeats the real thing on CUDA.
"""

import copy

import numpy as np
import pytest
import torch
from helpers import random_groups, tiny_qwen2, decoding, heads_of

from videoxl.engine.decode import DEFAULT, Decoder
from videoxl.engine.prefill import PrefillConfig, prefill
from videoxl.errors import InputError

CONFIGS = [decoding(max_new_tokens=4), decoding(topk=1, chunk=1, max_new_tokens=4),
           decoding(kv_budget=0.7, chunk=1, max_new_tokens=4),
           decoding(topk=2, chunk=1, scorer="sparse", max_new_tokens=4),
           decoding(topk=2, chunk=1, scorer="mean", positions="absolute", max_new_tokens=4),
           decoding(topk=1, chunk=1, temperature=1.0, top_p=0.9, top_k=5, seed=3, max_new_tokens=4)]


@pytest.fixture(scope="module")
def fp32_video():
    model = tiny_qwen2(layers=2)
    return model, prefill(model, torch.arange(4), random_groups(8, hidden=64), PrefillConfig(chunk=2, window=1))


@pytest.mark.parametrize("config", CONFIGS,
                         ids=lambda c: f"topk{c['selection'].topk}-budget{c['selection'].kv_budget}-"
                                       f"{c.get('ablation', DEFAULT).scorer}-t{c['generation'].temperature}")
def test_float64_compute_over_a_float32_store(fp32_video, config):
    model, video = fp32_video
    wide = copy.deepcopy(model).double()
    answer = Decoder(wide, video, heads=heads_of(wide)).answer(torch.arange(10, 15), **config)
    reference = Decoder(model, video, heads=heads_of(model)).answer(torch.arange(10, 15), **config)
    assert answer.dense_chunks == reference.dense_chunks
    if config["generation"].temperature == 0:
        assert answer.tokens == reference.tokens


def test_bf16_store_read_by_fp32_compute():
    """A store pre-filled in bf16 (as on a GPU) answered by an fp32 model (as on a CPU)."""
    model = tiny_qwen2(layers=2)
    half = copy.deepcopy(model).to(torch.bfloat16)
    video = prefill(half, torch.arange(4), random_groups(8, hidden=64), PrefillConfig(chunk=2, window=1))
    assert video.store.dtype == torch.bfloat16
    decoder = Decoder(model, video, heads=heads_of(model))
    for config in CONFIGS:
        answer = decoder.answer(torch.arange(10, 15), **config)
        assert len(answer.tokens) == 4
    scores = torch.linspace(0, 1, 8, dtype=torch.bfloat16)
    assert decoder.answer(torch.arange(10, 15), **decoding(topk=2, chunk=1, max_new_tokens=1),
                          chunk_scores=scores).dense_chunks == [0, 5, 6, 7]


def test_external_scores_in_any_container(fp32_video):
    model, video = fp32_video
    decoder = Decoder(model, video, heads=heads_of(model))
    values = [0.0, 0.9, 0.1, 0.8, 0.2, 0.3, 0.0, 0.0]
    config = decoding(topk=2, chunk=1, max_new_tokens=1)
    q = torch.arange(10, 15)
    expected = [0, 1, 3, 7]
    for scores in (values, tuple(values), np.array(values), np.array(values, dtype=np.float16),
                   torch.tensor(values, dtype=torch.float64), torch.tensor(values, requires_grad=True),
                   [int(10 * x) for x in values]):
        answer = decoder.answer(q, **config, chunk_scores=scores)
        assert answer.dense_chunks == expected, type(scores)
        assert all(isinstance(r, float) for r in answer.relevance)


@pytest.mark.parametrize("scores,message", [([0.1] * 5, "8 decoding chunks"), ([[0.1] * 8], "8 decoding chunks"),
                                            ([float("nan")] * 8, "finite"), (["a"] * 8, "numbers")])
def test_bad_external_scores_are_input_errors(fp32_video, scores, message):
    model, video = fp32_video
    with pytest.raises(InputError, match=message):
        Decoder(model, video, heads=heads_of(model)).answer(torch.arange(10, 15), **decoding(topk=2, chunk=1), chunk_scores=scores)


def test_model_scores_are_plain_floats_on_the_host(fp32_video):
    model, video = fp32_video
    decoder = Decoder(model, video, heads=heads_of(model))
    scores = decoder.select(torch.arange(10, 15), decoding(topk=2, chunk=1)["selection"]).relevance
    assert all(type(x) is float for x in scores)
    assert scores[0] != scores[0] and scores[-1] != scores[-1] and abs(sum(scores[1:-1]) - 1) < 1e-5  # NaN: forced
