"""GPU benchmark of the engine at Video-XL-2's real LLM size: dense one-shot pre-fill against streaming chunked
pre-fill, then a bi-level answer, in one process so both see the same machine.

    python benchmarks/gpu.py --json $OUT/gpu.json            # Qwen2.5-7B shapes, bf16, CUDA (~5 min on an H100)
    python benchmarks/gpu.py --smoke --json /tmp/gpu.json    # a tiny config on the CPU, seconds (the test runs it)

Setup: a transformers ``Qwen2ForCausalLM`` with Qwen2.5-7B's shapes and random weights, a
20-token prefix, then groups of 9 timestamp + 144 visual tokens (Video-XL-2's 4 frames per group). Dense is one
``model.model(inputs_embeds=..., use_cache=True)`` with SDPA; chunked is ``videoxl.engine.prefill.prefill`` with
chunks of 4 groups and a window of 3; the answer is ``Decoder.answer`` with ``topk=4, chunk=1`` (decoding chunks of
one group), a 24-token question and exactly 16 generated tokens. Weights are random: speed and memory do not
depend on them. TFLOP/s count linear FLOPs plus the attention pairs each method computes (engine/accounting.py).
Dense at the largest sizes is skipped when it would not fit the time (--dense-max-frames); the row says so.
A row is written to --json as soon as it is measured, so a run cut short keeps what it measured.
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
from videoxl.engine.decode import Decoder, configure  # noqa: E402
from videoxl.engine.dispatch import OpCounter  # noqa: E402
from videoxl.engine.layout import Group  # noqa: E402
from videoxl.engine.prefill import PrefillConfig, prefill  # noqa: E402

# Qwen2.5-7B-Instruct's LLM shapes (the LLM of Video-XL-2), and a tiny stand-in for --smoke
SHAPES = {
    "qwen2.5-7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, rope_theta=1e6),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rope_theta=1e4),
}
PREFIX, TIMESTAMP, VISUAL, QUESTION, NEW_TOKENS = 20, 9, 144, 24, 16
PREFILL = PrefillConfig(chunk=4, window=3)
ANSWER = configure(topk=4, chunk=1, max_new_tokens=NEW_TOKENS)


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=32768, use_sliding_window=False,
                         tie_word_embeddings=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate the weights in their dtype directly: 15 GB, not 30 GB of fp32 first
    try:
        with device:
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model


def make_input(model, frames: int, seed: int = 0):
    """(prefix ids, groups as a lazy generator, total tokens): one group per 4 frames."""
    cfg = model.config
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, cfg.vocab_size, (PREFIX,), generator=g)
    n_groups = frames // 4
    stamps = torch.randint(0, cfg.vocab_size, (n_groups, TIMESTAMP), generator=g)

    def groups():
        dg = torch.Generator(device=device).manual_seed(seed + 1)
        for i in range(n_groups):
            visual = torch.randn(VISUAL, cfg.hidden_size, generator=dg, device=device, dtype=dtype) * 0.02
            yield Group(stamps[i], visual)

    return prefix, groups, PREFIX + n_groups * (TIMESTAMP + VISUAL)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def run_dense(model, prefix, groups) -> float:
    """One-shot pre-fill of the whole sequence (SDPA, causal); returns seconds."""
    from transformers import DynamicCache

    table = model.get_input_embeddings()
    device = table.weight.device
    with torch.inference_mode():
        embeds = torch.cat([table(prefix.to(device))] + [torch.cat([table(grp.timestamp.to(device)), grp.visual])
                                                         for grp in groups()])
        sync(device)
        t0 = time.perf_counter()
        model.model(inputs_embeds=embeds[None], cache=DynamicCache(config=model.config), use_cache=True)
        sync(device)
    return time.perf_counter() - t0


def static_generation(decoder, question, dense_chunks: list[int], n: int) -> dict:
    """Greedy tokens/s of the fixed-shape step (engine/generate.py) over the answer's bi-level cache, eager and
    compiled (a CUDA graph), with the compilation's seconds and whether the tokens agree."""
    from videoxl.engine.generate import greedy
    from videoxl.engine.layout import embed

    groups = len(decoder.video.store.groups)
    dense_groups = torch.zeros(groups, dtype=torch.bool)
    dense_groups[dense_chunks] = True  # decoding chunks of one group
    out = {}
    for name in ("eager", "compiled"):
        cache, position = decoder._cache(dense_groups, "contiguous", question.shape[0] + n,
                                         sparse_stamps=ANSWER["selection"].sparse_stamps)
        hidden, _ = decoder._step(cache, embed(decoder.model, question), position)
        first = int(decoder.model.get_output_embeddings()(hidden[-1:])[0].argmax())
        sync(cache.k[0].device)
        t0 = time.perf_counter()
        tokens, first_s = greedy(decoder.model, cache, first, position + question.shape[0], n,
                                 compiled=name == "compiled")
        sync(cache.k[0].device)
        total = time.perf_counter() - t0
        out[f"static_{name}_tokens_per_s"] = (len(tokens) - 2) / (total - first_s)
        out[f"static_{name}_first_step_s"] = first_s
        out[f"static_{name}_tokens"] = tokens
    out["compiled_equals_eager"] = out.pop("static_compiled_tokens") == out.pop("static_eager_tokens")
    return out


