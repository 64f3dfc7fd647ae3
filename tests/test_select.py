"""Chunk selection arithmetic: per-group scores reduced to chunks in one scatter, against a per-chunk loop."""

import pytest
import torch

from videoxl.engine.select import reduce_to_chunks


def loop_reference(per_group, how, ranges, counts):
    cols = []
    for s, e in ranges:
        part = per_group[..., s:e]
        if how == "max":
            cols.append(part.amax(-1))
        elif how == "lse":
            cols.append(torch.logsumexp(part, -1))
        else:
            cols.append((part * (counts[s:e] / counts[s:e].sum()).to(part)).sum(-1))
    return torch.stack(cols, -1)


@pytest.mark.parametrize("how", ["max", "lse", "mean"])
def test_reduce_to_chunks_equals_a_loop_over_chunks(how):
    g = torch.Generator().manual_seed(0)
    per_group = torch.randn(3, 5, 11, generator=g) * 30  # large scores: the log-sum-exp must not overflow
    ranges = [(0, 3), (3, 4), (4, 9), (9, 11)]
    counts = torch.randint(1, 20, (11,), generator=g).double()
    torch.testing.assert_close(reduce_to_chunks(per_group, how, ranges, counts),
                               loop_reference(per_group, how, ranges, counts))


def test_summaries_built_during_prefill_equal_ones_built_afterwards():
    from helpers import heads_of, random_groups, tiny_qwen2

    from videoxl.engine.prefill import PrefillConfig, prefill
    from videoxl.engine.rope import Rope
    from videoxl.engine.summaries import GroupSummaries

    model = tiny_qwen2(layers=2)
    video = prefill(model, torch.arange(4), random_groups(9, hidden=64), PrefillConfig(chunk=2, window=1))
    streamed = video.summaries
    assert streamed._page_groups == 9  # extended chunk by chunk while pre-filling
    after = GroupSummaries(video.store, Rope.of(model))
    for a, b in zip(streamed.pages()[:2], after.pages()[:2]):
        for layer in range(2):
            torch.testing.assert_close(a[layer], b[layer])
    assert torch.equal(streamed.pages()[2], after.pages()[2])
    # against a hand computation: the box of the un-rotated keys of group 4's last page (pages cover visual tokens)
    span = video.store.groups[4]
    last = span.visual_start + (span.end - span.visual_start - 1) // 16 * 16
    keys = Rope.of(model).rotate(video.store.dense.k[1][:, last:span.end],
                                 -torch.arange(last, span.end, dtype=torch.float64))
    page = int((streamed.pages()[2] == 4).nonzero()[-1])
    centre, radius = streamed.pages()[0][1][:, page], streamed.pages()[1][1][:, page]
    torch.testing.assert_close(centre, (keys.amax(1) + keys.amin(1)) / 2)
    torch.testing.assert_close(radius, (keys.amax(1) - keys.amin(1)) / 2)
    # the means are built on first use, and only for groups not yet summarized
    torch.testing.assert_close(streamed.means()[1], after.means()[1])


def test_summaries_and_scores_leave_timestamp_keys_out():
    """Timestamp KVs are verbatim in a chunk's sparse form, so reloading it dense adds only its visual tokens; scores
    must not move when only timestamp keys change."""
    from helpers import heads_of, random_groups, tiny_qwen2

    from videoxl.engine.prefill import PrefillConfig, prefill
    from videoxl.engine.rope import Rope
    from videoxl.engine.select import score_groups
    from videoxl.engine.summaries import GroupSummaries

    model = tiny_qwen2(layers=2)
    video = prefill(model, torch.arange(4), random_groups(6, hidden=64), PrefillConfig(chunk=2, window=1))
    store, rope = video.store, Rope.of(model)
    span = store.groups[3]
    keys = rope.rotate(store.dense.k[0][:, span.visual_start:span.end],
                       -torch.arange(span.visual_start, span.end, dtype=torch.float64))
    torch.testing.assert_close(video.summaries.means()[0][:, 3], keys.mean(1))
    queries = torch.randn(4, 3, 16)
    before = {s: score_groups(s, queries, 0, store, GroupSummaries(store, rope), 0.25)[0]
              for s in ("bounds", "mean", "sparse", "dense")}
    for layer in range(store.layers):  # scramble every timestamp key, dense and sparse
        for g in store.groups:
            n = g.visual_start - g.start
            store.dense.k[layer][:, g.start:g.visual_start] = torch.randn(store.kv_heads, n, store.head_dim) * 9
            store.sparse.k[layer][:, g.sparse_start:g.sparse_start + n] = 7.0
    for scorer, scores in before.items():
        assert scores.shape == (4, 3, 6)
        torch.testing.assert_close(score_groups(scorer, queries, 0, store, GroupSummaries(store, rope), 0.25)[0],
                                   scores)


