"""Engine benchmark on real SmolLM2-135M-Instruct weights: dense one-shot pre-fill vs streaming chunked pre-fill,
and passkey-needle accuracy of dense, chunked, and chunked + bi-level decoding.

    python benchmarks/engine.py [--quick] [--json PATH] [--lengths 2048,4096] [--cases N]
    python benchmarks/engine.py --prefill-only --lengths 8192 --cases 2    # pre-fill time only, one process

Every (length, method) runs in its own process, so peak RSS is measured per method. ``--prefill-only`` instead
times dense and chunked pre-fill alternately, case by case, in one process, so a shared machine's load hits both
alike; it reports the per-case ratio and skips decoding. The text stands in for video:
filler text cut into groups of 144 tokens, each after a `Time {t}s:` stamp; one group hides the pass key.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videoxl.engine.accounting import attention_flops, causal_pairs, linear_flops_per_token  # noqa: E402
from videoxl.engine.decode import Decoder, configure  # noqa: E402
from videoxl.engine.heads import retrieval_heads  # noqa: E402
from videoxl.engine.layout import Group  # noqa: E402
from videoxl.engine.prefill import PrefillConfig, prefill  # noqa: E402
from videoxl.llm import load_smollm2  # noqa: E402

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
PREFIX = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nThere is a pass key "
          "hidden in the following text. Find it and memorize it.\n")
QUESTION = "\nWhat is the pass key? Answer with the number only.<|im_end|>\n<|im_start|>assistant\nThe pass key is"
GROUP_TEXT = 144
PREFILL = PrefillConfig(chunk=4, window=3)
# bi-level decoding as benchmarked: decoding chunks of one group, the first and last always dense, plus the 3
# groups the model scores most relevant; positions: the default (contiguous), absolute as the ablation
BILEVEL = dict(topk=3, chunk=1, max_new_tokens=8)
# relevance scorers compared by needle-selection hit rate; the last keeps RoPE in the scores (ablation)
SCORERS = {"bounds": {}, "mean": {"scorer": "mean"}, "sparse": {"scorer": "sparse"}, "dense": {"scorer": "dense"},
           "bounds+rope": {"score_positions": True}}


def make_case(tokenizer, tokens: int, depth: float, seed: int) -> dict:
    rng = random.Random(seed)
    key = str(rng.randint(10000, 99999))
    filler = tokenizer(" " + FILLER * 400)["input_ids"]
    needle = tokenizer(f" The pass key is {key}. Remember it. {key} is the pass key.")["input_ids"]
    prefix = tokenizer(PREFIX)["input_ids"]
    question = tokenizer(QUESTION)["input_ids"]
    n_groups = max(2, round((tokens - len(prefix) - len(question)) / (GROUP_TEXT + 7)))
    needle_group = min(n_groups - 1, int(depth * n_groups))
    groups = []
    for g in range(n_groups):
        offset = rng.randrange(0, 60)
        text = filler[offset: offset + GROUP_TEXT]
        if g == needle_group:
            at = rng.randrange(0, GROUP_TEXT - len(needle))
            text = text[:at] + needle + text[at: GROUP_TEXT - len(needle)]
        stamp = tokenizer(f"Time {4.0 * g:.1f}s:")["input_ids"]
        groups.append((stamp, text))
    return {"key": key, "prefix": prefix, "groups": groups, "question": question, "needle_group": needle_group}


def to_groups(case) -> list[Group]:
    return [Group(torch.tensor(s), torch.tensor(t)) for s, t in case["groups"]]


def video_ids(case) -> torch.Tensor:
    return torch.tensor(case["prefix"] + [i for s, t in case["groups"] for i in s + t])


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(method: str, tokens: int, cases: int) -> dict:
    """Runs in a child process: every case of one (method, length)."""
    from transformers import DynamicCache

    model, tokenizer = load_smollm2()
    cfg = model.config
    # warm up kernels and allocator so the first case is not an outlier
    with torch.inference_mode():
        model(torch.arange(64)[None], use_cache=False)
    base_rss = max_rss_mb()
    result = {"times": [], "answers": [], "correct": [], "tokens": 0}
    for i in range(cases):
        case = make_case(tokenizer, tokens, (i + 0.5) / cases, seed=1000 * tokens + i)
        ids = video_ids(case)
        question = torch.tensor(case["question"])
        result["tokens"] = ids.numel()
        if method == "dense":
            cache = DynamicCache(config=cfg)
            t0 = time.perf_counter()
            with torch.inference_mode():
                model(ids[None], cache=cache, use_cache=True, logits_to_keep=1)
            result["times"].append(time.perf_counter() - t0)
            if i == 0:  # the high-water mark of the first pre-fill, before any decoding ran
                result["peak_rss_mb"] = max_rss_mb() - base_rss
            full = torch.cat([ids, question])
            with torch.inference_mode():
                out = model.generate(full[None], cache=cache, max_new_tokens=8, do_sample=False)
            text = tokenizer.decode(out[0, full.numel():], skip_special_tokens=True)
            result["answers"].append(text)
            result["correct"].append(case["key"] in text)
            del cache
        else:
            t0 = time.perf_counter()
            video = prefill(model, torch.tensor(case["prefix"]), to_groups(case), PREFILL, expected_tokens=ids.numel())
            result["times"].append(time.perf_counter() - t0)
            if i == 0:
                result["peak_rss_mb"] = max_rss_mb() - base_rss
            result["pairs"] = video.stats.pairs
            decoder = Decoder(model, video, tokenizer, heads=lambda: retrieval_heads(model, tokenizer).heads)
            chunked = decoder.answer(question, **configure(dense=True, max_new_tokens=8))
            runs = {"chunked": chunked}
            runs["bilevel"] = decoder.answer(question, **configure(**BILEVEL))  # default: contiguous positions
            runs["bilevel_absolute"] = decoder.answer(question, **configure(positions="absolute", **BILEVEL))
            for name, answer in runs.items():
                result.setdefault(f"correct_{name}", []).append(case["key"] in answer.text)
            result["answers"].append(runs["bilevel"].text)
            result["kv_ratio"] = runs["bilevel"].kv_ratio
            result["store_mb"] = (video.store.dense_bytes + video.store.sparse_bytes) / 2**20
            for name, options in SCORERS.items():
                kw = configure(**options, **{k: v for k, v in BILEVEL.items() if k != "max_new_tokens"})
                dense = decoder.select(question, kw["selection"], ablation=kw["ablation"]).dense
                result.setdefault(f"hit_{name}", []).append(case["needle_group"] in dense)
            del video, decoder
    result["attn_flops"] = attention_flops(result.get("pairs", causal_pairs(result["tokens"])), cfg)
    result["dense_attn_flops"] = attention_flops(causal_pairs(result["tokens"]), cfg)
    result["linear_flops"] = linear_flops_per_token(cfg) * result["tokens"]
    return result


def prefill_times(tokens: int, cases: int) -> dict:
    """Dense and chunked pre-fill of the same cases, alternating in this process."""
    from transformers import DynamicCache

    model, tokenizer = load_smollm2()
    with torch.inference_mode():  # warm-up of both paths
        model(torch.arange(64)[None], use_cache=False)
    warm = make_case(tokenizer, 1024, 0.5, seed=0)
    prefill(model, torch.tensor(warm["prefix"]), to_groups(warm), PREFILL)
    rows = []
    for i in range(cases):
        case = make_case(tokenizer, tokens, (i + 0.5) / cases, seed=1000 * tokens + i)
        ids = video_ids(case)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(ids[None], cache=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
        dense = time.perf_counter() - t0
        t0 = time.perf_counter()
        video = prefill(model, torch.tensor(case["prefix"]), to_groups(case), PREFILL, expected_tokens=ids.numel())
        chunked = time.perf_counter() - t0
        rows.append({"tokens": ids.numel(), "dense_prefill_s": dense, "chunked_prefill_s": chunked,
                     "prefill_time_ratio": chunked / dense,
                     "attn_flops_ratio": video.stats.attn_flops / video.stats.dense_attn_flops,
                     "total_flops_ratio": video.stats.total_flops / video.stats.dense_total_flops})
        print(f"{ids.numel():>7} dense {dense:7.2f}s  chunked {chunked:7.2f}s  ratio {chunked / dense:5.2f}  "
              f"(attention FLOPs {rows[-1]['attn_flops_ratio']:.2f}, total FLOPs {rows[-1]['total_flops_ratio']:.2f})",
              flush=True)
        del video
    return {"tokens": rows[0]["tokens"], "cases": cases, "threads": torch.get_num_threads(),
            **{k: median([r[k] for r in rows]) for k in rows[0] if k != "tokens"}, "per_case": rows}


def run_worker(method: str, tokens: int, cases: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", method, str(tokens), str(cases)],
                         check=True, stdout=subprocess.PIPE, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def mean(xs) -> float:
    return sum(xs) / len(xs)


def median(xs) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k and 8k tokens, few needle cases (< 5 min)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--lengths", help="comma-separated token counts (default 2048,4096,8192,16384)")
    parser.add_argument("--cases", type=int, help="needle cases per length (default 20; --quick: 4 and 2)")
    parser.add_argument("--prefill-only", action="store_true",
                        help="time dense and chunked pre-fill alternately in one process (no decoding, no RSS)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prefill_only:
        rows = [prefill_times(int(n), args.cases or 2) for n in (args.lengths or "2048,8192").split(",")]
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2))
        return
    if args.worker:
        method, tokens, cases = args.worker
        print(json.dumps(worker(method, int(tokens), int(cases))))
        return

    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else (
        [2048, 8192] if args.quick else [2048, 4096, 8192, 16384])
    rows = []
    header = (f"{'tokens':>7} {'dense s':>8} {'chunk s':>8} {'time':>6} {'attnFLOP':>8} {'totFLOP':>8} "
              f"{'dRSS MB':>8} {'cRSS MB':>8} {'RSS':>6} {'KV':>6} {'acc dense':>9} {'chunked':>8} "
              f"{'bilevel':>8} {'abs pos':>7}  needle chunk selected % (" + "/".join(SCORERS) + ")")
    print(header)
    for tokens in lengths:
        cases = args.cases or ((4 if tokens <= 4096 else 2) if args.quick else 20)
        dense = run_worker("dense", tokens, cases)
        chunked = run_worker("chunked", tokens, cases)
        row = {
            "tokens": dense["tokens"],
            "cases": cases,
            "dense_prefill_s": median(dense["times"]),
            "chunked_prefill_s": median(chunked["times"]),
            "prefill_time_ratio": median(chunked["times"]) / median(dense["times"]),
            "attn_flops_ratio": chunked["attn_flops"] / chunked["dense_attn_flops"],
            "total_flops_ratio": (chunked["attn_flops"] + chunked["linear_flops"])
                                 / (chunked["dense_attn_flops"] + chunked["linear_flops"]),
            "dense_peak_rss_mb": dense["peak_rss_mb"],
            "chunked_peak_rss_mb": chunked["peak_rss_mb"],
            "peak_rss_ratio": chunked["peak_rss_mb"] / max(dense["peak_rss_mb"], 1.0),
            "kv_store_mb": chunked["store_mb"],
            "kv_ratio": chunked["kv_ratio"],
            "needle_acc_dense": 100 * mean(dense["correct"]),
            "needle_acc_chunked": 100 * mean(chunked["correct_chunked"]),
            "needle_acc_bilevel": 100 * mean(chunked["correct_bilevel"]),
            "needle_acc_bilevel_absolute": 100 * mean(chunked["correct_bilevel_absolute"]),
            **{f"selection_hit_{s}": 100 * mean(chunked[f"hit_{s}"]) for s in SCORERS},
        }
        rows.append(row)
        print(f"{row['tokens']:>7} {row['dense_prefill_s']:>8.2f} {row['chunked_prefill_s']:>8.2f} "
              f"{row['prefill_time_ratio']:>6.2f} {row['attn_flops_ratio']:>8.2f} {row['total_flops_ratio']:>8.2f} "
              f"{row['dense_peak_rss_mb']:>8.0f} {row['chunked_peak_rss_mb']:>8.0f} {row['peak_rss_ratio']:>6.2f} "
              f"{row['kv_ratio']:>6.2f} {row['needle_acc_dense']:>9.0f} {row['needle_acc_chunked']:>8.0f} "
              f"{row['needle_acc_bilevel']:>8.0f} {row['needle_acc_bilevel_absolute']:>7.0f}  "
              + "/".join(f"{row[f'selection_hit_{s}']:.0f}" for s in SCORERS), flush=True)
        if args.json:  # after every row, so a long run leaves what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2))
    print(f"pre-fill: chunk {PREFILL.chunk} groups, window {PREFILL.window}, timestamps {PREFILL.timestamps}; "
          f"bi-level: {BILEVEL}; ratios are chunked over dense; RSS: peak increase over the loaded model during the first pre-fill")


if __name__ == "__main__":
    main()
