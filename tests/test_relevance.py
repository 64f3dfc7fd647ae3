"""In-model relevance: retrieval heads, content tokens, confidence and the dense fallback."""

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import random_groups, tiny_qwen2, decoding, heads_of

from videoxl.engine.decode import Decoder
from videoxl.engine.layout import Group
from videoxl.engine.prefill import PrefillConfig, prefill
from videoxl.engine.decode import Ablation
from videoxl.engine.heads import RetrievalHeads, find_retrieval_heads, retrieval_heads
from videoxl.engine.select import confidence, content_mask
from videoxl.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_confidence_is_zero_when_flat_and_one_when_the_chosen_hold_everything():
    assert confidence(torch.full((10,), 0.1), [2, 5]) == pytest.approx(0.0)
    assert confidence(torch.tensor([0.0, 0.5, 0.0, 0.5]), [1, 3]) == pytest.approx(1.0)
    peaked = torch.tensor([0.05, 0.6, 0.05, 0.1, 0.1, 0.1])
    assert 0.4 < confidence(peaked, [1]) < 0.6  # 0.6 held where 1/6 is chance: (0.6 - 1/6) / (5/6)
    assert confidence(peaked, [0]) == 0.0  # below chance clips at 0
    assert confidence(peaked, []) == confidence(peaked, list(range(6))) == 1.0  # nothing was decided


def test_content_mask_drops_the_chat_template(smollm2):
    _, tokenizer = smollm2
    text = ("\nWhat is the special magic number for lively-harbor?<|im_end|>\n<|im_start|>assistant\n"
            "The special magic number for lively-harbor is:")
    ids = torch.tensor(tokenizer(text)["input_ids"])
    mask = content_mask(ids, tokenizer)
    kept = tokenizer.decode(ids[mask])
    assert "<|im" not in kept and "assistant" not in kept and "\n" not in kept
    assert kept.count("lively-harbor") == 2 and kept.startswith("What is the special magic number")
    assert kept.endswith("is:")


