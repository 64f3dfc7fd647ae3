"""The fixed-shape generation step (engine/generate.py) generates what the eager decoding path generates, token for
token, over bi-level and all-dense caches of a pre-filled video. (Compiled against eager: tests/test_gpu.py, where
compilation takes seconds; inductor on a shared 2-core CPU takes minutes.)"""

import pytest
import torch
from helpers import random_groups, tiny_llama, tiny_qwen2

from videoxl.decoding import Generation, Selection
from videoxl.engine.decode import Decoder
from videoxl.engine.generate import greedy
from videoxl.engine.layout import embed
from videoxl.engine.prefill import PrefillConfig, prefill

NEW_TOKENS = 24


def static_answer(decoder: Decoder, question: torch.Tensor, dense_chunks: list[int], n_groups: int,
                  compiled: bool = False) -> list[int]:
    """The tokens :func:`greedy` generates over the cache ``Decoder.answer`` builds (decoding chunks of one group)."""
    dense_groups = torch.zeros(n_groups, dtype=torch.bool)
    dense_groups[dense_chunks] = True
    cache, position = decoder._cache(dense_groups, "contiguous", question.shape[0] + NEW_TOKENS, sparse_stamps=False)
    hidden, _ = decoder._step(cache, embed(decoder.model, question), position)
    with torch.inference_mode():
        first = int(decoder.model.get_output_embeddings()(hidden[-1:])[0].argmax())
    return greedy(decoder.model, cache, first, position + question.shape[0], NEW_TOKENS, compiled=compiled)[0]


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
@pytest.mark.parametrize("choose", [dict(topk=2), dict(dense=True)], ids=["bilevel", "dense"])
def test_static_step_generates_the_eager_tokens(make, choose):
    model = make()
    groups = random_groups(10, hidden=64)
    video = prefill(model, torch.arange(5), groups, PrefillConfig(chunk=2, window=1))
    decoder = Decoder(model, video)
    decoder.eos = set()  # random weights: every token counts
    question = torch.arange(10, 16)
    selection = Selection(**choose, chunk=1, sparse_stamps=False)
    answer = decoder.answer(question, selection, Generation(max_new_tokens=NEW_TOKENS))
    assert len(answer.tokens) == NEW_TOKENS
    assert (len(answer.dense_chunks) < len(groups)) == ("topk" in choose)  # bi-level: some chunks sparse
    assert static_answer(decoder, question, answer.dense_chunks, len(groups)) == answer.tokens


def test_greedy_stops_at_a_stop_token_and_leaves_it_out():
    model = tiny_llama()
    video = prefill(model, torch.arange(5), random_groups(4, hidden=64), PrefillConfig(chunk=2, window=1))
    decoder = Decoder(model, video)
    dense = torch.ones(4, dtype=torch.bool)
    cache, position = decoder._cache(dense, "contiguous", NEW_TOKENS)
    everything, _ = greedy(model, cache, 3, position, NEW_TOKENS)
    cache, position = decoder._cache(dense, "contiguous", NEW_TOKENS)
    stop_at = everything[5]
    cut, _ = greedy(model, cache, 3, position, NEW_TOKENS, stop=lambda t: t == stop_at)
    assert cut == everything[: everything.index(stop_at, 1)]


@pytest.mark.parametrize("choose", [dict(topk=2), dict(dense=True)], ids=["bilevel", "dense"])
def test_answers_with_compile_on_take_the_fixed_shape_step_and_equal_eager(choose):
    """``Decoder(compile=True)`` generates greedy tokens through the fixed-shape step (seen by its cache writes,
    ``index_copy``, one per layer, key and value, per token), token for token as the eager path; stop strings and
    EOS end it alike. The compiler runs eagerly here (``force_eager``: inductor compiles for minutes on a shared
    CPU); the compiled step against eager is tests/test_gpu.py's, on CUDA."""
    from videoxl.engine.dispatch import OpCounter

    model = tiny_qwen2()
    video = prefill(model, torch.arange(5), random_groups(10, hidden=64), PrefillConfig(chunk=2, window=1))
    question = torch.arange(10, 16)
    selection = Selection(**choose, chunk=1, sparse_stamps=False)
    eager, fixed = Decoder(model, video), Decoder(model, video, compile=True)
    assert Decoder(model, video).compile is False  # off unless asked for
    for d in (eager, fixed):
        d.eos = set()
    want = eager.answer(question, selection, Generation(max_new_tokens=NEW_TOKENS))
    with torch.compiler.set_stance("force_eager"), OpCounter() as counter:
        got = fixed.answer(question, selection, Generation(max_new_tokens=NEW_TOKENS))
    assert got.tokens == want.tokens and len(got.tokens) == NEW_TOKENS
    assert counter.ops["index_copy_"] == 2 * model.config.num_hidden_layers * (NEW_TOKENS - 1)
    eager.eos = fixed.eos = {want.tokens[7]}  # an end-of-sequence token cuts both at the same place
    with torch.compiler.set_stance("force_eager"):
        cut = fixed.answer(question, selection, Generation(max_new_tokens=NEW_TOKENS)).tokens
    assert cut == eager.answer(question, selection, Generation(max_new_tokens=NEW_TOKENS)).tokens == \
        want.tokens[: want.tokens.index(want.tokens[7])]
    sampled = fixed.answer(question, selection, Generation(max_new_tokens=4, temperature=0.7, seed=1))
    assert len(sampled.tokens) <= 4  # sampling keeps the eager step (the fixed-shape step is greedy)
