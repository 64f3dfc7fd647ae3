"""Chunk relevance on realistic text: does bi-level decoding reload the right chunks dense, and does it still answer?

    python benchmarks/relevance.py [--lengths 2048,4096,8192] [--cases 30] [--tasks single,multikey,multivalue,neighbours]
                                   [--scorers bounds,exact,...] [--rows ROWS.jsonl] [--json PATH] [--markdown]
                                   [--scorers-only] [--merge OTHER_ROWS.jsonl] [--default-cases] [--quick]
                                   [--workers N --worker I]

Text stands in for video, on real SmolLM2-135M-Instruct weights. The haystack is natural English prose: the
paragraphs of the Python language reference that ship with every Python (``pydoc_data.topics``), shuffled per case,
cut into groups of 144 tokens, each after a ``Time {t}s:`` stamp (chunks of 4 groups pre-filled with a window of
3, as the published evaluation). Needles follow RULER's task shapes (Hsieh et al., "RULER: What's the real context
size of your long-context language models?", 2024; github.com/NVIDIA/RULER, ``synthetic/niah``), with needles
written as sentences of the same register as the text around them:

- ``single``: one key-value needle; "What is the special magic number for KEY?";
- ``multikey``: the same, with 3 distractor needles for other keys (same shape, other numbers) in other groups;
- ``multivalue``: 4 needles for one key with 4 numbers, in 4 groups; scored as RULER does (``string_match_all``: the
  fraction of the 4 numbers in the answer, which gets 64 new tokens instead of 24);
- ``neighbours``: the needle sentence is cut by a group boundary, so its value lies in the group after the key.

For every case the same haystack is answered by dense decoding (transformers, one forward, SDPA), by decoding over
the chunked pre-fill with every chunk dense, and by bi-level decoding (decoding chunks of one group, first and last
dense, ``--topk`` more chosen by each relevance variant) for each variant side by side (``SCORERS``): the default
(Quest-style bounds over the model's retrieval heads, the best 32 re-ranked by their exact attention mass divided by
the chat template's own mass over them to the power 0.75, ``template_prior``, ``bounds-tempered``; before, to the
power 1, ``bounds``; the best chunk brings the one after it, within the same
top-k, when a quarter of its attention falls on its last sixteenth, four times a uniform share:
``follow_tail=0.25``; sparse chunks decoded without their timestamp tokens, ``sparse_stamps=False``), the same
with the sparse chunks' timestamps (``bounds-stamps``), without calibration too
(``bounds-nocal``), and ablations of that uncalibrated default, as their rows were measured
(with the sparse chunks' timestamps): without the tail (``bounds-notail``), with the best chunk
always bringing the next (``bounds-follow``, ``follow=1``), over the question's content tokens only
(``bounds-content``), and with content tokens too: without the re-ranking (``bounds-norefine``), over every head
(``bounds-all``), the other scorers (over the retrieval heads). ``bounds-rel`` reloads fewer chunks when the rest
fall below 0.6 of the best one's relevance (``min_relevance``, an ablation against distractor needles, which look
like the asked one).
Two references: ``exact``, the question's true attention mass per chunk over the dense cache at every layer and head
(it materializes the attention over the whole video), and ``oracle``, the needle's groups given as external scores
(what bi-level decoding answers when selection is perfect at this budget); both decode with the default's cache, and
``exact-stamps`` / ``oracle-stamps`` with the sparse chunks' timestamps (as their earlier rows were). ``recall`` is
the fraction of needle groups among the dense chunks (for ``neighbours``: both groups of the split needle);
``kv_ratio`` the bi-level cache's bytes over dense. The ``fallback`` rows are the default with
``min_confidence=FALLBACK``, derived exactly from the rows: a case whose confidence is below it is decoded with
every chunk dense, which is the chunked decoding the row already holds. A ``--scorers-only`` run (an ablation)
answers with its scorers alone, and ``--merge`` adds its rows' scorers to a full run's cases of the same (length,
task, index): the same haystack.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videoxl.engine.decode import Decoder, configure  # noqa: E402
from videoxl.engine.heads import retrieval_heads  # noqa: E402
from videoxl.engine.layout import Group, embed  # noqa: E402
from videoxl.engine.prefill import PrefillConfig, prefill  # noqa: E402
from videoxl.llm import load_smollm2  # noqa: E402

GROUP_TEXT = 144
PREFILL = PrefillConfig(chunk=4, window=3)
TASKS = ("single", "multikey", "multivalue", "neighbours")
# relevance variants side by side: decoding options (videoxl.engine.decode.configure) (the default first); "exact" and "oracle" are the references
# below
SCORERS = {
    # the default before the template prior was tempered (docs/calibration.md; "bounds-tempered" is the default
    # now): the re-ranked chunks' mass divided by the chat template's; the best chunk brings the one after it (within
    # topk) when a quarter of its attention is on its last sixteenth; sparse chunks are decoded without their
    # timestamp tokens. Each entry names what differs from the engine's default decoding (engine.decode.DEFAULT).
    "bounds": {"heads": "retrieval", "score_tokens": "all", "refine": 32, "template_prior": True, "follow_tail": 0.25,
               "sparse_stamps": False},
    "bounds-stamps": {"template_prior": True, "sparse_stamps": True},  # sparse chunks with their timestamps
    "bounds-nocal-nostamps": {"template_prior": False, "sparse_stamps": False},  # "bounds" uncalibrated
    "bounds-nocal": {"template_prior": False, "sparse_stamps": True},  # and without the template prior
    # the default: the re-ranked mass over the template's to the power 0.75 (docs/calibration.md)
    "bounds-tempered": {"template_prior": 0.75, "sparse_stamps": False},
    "bounds-pmi2": {"template_prior": 0.5, "sparse_stamps": False},  # to the power 0.5: ranks as p(c|q)^2 / p(c|t)
    # the ablations below are of the scorer without the template prior, as their rows were measured
    "bounds-notail": {"follow_tail": None, "template_prior": False, "sparse_stamps": True},  # the top-k by relevance alone
    "bounds-follow": {"follow": 1, "follow_tail": None, "template_prior": False,
                      "sparse_stamps": True},  # the best chunk always brings the next
    "bounds-rel": {"min_relevance": 0.6, "template_prior": False,
                   "sparse_stamps": True},  # only chunks >= 0.6 x the best one's relevance
    "bounds-content": {"score_tokens": "content", "refine": 16, "follow_tail": None, "template_prior": False,
                       "sparse_stamps": True},
    # the variants below score content tokens only, as the default did when the published rows were measured
    "bounds-norefine": {"refine": 0, "score_tokens": "content", "follow_tail": None,
                        "sparse_stamps": True},  # bounds alone, not re-ranked
    "bounds-all": {"heads": "all", "score_tokens": "content", "refine": 16, "follow_tail": None,
                   "template_prior": False, "sparse_stamps": True},  # every head
    "mean": {"scorer": "mean", "score_tokens": "content", "follow_tail": None, "sparse_stamps": True},
    "sparse": {"scorer": "sparse", "score_tokens": "content", "follow_tail": None, "sparse_stamps": True},
    "dense": {"scorer": "dense", "score_tokens": "content", "follow_tail": None, "sparse_stamps": True},
    # the references (below) decode with the default's cache; their rows measured before it, with sparse chunks'
    # timestamps, are under "exact-stamps" and "oracle-stamps"
    "exact": None,
    "oracle": None,
    "exact-stamps": None,
    "oracle-stamps": None,
}
FALLBACK = 0.1  # the min_confidence of the derived "fallback" row (see summarize)
PREFIX = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSome special magic numbers "
          "are hidden within the following text. Make sure to memorize them. I will quiz you about the numbers "
          "afterwards.\n")
KEYS = ["lively-harbor", "quiet-meadow", "amber-lantern", "silver-orchard", "rapid-cascade", "gentle-summit",
        "hollow-canyon", "crimson-falcon", "frozen-willow", "golden-thicket", "humble-beacon", "ivory-compass",
        "jagged-reef", "lucid-glacier", "mellow-prairie", "noble-quarry", "opal-tundra", "placid-lagoon",
        "rustic-spire", "sable-marsh", "tidal-grove", "umber-ridge", "vivid-fjord", "woven-delta"]


def prose(tokenizer, seed: int) -> list[int]:
    """Natural-language paragraphs of the Python reference (grammar and code lines dropped), shuffled, as ids."""
    from pydoc_data.topics import topics

    paragraphs = []
    for text in topics.values():
        for para in re.split(r"\n\s*\n", text):
            lines = [ln for ln in para.splitlines() if ln.strip() and not ln.startswith((" ", "*", "=", "-", ">"))]
            joined = " ".join(ln.strip() for ln in lines)
            if len(joined) > 200 and joined.count("(") < 6:
                paragraphs.append(joined)
    random.Random(seed).shuffle(paragraphs)
    return tokenizer(" " + " ".join(paragraphs[:400]))["input_ids"]


def needle(key: str, value: str) -> str:
    return f" One of the special magic numbers for {key} is: {value}."


def question_text(task: str, key: str) -> str:
    if task == "multivalue":
        return (f"\nWhat are all the special magic numbers for {key} mentioned in the provided text? Answer with "
                f"the numbers only.<|im_end|>\n<|im_start|>assistant\nThe special magic numbers for {key} are:")
    return (f"\nWhat is the special magic number for {key} mentioned in the provided text? Answer with the number "
            f"only.<|im_end|>\n<|im_start|>assistant\nThe special magic number for {key} is:")


def make_case(tokenizer, task: str, tokens: int, index: int, cases: int, salt: int = 0) -> dict:
    """One haystack with its needles; the needle's depth sweeps the haystack across the cases. ``salt`` draws
    other haystacks (prose order, keys, numbers) at the same depths: a held-out set (``--seed``)."""
    seed = zlib.crc32(f"{task}-{tokens}-{index}".encode() + (f"-{salt}".encode() if salt else b""))
    rng = random.Random(seed)
    text = prose(tokenizer, seed)
    prefix = tokenizer(PREFIX)["input_ids"]
    keys = rng.sample(KEYS, 4)
    key = keys[0]
    q_ids = tokenizer(question_text(task, key))["input_ids"]
    n_groups = max(6, round((tokens - len(prefix) - len(q_ids)) / (GROUP_TEXT + 8)))
    depth = (index + 0.5) / cases
    target = min(n_groups - 2, max(1, int(depth * n_groups)))  # never the always-dense first or last group
    plants: dict[int, list[str]] = {}  # group -> needle sentences planted in it
    values = [str(rng.randint(1_000_000, 9_999_999)) for _ in range(4)]
    others = [g for g in range(1, n_groups - 1) if abs(g - target) > 1]
    if task in ("single", "neighbours"):
        plants[target] = [needle(key, values[0])]
        answers = [values[0]]
    elif task == "multikey":
        plants[target] = [needle(key, values[0])]
        for other, g in zip(keys[1:], rng.sample(others, 3)):
            plants.setdefault(g, []).append(needle(other, str(rng.randint(1_000_000, 9_999_999))))
        answers = [values[0]]
    else:  # multivalue
        for v, g in zip(values, [target] + rng.sample(others, 3)):
            plants.setdefault(g, []).append(needle(key, v))
        answers = values
    groups, pos = [], 0
    # the groups the question needs: the asked key's needles (not the distractors)
    needle_groups = sorted(g for g, sentences in plants.items() if any(f"for {key} is" in x for x in sentences))
    split = None
    for g in range(n_groups):
        body = text[pos: pos + GROUP_TEXT]
        pos += GROUP_TEXT
        for sentence in plants.get(g, []):
            ids = tokenizer(sentence)["input_ids"]
            if task == "neighbours":  # the sentence ends the group and its number opens the next one
                cut = len(tokenizer(sentence.split(":")[0] + ":")["input_ids"])
                body = body[: GROUP_TEXT - cut] + ids[:cut]
                split = ids[cut:]
            else:
                at = rng.randrange(0, GROUP_TEXT - len(ids))
                body = body[:at] + ids + body[at: GROUP_TEXT - len(ids)]
        if split is not None and g == target + 1:
            body = split + body[: GROUP_TEXT - len(split)]
        stamp = tokenizer(f"Time {4.0 * g:.1f}s:")["input_ids"]
        groups.append((stamp, body))
    if task == "neighbours":
        needle_groups = [target, target + 1]
    return {"task": task, "index": index, "key": key, "answers": answers, "prefix": prefix, "groups": groups,
            "question": q_ids, "needle_groups": needle_groups, "depth": depth}


def correct(text: str, answers: list[str]) -> float:
    """RULER's ``string_match_all``: the fraction of the expected numbers found in the answer (1 or 0 for one)."""
    return sum(a in text for a in answers) / len(answers)


