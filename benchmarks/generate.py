"""Generation speed on SmolLM2-135M-Instruct: the eager decoding step, the fixed-shape step, and the fixed-shape
step compiled (``videoxl.engine.generate``), in one process over the same cache, with the tokens compared.

    python benchmarks/generate.py --json benchmarks/results/generate.json     # 64 tokens after a 2k-token cache

The cache is a real one: SmolLM2 pre-fills a ``--context``-token prompt (filler text and a question) with the
engine's decoding step, then each method generates ``--new-tokens`` greedy tokens from a copy of that cache.
Compilation is timed apart (its first step), and tokens/s count the steps after it. Also reported: bytes/s
achieved (weights and the cache read per token, the bound a memory-bound step works against).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videoxl.engine.attention import DecodeCache, DecodeStep, run_step  # noqa: E402
from videoxl.engine.generate import greedy  # noqa: E402
from videoxl.engine.layout import embed  # noqa: E402
from videoxl.llm import load_smollm2  # noqa: E402

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def eager(model, cache: DecodeCache, first: int, position: int, n: int) -> list[int]:
    """The engine's eager decoding step (DecodeStep through the model's forward), greedy."""
    lm_head = model.get_output_embeddings()
    tokens = [first]
    for _ in range(n - 1):
        step = DecodeStep(cache, 1)
        hidden = run_step(model, embed(model, torch.tensor(tokens[-1:])), torch.arange(position, position + 1), step)
        step.finish()
        position += 1
        with torch.inference_mode():
            tokens.append(int(lm_head(hidden[-1:])[0].argmax()))
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=2048, help="tokens in the cache before generating")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model, tokenizer = load_smollm2()
    ids = tokenizer(FILLER * (args.context // 20 + 1))["input_ids"][: args.context - 12]
    ids = torch.tensor(ids + tokenizer(" What colour is the sky? The sky is")["input_ids"])
    n = args.new_tokens
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    empty = [torch.empty(cfg.num_key_value_heads, 0, head_dim) for _ in range(cfg.num_hidden_layers)]
    base = DecodeCache(empty, [t.clone() for t in empty], ids.numel() + n)
    step = DecodeStep(base, ids.numel())
    hidden = run_step(model, embed(model, ids), torch.arange(ids.numel()), step)
    step.finish()
    with torch.inference_mode():
        first = int(model.get_output_embeddings()(hidden[-1:])[0].argmax())
    position = ids.numel()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = base.nbytes

    rows, tokens = [], {}
    for name in ("eager", "static", "compiled"):
        cache = copy.deepcopy(base)
        t0 = time.perf_counter()
        if name == "eager":
            out, first_s = eager(model, cache, first, position, n), 0.0
        else:
            out, first_s = greedy(model, cache, first, position, n, compiled=name == "compiled")
        total = time.perf_counter() - t0
        steps = len(out) - 1
        per_s = (steps - (1 if name == "compiled" else 0)) / (total - (first_s if name == "compiled" else 0))
        tokens[name] = out
        rows.append({"method": name, "tokens_per_s": per_s, "first_step_s": first_s, "total_s": total,
                     "gb_per_s": per_s * (weights + kv) / 1e9, "same_tokens_as_eager": out == tokens["eager"]})
        print(f"{name:<9} {per_s:7.1f} tok/s  first step {first_s:6.2f}s  {rows[-1]['gb_per_s']:5.2f} GB/s  "
              f"same tokens as eager: {out == tokens['eager']}", flush=True)
    print(f"SmolLM2-135M fp32, {ids.numel()}-token cache, {n} tokens, {torch.get_num_threads()} threads; "
          f"compiled/eager {rows[2]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"context": ids.numel(), "new_tokens": n, "threads": torch.get_num_threads(),
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
