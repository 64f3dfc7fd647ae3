"""Host cost of the engine's three hot loops, beside transformers' dense equivalents, measured on any machine.

    python benchmarks/host.py --json benchmarks/results/host.json           # 2,048 frames (minutes on 2 CPU cores)
    python benchmarks/host.py --frames 256 --new-tokens 16 --json /tmp/h.json   # quicker

The model is a transformers ``Qwen2ForCausalLM`` with Qwen2.5-7B's layer and head structure (28 layers, 28 query
heads, 4 KV heads) and tiny widths (head_dim 8, hidden 224), random weights: the ops the host issues are those of
the 7B model, the compute is negligible. Loops (one row each, with its dense equivalent below it):

* ``prefill``: chunked pre-fill of ``--frames`` frames (groups of 9 timestamp + 144 visual tokens, chunks of 4
  groups, window 3); a step is one forward of the LLM. Dense: transformers' forward over as many tokens as one
  chunked forward takes (its op count does not depend on the length). The engine's byte-sized layer slices are
  scaled to the tiny widths, so layers are sliced as at 7B in bf16 on a GPU.
* ``answer``: selection for one question (top-4 chunks of one group) plus the question's pre-fill over the mixed
  cache; one step. Dense: the question's forward over a ``DynamicCache`` of the whole video.
* ``generate``: ``--new-tokens`` greedy tokens after the question; a step is one token (the answer's ops with
  N + 1 tokens minus those with 1, over N). Dense: transformers' ``generate`` over the same dense cache.

Counts come from a ``TorchDispatchMode`` (``videoxl.engine.dispatch``): ATen ops per step and host-synchronising
ops per step (``.item()``/``.tolist()``, ``nonzero``, boolean-mask indexing, ``if tensor:``). Host time per step is
measured in a second run without the counter. From the counts: ``est_launch_ms`` = ops x 6 us (eager mode: one
launch per op), and ``est_gpu_ms`` = the step's work at Qwen2.5-7B in bf16 on an H100 (FLOPs / 600 TFLOP/s, or for
the memory-bound answer and generation steps the weights and KV bytes read / 3 TB/s, whichever is larger). A loop
is ``host_bound`` when launching takes longer than computing: the GPU then waits for the host.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videoxl.engine.accounting import attention_flops, causal_pairs, linear_flops_per_token  # noqa: E402
from videoxl.engine import store as store_module  # noqa: E402
from videoxl.engine.decode import Decoder, configure  # noqa: E402
from videoxl.engine.dispatch import OpCounter  # noqa: E402
from videoxl.engine.layout import Group  # noqa: E402
from videoxl.engine.prefill import PrefillConfig, prefill  # noqa: E402

LAUNCH_US = 6.0  # host time of one eager kernel launch (5-10 us measured on CUDA)
GPU_FLOPS = 600e12  # sustained bf16 FLOP/s of an H100 on large matrix products
GPU_BYTES = 3e12  # HBM bytes/s of an H100
PREFIX, TIMESTAMP, VISUAL, QUESTION = 20, 9, 144, 24
PREFILL = PrefillConfig(chunk=4, window=3, per_forward=4)  # a GPU's forwards: window + 1 chunks
SELECT = dict(topk=4, chunk=1)
QWEN7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, head_dim=128)


def build_model():
    """Qwen2.5-7B's structure with tiny widths (random weights, fp32, CPU)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=1024, hidden_size=224, intermediate_size=448, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, head_dim=8, max_position_embeddings=1 << 20,
                         use_sliding_window=False, tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def qwen7b():
    from transformers import Qwen2Config

    return Qwen2Config(**QWEN7B)


