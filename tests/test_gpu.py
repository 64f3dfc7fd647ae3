"""The engine on a CUDA GPU against CPU / fp32 references. Skipped without CUDA; run them whenever a GPU is there:

    python -m pytest -q -m gpu tests/test_gpu.py
"""

import copy

import numpy as np
import pytest
import torch
from helpers import random_groups, reference_mask, tiny_qwen2, decoding, heads_of
from transformers import Qwen2Config, Qwen2ForCausalLM

from videoxl.engine.decode import Decoder
from videoxl.engine.layout import Group
from videoxl.engine.prefill import PrefillConfig, prefill
from videoxl.pipeline import ingest

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CONFIGS = {
    "topk": decoding(topk=2, chunk=1, max_new_tokens=6),
    "kv_budget": decoding(kv_budget=0.6, chunk=1, max_new_tokens=6),
    "sparse_scorer": decoding(topk=2, chunk=1, scorer="sparse", max_new_tokens=6),
    "absolute": decoding(topk=2, chunk=1, positions="absolute", max_new_tokens=6),
    "all_dense": decoding(max_new_tokens=6),
}


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cuda_video(dtype, timestamps="global"):
    cpu = tiny_qwen2(layers=3)
    gpu = copy.deepcopy(cpu).to("cuda", dtype)
    prefix, groups = torch.arange(5), random_groups(12, hidden=64)
    config = PrefillConfig(chunk=2, window=1, timestamps=timestamps)
    return cpu, gpu, prefill(cpu, prefix, groups, config), prefill(gpu, prefix, groups, config)


