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

VARIANTS = {"calibrated": {"template_prior": True}, "uncalibrated": {"template_prior": False}}
COMMITTED_CASES = {2048: 20, 4096: 20, 8192: 20, 16384: 6}  # benchmarks/results/engine.json
# relevance.py columns: the default, the default without calibration, and the dense reference
RELEVANCE_COLUMNS = {"bounds": "calibrated", "bounds-nocal-nostamps": "uncalibrated"}


def run_case(model, tokenizer, tokens: int, index: int, cases: int, dense: bool) -> dict:
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
    for name, options in VARIANTS.items():
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
            if name != "dense":
                summary[f"needle_dense_{name}"] = 100 * sum(x["hit"] for x in have) / len(have)
        out.append(summary)
    return out


def relevance_summary(paths: list[Path]) -> list[dict]:
    """Per (length, task): bi-level accuracy of each RELEVANCE_COLUMNS column and dense, over the cases that have
    every one of them (the same haystacks)."""
    cases = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = (row["target"], row["task"], row["index"])
            merged = cases.setdefault(key, {})
            merged.update({k: v for k, v in row.items()
                           if v is not None and (merged.get(k) is None or k in RELEVANCE_COLUMNS)})
    out = []
    for target, task in sorted({k[:2] for k in cases}):
        mine = [r for k, r in cases.items() if k[:2] == (target, task) and all(c in r for c in RELEVANCE_COLUMNS)]
        if not mine:
            continue
        summary = {"benchmark": "relevance", "target_tokens": target, "task": task, "cases": len(mine),
                   "acc_dense": 100 * sum(float(r["acc_dense"]) for r in mine) / len(mine)}
        for column, name in RELEVANCE_COLUMNS.items():
            summary[f"acc_{name}"] = 100 * sum(float(r[column]["acc"]) for r in mine) / len(mine)
            summary[f"recall_{name}"] = 100 * sum(r[column]["recall"] for r in mine) / len(mine)
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
    parser.add_argument("--summarize-only", action="store_true", help="run no case: summarize --rows")
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
                row = run_case(model, tokenizer, tokens, i, cases, args.dense)
                rows.append(row)
                if args.rows:
                    with args.rows.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                print(f"{tokens:>6} case {i:>2}: needle group {row['needle_group']:>3}  " + "  ".join(
                    f"{name} {'ok ' if row[name]['acc'] else 'no '}" + (f"(rank {row[name].get('rank')})"
                                                                       if name != "dense" else "")
                    for name in ("dense", *VARIANTS) if name in row), flush=True)
    summary = summarize(rows) + relevance_summary(args.relevance) + needle_summary(args.needle)
    print(f"{'benchmark':<10} {'cell':<22} {'cases':>5} {'dense':>6} {'calibrated':>10} {'uncalibrated':>12}")
    for s in summary:
        cell = (f"{s['target_tokens']} tokens" + (f" {s['task']}" if "task" in s else "")) if "target_tokens" in s \
            else f"{s['frames']} frames"
        if s["benchmark"] == "needle":
            cell += f" ({s['decoding']})"
            values = [s["acc_dense"], s["acc_bilevel"] if s["decoding"] == "calibrated" else None,
                      s["acc_bilevel"] if s["decoding"] == "uncalibrated" else None]
        else:
            values = [s.get("acc_dense"), s.get("acc_calibrated"), s.get("acc_uncalibrated")]
        print(f"{s['benchmark']:<10} {cell:<22} {s['cases']:>5} " + " ".join(
            f"{'-' if v is None else f'{v:.0f}':>{w}}" for v, w in zip(values, (6, 10, 12))))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