def weight_bytes(config) -> int:
    """bf16 bytes of the decoder's weights plus the LM head (what every decoding step reads)."""
    return 2 * (linear_flops_per_token(config) // 2 + config.vocab_size * config.hidden_size)


def kv_bytes(config, tokens: int) -> int:
    return 2 * 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * tokens


def make_input(model, frames: int, seed: int = 0):
    """(prefix ids, a fresh generator of groups, total tokens): one group per 4 frames."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, cfg.vocab_size, (PREFIX,), generator=g)
    n_groups = frames // 4
    stamps = torch.randint(0, cfg.vocab_size, (n_groups, TIMESTAMP), generator=g)
    visual = torch.randn(n_groups, VISUAL, cfg.hidden_size, generator=g) * 0.02

    def groups():
        for i in range(n_groups):
            yield Group(stamps[i], visual[i])

    return prefix, groups, PREFIX + n_groups * (TIMESTAMP + VISUAL)


def counted(fn):
    """(result, OpCounter) of one call of ``fn``."""
    counter = OpCounter()
    with counter:
        result = fn()
    return result, counter


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def show(r: dict) -> None:
    print(f"{r['loop']:<38} {r['ops_per_step']:>9.0f} {r['views_per_step']:>7.0f} {r['syncs_per_step']:>6.2f} "
          f"{r['host_ms_per_step']:>8.2f} {r['est_launch_ms']:>9.2f} {r['est_gpu_ms']:>8.2f} "
          f"{'yes' if r['host_bound'] else 'no':>10}", flush=True)


def row(loop: str, steps: int, counter: OpCounter, seconds: float, gpu_s_per_step: float, **extra) -> dict:
    ops = counter.total / steps
    launch_ms = ops * LAUNCH_US / 1e3
    r = {"loop": loop, "ops_per_step": round(ops, 1), "views_per_step": round(counter.views / steps, 1),
            "syncs_per_step": round(counter.sync_total / steps, 2), "host_ms_per_step": 1e3 * seconds / steps,
            "est_launch_ms": launch_ms, "est_gpu_ms": 1e3 * gpu_s_per_step, "host_bound": launch_ms > 1e3 * gpu_s_per_step,
            "syncs": dict(counter.syncs), "steps": steps, **extra}
    show(r)
    return r


def dense_cache(model, video):
    """A transformers ``DynamicCache`` holding the store's dense KVs (rotated at their positions, as transformers
    keeps them): the cache a dense one-shot pre-fill of the same video leaves."""
    from transformers import DynamicCache

    store = video.store
    cache = DynamicCache(config=model.config)
    for layer in range(store.layers):
        cache.update(store.dense.k[layer][None, :, : store.length].clone(),
                     store.dense.v[layer][None, :, : store.length].clone(), layer)
    return cache


def slice_like_7b(cfg, big) -> None:
    """Pooling, page summaries and the pre-fill's past keys work on slices of layers sized in bytes
    (``store.GPU_SLICE_BYTES`` on a GPU): give this CPU run that budget scaled by this model's KV bytes per token
    over the 7B model's in bf16, so the tiny widths are sliced as the 7B model is on a GPU."""
    tiny = cfg.num_key_value_heads * cfg.head_dim * 4  # float32
    real = big.num_key_value_heads * big.head_dim * 2  # bf16
    store_module.SLICE_BYTES = store_module.GPU_SLICE_BYTES * tiny // real


