"""Template calibration on the passkey benchmark: bi-level decoding with and without the template prior, same cases.

    python benchmarks/calibration.py [--lengths 2048,4096,8192,16384] [--cases 20] [--every M] [--dense]
                                     [--rows ROWS.jsonl] [--json PATH] [--relevance ROWS.jsonl ...]
                                     [--needle NAME=SUMMARY.json ...]

The cases are ``benchmarks/engine.py``'s (SmolLM2-135M-Instruct, filler text in groups of 144 tokens after
``Time {t}s:`` stamps, one group hiding a pass key, the question ending with the answer prefix "The pass key is"),
with its bi-level settings (decoding chunks of one group, first and last dense, 3 more by relevance). Each case is
pre-filled once (chunked, as engine.py) and answered by bi-level decoding with the default decoding except
the template prior (``Ablation.template_prior``, the calibration), on and off, side by side; ``--dense`` also answers it by transformers' dense one-shot pre-fill and
greedy decoding (the reference; engine.py's dense worker). For each variant: pass-key accuracy, whether the
needle's group was reloaded dense, and the needle's rank in the relevance.

``--relevance`` and ``--needle`` fold other benchmarks' results into the JSON (``benchmarks/relevance.py`` rows
files, with the columns named in ``RELEVANCE_COLUMNS``; ``videoxl eval needle --json`` summaries, one per decoding,
named NAME), so that the three quality benchmarks sit in one table (docs/calibration.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import engine  # noqa: E402
from videoxl.engine.decode import Decoder, configure  # noqa: E402
from videoxl.engine.heads import retrieval_heads  # noqa: E402
from videoxl.engine.prefill import prefill  # noqa: E402
from videoxl.llm import load_smollm2  # noqa: E402

# the template prior's exponent: 1 the full prior (the default before), 0 none, 0.5 ranks as p(c|q)^2 / p(c|template),
# 0.75 the default (docs/calibration.md)
VARIANTS = {"calibrated": {"template_prior": 1.0}, "uncalibrated": {"template_prior": 0.0},
            "pmi2": {"template_prior": 0.5}, "tempered": {"template_prior": 0.75}}
COMMITTED_CASES = {2048: 20, 4096: 20, 8192: 20, 16384: 6}  # benchmarks/results/engine.json
# relevance.py columns: the default, the default without calibration, and the dense reference
RELEVANCE_COLUMNS = {"bounds": "calibrated", "bounds-nocal-nostamps": "uncalibrated", "bounds-pmi2": "pmi2",
                     "bounds-tempered": "tempered"}


def run_case(model, tokenizer, tokens: int, index: int, cases: int, dense: bool, variants=VARIANTS) -> dict:
    """One engine.py case: chunked pre-fill once, bi-level answers per variant (and the dense reference)."""
    case = engine.make_case(tokenizer, tokens, (index + 0.5) / cases, seed=1000 * tokens + index)
    ids = engine.video_ids(case)
    question = torch.tensor(case["question"])
    row = {"target": tokens, "index": index, "tokens": ids.numel() + question.numel(),
           "needle_group": case["needle_group"], "key": case["key"]}
    if dense:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        full = torch.cat([ids, question])
        with torch.inference_mode():
            out = model.generate(full[None], cache=cache, max_new_tokens=engine.BILEVEL["max_new_tokens"],
                                 do_sample=False)
        text = tokenizer.decode(out[0, full.numel():], skip_special_tokens=True)
        row["dense"] = {"text": text, "acc": case["key"] in text}
        del cache
    video = prefill(model, torch.tensor(case["prefix"]), engine.to_groups(case), engine.PREFILL,
                    expected_tokens=ids.numel())
    decoder = Decoder(model, video, tokenizer, heads=lambda: retrieval_heads(model, tokenizer).heads)
    for name, options in variants.items():
        answer = decoder.answer(question, **configure(**options, **engine.BILEVEL))
        scored = [c for c, r in enumerate(answer.relevance) if r is not None]
        order = sorted(scored, key=lambda c: -answer.relevance[c])
        g = case["needle_group"]
        row[name] = {"text": answer.text, "acc": case["key"] in answer.text, "hit": g in answer.dense_chunks,
                     "rank": order.index(g) if g in order else None, "dense_chunks": answer.dense_chunks,
                     "kv_ratio": answer.kv_ratio}
    return row


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for target in sorted({r["target"] for r in rows}):
        mine = [r for r in rows if r["target"] == target]
        summary = {"benchmark": "engine", "target_tokens": target, "cases": len(mine)}
        for name in ("dense", *VARIANTS):
            have = [r[name] for r in mine if name in r]
            if not have:
                continue
            summary[f"acc_{name}"] = 100 * sum(x["acc"] for x in have) / len(have)
            summary[f"cases_{name}"] = len(have)
            if name != "dense":
                summary[f"needle_dense_{name}"] = 100 * sum(x["hit"] for x in have) / len(have)
        out.append(summary)
    return out


def relevance_summary(paths: list[Path]) -> list[dict]:
    """Per (length, seed, task): bi-level accuracy of each RELEVANCE_COLUMNS column over the cases that have it,
    and dense over the cases that have any (the same haystacks: cases are matched by length, seed, task and index)."""
    cases = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = (row["target"], row.get("seed", 0), row["task"], row["index"])
            merged = cases.setdefault(key, {})
            merged.update({k: v for k, v in row.items()
                           if v is not None and (merged.get(k) is None or k in RELEVANCE_COLUMNS)})
    out = []
    for target, seed, task in sorted({k[:3] for k in cases}):
        mine = [r for k, r in cases.items() if k[:3] == (target, seed, task) and any(c in r for c in RELEVANCE_COLUMNS)]
        if not mine:
            continue
        dense = [float(r["acc_dense"]) for r in mine if "acc_dense" in r]
        summary = {"benchmark": "relevance", "target_tokens": target, "seed": seed, "task": task, "cases": len(mine),
                   "acc_dense": 100 * sum(dense) / len(dense) if dense else None, "dense_cases": len(dense)}
        for column, name in RELEVANCE_COLUMNS.items():
            have = [r[column] for r in mine if column in r]
            if have:
                summary[f"acc_{name}"] = 100 * sum(float(x["acc"]) for x in have) / len(have)
                summary[f"recall_{name}"] = 100 * sum(x["recall"] for x in have) / len(have)
                summary[f"cases_{name}"] = len(have)
        out.append(summary)
    return out


def needle_summary(named: list[str]) -> list[dict]:
    out = []
    for item in named:
        name, path = item.split("=", 1)
        for row in json.loads(Path(path).read_text()):
            out.append({"benchmark": "needle", "decoding": name, "frames": row["frames"], "cases": row["cases"],
                        "acc_dense": row["acc_dense"], "acc_bilevel": row["acc_bilevel"],
                        "needle_dense": row["needle_selected"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2048,4096,8192,16384", help="token counts (engine.py's)")
    parser.add_argument("--cases", type=int, help="cases per length (default: engine.json's 20, 20, 20, 6)")
    parser.add_argument("--dense", action="store_true", help="also answer every case by dense decoding")
    parser.add_argument("--rows", type=Path, help="one JSON line per case; cases already there are skipped")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--relevance", type=Path, action="append", default=[],
                        help="relevance.py rows files to fold in (their cases merged by length, task and index)")
    parser.add_argument("--needle", action="append", default=[], help="NAME=PATH of a `videoxl eval needle --json`")
    parser.add_argument("--every", type=int, default=1,
                        help="run only the cases whose index is a multiple of this (the same cases, a subset)")
    parser.add_argument("--engine-dense", type=Path,
                        help="an engine.py --json: its dense accuracy per length fills the engine rows run without "
                             "--dense (dense decoding does not depend on the template prior)")
    parser.add_argument("--summarize-only", action="store_true", help="run no case: summarize --rows")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)} (default: all)")
    args = parser.parse_args()

    rows = [json.loads(x) for x in args.rows.read_text().splitlines()] if args.rows and args.rows.is_file() else []
    if not args.summarize_only:
        done = {(r["target"], r["index"]) for r in rows}
        model, tokenizer = load_smollm2()
        for tokens in (int(x) for x in args.lengths.split(",")):
            cases = args.cases or COMMITTED_CASES.get(tokens, 20)
            for i in range(cases):
                if (tokens, i) in done or i % args.every:
                    continue
                row = run_case(model, tokenizer, tokens, i, cases, args.dense,
                               {v: VARIANTS[v] for v in args.variants.split(",")})
                rows.append(row)
                if args.rows:
                    with args.rows.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                print(f"{tokens:>6} case {i:>2}: needle group {row['needle_group']:>3}  " + "  ".join(
                    f"{name} {'ok ' if row[name]['acc'] else 'no '}" + (f"(rank {row[name].get('rank')})"
                                                                       if name != "dense" else "")
                    for name in ("dense", *VARIANTS) if name in row), flush=True)
    summary = summarize(rows) + relevance_summary(args.relevance) + needle_summary(args.needle)
    if args.engine_dense:
        dense = {round(r["tokens"] / 1024): r for r in json.loads(args.engine_dense.read_text())}
        for s in summary:
            committed = dense.get(round(s.get("target_tokens", 0) / 1024))
            if s["benchmark"] == "engine" and "acc_dense" not in s and committed:
                s.update(acc_dense=committed["needle_acc_dense"], dense_cases=committed["cases"],
                         dense_from=str(args.engine_dense))
    print(f"{'benchmark':<10} {'cell':<22} {'cases':>5} {'dense':>6} " + " ".join(f"{v:>12}" for v in VARIANTS))
    for s in summary:
        cell = (f"{s['target_tokens']} tokens" + (f" {s['task']}" if "task" in s else "")
                + (f" seed {s['seed']}" if s.get("seed") else "")) if "target_tokens" in s \
            else f"{s['frames']} frames ({s['decoding']})"
        values = [s.get(f"acc_{v}") for v in VARIANTS]
        if s["benchmark"] == "needle":
            values = [s["acc_bilevel"] if v == s["decoding"] else None for v in VARIANTS]
        counts = [s.get(f"cases_{v}", s["cases"]) for v in VARIANTS]
        dense = "-" if s.get("acc_dense") is None else f"{s['acc_dense']:.0f}"
        shown = ["-" if v is None else f"{v:.0f}" + ("" if n == s["cases"] else f" ({n})") for v, n in zip(values, counts)]
        print(f"{s['benchmark']:<10} {cell:<22} {s['cases']:>5} {dense:>6} " + " ".join(f"{x:>12}" for x in shown))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