def test_choose_dense_follow_brings_the_next_chunk_within_topk_and_budget():
    from videoxl.engine.select import choose_dense

    rel = [float("nan"), 0.1, 0.9, 0.2, 0.4, 0.5, 0.3, float("nan")]
    cands, forced, dense_tok, sparse_tok = list(range(1, 7)), [0, 7], [10] * 8, [3] * 8
    assert choose_dense(rel, cands, forced, 3, None, dense_tok, sparse_tok) == [0, 2, 4, 5, 7]
    assert choose_dense(rel, cands, forced, 3, None, dense_tok, sparse_tok, follow=1) == [0, 2, 3, 5, 7]
    assert choose_dense(rel, cands, forced, 4, None, dense_tok, sparse_tok, follow=2) == [0, 2, 3, 5, 6, 7]
    # the best chunk's follower is the forced last one: nothing to bring, the next picks are by relevance
    rel_last = [float("nan"), 0.1, 0.2, 0.3, 0.4, 0.5, 0.9, float("nan")]
    assert choose_dense(rel_last, cands, forced, 3, None, dense_tok, sparse_tok, follow=1) == [0, 4, 5, 6, 7]
    # the budget holds the forced chunks plus two reloads of 7 tokens; a follower too large for it is skipped
    budget = 2 * 10 + 6 * 3 + 2 * 7
    assert choose_dense(rel, cands, forced, None, budget, dense_tok, sparse_tok, follow=1) == [0, 2, 3, 7]
    large = dense_tok[:3] + [40] + dense_tok[4:]
    assert choose_dense(rel, cands, forced, None, budget, large, sparse_tok, follow=1) == [0, 2, 5, 7]


def test_tail_share_is_the_attention_on_the_last_sixteenth_even_when_it_cuts_a_token():
    """Chunks of 5 to 11 tokens and of 18: the last n/16 tokens, the token that boundary cuts counted by its part.
    Uniform attention (zero queries) gives exactly 1/16 whatever the length; random queries match a hand sum over
    each token's overlap with the interval [n - n/16, n)."""
    from helpers import heads_of, random_groups, tiny_qwen2

    from videoxl.engine.decode import Decoder
    from videoxl.engine.prefill import PrefillConfig, prefill
    from videoxl.engine.select import TAIL, tail_share

    model = tiny_qwen2(layers=2)
    groups = random_groups(6, hidden=64, vis_len=(5, 11)) + random_groups(2, hidden=64, seed=3, vis_len=(18, 18))
    decoder = Decoder(model, prefill(model, torch.arange(4), groups, PrefillConfig(chunk=2, window=1)),
                      heads=heads_of(model))
    store, summaries = decoder.video.store, decoder.summaries[False]
    g = torch.Generator().manual_seed(0)
    random = {layer: torch.randn(4, 3, 16, generator=g) * 3 for layer in range(2)}  # (heads, question tokens, D)
    zeros = {layer: torch.zeros(4, 3, 16) for layer in range(2)}
    for chunk in (range(0, 1), range(2, 3), range(3, 5), range(6, 7)):
        spans = [(store.groups[i].visual_start, store.groups[i].end) for i in chunk]
        n = sum(b - a for a, b in spans)
        assert tail_share(zeros, store, summaries, decoder.scale, chunk) == pytest.approx(1 / TAIL)
        start = n - n / TAIL
        overlap = torch.tensor([min(max(i + 1 - start, 0.0), 1.0) for i in range(n)])
        want = []
        for layer in range(2):
            k = torch.cat([summaries.raw_dense(layer, a, b) for a, b in spans], dim=1).float()  # (2, n, 16)
            for h in range(4):
                att = torch.softmax(random[layer][h] @ k[h // 2].T * decoder.scale, dim=-1)
                want.append(att @ overlap)
        assert tail_share(random, store, summaries, decoder.scale, chunk) == pytest.approx(
            float(torch.cat(want).mean()), rel=1e-5)


def test_min_relevance_reloads_only_chunks_near_the_best():
    """Candidates in relevance order stop at the first below min_relevance x the best; a follower still comes."""
    from videoxl.engine.select import choose_dense

    rel = [float("nan"), 0.40, 0.05, 0.30, 0.10, 0.15, float("nan")]
    args = ([1, 2, 3, 4, 5], [0, 6], 3, None, [10] * 7, [3] * 7)
    assert choose_dense(rel, *args) == [0, 1, 3, 5, 6]  # top 3: 0.40, 0.30, 0.15
    assert choose_dense(rel, *args, min_relevance=0.5) == [0, 1, 3, 6]  # 0.15 < 0.5 x 0.40
    assert choose_dense(rel, *args, min_relevance=0.9) == [0, 1, 6]
    assert choose_dense(rel, *args, follow=1, min_relevance=0.9) == [0, 1, 2, 6]  # the best brings chunk 2 anyway
    from videoxl.engine.decode import Ablation

    for bad in (0, 1.5, True):
        with pytest.raises(AssertionError):  # an internal structure: its invariants are asserted
            Ablation(min_relevance=bad)