@pytest.mark.parametrize("timestamps", ["global", "chunk"])
def test_prefill_on_cuda_fp32_equals_cpu(timestamps):
    _, _, ref, video = cuda_video(torch.float32, timestamps)
    assert video.store.device.type == "cuda"
    for layer in range(3):
        torch.testing.assert_close(video.store.dense.k[layer][:, : ref.store.length].cpu(),
                                   ref.store.dense.k[layer][:, : ref.store.length], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(video.store.sparse.v[layer][:, : ref.store.sparse_length].cpu(),
                                   ref.store.sparse.v[layer][:, : ref.store.sparse_length], atol=1e-4, rtol=1e-4)
    assert video.stats.pairs == ref.stats.pairs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bilevel_decoding_on_cuda_fp32_equals_cpu(name):
    cpu, gpu, ref, video = cuda_video(torch.float32)
    config = CONFIGS[name]
    q = torch.arange(10, 16)
    want = Decoder(cpu, ref, heads=heads_of(cpu)).answer(q, **config)
    got = Decoder(gpu, video, heads=heads_of(gpu)).answer(q, **config)
    assert got.dense_chunks == want.dense_chunks
    assert got.tokens == want.tokens
    if want.relevance is not None:
        np.testing.assert_allclose([r if r is not None else 0.0 for r in got.relevance],
                                   [r if r is not None else 0.0 for r in want.relevance], atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_external_scores_sampling_and_budget_on_cuda(dtype):
    _, gpu, _, video = cuda_video(dtype)
    decoder = Decoder(gpu, video, heads=heads_of(gpu))
    q = torch.arange(10, 16)
    n = len(video.store.groups)
    for scores in (list(range(n)), np.arange(n), torch.arange(n, device="cuda", dtype=torch.float16)):
        answer = decoder.answer(q, **decoding(topk=2, chunk=1, max_new_tokens=2), chunk_scores=scores)
        assert answer.dense_chunks == [0, n - 3, n - 2, n - 1]
    sample = decoding(topk=1, chunk=1, temperature=1.0, top_p=0.9, top_k=20, seed=7, max_new_tokens=8)
    assert decoder.answer(q, **sample).tokens == decoder.answer(q, **sample).tokens
    for budget in (0.7, 0.9):  # the always-dense first and last chunks alone take 59%
        answer = decoder.answer(q, **decoding(kv_budget=budget, chunk=1, max_new_tokens=1))
        assert answer.kv_bytes_used <= budget * answer.kv_bytes_dense


def test_store_moved_to_cpu_after_a_cuda_prefill_still_answers():
    cpu, gpu, ref, video = cuda_video(torch.float32)
    video.store.to("cpu")
    q = torch.arange(10, 16)
    config = CONFIGS["topk"]
    assert Decoder(gpu, video, heads=heads_of(gpu)).answer(q, **config).tokens == Decoder(cpu, ref, heads=heads_of(cpu)).answer(q, **config).tokens


def test_bf16_cuda_decoding_close_to_fp32_cpu():
    cpu, gpu, ref, video = cuda_video(torch.bfloat16)
    q = torch.arange(10, 16)
    want = Decoder(cpu, ref, heads=heads_of(cpu)).answer(q, CONFIGS["all_dense"])
    got = Decoder(gpu, video, heads=heads_of(gpu)).answer(q, CONFIGS["all_dense"])
    assert got.tokens[:1] == want.tokens[:1]


def test_7b_shape_chunked_prefill_equals_masked_one_shot_in_bf16():
    """Qwen2.5-7B's layer shapes (hidden 3584, 28 heads, 4 KV heads, head dim 128), two layers, random weights,
    Video-XL-2's groups (9 timestamp + 144 visual tokens), against one forward with the dense chunk mask."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1024, hidden_size=3584, intermediate_size=18944, num_hidden_layers=2,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                         rope_theta=1e6, attn_implementation="sdpa", tie_word_embeddings=False)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    g = torch.Generator().manual_seed(1)
    groups = [Group(torch.randint(0, 1024, (9,), generator=g), torch.randn(144, 3584, generator=g) * 0.02)
              for _ in range(40)]
    prefix = torch.randint(0, 1024, (20,), generator=g)
    for timestamps in ("global", "chunk"):
        pattern = PrefillConfig(chunk=4, window=3, timestamps=timestamps)
        video = prefill(model, prefix, groups, pattern, keep_hidden=True)
        mask = reference_mask(20, groups, 4, 3, timestamps).cuda()
        table = model.get_input_embeddings()
        embeds = torch.cat([table(prefix.cuda())] + [torch.cat([table(grp.timestamp.cuda()),
                                                                grp.visual.cuda().to(torch.bfloat16)])
                                                     for grp in groups])
        with torch.no_grad():
            ref = model.model(inputs_embeds=embeds[None], attention_mask=mask[None, None]).last_hidden_state[0]
        got = torch.cat(video.hidden)
        err = ((got.float() - ref.float()).norm(dim=-1) / ref.float().norm(dim=-1)).max()
        assert err < 0.02, f"{timestamps}: relative error {err:.4f}"
        assert video.stats.pairs == int(mask.sum())


def test_videoxl2_ingest_and_ask_on_cuda(tiny_checkpoint):
    from videoxl.model import VideoXL2

    frames = [np.full((64, 64, 3), 20 * i % 255, np.uint8) for i in range(24)]
    questions = "What colour is the square?"
    cpu = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    gpu = VideoXL2.from_pretrained(tiny_checkpoint, device="cuda", dtype=torch.float32)
    pattern = PrefillConfig(chunk=2, window=1)
    ref = ingest(cpu, frames, prefill_config=pattern)
    session = ingest(gpu, frames, prefill_config=pattern, thumbnails=True)
    assert session.video.store.device.type == "cuda"
    torch.testing.assert_close(session.video.store.dense.k[0][:, : ref.video.store.length].cpu(),
                               ref.video.store.dense.k[0][:, : ref.video.store.length], atol=2e-3, rtol=2e-3)
    for config in (decoding(max_new_tokens=4), decoding(topk=1, chunk=1, max_new_tokens=4),
                   decoding(kv_budget=0.7, chunk=1, max_new_tokens=4)):
        got, want = session.ask(questions, **config), ref.ask(questions, **config)
        assert len(got.dense_chunks) == len(want.dense_chunks) and got.kv_bytes_dense == want.kv_bytes_dense
        if want.relevance is not None:  # close ranks of a tiny random model may swap; the scores must agree
            np.testing.assert_allclose([r or 0.0 for r in got.relevance], [r or 0.0 for r in want.relevance],
                                       atol=1e-3)
    n = session.decoder.select(torch.arange(3), decoding(topk=1, chunk=1)["selection"]).ranges
    answer = session.ask(questions, **decoding(topk=1, chunk=1, max_new_tokens=2),
                         chunk_scores=torch.ones(len(n), device="cuda"))
    assert len(answer.dense_chunks) == 3
    sampled = decoding(topk=1, chunk=1, temperature=0.8, seed=1, max_new_tokens=4)
    assert session.ask(questions, **sampled).tokens == session.ask(questions, **sampled).tokens
    half = VideoXL2.from_pretrained(tiny_checkpoint, device="cuda")  # the default on a GPU: bf16
    assert half.dtype == torch.bfloat16
    assert ingest(half, frames, prefill_config=pattern).ask(questions, **decoding(topk=1, chunk=1,
                                                                                   max_new_tokens=3)).tokens


@pytest.mark.parametrize("timestamps", ["global", "chunk"])
def test_prefill_on_cuda_never_waits_for_the_device(timestamps):
    from videoxl.engine.dispatch import OpCounter

    gpu = tiny_qwen2(layers=2).to("cuda", torch.bfloat16)
    prefix, groups = torch.arange(5), random_groups(14, hidden=64)
    config = PrefillConfig(chunk=2, window=1, timestamps=timestamps)
    prefill(gpu, prefix, groups, config)  # warm-up (the model's rotation is read once per model)
    with OpCounter(strict=True) as counter:
        video = prefill(gpu, prefix, groups, config)
    assert counter.sync_total == 0 and video.store.device.type == "cuda"


@pytest.mark.parametrize("choose", [dict(topk=2), dict(dense=True)], ids=["bilevel", "dense"])
def test_compiled_generation_step_equals_eager_on_cuda(choose):
    from test_generate import static_answer

    from videoxl.decoding import Selection

    gpu = tiny_qwen2(layers=3).to("cuda")
    video = prefill(gpu, torch.arange(5), random_groups(10, hidden=64), PrefillConfig(chunk=2, window=1))
    decoder = Decoder(gpu, video)
    decoder.eos = set()
    question = torch.arange(10, 16)
    dense = decoder.select(question, Selection(**choose, chunk=1, sparse_stamps=False)).dense
    eager = static_answer(decoder, question, dense, 10)
    compiled = static_answer(decoder, question, dense, 10, compiled=True)
    assert compiled == eager and len(eager) == 24


def test_answers_compiled_on_cuda_equal_eager_and_read_each_token_once():
    from videoxl.engine.dispatch import OpCounter

    gpu = tiny_qwen2(layers=3).to("cuda")
    video = prefill(gpu, torch.arange(5), random_groups(10, hidden=64), PrefillConfig(chunk=2, window=1))
    eager, fixed = Decoder(gpu, video), Decoder(gpu, video, compile=True)
    eager.eos = fixed.eos = set()
    options = decoding(topk=2, chunk=1, max_new_tokens=24)
    want = eager.answer(torch.arange(10, 16), **options)
    first = fixed.answer(torch.arange(10, 16), **options)  # compiles
    assert first.tokens == want.tokens and first.seconds.get("compile", 0) > 0
    with OpCounter() as counter:
        again = fixed.answer(torch.arange(10, 16), **options)  # same shapes: no compilation
    assert again.tokens == want.tokens and "compile" not in again.seconds
    assert counter.ops["index_copy_"] == 0  # inside the compiled graph, unseen