def measure(model, frames: int, dense: bool, compiled: bool = False) -> dict:
    device = next(model.parameters()).device
    cfg = model.config
    prefix, groups, tokens = make_input(model, frames)
    linear = linear_flops_per_token(cfg) * tokens
    row = {"frames": frames, "tokens": tokens, "device": device_name(device),
           "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    if dense:
        reset_peak(device)
        row["dense_s"] = run_dense(model, prefix, groups)
        row["peak_gb_dense"] = peak_gb(device)
        row["dense_tflops"] = (linear + attention_flops(causal_pairs(tokens), cfg)) / row["dense_s"] / 1e12
    else:
        row.update(dense_s=None, peak_gb_dense=None, dense_tflops=None,
                   dense_skipped=f"dense pre-fill not run above --dense-max-frames (time); 383k tokens dense took 68 s and 86 GB on an H200")

    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    video = prefill(model, prefix, groups(), PREFILL, expected_tokens=tokens)
    sync(device)
    row["chunked_s"] = time.perf_counter() - t0
    row["peak_gb_chunked"] = peak_gb(device)
    stats = video.stats
    assert stats.tokens == tokens
    row["chunked_tflops"] = stats.total_flops / row["chunked_s"] / 1e12
    row["attn_pairs_ratio"] = stats.pairs / causal_pairs(tokens)
    row["time_ratio"] = row["chunked_s"] / row["dense_s"] if row["dense_s"] else None

    decoder = Decoder(model, video)
    decoder.eos = set()  # random weights: generate exactly NEW_TOKENS tokens
    question = torch.randint(0, cfg.vocab_size, (QUESTION,), generator=torch.Generator().manual_seed(7))
    sync(device)
    t0 = time.perf_counter()
    answer = decoder.answer(question, **ANSWER)
    sync(device)
    row["answer_s"] = time.perf_counter() - t0
    row["select_s"] = answer.seconds["select"]
    row["question_s"] = answer.seconds["question"]
    row["generate_s"] = answer.seconds["generate"]
    row["gen_tokens_per_s"] = len(answer.tokens) / answer.seconds["generate"]
    row["kv_ratio"] = answer.kv_ratio
    row["peak_gb_answer"] = peak_gb(device)
    if compiled:
        row.update(static_generation(decoder, question, answer.dense_chunks, 4 * NEW_TOKENS))
    del video, decoder
    return row


def host_counts(model, frames: int = 128) -> dict:
    """ATen ops and host-synchronising ops the host issued on this device: per pre-fill forward, and per answer
    (selection, question and generation) of ``NEW_TOKENS`` tokens (engine/dispatch.py; benchmarks/host.py has the
    full breakdown at 7B structure)."""
    prefix, groups, tokens = make_input(model, frames)
    with OpCounter() as counter:
        video = prefill(model, prefix, groups(), PREFILL, expected_tokens=tokens)
    decoder = Decoder(model, video)
    decoder.eos = set()
    question = torch.randint(0, model.config.vocab_size, (QUESTION,), generator=torch.Generator().manual_seed(7))
    with OpCounter() as answer:
        decoder.answer(question, **ANSWER)
    return {"frames": frames, "prefill_ops_per_forward": counter.total / video.stats.forwards,
            "prefill_syncs": dict(counter.syncs), "answer_ops": answer.total, "answer_syncs": dict(answer.syncs)}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU, frames 16,64 (seconds)")
    parser.add_argument("--frames", help="comma-separated frame counts (default 512,2048,10000)")
    parser.add_argument("--dense-max-frames", type=int, default=2048,
                        help="skip dense pre-fill above this many frames (time and memory: 383k tokens dense take "
                             "~68 s and 86 GB on an H200)")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="stop starting new rows after this many seconds (the device lease is short)")
    parser.add_argument("--compile-frames", type=int, default=2048,
                        help="at this many frames, also time the fixed-shape generation step eager and compiled "
                             "(compiling takes a minute or more at 7B; 0: never)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = torch.device(args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda"))
    shape = "tiny" if args.smoke else "qwen2.5-7b"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    frames = [int(x) for x in args.frames.split(",")] if args.frames else ([16, 64] if args.smoke
                                                                            else [512, 2048, 10000])
    started = time.perf_counter()
    model = build_model(shape, device, dtype)
    print(f"{shape} on {device_name(device)}, {dtype}: built in {time.perf_counter() - started:.1f}s", flush=True)
    measure(model, 80, dense=True)  # warm-up: kernels, allocator, the attention hook, a chunk leaving the window
    counts = host_counts(model)
    print(f"host: {counts['prefill_ops_per_forward']:.0f} ops per pre-fill forward, syncs {counts['prefill_syncs']}; "
          f"answer of {NEW_TOKENS} tokens {counts['answer_ops']} ops, syncs {counts['answer_syncs']}", flush=True)

    rows = []
    print(f"{'frames':>7} {'tokens':>8} {'dense s':>8} {'chunk s':>8} {'ratio':>6} {'TFLOP/s d/c':>12} "
          f"{'peak GB d/c':>12} {'select':>7} {'question':>8} {'tok/s':>6}", flush=True)
    for n in frames:
        if time.perf_counter() - started > args.budget_s:
            rows.append({"frames": n, "skipped": f"time budget of {args.budget_s:.0f}s spent"})
            continue
        row = measure(model, n, dense=n <= args.dense_max_frames, compiled=n == args.compile_frames)
        row["host_counts"] = counts
        rows.append(row)

        def f(x, fmt):
            return format(x, fmt) if x is not None else "-"

        print(f"{row['frames']:>7} {row['tokens']:>8} {f(row['dense_s'], '8.2f')} {row['chunked_s']:>8.2f} "
              f"{f(row['time_ratio'], '6.2f')} {f(row['dense_tflops'], '5.0f'):>5} / {row['chunked_tflops']:<5.0f} "
              f"{f(row['peak_gb_dense'], '5.1f'):>5} / {f(row['peak_gb_chunked'], '<5.1f')} "
              f"{row['select_s']:>7.2f} {row['question_s']:>8.2f} {row['gen_tokens_per_s']:>6.1f}", flush=True)
        if "static_compiled_tokens_per_s" in row:
            print(f"        fixed-shape step: eager {row['static_eager_tokens_per_s']:.1f} tok/s, compiled "
                  f"{row['static_compiled_tokens_per_s']:.1f} tok/s (compiling {row['static_compiled_first_step_s']:.0f}s)"
                  f", same tokens: {row['compiled_equals_eager']}", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    print(f"pre-fill: chunk {PREFILL.chunk} groups, window {PREFILL.window}, timestamps {PREFILL.timestamps}; "
          f"answer: {ANSWER['selection'].topk} relevant chunks of {ANSWER['selection'].chunk} group, {QUESTION}-token question, "
          f"{NEW_TOKENS} tokens; total {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