def measure(frames: int, new_tokens: int) -> list[dict]:
    model = build_model()
    cfg, big = model.config, qwen7b()
    slice_like_7b(cfg, big)
    prefix, groups, tokens = make_input(model, frames)
    warm_prefix, warm_groups, _ = make_input(model, 64, seed=1)
    warm = prefill(model, warm_prefix, warm_groups(), PREFILL)  # warm-up: kernels, allocator, the attention hook
    question = torch.randint(0, cfg.vocab_size, (QUESTION,), generator=torch.Generator().manual_seed(7))
    decoder = Decoder(model, warm)
    decoder.eos = set()  # random weights: generate exactly the tokens asked for
    decoder.answer(question, **configure(**SELECT, max_new_tokens=2))  # and retrieval-head discovery, cached
    rows = []

    # -- pre-fill ----------------------------------------------------------------------------------------------
    video, ops = counted(lambda: prefill(model, prefix, groups(), PREFILL, expected_tokens=tokens))
    seconds = timed(lambda: prefill(model, prefix, groups(), PREFILL, expected_tokens=tokens))
    forwards = video.stats.forwards
    step_tokens = (tokens - PREFIX) / (forwards - 1)  # the prefix is one forward of its own
    gpu = (linear_flops_per_token(big) * tokens + attention_flops(video.stats.pairs, big)) / GPU_FLOPS / forwards
    rows.append(row("prefill", forwards, ops, seconds, gpu, tokens=tokens, frames=frames,
                    tokens_per_step=round(step_tokens)))
    n = round(step_tokens)
    embeds = torch.randn(1, n, cfg.hidden_size) * 0.02

    def dense_forward():
        from transformers import DynamicCache

        with torch.inference_mode():
            model.model(inputs_embeds=embeds, cache=DynamicCache(config=cfg), use_cache=True)

    _, ops = counted(dense_forward)
    gpu = (linear_flops_per_token(big) * n + attention_flops(causal_pairs(n), big)) / GPU_FLOPS
    rows.append(row("prefill (transformers dense)", 1, ops, timed(dense_forward), gpu, tokens_per_step=n))

    # -- answering: selection + question pre-fill, then generation --------------------------------------------
    decoder = Decoder(model, video)
    decoder.eos = set()
    one = configure(**SELECT, max_new_tokens=1)
    many = configure(**SELECT, max_new_tokens=new_tokens + 1)
    answer, ops_one = counted(lambda: decoder.answer(question, **one))
    seconds_one = timed(lambda: decoder.answer(question, **one))
    cache_tokens = round(answer.kv_ratio * video.store.length)
    read = weight_bytes(big) + kv_bytes(big, cache_tokens)
    gpu = max(read / GPU_BYTES, linear_flops_per_token(big) * QUESTION / GPU_FLOPS)
    rows.append(row("answer: selection + question", 1, ops_one, seconds_one, gpu, cache_tokens=cache_tokens))
    _, ops_many = counted(lambda: decoder.answer(question, **many))
    seconds_many = timed(lambda: decoder.answer(question, **many))
    per_token = OpCounter()
    per_token.ops, per_token.syncs = ops_many.ops - ops_one.ops, ops_many.syncs - ops_one.syncs
    gpu = (weight_bytes(big) + kv_bytes(big, cache_tokens + QUESTION + new_tokens // 2)) / GPU_BYTES
    rows.append(row("generate", new_tokens, per_token, seconds_many - seconds_one, gpu, cache_tokens=cache_tokens))

    cache = dense_cache(model, video)
    # generate() reads only the ids past the cache, so the video's are placeholders
    ids = torch.cat([torch.zeros(video.store.length, dtype=torch.long), question])[None]

    def dense_question():
        with torch.inference_mode():
            model(question[None], cache=cache, use_cache=True, logits_to_keep=1)
        cache.crop(video.store.length - cache.get_seq_length())

    _, ops = counted(dense_question)
    read = weight_bytes(big) + kv_bytes(big, video.store.length)
    gpu = max(read / GPU_BYTES, linear_flops_per_token(big) * QUESTION / GPU_FLOPS)
    rows.append(row("answer (transformers dense question)", 1, ops, timed(dense_question), gpu,
                    cache_tokens=video.store.length))

    def generate(k: int):
        def run():
            with torch.inference_mode():
                model.generate(ids, cache=cache, max_new_tokens=k, min_new_tokens=k, do_sample=False)
            cache.crop(video.store.length - cache.get_seq_length())
        return run

    _, ops_a = counted(generate(1))
    _, ops_b = counted(generate(new_tokens + 1))
    seconds = timed(generate(new_tokens + 1)) - timed(generate(1))
    per_token = OpCounter()
    per_token.ops, per_token.syncs = ops_b.ops - ops_a.ops, ops_b.syncs - ops_a.syncs
    gpu = (weight_bytes(big) + kv_bytes(big, video.store.length + QUESTION + new_tokens // 2)) / GPU_BYTES
    rows.append(row("generate (transformers dense)", new_tokens, per_token, seconds, gpu,
                    cache_tokens=video.store.length))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2048, help="frames pre-filled (4 per group; default 2048)")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens (default 64)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"{'loop':<38} {'ops/step':>9} {'views':>7} {'syncs':>6} {'host ms':>8} {'launch ms':>9} {'GPU ms':>8} "
          f"{'host-bound':>10}", flush=True)
    rows = measure(args.frames, args.new_tokens)
    print(f"{args.frames} frames, Qwen2.5-7B structure at tiny widths on the CPU ({torch.get_num_threads()} threads); "
          f"launch {LAUNCH_US:.0f} us per op; GPU: 7B bf16 on an H100 ({GPU_FLOPS / 1e12:.0f} TFLOP/s, "
          f"{GPU_BYTES / 1e12:.0f} TB/s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"frames": args.frames, "new_tokens": args.new_tokens,
                                         "threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