def answer_budget(task: str) -> int:
    """New tokens per answer: SmolLM2 writes every digit as its own token, so four 7-digit numbers with their
    separators need about 40 tokens, one number about 10."""
    return 64 if task == "multivalue" else 24


def exact_scores(decoder: Decoder, question: torch.Tensor, ranges: list[tuple[int, int]]) -> list[float]:
    """The question's true attention mass on each decoding chunk over the all-dense cache, averaged over layers,
    heads and question tokens (the reference the in-model scorers approximate)."""
    store = decoder.video.store
    everything = torch.ones(len(store.groups), dtype=torch.bool)
    cache, position = decoder._cache(everything, "absolute", question.shape[0])
    layers = tuple(range(store.layers))
    _, step = decoder._step(cache, embed(decoder.model, question), position, capture=layers)
    owner = torch.full((store.length,), -1, dtype=torch.long)
    for c, (a, b) in enumerate(ranges):
        owner[store.groups[a].start: store.groups[b - 1].end] = c
    mass = torch.zeros(len(ranges), dtype=torch.float64)
    for layer in layers:
        q = step.queries[layer].float()  # (H, Q, D), rotated at their positions
        k = cache.k[layer][:, : store.length].float()  # (Hkv, L, D), rotated at theirs
        k = k.repeat_interleave(q.shape[0] // k.shape[0], 0)
        attn = torch.softmax(q @ k.transpose(1, 2) * decoder.scale, -1).sum((0, 1))  # (L,)
        keep = owner >= 0
        mass.index_add_(0, owner[keep], attn[keep].double())
    return mass.tolist()


def run_case(model, tokenizer, case: dict, topk: int, prefill_config: PrefillConfig = PREFILL,
             scorers: dict = SCORERS, baselines: bool = True) -> dict:
    """One case answered dense, chunked and by each scorer's bi-level decoding (without ``baselines``: by the
    scorers only; the dense and chunked fields are then None)."""
    from transformers import DynamicCache

    prefix = torch.tensor(case["prefix"])
    groups = [Group(torch.tensor(s), torch.tensor(t)) for s, t in case["groups"]]
    ids = torch.cat([prefix] + [torch.cat([g.timestamp, g.visual]) for g in groups])
    question = torch.tensor(case["question"])
    row = {k: case[k] for k in ("task", "index", "depth", "needle_groups")}
    row["tokens"] = ids.numel() + question.numel()
    row["window"] = prefill_config.window
    budget = answer_budget(case["task"])
    row.update(dense_s=None, chunked_s=None, question_s=None, answers=None, acc_dense=None, acc_chunked=None)
    if baselines:
        t0 = time.perf_counter()
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(ids[None], cache=cache, use_cache=True, logits_to_keep=1)
            full = torch.cat([ids, question])
            out = model.generate(full[None], cache=cache, max_new_tokens=budget, do_sample=False)
        dense_text = tokenizer.decode(out[0, full.numel():], skip_special_tokens=True)
        row["dense_s"] = time.perf_counter() - t0
        del cache
    t0 = time.perf_counter()
    video = prefill(model, prefix, groups, prefill_config, expected_tokens=ids.numel())
    decoder = Decoder(model, video, tokenizer, heads=lambda: retrieval_heads(model, tokenizer).heads)
    if baselines:
        chunked = decoder.answer(question, **configure(dense=True, max_new_tokens=budget))
        row["chunked_s"] = time.perf_counter() - t0
        row["question_s"] = chunked.seconds["question"]  # the question's pre-fill over the dense cache: selection's bar
        row["answers"] = {"dense": dense_text, "chunked": chunked.text}
        row["acc_dense"] = correct(dense_text, case["answers"])
        row["acc_chunked"] = correct(chunked.text, case["answers"])
    config = dict(topk=topk, chunk=1, max_new_tokens=budget)
    for scorer in scorers:
        t0 = time.perf_counter()
        reference = configure(**config, sparse_stamps=scorer.endswith("-stamps"))
        if scorer.startswith("exact"):
            ranges = [(g, g + 1) for g in range(len(groups))]
            answer = decoder.answer(question, **reference, chunk_scores=exact_scores(decoder, question, ranges))
        elif scorer.startswith("oracle"):  # the needle's groups, as an external scorer that knows them would give
            truth = [float(g in case["needle_groups"]) for g in range(len(groups))]
            answer = decoder.answer(question, **reference, chunk_scores=truth)
        else:
            answer = decoder.answer(question, **configure(**{**config, **SCORERS[scorer]}))
        hits = [g in answer.dense_chunks for g in case["needle_groups"]]
        row[scorer] = {"recall": sum(hits) / len(hits), "acc": correct(answer.text, case["answers"]),
                       "kv_ratio": answer.kv_ratio, "dense_chunks": answer.dense_chunks, "text": answer.text,
                       "confidence": answer.confidence, "tail": answer.tail,
                       "select_s": answer.seconds.get("select", 0.0), "s": time.perf_counter() - t0}
    return row


def with_fallback(row: dict, threshold: float = FALLBACK) -> dict:
    """The default scorer's result had ``min_confidence=threshold`` been set: a case below it is decoded with every
    chunk dense, which is exactly the chunked decoding the row already holds (same cache, same positions)."""
    r = row["bounds"]
    if r.get("confidence") is None or r["confidence"] >= threshold or row["acc_chunked"] is None:
        return {**r, "fell_back": False}
    return {**r, "recall": 1.0, "acc": row["acc_chunked"], "kv_ratio": 1.0, "fell_back": True}


def _cell_base(cell: list[dict]) -> dict:
    n = len(cell)
    return {"tokens": round(sum(r["tokens"] for r in cell) / n), "target_tokens": cell[0]["target"],
            "task": cell[0]["task"], "window": cell[0].get("window", PREFILL.window), "cases": n,
            "acc_dense": percent([r["acc_dense"] for r in cell]),
            "acc_chunked": percent([r["acc_chunked"] for r in cell])}


def summarize(rows: list[dict]) -> list[dict]:
    """One row per (length, task, scorer) with percentages, over the cell's cases that ran that scorer (dense and
    chunked accuracy over the same cases); a cell run with ``--only-chunked`` gets one row with scorer None (dense
    and chunked accuracy only)."""
    rows = [{**r, "fallback": with_fallback(r)} if "bounds" in r else r for r in rows]
    out = []
    for tokens in sorted({r["target"] for r in rows}):
        for task in TASKS:
            cell = [r for r in rows if r["target"] == tokens and r["task"] == task]
            scorers = [s for s in [*SCORERS, "fallback"] if any(s in r for r in cell)]
            if cell and not scorers:
                out.append({**_cell_base(cell), "scorer": None})
            for scorer in scorers:
                ran = [r for r in cell if scorer in r]
                n = len(ran)
                out.append({
                    **_cell_base(ran), "scorer": scorer,
                    "recall": 100 * sum(r[scorer]["recall"] for r in ran) / n,
                    "acc_bilevel": 100 * sum(r[scorer]["acc"] for r in ran) / n,
                    "kv_ratio": sum(r[scorer]["kv_ratio"] for r in ran) / n,
                    "select_s": sorted(r[scorer]["select_s"] for r in ran)[n // 2],
                    "question_s": sorted(r.get("question_s") or math.nan for r in ran)[n // 2],
                    "fell_back": 100 * sum(r[scorer].get("fell_back", False) for r in ran) / n,
                })
    return out


def merged(rows: list[dict], extra: list[Path]) -> list[dict]:
    """``rows`` with the scorers of ``--scorers-only`` rows (other files) added to the cases they match; rows are
    keyed by (length, task, index, seed), so the same haystack and needles."""
    by_key = {(r["target"], r["task"], r["index"], r.get("seed", 0)): r for r in rows}
    for path in extra:
        for line in path.read_text().splitlines():
            if not line.strip().endswith("}"):
                continue
            r = json.loads(line)
            into = by_key.get((r["target"], r["task"], r["index"], r.get("seed", 0)))
            if into is not None:
                into.update({k: v for k, v in r.items() if k in SCORERS and k not in into})
    return rows


def percent(values: list) -> float | None:
    """Mean in %, None when a row has no value (a ``--scorers-only`` run: no dense or chunked answer)."""
    return None if any(v is None for v in values) else 100 * sum(values) / len(values)


def pct(x: float | None, width: int = 0) -> str:
    return f"{'-' if x is None else format(x, '.0f'):>{width}}"


def schedule(lengths: list[int], tasks: list[str], cases: int) -> list[tuple[int, str, int]]:
    """(length, task, case index) in run order: tasks alternate, and every third case first (depths 0, 3, 6, ...
    of ``cases``), so a run stopped early leaves every cell of a length with about as many cases, spread over the
    haystack's depth."""
    order = [i for start in range(3) for i in range(start, cases, 3)]
    return [(tokens, task, i) for tokens in lengths for i in order for task in tasks]


COLUMNS = {"bounds": "**default scorer**", "bounds-stamps": "default, sparse chunks with stamps",
           "bounds-nocal": "with stamps, no calibration",
           "bounds-notail": "with stamps, no calibration, no follow_tail", "mean": "mean key (with stamps)",
           "exact-stamps": "exact attention mass, all heads (with stamps)", "oracle": "oracle",
           "oracle-stamps": "oracle (with stamps)"}


def markdown(summary: list[dict]) -> str:
    """The README's table: one line per (length, task), recall / bi-level accuracy in % for the default scorer and
    the other ``COLUMNS`` side by side (a scorer run on fewer of the cell's cases says on how many, with dense's
    accuracy on those); KV and selection seconds are the default's."""
    lines = ["| tokens | task | cases | dense | chunked | " + " | ".join(COLUMNS.values())
             + " | KV bi-level / dense | select s (question's pre-fill s) |",
             "|---:|---|---:|---:|---:|" + "---|" * len(COLUMNS) + "---:|---:|"]
    cells: dict[tuple, dict] = {}
    for s in summary:
        cells.setdefault((s["target_tokens"], s["task"]), {})[s["scorer"]] = s
    for (_, task), by in cells.items():
        base = by.get("bounds") or next(iter(by.values()))
        pair = {}
        for k in COLUMNS:
            pair[k] = f"{by[k]['recall']:.0f} / {by[k]['acc_bilevel']:.0f}" if k in by else "-"
            if k in by and by[k]["cases"] != base["cases"]:
                pair[k] += f" ({by[k]['cases']} cases, dense {pct(by[k]['acc_dense'])})"
        pair["bounds"] = f"**{pair['bounds']}**"
        kv, sel = (f"{base['kv_ratio']:.2f}", f"{base['select_s']:.2f}") if "bounds" in by else ("-", "-")
        if "bounds" in by and not math.isnan(base["question_s"]):
            sel += f" ({base['question_s']:.2f})"
        lines.append(f"| {base['tokens']:,} | {task} | {base['cases']} | {pct(base['acc_dense'])} | "
                     f"{pct(base['acc_chunked'])} | " + " | ".join(pair.values()) + f" | {kv} | {sel} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2048,4096,8192", help="haystack sizes in tokens")
    parser.add_argument("--cases", type=int, default=30, help="cases per (length, task)")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--topk", type=int, default=3, help="chunks reloaded dense besides the first and last")
    parser.add_argument("--rows", type=Path, help="one JSON line per case; cases already there are skipped")
    parser.add_argument("--json", type=Path, help="write the summary rows here")
    parser.add_argument("--quick", action="store_true", help="2,048 tokens, 4 cases per task")
    parser.add_argument("--window", type=int, default=PREFILL.window,
                        help="pre-fill window in chunks (-1: every chunk sees all earlier ones)")
    parser.add_argument("--only-chunked", action="store_true",
                        help="dense and chunked decoding only (for the pre-fill's own loss across windows)")
    parser.add_argument("--scorers", default=",".join(SCORERS),
                        help="relevance variants to run, comma-separated (default: all of them)")
    parser.add_argument("--scorers-only", action="store_true",
                        help="bi-level answers only, no dense or chunked ones (an ablation beside a full run's rows)")
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="a --scorers-only run's rows: their scorers join the --rows cases they match")
    parser.add_argument("--markdown", action="store_true", help="also print the summary as the README's table")
    parser.add_argument("--default-cases", action="store_true",
                        help="summarize only the cases the default scorer ran: every column on the same cases")
    parser.add_argument("--seed", type=int, default=0,
                        help="other haystacks at the same depths (held out from the published rows, seed 0); a rows "
                             "file holds one seed")
    parser.add_argument("--every", default="1,0", help="M,R: only the cases whose index is R modulo M (a subset "
                                                         "spread over the depths, e.g. 3,1)")
    parser.add_argument("--workers", type=int, default=1, help="run every WORKERS-th case from --worker")
    parser.add_argument("--worker", type=int, default=0)
    args = parser.parse_args(argv)
    lengths = [2048] if args.quick else [int(x) for x in args.lengths.split(",")]
    cases = 4 if args.quick else args.cases
    tasks = args.tasks.split(",")
    prefill_config = PrefillConfig(chunk=PREFILL.chunk, window=None if args.window == -1 else args.window)
    rows = []
    if args.rows and args.rows.is_file():
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip().endswith("}")]
    every = [int(x) for x in args.every.split(",")]
    seeds = {r.get("seed", 0) for r in rows}
    if seeds - {args.seed}:
        parser.error(f"{args.rows} holds haystacks of --seed {', '.join(map(str, sorted(seeds)))}, not {args.seed}")
    rows = merged(rows, args.merge)
    done = {(r["target"], r["task"], r["index"]) for r in rows}
    unknown = set(args.scorers.split(",")) - set(SCORERS)
    if unknown:
        parser.error(f"unknown scorers {', '.join(sorted(unknown))}; choose from {', '.join(SCORERS)}")
    scorers = {} if args.only_chunked else {s: SCORERS[s] for s in args.scorers.split(",")}
    print(f"{'tokens':>6} {'task':<10} {'case':>4}  dense chunked | " + " ".join(f"{s:>11}" for s in scorers)
          + "   (answer right? needle recall)", flush=True)
    mark = {1.0: "+", 0.0: "-", None: " "}  # right, wrong, not run; "~": partly right (multivalue)
    todo = [(tokens, task, i) for n, (tokens, task, i) in enumerate(schedule(lengths, tasks, cases))
            if (tokens, task, i) not in done and n % args.workers == args.worker and i % every[0] == every[1]]
    model, tokenizer = load_smollm2() if todo else (None, None)  # a summary of kept rows loads nothing
    for tokens, task, i in todo:
        case = make_case(tokenizer, task, tokens, i, cases, args.seed)
        row = {"target": tokens, **({"seed": args.seed} if args.seed else {}),
               **run_case(model, tokenizer, case, args.topk, prefill_config, scorers, baselines=not args.scorers_only)}
        rows.append(row)
        if args.rows:
            with open(args.rows, "a") as f:
                f.write(json.dumps(row) + "\n")
        marks = " ".join(f"{mark.get(row[s]['acc'], '~')}{row[s]['recall']:>10.2f}" for s in scorers)
        print(f"{row['tokens']:>6} {task:<10} {i:>4}  {mark.get(row['acc_dense'], '~'):>5} "
              f"{mark.get(row['acc_chunked'], '~'):>7} | {marks}", flush=True)
    summary = summarize([r for r in rows if r["target"] in lengths and r["task"] in tasks
                         and r["index"] % every[0] == every[1] and ("bounds" in r or not args.default_cases)])
    print(f"\n{'tokens':>6} {'task':<10} {'scorer':<14} {'cases':>5} {'recall':>6} {'dense':>6} {'chunked':>7} "
          f"{'bilevel':>7} {'KV':>5} {'select s':>8} {'question s':>10} {'dense fallback %':>16}")
    for s in summary:
        if s["scorer"] is None:
            print(f"{s['tokens']:>6} {s['task']:<10} {'-':<14} {s['cases']:>5} {'':>6} {pct(s['acc_dense'], 6)} "
                  f"{pct(s['acc_chunked'], 7)}   (window {s['window']})")
            continue
        print(f"{s['tokens']:>6} {s['task']:<10} {s['scorer']:<14} {s['cases']:>5} {s['recall']:>6.0f} "
              f"{pct(s['acc_dense'], 6)} {pct(s['acc_chunked'], 7)} {s['acc_bilevel']:>7.0f} {s['kv_ratio']:>5.2f} "
              f"{s['select_s']:>8.3f} {s['question_s']:>10.3f} {s['fell_back']:>16.0f}")
    if args.markdown:
        print("\n" + markdown(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