def test_retrieval_heads_round_trip_and_are_cached_per_model(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOXL_CACHE", str(tmp_path))
    model = tiny_qwen2(layers=2)
    found = retrieval_heads(model)
    assert found.count == 0 and found.cases == 8  # a random model has no retrieval heads: every head scores
    assert RetrievalHeads.from_json(found.to_json()) == found
    cached = list((tmp_path / "retrieval-heads").glob("*.json"))
    assert len(cached) == 1 and RetrievalHeads.from_json(cached[0].read_text()) == found
    assert retrieval_heads(model) is found  # memoized per model object
    other = tiny_qwen2(seed=1, layers=2)  # other weights, other key
    retrieval_heads(other)
    assert len(list((tmp_path / "retrieval-heads").glob("*.json"))) == 2


def test_low_confidence_falls_back_to_dense_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOXL_CACHE", str(tmp_path))
    model = tiny_qwen2(layers=2)
    video = prefill(model, torch.arange(4), random_groups(10, hidden=64), PrefillConfig(chunk=2, window=1))
    decoder = Decoder(model, video, heads=heads_of(model))
    question = torch.arange(10, 15)
    picked = decoder.answer(question, **decoding(topk=2, chunk=1, max_new_tokens=2, min_confidence=0.0))
    assert picked.fallback is None and len(picked.dense_chunks) == 4 and picked.kv_ratio < 1
    assert 0 <= picked.confidence <= 1
    unsure = decoder.answer(question, **decoding(topk=2, chunk=1, max_new_tokens=2,
                                                   min_confidence=min(1.0, picked.confidence + 0.01)))
    assert unsure.fallback.startswith("dense: flat relevance") and f"{picked.confidence:.2f}" in unsure.fallback
    assert unsure.dense_chunks == list(range(10)) and unsure.kv_ratio == 1.0
    assert unsure.confidence == picked.confidence
    # no scoring, no confidence: all dense by request, or caller-given scores
    assert decoder.answer(question, **decoding(max_new_tokens=1)).confidence is None
    given = decoder.answer(question, **decoding(topk=1, chunk=1, max_new_tokens=1, min_confidence=1.0),
                           chunk_scores=[0.0] * 10)
    assert given.confidence is None and given.fallback is None


def scorer_of_twelve_groups(tmp_path, monkeypatch):
    """(model, score(**Ablation options)): relevance of a question over 12 one-group chunks, first and last
    forced dense, with a retrieval-head cache of its own."""
    monkeypatch.setenv("VIDEOXL_CACHE", str(tmp_path))
    model = tiny_qwen2(layers=2)
    video = prefill(model, torch.arange(4), random_groups(12, hidden=64), PrefillConfig(chunk=2, window=1))
    decoder = Decoder(model, video, heads=heads_of(model))
    question, ranges, forced = torch.arange(10, 16), [(g, g + 1) for g in range(12)], [0, 11]
    return model, lambda **kw: decoder.score(question, ranges, forced, ablation=Ablation(**kw))


def test_refining_every_candidate_is_the_exact_mass_and_only_the_shortlist_moves(tmp_path, monkeypatch):
    _, scored = scorer_of_twelve_groups(tmp_path, monkeypatch)
    score = lambda **kw: scored(heads="all", **kw)
    torch.testing.assert_close(score(refine=100), score(scorer="dense"), equal_nan=True)  # forced: NaN
    bounds, refined = score(refine=0), score(refine=4)
    short = sorted(range(1, 11), key=lambda c: -float(bounds[c]))[:4]
    rest = [c for c in range(1, 11) if c not in short]
    torch.testing.assert_close(refined[rest], bounds[rest])  # outside the shortlist: the bounds' relevance
    torch.testing.assert_close(refined[short].sum(), bounds[short].sum())  # its share kept, split by the mass
    exact = score(scorer="dense")[short]
    assert torch.equal(refined[short].argsort(), exact.argsort())


def test_a_model_without_retrieval_heads_keeps_its_bounds_unrefined(tmp_path, monkeypatch):
    """Exact mass over every head follows sinks and recency: refining by it is kept for retrieval heads."""
    from videoxl.engine import heads

    model, score = scorer_of_twelve_groups(tmp_path, monkeypatch)
    every = lambda **kw: score(heads="all", **kw)
    assert not torch.equal(every(refine=4), every(refine=0))  # refining moves this shortlist
    monkeypatch.setitem(heads._found, model, heads.RetrievalHeads({}, [[0.0] * 4] * 2, 1))  # none found
    torch.testing.assert_close(score(refine=4), every(refine=0), equal_nan=True)  # every head, bounds alone
    monkeypatch.setitem(heads._found, model, heads.RetrievalHeads({1: [0, 2]}, [[0.0] * 4] * 2, 1))
    assert not torch.equal(score(refine=4), score(refine=0))  # with retrieval heads the shortlist is refined


@pytest.fixture(scope="module")
def prose_needle(smollm2):
    """A ~1.2k-token natural-prose haystack (benchmarks/relevance.py) with one key-value needle, pre-filled."""
    from relevance import PREFILL, make_case

    model, tokenizer = smollm2
    case = make_case(tokenizer, "single", 1200, 1, 3)
    groups = [Group(torch.tensor(s), torch.tensor(t)) for s, t in case["groups"]]
    video = prefill(model, torch.tensor(case["prefix"]), groups, PREFILL)
    return model, tokenizer, case, video


def test_retrieval_heads_find_the_needle_in_prose(prose_needle):
    model, tokenizer, case, video = prose_needle
    decoder = Decoder(model, video, tokenizer, heads=heads_of(model, tokenizer))
    question = torch.tensor(case["question"])
    answer = decoder.answer(question, **decoding(topk=1, chunk=1, max_new_tokens=12))
    assert case["needle_groups"][0] in answer.dense_chunks
    ranked = sorted((x, c) for c, x in enumerate(answer.relevance) if x is not None)
    assert ranked[-1][1] == case["needle_groups"][0]
    assert answer.confidence > 0.1 and answer.fallback is None
    assert case["answers"][0] in answer.text


def test_selection_runs_the_question_only_up_to_its_last_scoring_layer(prose_needle):
    """The scoring queries equal those of the question's full forward over the whole cheap cache, taken from a
    forward that stops at the last scoring layer and a cache of the layers up to it."""
    from videoxl.engine.attention import DecodeStep, run_step
    from videoxl.engine.layout import embed
    from videoxl.engine.select import chunk_ranges

    model, tokenizer, case, video = prose_needle
    decoder = Decoder(model, video, tokenizer, heads=heads_of(model, tokenizer))
    question = torch.tensor(case["question"])
    ranges = chunk_ranges(len(video.store.groups), 1)
    forced = [0, len(ranges) - 1]
    layers = (5, 9, 17)
    early = decoder.question_queries(question, ranges, forced, layers)
    dense_groups = torch.zeros(len(video.store.groups), dtype=torch.bool)
    dense_groups[0] = dense_groups[-1] = True
    cache, position = decoder._cache(dense_groups, "absolute", question.shape[0])
    assert len(cache.k) == video.store.layers == 30
    step = DecodeStep(cache, question.shape[0], layers)
    full = run_step(model, embed(model, question), torch.arange(position, position + question.shape[0]), step)
    assert full is not None and full.shape == (question.shape[0], model.config.hidden_size)
    rope = decoder.summaries[False].rope
    q_pos = torch.arange(position, position + question.shape[0], dtype=torch.float64)
    for layer in layers:
        torch.testing.assert_close(early[layer], rope.rotate(step.queries[layer], -q_pos))
    short, _ = decoder._cache(dense_groups, "absolute", question.shape[0], layers=18)
    stopped = DecodeStep(short, question.shape[0], layers, queries_only=True)
    at = torch.arange(position, position + question.shape[0])
    assert run_step(model, embed(model, question), at, stopped) is None
    assert sorted(stopped.queries) == list(layers)  # layers 18-29 were never reached (their cache does not exist)


def test_follow_tail_brings_the_next_chunk_only_when_the_needle_runs_past_its_end(smollm2):
    """A needle cut by a group boundary ("... for KEY is:" | "N."): the key's group holds most of the retrieval heads'
    attention in its last sixteenth, so it brings the group with the number; a needle inside a group does not."""
    from relevance import PREFILL, make_case

    from videoxl.engine.select import chunk_ranges, tail_share

    model, tokenizer = smollm2
    shares = {}
    for task in ("neighbours", "single"):
        case = make_case(tokenizer, task, 1200, 0, 3)
        groups = [Group(torch.tensor(s), torch.tensor(t)) for s, t in case["groups"]]
        decoder = Decoder(model, prefill(model, torch.tensor(case["prefix"]), groups, PREFILL), tokenizer,
                      heads=heads_of(model, tokenizer))
        question = torch.tensor(case["question"])
        # without the template prior (which here ranks the number's group second by itself): the tail's own effect
        plain = decoder.answer(question, **decoding(topk=2, chunk=1, max_new_tokens=16, follow_tail=None,
                                                      template_prior=False))
        tailed = decoder.answer(question, **decoding(topk=2, chunk=1, max_new_tokens=16, follow_tail=0.25,
                                                       template_prior=False))
        key = case["needle_groups"][0]
        ranges = chunk_ranges(len(groups), 1)
        heads = retrieval_heads(model, tokenizer).heads
        queries = decoder.question_queries(question, ranges, [0, len(ranges) - 1], tuple(sorted(heads)),
                                           sparse_stamps=False)  # the cheap cache as the default builds it
        shares[task] = tail_share(queries, decoder.video.store, decoder.summaries[False], decoder.scale,
                                  range(key, key + 1), heads)
        # the same share from the keys themselves: softmax of each retrieval head's q.k over the group's tokens
        g = decoder.video.store.groups[key]
        ref = []
        for layer, hs in heads.items():
            k = decoder.summaries[False].raw_dense(layer, g.visual_start, g.end).float()
            for h in hs:
                att = torch.softmax(queries[layer][h].float() @ k[h // (model.config.num_attention_heads
                                                                        // model.config.num_key_value_heads)].T
                                    * decoder.scale, dim=-1)
                n = att.shape[-1]
                whole, part = divmod(n, 16)  # the last n/16 tokens: whole ones, then a part of the one before
                edge = att[:, n - whole - 1] * part / 16 if part else 0
                ref.append(att[:, n - whole:].sum(-1) + edge)
        assert shares[task] == pytest.approx(float(torch.cat(ref).mean()), rel=1e-4)
        assert plain.tail is None and tailed.tail == pytest.approx(shares[task], rel=1e-4)  # the key's group is best
        if task == "neighbours":
            assert key in plain.dense_chunks and key + 1 not in plain.dense_chunks  # the number's group missed
            assert case["answers"][0] not in plain.text
            assert {key, key + 1} <= set(tailed.dense_chunks) and case["answers"][0] in tailed.text
        else:
            assert tailed.dense_chunks == plain.dense_chunks and tailed.text == plain.text
    assert shares["neighbours"] > 0.25 > 0.05 > shares["single"]
    with pytest.raises(AssertionError):  # an internal structure: its invariants are asserted
        Ablation(follow_tail=0.0)


def test_retrieval_head_discovery_finds_few_heads_on_smollm2(smollm2, tmp_path, monkeypatch):
    model, tokenizer = smollm2
    found = find_retrieval_heads(model, tokenizer, cases=2, groups=6, group_tokens=48)
    rates = torch.tensor(found.hit_rate)
    assert rates.shape == (30, 9)
    assert 0 < found.count < 30 * 9 // 4  # a minority of heads retrieves
    for layer, heads in found.heads.items():
        assert all(rates[layer, h] >= 0.5 for h in heads)


def test_cli_reports_the_confidence(tiny_checkpoint, tmp_path, capsys):
    import random

    from helpers import videoxl_here

    from videoxl.synth import make_qa, write

    script, _ = make_qa(random.Random(5), 32, family="needle")
    clip = write(script, tmp_path / "clip.mp4")
    common = ["ask", clip, "What object appears in the video?", "--model", tiny_checkpoint, "--topk", "1",
              "--max-new-tokens", "2"]
    run = videoxl_here(capsys, *common, "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert 0 <= out["confidence"] <= 1 and out["fallback"] is None
    run = videoxl_here(capsys, *common)
    assert run.returncode == 0, run.stderr
    assert f"relevance confidence {out['confidence']:.2f}" in run.stderr


def test_benchmark_schedule_leaves_balanced_cells_when_stopped():
    from relevance import schedule

    todo = schedule([2048, 4096], ["single", "multikey"], 30)
    assert sorted(todo) == sorted((n, t, i) for n in (2048, 4096) for t in ("single", "multikey") for i in range(30))
    first = todo[:20]  # a run stopped after 20 cases
    assert {n for n, _, _ in first} == {2048}
    assert sum(t == "single" for _, t, _ in first) == 10
    depths = sorted((i + 0.5) / 30 for _, t, i in first if t == "single")
    assert depths[0] < 0.05 and depths[-1] > 0.9 and max(b - a for a, b in zip(depths, depths[1:])) <= 0.1 + 1e-9


def test_benchmark_oracle_and_table(smollm2, tmp_path):
    """The oracle reference reloads the needle's group; the README table is the summary of the rows, by hand."""
    import relevance
    from relevance import PREFILL, make_case, markdown, merged, run_case, summarize

    model, tokenizer = smollm2
    case = make_case(tokenizer, "single", 1200, 1, 3)
    row = run_case(model, tokenizer, case, 1, PREFILL, {"oracle": None})
    assert row["oracle"]["recall"] == 1.0 and case["needle_groups"][0] in row["oracle"]["dense_chunks"]
    assert row["oracle"]["kv_ratio"] < 1

    def cell(recall, acc, kv=0.5):
        return {"recall": recall, "acc": acc, "kv_ratio": kv, "select_s": 0.1, "confidence": 0.3}

    rows = [{"target": 2048, "task": "single", "tokens": 2050, "acc_dense": True, "acc_chunked": False,
             "question_s": 0.4, "bounds": cell(1.0, True), "oracle": cell(1.0, True),
             "exact-stamps": cell(0.0, False)},
            {"target": 2048, "task": "single", "tokens": 2054, "acc_dense": False, "acc_chunked": False,
             "question_s": 0.5, "bounds": cell(0.0, False, 0.7), "oracle": cell(1.0, False),
             "exact-stamps": cell(1.0, True)}]
    table = markdown(summarize(rows)).splitlines()
    assert table[2] == ("| 2,052 | single | 2 | 50 | 0 | **50 / 50** | - | - | - | - | 50 / 50 | 100 / 50 | - | 0.60 "
                        "| 0.10 (0.50) |")
    # a --scorers-only run's rows join the cases they match; its column counts only those, with dense on them
    extra = tmp_path / "scorers_only.jsonl"
    extra.write_text(json.dumps({"target": 2048, "task": "single", "index": 1, "acc_dense": None,
                                 "bounds-stamps": cell(1.0, True), "bounds": cell(0.0, False)}) + "\n"
                     + json.dumps({"target": 2048, "task": "single", "index": 0, "acc_dense": None,
                                   "bounds-notail": cell(1.0, False)}) + "\n")
    rows[0]["index"], rows[1]["index"] = 0, 1
    table = markdown(summarize(merged(rows, [extra]))).splitlines()
    assert table[2] == ("| 2,052 | single | 2 | 50 | 0 | **50 / 50** | 100 / 100 (1 cases, dense 0) | - "
                        "| 100 / 0 (1 cases, dense 100) | - | 50 / 50 | 100 / 50 | - | 0.60 | 0.10 (0.50) |")
    # --default-cases: the summary of the command keeps only the cases the default ran, so every column is on them
    del rows[1]["bounds"]
    path, summary = tmp_path / "rows.jsonl", tmp_path / "summary.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for flags, cases in (([], 2), (["--default-cases"], 1)):  # the benchmark's command line, in this process
        relevance.main(["--lengths", "2048", "--cases", "0", "--rows", str(path), "--json", str(summary), *flags])
        by = {s["scorer"]: s for s in json.loads(summary.read_text())}
        assert by["oracle"]["cases"] == cases and by["bounds"]["cases"] == 1


def test_benchmark_answers_fit_their_budget_and_score_as_ruler(smollm2):
    """SmolLM2 writes one token per digit: every task's full answer must fit its new-token budget, and multivalue
    earns the fraction of its numbers found (RULER's string_match_all)."""
    from relevance import answer_budget, correct, make_case

    _, tokenizer = smollm2
    for task in ("single", "multikey", "multivalue", "neighbours"):
        case = make_case(tokenizer, task, 1200, 0, 3)
        full = "\n\n" + "\n".join(f"- {a}." for a in case["answers"]) + "<|im_end|>"
        assert len(tokenizer(full)["input_ids"]) < answer_budget(task), task
        assert correct(full, case["answers"]) == 1.0
    case = make_case(tokenizer, "multivalue", 1200, 0, 3)
    a, b, c, d = case["answers"]
    assert correct(f"{a}, {c} and {a[:-1]}", case["answers"]) == 0.5
    assert correct("Time 12.0s:", case["answers"]) == 0.0


def _mass(decoder, queries, heads, groups, group_size) -> torch.Tensor:
    """By hand: each retrieval head's softmax of q.k over the visual keys of ``groups`` (position-free), summed per
    group, averaged over heads and query tokens -> (len(groups),)."""
    per = []
    for layer, hs in heads.items():
        keys = [decoder.summaries[False].raw_dense(layer, decoder.video.store.groups[g].visual_start,
                                                   decoder.video.store.groups[g].end).float() for g in groups]
        sizes = [k.shape[1] for k in keys]
        k = torch.cat(keys, dim=1)
        for h in hs:
            att = torch.softmax(queries[layer][h].float() @ k[h // group_size].T * decoder.scale, dim=-1)
            per.append(torch.stack([part.sum(-1) for part in att.split(sizes, dim=-1)], dim=-1))  # (Q, groups)
    return torch.cat(per).mean(0)


def test_template_prior_divides_the_question_mass_by_the_templates(prose_needle):
    """Calibrated relevance over the re-ranked chunks is the question's exact attention mass on each, divided by the
    mass its chat template alone puts there (by default to the power 0.75), renormalized; the template's queries are
    computed once."""
    from videoxl.engine.select import chunk_ranges

    model, tokenizer, case, video = prose_needle
    decoder = Decoder(model, video, tokenizer, heads=heads_of(model, tokenizer))
    question = torch.tensor(case["question"])
    ranges = chunk_ranges(len(video.store.groups), 1)
    forced, candidates = [0, len(ranges) - 1], list(range(1, len(ranges) - 1))  # fewer than refine: all re-ranked
    with_prior = decoder.score(question, ranges, forced, ablation=Ablation(template_prior=True))
    plain = decoder.score(question, ranges, forced, ablation=Ablation(template_prior=False))
    heads = retrieval_heads(model, tokenizer).heads
    layers = tuple(sorted(heads))
    group_size = model.config.num_attention_heads // model.config.num_key_value_heads
    template = question[~content_mask(question, tokenizer)]
    assert tokenizer.decode(template).strip().endswith("<|im_start|>assistant") and 0 < template.numel() < 10
    # the queries over the cheap cache: forced chunks dense, the others pooled without their timestamps (default)
    m_question = _mass(decoder, decoder.question_queries(question, ranges, forced, layers, sparse_stamps=False),
                       heads, candidates, group_size)
    m_template = _mass(decoder, decoder.question_queries(template, ranges, forced, layers, sparse_stamps=False),
                       heads, candidates, group_size)
    torch.testing.assert_close(plain[candidates], m_question.to(plain), rtol=1e-4, atol=1e-6)
    ratio = m_question / m_template
    torch.testing.assert_close(with_prior[candidates], (ratio / ratio.sum()).to(with_prior), rtol=1e-4, atol=1e-6)
    tempered = decoder.score(question, ranges, forced)  # the default: the template's mass to the power 0.75
    ratio = m_question / m_template ** 0.75
    torch.testing.assert_close(tempered[candidates], (ratio / ratio.sum()).to(tempered), rtol=1e-4, atol=1e-6)
    assert len(decoder._template_queries) == 1  # computed once, for both calls with a prior
    other = torch.tensor(tokenizer("\nWhat is the first word of the text?<|im_end|>\n"
                                   "<|im_start|>assistant\n")["input_ids"])
    decoder.score(other, ranges, forced)
    assert len(decoder._template_queries) == 1  # the same template: its queries were reused
    # no template to divide by: without a tokenizer, or a question given as embeddings
    bare = Decoder(model, video, heads=heads_of(model))
    torch.testing.assert_close(bare.score(question, ranges, forced), plain, equal_nan=True)
    from videoxl.engine.layout import embed

    embedded = embed(model, question)
    torch.testing.assert_close(decoder.score(embedded, ranges, forced),
                               decoder.score(embedded, ranges, forced, ablation=Ablation(template_prior=False)),
                               equal_nan=True)
    assert Ablation().template_prior == 0.75  # tempered (test_default_decoding_reloads_a_needle_the_prompt_announced)


def test_template_prior_finds_more_of_several_equal_needles(smollm2):
    """Four needles for one key (a held-out 2k multivalue case of the benchmark): without the template prior two prose
    groups, which draw any question's attention, outrank three of the four value groups; with the prior, two value
    groups are reloaded and the answer holds two of the four numbers instead of none (sparse chunks with their
    timestamps, as measured then)."""
    from relevance import PREFILL, correct, make_case

    model, tokenizer = smollm2
    case = make_case(tokenizer, "multivalue", 2048, 0, 30, 1)
    groups = [Group(torch.tensor(s), torch.tensor(t)) for s, t in case["groups"]]
    decoder = Decoder(model, prefill(model, torch.tensor(case["prefix"]), groups, PREFILL), tokenizer,
                      heads=heads_of(model, tokenizer))
    question = torch.tensor(case["question"])
    found = {}
    for prior in (False, True):
        answer = decoder.answer(question, **decoding(topk=3, chunk=1, max_new_tokens=40, template_prior=prior,
                                                       sparse_stamps=True))
        found[prior] = (len(set(answer.dense_chunks) & set(case["needle_groups"])),
                            correct(answer.text, case["answers"]))
    assert found[False] == (1, 0.0) and found[True] == (2, 0.5)


def test_sparse_chunks_without_timestamps_leave_the_model_reading_text(smollm2):
    """A held-out 2k multivalue case of the benchmark: with three of the four value groups dense and the others
    pooled, sparse chunks that keep their ``Time {t}s:`` stamps turn the cache into a list of stamps, and the model
    recites stamps instead of numbers; the same selection without the sparse chunks' stamps (the default) answers
    three of the four numbers, from a smaller cache."""
    from relevance import PREFILL, correct, make_case

    model, tokenizer = smollm2
    case = make_case(tokenizer, "multivalue", 2048, 8, 30, 1)
    groups = [Group(torch.tensor(s), torch.tensor(t)) for s, t in case["groups"]]
    decoder = Decoder(model, prefill(model, torch.tensor(case["prefix"]), groups, PREFILL), tokenizer,
                      heads=heads_of(model, tokenizer))
    question = torch.tensor(case["question"])
    # the chunks as selected when this case was measured: with the template prior
    answers = {stamps: decoder.answer(question, **decoding(topk=3, chunk=1, max_new_tokens=40, template_prior=True,
                                                             sparse_stamps=stamps))
               for stamps in (True, False)}
    assert answers[True].dense_chunks == answers[False].dense_chunks
    assert len(set(answers[False].dense_chunks) & set(case["needle_groups"])) == 3
    assert answers[True].text.strip().startswith("Time") and correct(answers[True].text, case["answers"]) == 0
    assert correct(answers[False].text, case["answers"]) == 0.75
    assert answers[False].kv_bytes_used < answers[True].kv_bytes_used


def test_default_decoding_reloads_a_needle_the_prompt_announced(smollm2):
    """benchmarks/engine.py's passkey case 8 of 20 at 2,048 tokens: the text before the haystack says a pass key is
    hidden in it, so the chat template alone already attends to the needle (a prior as high as the question's), and
    dividing by it flattens the relevance: the needle's group (5) drops to rank 3 and is not reloaded. The answer
    prefix in the assistant turn ("The pass key is") is content, not template. Default decoding (the prior tempered:
    the template's mass to the power 0.75) and decoding without a prior reload the needle and answer the key, as
    dense decoding does."""
    from engine import BILEVEL, PREFILL, QUESTION, make_case, to_groups

    model, tokenizer = smollm2
    question = torch.tensor(tokenizer(QUESTION)["input_ids"])
    kept = tokenizer.decode(question[content_mask(question, tokenizer)])
    assert kept.endswith("The pass key is") and "assistant" not in kept
    case = make_case(tokenizer, 2048, 8.5 / 20, seed=1000 * 2048 + 8)
    assert case["needle_group"] == 5
    decoder = Decoder(model, prefill(model, torch.tensor(case["prefix"]), to_groups(case), PREFILL), tokenizer,
                      heads=heads_of(model, tokenizer))
    for prior in (0.75, 0.0):
        answer = decoder.answer(question, **decoding(template_prior=prior, **BILEVEL))
        assert 5 in answer.dense_chunks and case["key"] in answer.text, prior
    with_prior = decoder.answer(question, **decoding(template_prior=True, **BILEVEL))
    assert 5 not in with_prior.dense_chunks and case["key"] not in with_prior.text
