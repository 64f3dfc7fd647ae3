"""The published benchmarks (videoxl/eval/tasks, benchmarks.py, selection.py, commands.py) on mini datasets.

Each mini dataset is written in its benchmark's real file format around short synthetic clips (videoxl.synth) and
run end to end with the bundled model. Prompts are compared with hand-written text, metrics with hand computations,
the selection-file mapping with the published rule worked out by hand.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videoxl.pipeline import ingest
from videoxl import DEFAULT_MODEL
from videoxl.eval import benchmarks
from videoxl.eval.commands import format_table, main
from videoxl.eval.selection import Run, published_dense_blocks, oracle_scores, read_selection
from videoxl.eval.tasks import TASKS, Sample
from videoxl.question import convert_times
from videoxl.eval.tasks.charades import PRE_PROMPT, extract_time
from videoxl.synth import make_qa, write

STEM = "What object appears in the video?"


def clip(folder: Path, name: str, seed: int, frames: int = 16):
    """A 4 fps synthetic clip with one object (16 frames: 4 groups at 0, 1, 2, 3 s) and its four choices."""
    script, qa = make_qa(random.Random(f"eval-tasks/{seed}"), frames, 4.0, family="needle", multiple_choice=True)
    write(script, folder / name)
    return list(qa.choices), qa.answer


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    made = {name: clip(folder, name, i) for i, name in enumerate(["a.mp4", "b.mp4", "c.mp4"])}
    made["long.mp4"] = clip(folder, "long.mp4", 9, frames=96)  # 24 groups: 6 decoding chunks of 4
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    return folder, made


def put(clips, name, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(clips[0] / name, dest)


@pytest.fixture(scope="module")
def mlvu(clips, tmp_path_factory):
    data = tmp_path_factory.mktemp("mlvu")
    (data / "json").mkdir()
    needle = [{"video": v, "duration": 4.0, "question": STEM, "candidates": clips[1][v][0],
               "answer": clips[1][v][0]["ABCD".index(clips[1][v][1])], "question_type": "needle"}
              for v in ("a.mp4", "b.mp4")]
    for v in ("a.mp4", "b.mp4"):
        put(clips, v, data / "video" / "2_needle" / v)
    count = [{"video": "c.mp4", "duration": 4.0, "question": "How many times does a star appear at 00:02?",
              "candidates": ["1", "2", "3", "4"], "answer": "1", "question_type": "count"},
             {"video": "c.mp4", "question": "Broken?", "candidates": ["x", "y"], "answer": "z"},  # answer not a choice
             {"video": "gone.mp4", "question": STEM, "candidates": ["x", "y"], "answer": "x"}]  # no such video
    put(clips, "c.mp4", data / "video" / "4_count" / "c.mp4")
    (data / "json" / "2_needle.json").write_text(json.dumps(needle))
    (data / "json" / "4_count.json").write_text(json.dumps(count))
    (data / "json" / "8_sub_scene.json").write_text(json.dumps([{"video": "a.mp4", "question": "Describe."}]))
    return data


@pytest.fixture(scope="module")
def videomme(clips, tmp_path_factory):
    data = tmp_path_factory.mktemp("videomme")
    rows = []
    for i, (v, duration) in enumerate([("a.mp4", "short"), ("b.mp4", "medium"), ("c.mp4", "long")]):
        choices, answer = clips[1][v]
        put(clips, v, data / "data" / f"vid{i}.mp4")
        rows.append({"video_id": f"00{i}", "duration": duration, "domain": "Knowledge", "sub_category": "Astronomy",
                     "url": "", "videoID": f"vid{i}", "question_id": f"00{i}-1", "task_type": "Object Recognition",
                     "question": STEM, "options": [f"{'ABCD'[j]}. {c}" for j, c in enumerate(choices)],
                     "answer": answer})
    rows.append({**rows[0], "question_id": "009-1", "videoID": "missing"})
    rows.append({"question_id": "010-1", "videoID": "vid0"})  # malformed: no question, options, answer
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        (data / "videomme").mkdir()
        pq.write_table(pa.Table.from_pylist(rows[:4]), data / "videomme" / "test-00000-of-00001.parquet")
        pq.write_table(pa.Table.from_pylist(rows[4:]), data / "videomme" / "test-00001-of-00001.parquet")
    except ImportError:  # the same rows as JSON lines
        (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


@pytest.fixture(scope="module")
def longvideobench(clips, tmp_path_factory):
    data = tmp_path_factory.mktemp("lvb")
    rows = []
    for i, v in enumerate(["a.mp4", "b.mp4"]):
        choices, answer = clips[1][v]
        put(clips, v, data / "videos" / v)
        rows.append({"id": f"lvb-{i}", "video_id": v[:-4], "video_path": v, "question": STEM, "candidates": choices,
                     "correct_choice": "ABCD".index(answer), "duration_group": 15 if i == 0 else 60,
                     "question_category": "E2O", "duration": 4.0})
    rows.append({"id": "lvb-bad", "video_path": "a.mp4", "question": STEM})  # malformed
    (data / "lvb_val.json").write_text(json.dumps(rows))
    return data


@pytest.fixture(scope="module")
def lvbench(clips, tmp_path_factory):
    data = tmp_path_factory.mktemp("lvbench")
    lines = []
    for v, key, kind in [("a.mp4", "vid_a", "cartoon"), ("b.mp4", "vid_b", "sport")]:
        choices, answer = clips[1][v]
        put(clips, v, data / "videos" / f"{key}.mp4")
        question = STEM + "".join(f"\n({'ABCD'[j]}) {c}" for j, c in enumerate(choices))
        lines.append(json.dumps({"key": key, "type": kind, "qa": [
            {"uid": f"{key}-1", "question": question, "answer": answer,
             "question_type": ["entity recognition", "key information retrieval"], "time_reference": "00:01"}]}))
    put(clips, "broken.mp4", data / "videos" / "vid_broken.mp4")
    lines.append(json.dumps({"key": "vid_broken", "type": "tv", "qa": [
        {"uid": "broken-1", "question": STEM + "\n(A) x\n(B) y", "answer": "A", "question_type": ["reasoning"]}]}))
    lines.append("{not json")
    (data / "video_info.meta.jsonl").write_text("\n".join(lines) + "\n")
    return data


@pytest.fixture(scope="module")
def charades(clips, tmp_path_factory):
    data = tmp_path_factory.mktemp("charades")
    for v in ("a.mp4", "b.mp4"):
        put(clips, v, data / "Charades_v1_480" / f"CH{v[0].upper()}.mp4")
    (data / "charades_sta_test.txt").write_text(
        "CHA 1.0 2.5##person sees an object.\nCHB 0.0 3.0##the shape turns red.\nCHA 1.0##no end time\n")
    return data


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


# -- prompts, byte for byte -----------------------------------------------------------------------------------------
def test_prompts_only_match_the_published_prompts(mlvu, videomme, longvideobench, lvbench, charades, clips, tmp_path):
    a, b = clips[1]["a.mp4"][0], clips[1]["b.mp4"][0]
    expected = {
        "mlvu": (mlvu, {
            "2_needle:0": f"\n{STEM}\n(A) {a[0]}\n(B) {a[1]}\n(C) {a[2]}\n(D) {a[3]}\n\nOnly give the best option.\n\n"
                          "Best option: (",
            "4_count:0": "\nHow many times does a star appear at 2 seconds?\n(A) 1\n(B) 2\n(C) 3\n(D) 4\n\nOnly give "
                         "the best option.\n\nBest option: ("}),
        "videomme": (videomme, {
            "000-1": "Select the best answer to the following multiple-choice question based on the video and the "
                     "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.\n"
                     f"{STEM}\n['A. {a[0]}', 'B. {a[1]}', 'C. {a[2]}', 'D. {a[3]}']\n\n"
                     "Answer with the option's letter from the given choices directly."}),
        "longvideobench": (longvideobench, {
            "lvb-1": f"{STEM}\nA. {b[0]}\nB. {b[1]}\nC. {b[2]}\nD. {b[3]}\n"
                     "Answer with the option's letter from the given choices directly.\n"}),
        "lvbench": (lvbench, {  # the candidates keep their letters, as in the published copy of LVBench
            "vid_a-1": f"{STEM}\nA. (A) {a[0]}\nB. (B) {a[1]}\nC. (C) {a[2]}\nD. (D) {a[3]}\n"
                       "Answer with the option's letter from the given choices directly."}),
        "charades-sta": (charades, {
            "CHA>>>person sees an object>>>[1.0, 2.5]": PRE_PROMPT + "person sees an object. Please return its start "
                                                                     "time and end time."}),
    }
    for task, (data, prompts) in expected.items():
        out = tmp_path / f"{task}.jsonl"
        assert run_cli(task, "--data", data, "--prompts-only", out) == 0
        records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
        for sid, question in prompts.items():
            record = records[sid]
            assert record["question"] == question, task
            assert record["prompt"] == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                        f"<image>\n{question}<|im_end|>\n<|im_start|>assistant\n")
            # 4 s at 4 fps: 1 fps gives 4 frames, the 4 fps ceiling all 16 (frame cap far above)
            assert record["sampling"]["frames"] == 16 and record["sampling"]["group_times"] == [0.0, 1.0, 2.0, 3.0]
            assert record["decoding"]["stop"] == [] and record["decoding"]["greedy"]  # <|im_end|>, EOS, the limit
        assert any("skipped" in r for r in records.values()), f"{task}: the bad rows are listed"
    assert TASKS["mlvu"].settings.max_frames == 256 and TASKS["videomme"].settings.max_frames == 400
    assert TASKS["longvideobench"].settings.max_frames == 400 and TASKS["lvbench"].settings.max_frames == 600


def test_selection_keys_are_the_published_ones(mlvu, videomme, longvideobench, lvbench):
    datasets = [("mlvu", mlvu), ("videomme", videomme), ("longvideobench", longvideobench), ("lvbench", lvbench)]
    keys = {s.id: s.selection_key for t, d in datasets for s in TASKS[t].read(d)[0]}
    assert keys["2_needle:0"] == f"a.mp4_{STEM}"
    assert keys["4_count:0"] == "c.mp4_How many times does a star appear at 00:02?"  # before the time rewrite
    assert keys["000-1"] == f"vid0.mp4_{STEM}"
    assert keys["lvb-0"] == f"a.mp4_{STEM}"
    assert keys["vid_a-1"] == f"vid_a_{STEM}"


# -- scoring, against hand computations -------------------------------------------------------------------------
def rows_file(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"run": "hand", **r}) + "\n" for r in rows))
    return path


def test_mlvu_m_avg_by_hand(tmp_path):
    rows = [{"id": "1", "pred": "B) bolt", "gold": "B", "categories": {"task_type": "needle"}},
            {"id": "2", "pred": "A", "gold": "C", "categories": {"task_type": "needle"}},
            {"id": "3", "pred": " C) 3 ", "gold": "C", "categories": {"task_type": "count"}},
            {"id": "4", "pred": "The answer is D", "gold": "D", "categories": {"task_type": "count"}}]  # no ")": whole
    out = tmp_path / "s.json"
    assert run_cli("rescore", "mlvu", rows_file(tmp_path / "r.jsonl", rows), "--json", out) == 0
    s = json.loads(out.read_text())["runs"]["hand"]
    assert s["categories"]["task_type"]["needle"]["score"] == 50.0
    assert s["categories"]["task_type"]["count"]["score"] == 50.0
    assert s["score"] == 50.0 and s["overall"] == 50.0


def scored(task: str, rows: list[dict]) -> dict:
    """The summary of hand-written rows (run "h"), scored from their answer text."""
    return benchmarks.summarize(TASKS[task], benchmarks.rescore_rows(TASKS[task], [{"run": "h", **r} for r in rows]))


def test_videomme_lvb_lvbench_charades_scores_by_hand(tmp_path):
    videomme = [{"id": "1", "pred": "The best answer is B.", "gold": "B", "categories": {"duration": "short"}},
                # "Best option:" is not removed (the published list runs two prefixes together): "B" of "Best"
                {"id": "2", "pred": "Best option: C", "gold": "C", "categories": {"duration": "short"}},
                {"id": "3", "pred": "it is hard to tell from this video what the answer could possibly be here",
                 "gold": "A", "categories": {"duration": "long"}}]
    s = scored("videomme", videomme)
    assert s["runs"]["h"]["score"] == pytest.approx(100 / 3)
    assert s["runs"]["h"]["categories"]["duration"]["short"]["score"] == 50.0

    lvbench = [{"id": "1", "pred": "B. bolt", "gold": "B", "categories": {"question_type": ["ER", "KIR"]}},
               {"id": "2", "pred": "(c)", "gold": "C", "categories": {"question_type": ["ER"]}},
               {"id": "3", "pred": "", "gold": "A", "categories": {"question_type": ["KIR"]}},  # left out, as published
               {"id": "4", "pred": "D", "gold": "A", "categories": {"question_type": ["KIR"]}}]
    s = scored("lvbench", lvbench)["runs"]["h"]
    assert s["score"] == pytest.approx(200 / 3) and s["n"] == 3 and s["excluded_empty"] == 1
    types = s["categories"]["question_type"]
    assert types["ER"]["score"] == 100.0 and types["KIR"]["score"] == 50.0

    lvb = [{"id": "x", "pred": "The correct answer is E", "gold": "E", "categories": {},
            "doc": {"choices": list("ABCDE")}},
           {"id": "y", "pred": "A", "gold": "B", "categories": {}, "doc": {"choices": list("ABCD")}}]
    s = scored("longvideobench", lvb)
    assert s["runs"]["h"]["score"] == 50.0

    # IoUs: [0,10] vs [5,10] = 0.5; [0,10] vs [0,10] = 1; no time in the answer: the published fallback, 0
    charades = [{"id": "1", "pred": "The event happens in the 5 - 10 seconds.", "gold": [0, 10]},
                {"id": "2", "pred": "It starts at 0 seconds\nand ends at 10 seconds.", "gold": [0, 10]},
                {"id": "3", "pred": "I cannot tell.", "gold": [2, 4]}]
    s = scored("charades-sta", [{"categories": {}, **r} for r in charades])["runs"]["h"]
    assert s["score"] == pytest.approx(50.0) and s["R@0.3"] == pytest.approx(200 / 3)
    assert s["R@0.5"] == pytest.approx(200 / 3) and s["R@0.7"] == pytest.approx(100 / 3)
    assert extract_time("from 3.5 to 1.0") == [[1.0, 3.5]]
    assert extract_time("It starts at 0 and ends at 10.") == []  # one number per sentence, as published


def test_rescore_an_lmms_eval_log(tmp_path):
    doc = {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy",
           "videoID": "v", "task_type": "Counting Problem", "question": "?", "options": ["A. 1", "B. 2"]}
    log = {"logs": [{"doc_id": 0, "doc": {**doc, "question_id": "001-1", "answer": "B"}, "target": "B",
                     "resps": [["B."]], "filtered_resps": ["B."]},
                    {"doc_id": 1, "doc": {**doc, "question_id": "001-2", "answer": "A", "duration": "long"},
                     "target": "A", "resps": [["The answer is C"]], "filtered_resps": ["The answer is C"]},
                    {"doc_id": 2, "doc": {**doc, "question_id": "001-3", "answer": "A", "duration": "long"},
                     "target": "A", "resps": [["A"]], "filtered_resps": [["A"]]}]}
    path = tmp_path / "videomme.json"
    path.write_text(json.dumps(log))
    out = tmp_path / "s.json"
    assert run_cli("rescore", "videomme", path, "--json", out, "--plot", tmp_path / "p.png") == 0
    s = json.loads(out.read_text())["runs"]["lmms-eval"]
    assert s["score"] == pytest.approx(200 / 3) and s["n"] == 3
    assert s["categories"]["duration"] == {"long": {"n": 2, "score": 50.0}, "short": {"n": 1, "score": 100.0}}
    assert (tmp_path / "p.png").stat().st_size > 0
    doc = {"video_name": "x.mp4", "question": "q", "answer": "A", "task_type": "needle"}
    mlvu = {"logs": [{"doc_id": 0, "doc": doc, "filtered_resps": ["A) yes"]}]}
    (tmp_path / "mlvu.json").write_text(json.dumps(mlvu))
    assert run_cli("rescore", "mlvu", tmp_path / "mlvu.json", "--json", out) == 0
    assert json.loads(out.read_text())["runs"]["lmms-eval"]["score"] == 100.0


# -- selection files ----------------------------------------------------------------------------------------------
SELECTION = {
    "topic_reasoning": None,
    "needle": {"config": {"selected_topk": 3, "selected_chunk_size": 4, "compression": 4,
                          "relevance oracle": "languagebind"},
               "selected_unit_indices": {f"long.mp4_{STEM}": [5, 1, 9, 30], "b.mp4_Why?": []}},
    "count": {"config": {"selected_topk": 1, "selected_chunk_size": 6, "compression": 4, "relevance oracle": "x"},
              "selected_unit_indices": {"c.mp4_How many?": [7]}},
}


def test_selection_mapping_by_hand(tmp_path):
    path, other = tmp_path / "sel.json", tmp_path / "other.json"
    path.write_text(json.dumps(SELECTION))
    other.write_text(json.dumps({"ego": None,
                                 "order": {**SELECTION["count"], "selected_unit_indices": {"d.mp4_Q": [0]}}}))
    merged = read_selection([path, other])  # one file per duration or video type, as Video-MME and LVBench publish
    assert set(merged.entries) == {f"long.mp4_{STEM}", "b.mp4_Why?", "c.mp4_How many?", "d.mp4_Q"}
    assert merged.null_categories == ("topic_reasoning", "ego")
    selection = read_selection(path)
    assert selection.null_categories == ("topic_reasoning",)
    # 24 groups, B = 4: 6 video blocks (1..6), the prefix is block 0. Units -> u // 2 + 1: 5 -> 3, 1 -> 1, 9 -> 5,
    # 30 -> 16 (past the end: matches nothing). Dense: {0, 1, 6} + {3, 1, 5} = [0, 1, 3, 5, 6]
    assert published_dense_blocks([5, 1, 9, 30], 4, 6) == [0, 1, 3, 5, 6]
    # videoxl numbers the video chunks from 0 (block b = chunk b - 1) and keeps its first and last dense itself
    assert oracle_scores([0, 1, 3, 5, 6], 6) == ([1.0, 0.0, 1.0, 0.0, 1.0, 1.0], 2)
    # B = 6: unit 7 -> 7 // 3.0 + 1 = 3.0 -> block 3
    assert published_dense_blocks([7], 6, 4) == [0, 1, 3, 4]
    run = Run("bilevel", selection)
    plan = run.plan(f"long.mp4_{STEM}", 24, (4, 3), (4, 3))
    assert plan.prefill == {"chunk": 4, "window": 3, "pool": 4} and plan.decode == {"topk": 2, "chunk": 4}
    assert plan.dense_blocks == [0, 1, 3, 5, 6]
    for key in ("a.mp4_Any question in the null category?", "nowhere.mp4_no entry", None):
        dense = run.plan(key, 24, (4, 3), (4, 3))  # no entry: the plain model, full attention and dense KV
        assert dense.prefill["window"] is None and dense.decode == {} and dense.chunk_scores is None
    empty = run.plan("b.mp4_Why?", 24, (4, 3), (4, 3))  # an empty unit list: every block dense
    assert empty.decode == {} and empty.prefill["window"] == 3
    auto = Run("bilevel", selection, topk="auto").plan("c.mp4_How many?", 24, (4, 3), (4, 3))
    assert auto.decode == {"topk": 1, "chunk": 6} and auto.chunk_scores is None
    assert Run("bilevel", selection).label == "bilevel-oracle" and Run("bilevel", selection, "auto").label == \
        "bilevel-model-auto"


PUBLISHED = Path(__file__).parent / "data" / "published"  # excerpts of VectorSpaceLab/Video-XL (see its README)


@pytest.mark.parametrize("task,log", [("videomme", "videomme_long_log.json"), ("lvbench", "lvbench_cartoon_log.json")])
def test_questions_equal_the_published_logs(task, log, tmp_path):
    from videoxl.eval.published import prompt_check

    entries = json.loads((PUBLISHED / log).read_text())["logs"]
    result = prompt_check(task, entries, tmp_path)
    assert result["samples"] == len(entries) >= 3 and result["mismatches"] == [], result["mismatches"]
    # by hand, the first LVBench entry as logged: both letters, "A. (A) 1636"
    if task == "lvbench":
        assert entries[0]["arguments"][0].split("\n")[1] == "A. (A) 1636"
    # each excerpt holds a logged prompt with mm:ss times, which reach the model (and this harness's question) in
    # seconds
    timed = [e["arguments"][0] for e in entries if re.search(r"\d\d:\d\d", e["arguments"][0])]
    assert timed and all(not re.search(r"\d\d:\d\d", convert_times(t)) for t in timed)


def test_published_selection_with_null_topk_loads_and_decodes_as_published(tmp_path):
    selection = read_selection(PUBLISHED / "videomme_medium_selection.json")
    mmvid = [e for e in selection.entries.values() if e.category == "Object Recognition"]
    assert len(mmvid) == 2 and all(e.topk is None and e.chunk == 6 for e in mmvid)
    key = "K64wRD8eaus.mp4_Why does this video mention Victor Garber?"
    # units 1, 2, 3, 8, 9, 10, 28, 29, 30 with chunks of 6 groups: u // 3 + 1 -> blocks 1, 1, 2, 3, 4, 4, 10, 10, 11;
    # 100 groups make 17 blocks, so the dense blocks are 0, 1, 17 and those: [0, 1, 2, 3, 4, 10, 11, 17], i.e. 5
    # chunks besides videoxl's always-dense first and last
    plan = Run("bilevel", selection).plan(key, 100, (4, 3), (4, 3))
    assert plan.dense_blocks == [0, 1, 2, 3, 4, 10, 11, 17] and plan.decode == {"topk": 5, "chunk": 6}
    # --topk auto with a null selected_topk: the question's own number of chosen chunks
    assert Run("bilevel", selection, topk="auto").plan(key, 100, (4, 3), (4, 3)).decode == {"topk": 5, "chunk": 6}


def test_selection_run_keeps_every_sparse_groups_timestamps(clips, monkeypatch):
    """The oracle run's decoding cache, counted by hand: the published bi-level code keeps the timestamp tokens of
    every sparse group (w_chunk_bilevel/.../llava_qwen.py), whatever this package's default."""
    from videoxl.engine.decode import Decoder
    from videoxl.eval.benchmarks import Evaluator, load_model

    sizes = []
    real = Decoder._cache

    def measured(self, dense_groups, positions, room, layers=None, sparse_stamps=True, first=0):
        cache, position = real(self, dense_groups, positions, room, layers, sparse_stamps, first)
        if layers is None:  # the answer's cache (selection reads only the first layers)
            sizes.append(cache.length)
        return cache, position

    monkeypatch.setattr(Decoder, "_cache", measured)
    choices, answer = clips[1]["long.mp4"]
    sample = Sample("mlvu", "long", str(clips[0] / "long.mp4"), STEM, answer, {"question_type": "needle"},
                    selection_key=f"long.mp4_{STEM}")
    selection_file = clips[0] / "selection.json"
    selection_file.write_text(json.dumps(SELECTION))
    model = load_model(str(DEFAULT_MODEL), "cpu")
    row = Evaluator(model, TASKS["mlvu"], Run("bilevel", read_selection(selection_file))).row(sample)
    assert row["dense_chunks"] == [0, 2, 4, 5] and len(sizes) == 1
    # 24 groups at 0, 1, ..., 23 s in 6 chunks of 4; chunks 1 and 3 (groups 4-7, 12-15) sparse: their visual tokens
    # pooled by 4, their "Time {t}s:" tokens kept
    per_group, prefix = model.config.tokens_per_group, model._prompt_prefix().numel()
    stamps = [model.timestamp_ids(float(g)).numel() for g in range(24)]
    sparse = set(range(4, 8)) | set(range(12, 16))
    expected = prefix + sum(stamps[g] + (per_group // 4 if g in sparse else per_group) for g in range(24))
    assert sizes[0] == expected
    assert sizes[0] - expected == 0 and sum(stamps[g] for g in sparse) > 0  # the stamps are in, not left out


def test_eval_stops_only_at_the_published_stop(clips):
    """No stop string ("\\n\\n", lmms-eval's default ``until``, is removed by the published harness): an answer ends
    at <|im_end|> (the tokenizer's EOS), EOS or the token limit."""
    from videoxl.engine.decode import _TextStream
    from videoxl.eval.benchmarks import decode_options, load_model
    from videoxl.pipeline import ingest

    task = TASKS["mlvu"]
    selection, config = decode_options(task, Run("dense"), Run("dense").plan(None, 4, (4, 3), (4, 3)))
    assert config.stop == () and config.max_new_tokens == task.settings.max_new_tokens and selection.dense
    model = load_model(str(DEFAULT_MODEL), "cpu")
    session = ingest(model, str(clips[0] / "a.mp4"))
    assert model.tokenizer.convert_tokens_to_ids("<|im_end|>") in session.decoder.eos
    ids = model.tokenizer("A\n\nB", add_special_tokens=False)["input_ids"]
    stream = _TextStream(model.tokenizer, config.stop, None)
    assert not stream.push(ids) and stream.text == "A\n\nB"  # a blank line does not end the answer


def test_selection_runs_end_to_end_with_exactly_the_published_dense_chunks(clips, tmp_path):
    data = tmp_path / "mlvu"
    put(clips, "long.mp4", data / "video" / "2_needle" / "long.mp4")
    put(clips, "a.mp4", data / "video" / "2_needle" / "a.mp4")
    choices, answer = clips[1]["long.mp4"]
    (data / "json").mkdir()
    (data / "json" / "2_needle.json").write_text(json.dumps([
        {"video": "long.mp4", "question": STEM, "candidates": choices, "answer": choices["ABCD".index(answer)]},
        {"video": "a.mp4", "question": STEM, "candidates": choices, "answer": choices[0]}]))  # no entry
    sel = tmp_path / "sel.json"
    sel.write_text(json.dumps(SELECTION))
    rows = tmp_path / "rows.jsonl"
    assert run_cli("mlvu", "--data", data, "--selection", sel, "--rows", rows) == 0
    assert run_cli("mlvu", "--data", data, "--mode", "bilevel", "--topk", "auto", "--selection", sel,
                   "--rows", rows, "--json", tmp_path / "s.json") == 0
    oracle = {r["id"]: r for r in benchmarks.read_rows(rows) if r["run"] == "bilevel-oracle"}
    assert oracle["2_needle:0"]["chunks"] == 6 and oracle["2_needle:0"]["dense_chunks"] == [0, 2, 4, 5]
    assert oracle["2_needle:1"]["dense_chunks"] == [0] and "no selection entry" in oracle["2_needle:1"]["note"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert set(summary["runs"]) == {"bilevel-oracle", "bilevel-model-auto"}  # side by side
    assert all(r["n"] == 2 for r in summary["runs"].values())


# -- end to end, every task ---------------------------------------------------------------------------------------
def hand_score(task: str, row: dict) -> float:
    """The published extraction, worked by hand for the answers a tiny model gives (a letter, maybe with ')')."""
    pred = row["pred"].strip()
    if task == "mlvu":
        return float((pred[pred.index(")") - 1] if ")" in pred else pred) == row["gold"])
    letter = next((c for c in pred if c in "ABCDE"), "")
    return float(letter == row["gold"])


@pytest.mark.parametrize("task", ["mlvu", "videomme", "longvideobench", "lvbench", "charades-sta"])
def test_every_task_end_to_end(task, request, tmp_path):
    data = request.getfixturevalue(task.replace("-sta", ""))
    out, rows_path = tmp_path / "s.json", tmp_path / "rows.jsonl"
    assert run_cli(task, "--data", data, "--mode", "chunked", "--rows", rows_path, "--json", out,
                   "--plot", tmp_path / "p.png") == 0
    summary = json.loads(out.read_text())
    rows = benchmarks.read_rows(rows_path)
    run = summary["runs"]["chunked"]
    scored = [r for r in rows if "skipped" not in r]
    assert run["n"] + run.get("excluded_empty", 0) == len(scored) and len(run["skipped"]) == len(rows) - len(scored)
    assert (tmp_path / "p.png").stat().st_size > 0
    expected_skipped = {"mlvu": 2, "videomme": 2, "longvideobench": 1, "lvbench": 1, "charades-sta": 1}[task]
    assert len(summary["annotation_skipped"]) == expected_skipped  # malformed rows and missing videos, listed
    if task == "charades-sta":
        assert len(scored) == 2
        ious = [r["score"] for r in scored]
        assert run["score"] == pytest.approx(100 * sum(ious) / 2)
        for r in scored:  # the IoU of what was parsed, by hand
            (s, e), (gs, ge) = r["parsed"], r["gold"]
            assert r["score"] == pytest.approx(max(min(e, ge) - max(s, gs), 0) / (max(e, ge) - min(s, gs)))
        return
    for r in scored:
        assert r["score"] == hand_score(task, r), r
    if task == "mlvu":
        per = {}
        for r in scored:
            per.setdefault(r["categories"]["task_type"], []).append(r["score"])
        assert run["score"] == pytest.approx(sum(100 * sum(v) / len(v) for v in per.values()) / len(per))
    elif task == "lvbench":
        assert [r["id"] for r in rows if "skipped" in r] == ["broken-1"]  # an unreadable video: listed, not fatal
        answered = [r for r in scored if r["pred"] != ""]
        assert run["score"] == pytest.approx(100 * sum(r["score"] for r in answered) / len(answered))
    else:
        assert run["score"] == pytest.approx(100 * sum(r["score"] for r in scored) / len(scored))
    assert "chunked" in format_table(summary)
    # resume: nothing runs again, the summary is the same
    assert run_cli(task, "--data", data, "--mode", "chunked", "--rows", rows_path, "--json", out) == 0
    assert json.loads(out.read_text()) == summary and len(benchmarks.read_rows(rows_path)) == len(rows)


@pytest.fixture(scope="module")
def mlvu_serial(mlvu):
    """The MLVU mini set's samples and their rows run serially in this process (dense): the reference the worker
    processes and the Ray actors must reproduce, computed once for both."""
    samples, _ = TASKS["mlvu"].read(mlvu)
    return samples, benchmarks.run(str(DEFAULT_MODEL), TASKS["mlvu"], samples, Run("dense"))


def test_workers_give_the_serial_rows_even_when_one_dies(mlvu_serial, tmp_path, monkeypatch):
    task = TASKS["mlvu"]
    samples, serial = mlvu_serial
    run = Run("dense")
    marker = tmp_path / "kill-once"
    marker.touch()
    monkeypatch.setenv("VIDEOXL_EVAL_KILL_ONCE", str(marker))
    parallel = benchmarks.run(str(DEFAULT_MODEL), task, samples, run, workers=2)
    assert not marker.exists()  # a worker died mid-run, and its sample was run again
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(parallel) == strip(serial)


def test_ray_gives_the_serial_rows_even_when_an_actor_dies(mlvu_serial, tmp_path, monkeypatch):
    pytest.importorskip("ray")  # an optional extra (videoxl[ray]); skipped where it is not installed
    from videoxl.eval.distributed import run_ray

    task = TASKS["mlvu"]
    samples, serial = mlvu_serial
    marker = tmp_path / "kill-once"
    marker.touch()
    monkeypatch.setenv("VIDEOXL_EVAL_KILL_ONCE", str(marker))
    rows = run_ray("auto", str(DEFAULT_MODEL), task, samples, Run("dense"), actors=2)
    assert not marker.exists()
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(rows) == strip(serial)


def test_bad_options_exit_2(mlvu, tmp_path):
    assert run_cli("mlvu", "--data", tmp_path / "nowhere") == 2
    assert run_cli("mlvu", "--data", mlvu, "--topk", "auto") == 2  # auto needs a selection file
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"needle": {"config": {}}}))
    assert run_cli("mlvu", "--data", mlvu, "--selection", bad) == 2
    assert run_cli("mlvu", "--data", mlvu, "--mode", "dense", "--selection", bad) == 2
    assert run_cli("rescore", "mlvu", tmp_path / "nothing.json") == 2
    assert run_cli("mlvu", "--data", mlvu, "--mode", "chunked", "--topk", "3") == 2
    good = tmp_path / "good.json"
    good.write_text(json.dumps(SELECTION))
    assert run_cli("mlvu", "--data", mlvu, "--selection", good, "--topk", "3") == 2  # oracle or auto, not both


# -- checkpoint loading and images (issue 11 §2) ---------------------------------------------------------------
@pytest.fixture()
def release_like(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(DEFAULT_MODEL, folder)
    state = load_file(str(folder / "model.safetensors"))
    hidden = state["lm_head.weight"].shape[1]
    state["model.image_newline"] = torch.zeros(hidden)
    state["model.text_mlp.0.weight"] = torch.zeros(hidden, hidden)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_unused_release_keys_warn_missing_keys_fail(release_like, caplog):
    from safetensors.torch import load_file, save_file

    from videoxl import CheckpointError
    from videoxl.model import VideoXL2

    with caplog.at_level("WARNING"):
        model = VideoXL2.from_pretrained(release_like, device="cpu")
    assert "model.image_newline" in caplog.text and "model.text_mlp.0.weight" in caplog.text
    assert model.dtype == torch.float32  # no torch_dtype in config.json: the CPU default
    state = load_file(str(release_like / "model.safetensors"))
    del state["model.norm.weight"]
    save_file(state, str(release_like / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing keys: model.norm.weight"):
        VideoXL2.from_pretrained(release_like, device="cpu")


def test_default_dtype_is_the_checkpoints(release_like):
    from videoxl.model import VideoXL2

    config = json.loads((release_like / "config.json").read_text())
    (release_like / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}))
    assert VideoXL2.from_pretrained(release_like, device="cpu").dtype == torch.bfloat16
    assert VideoXL2.from_pretrained(release_like, device="cpu", dtype=torch.float32).dtype == torch.float32


def test_a_single_image_is_time_zero(tmp_path):
    from PIL import Image

    from videoxl.model import VideoXL2

    Image.new("RGB", (64, 64), "red").save(tmp_path / "red.png")
    model = VideoXL2.from_pretrained(DEFAULT_MODEL, device="cpu")
    session = ingest(model, str(tmp_path / "red.png"))
    assert session.group_times == [0.0]
    assert model.tokenizer.decode(model.timestamp_ids(session.group_times[0])) == "Time 0.0s:"


def test_videomme_subtitles_prompt(videomme, clips, tmp_path):
    (videomme / "subtitle").mkdir(exist_ok=True)
    (videomme / "subtitle" / "vid0.srt").write_text(
        '1\n00:00:00,000 --> 00:00:02,000\n<font color="white" size=".72c">a bolt</font>\n\n'
        '2\n00:00:30,000 --> 00:00:31,000\n<font color="white" size=".72c">never shown</font>\n')
    out = tmp_path / "p.jsonl"
    assert run_cli("videomme", "--data", videomme, "--subtitles", "--prompts-only", out, "--limit", 2) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records if "skipped" not in r] == ["000-1", "001-1"]  # --limit 2
    a, b = clips[1]["a.mp4"][0], clips[1]["b.mp4"][0]
    options = lambda c: "['" + "', '".join(f"{'ABCD'[j]}. {x}" for j, x in enumerate(c)) + "']"  # noqa: E731
    head = ("Select the best answer to the following multiple-choice question based on the video and the subtitles. "
            "Respond with only the letter (A, B, C, or D) of the correct option.\n")
    assert records[0]["question"] == ("This video's subtitles are listed below: \na bolt\n" + head
                                      + f"{STEM}\n{options(a)}\nThe best answer is:")
    assert records[1]["question"] == ("This video's subtitles are listed below: \nNo subtitles available\n" + head
                                      + f"{STEM}\n{options(b)}\nThe best answer is:")
    assert records[0]["selection_key"] == f"vid0.mp4_{STEM}"


def test_the_parser_stays_light():
    import subprocess
    import sys

    code = ("import argparse, sys; from videoxl.eval.commands import add_parsers; p = argparse.ArgumentParser(); "
            "add_parsers(p.add_subparsers()); assert 'torch' not in sys.modules and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- LongVideoBench with interleaved subtitles (--subtitles) ----------------------------------------------------
LVB_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
LVB_TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def lvb_question(choices) -> str:
    return (f"{STEM}\n" + "\n".join(f"{'ABCD'[j]}. {c}" for j, c in enumerate(choices))
            + "\nAnswer with the option's letter from the given choices directly.\n")


@pytest.fixture(scope="module")
def lvb_subtitled(clips, tmp_path_factory):
    """LongVideoBench's files with subtitles: a.mp4's in the whisper form ({"timestamp", "text"}, times of the
    original video, 10 s before the clip), b.mp4's in the {"start", "end", "line"} form, a third row's file missing."""
    data = tmp_path_factory.mktemp("lvb-subtitles")
    rows = []
    for i, (v, offset, sub) in enumerate([("a.mp4", 10.0, "a_en.json"), ("b.mp4", 0.0, "b_en.json"),
                                          ("c.mp4", 0.0, "gone.json")]):
        choices, answer = clips[1][v]
        put(clips, v, data / "videos" / v)
        rows.append({"id": f"lvb-{i}", "video_id": v[:-4], "video_path": v, "question": STEM, "candidates": choices,
                     "correct_choice": "ABCD".index(answer), "duration_group": 15, "question_category": "E2O",
                     "duration": 4.0, "subtitle_path": sub, "starting_timestamp_for_subtitles": offset})
    (data / "lvb_val.json").write_text(json.dumps(rows))
    (data / "subtitles").mkdir()
    (data / "subtitles" / "a_en.json").write_text(json.dumps([
        {"timestamp": [9.0, 10.2], "text": "first"},          # -1.0..0.2, middle -0.4: before every group
        {"timestamp": [10.3, 10.6], "text": "second"},        # middle 0.45: after the group at 0 s; widened, covers 0
        {"timestamp": [11.2, 12.9], "text": "at 01:02"},      # middle 2.05: after the groups at 1 and 2 s
        {"timestamp": [40.0, 41.0], "text": "never shown"}]))  # no sampled frame inside: left out
    (data / "subtitles" / "b_en.json").write_text(json.dumps([
        {"start": "00:00:00.500", "end": "00:00:02.000", "line": "b one"},    # middle 1.25: before the group at 2 s
        {"start": "00:00:03.200", "end": "00:00:04.000", "line": "b last"}]))  # middle 3.6: after the last group
    return data


def test_longvideobench_subtitles_are_interleaved_by_time(lvb_subtitled, clips, tmp_path):
    out = tmp_path / "p.jsonl"
    assert run_cli("longvideobench", "--data", lvb_subtitled, "--subtitles", "--prompts-only", out) == 0
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    a, b = lvb_question(clips[1]["a.mp4"][0]), lvb_question(clips[1]["b.mp4"][0])
    assert records["lvb-0"]["question"] == a
    assert records["lvb-0"]["prompt"] == (
        LVB_HEAD + "first\nTime 0.0s:<group>\nsecond\nTime 1.0s:<group>Time 2.0s:<group>\nat 62 seconds\n"
                   "Time 3.0s:<group>\n" + a + LVB_TAIL)
    assert records["lvb-1"]["question"] == "b last\n" + b  # after the last group: it opens the question
    assert records["lvb-1"]["prompt"] == (
        LVB_HEAD + "Time 0.0s:<group>Time 1.0s:<group>\nb one\nTime 2.0s:<group>Time 3.0s:<group>\nb last\n" + b
        + LVB_TAIL)
    assert records["lvb-0"]["selection_key"] == f"a.mp4_{STEM}"  # the question's, as without subtitles
    assert records["lvb-2"] == {"task": "longvideobench", "id": "lvb-2",
                                "skipped": "subtitle file not found: subtitles/gone.json"}
    # without --subtitles the same files give the plain published prompt
    assert run_cli("longvideobench", "--data", lvb_subtitled, "--prompts-only", out) == 0
    plain = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert plain["lvb-0"]["prompt"] == LVB_HEAD + "<image>\n" + a + LVB_TAIL and len(plain) == 3


def test_longvideobench_subtitle_forms_as_published(tmp_path):
    from videoxl.eval.tasks.base import interleave
    from videoxl.eval.tasks.longvideobench import read_subtitles

    path = tmp_path / "s.json"
    # a null (or integer) end is the video's duration, then shifted like the start, as published
    path.write_text(json.dumps([{"timestamp": [3.0, None], "text": "x"}, {"timestamp": [12.0, 14], "text": "y"}]))
    assert read_subtitles(path, 10.0, 4.0) == ((-7.0, -6.0, "x"), (2.0, -6.0, "y"))
    assert read_subtitles(path, 0.0, 4.0) == ((3.0, 4.0, "x"), (12.0, 4.0, "y"))
    path.write_text(json.dumps([{"start": "01:00:01.5", "end": "01:00:03", "line": "z"}]))
    assert read_subtitles(path, 3600.0, 0.0) == ((1.5, 3.0, "z"),)
    # frames every 0.5 s in groups of 4: group stamps 0 and 2
    frames, groups = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], [0.0, 2.0]
    # p: middle 1.95, before the group at 2 s; q: middle 2.95, after the last group; r: shorter than 1 s, widened
    # to 3.2..4.2 it covers the frame at 3.5 s; s: widened to 3.8..4.8 it covers no frame and is left out
    assert interleave([(1.7, 2.2, "p"), (2.0, 3.9, "q"), (3.6, 3.8, "r"), (4.2, 4.4, "s")], frames, groups) == \
        ([[], ["p"]], ["q", "r"])


def test_longvideobench_subtitles_end_to_end(lvb_subtitled, clips):
    from videoxl.eval.benchmarks import Evaluator, load_model

    task = TASKS["longvideobench"]
    model = load_model(str(DEFAULT_MODEL), "cpu")
    with_subtitles, skipped = task.read(lvb_subtitled, subtitles=True)
    plain, _ = task.read(lvb_subtitled)
    assert [s.id for s in with_subtitles] == ["lvb-0", "lvb-1"] and [s.id for s in skipped] == ["lvb-2"]
    tokens = {}
    for name, sample in (("subtitled", with_subtitles[0]), ("plain", plain[0])):
        evaluator = Evaluator(model, task, Run("chunked"))
        row = evaluator.row(sample)
        assert "skipped" not in row and row["score"] in (0.0, 1.0), row
        tokens[name] = evaluator._cached[1].stats.tokens
    # the subtitle lines are pre-filled in the video, before the groups they precede
    pre_filled = ["first\n", "\nsecond\n", "\nat 62 seconds\n"]
    extra = sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in pre_filled)
    assert tokens["subtitled"] - tokens["plain"] == extra


# -- without --data: the benchmark's Hugging Face dataset repository ----------------------------------------------
def cli(env_home: Path, *argv) -> subprocess.CompletedProcess:
    """The real ``videoxl eval`` command, offline, with the hub cache (and unpack folder) under ``env_home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(env_home), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "videoxl.cli", "eval", *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_no_data_and_no_hub_is_one_clear_line(tmp_path):
    done = cli(tmp_path / "hf", "mlvu", "--prompts-only", tmp_path / "p.jsonl")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videoxl: error: mlvu: HF_HUB_OFFLINE is set"), lines
    assert "MLVU/MVLU" in lines[0] and "pass --data DIR" in lines[0]
    assert not (tmp_path / "p.jsonl").exists()
    # LVBench's repository holds no videos: refused before any download
    assert run_cli("lvbench", "--prompts-only", tmp_path / "p.jsonl") == 2


def fake_snapshot(home: Path, repo: str, files: dict) -> Path:
    """A cached hub snapshot of dataset ``repo`` as huggingface_hub lays it out (refs/main -> snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = home / "hub" / f"datasets--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, content in files.items():
        path = folder / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder / "snapshots" / commit


def tar_bytes(folder: Path, names: list[str]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in names:
            archive.add(folder / name, arcname=name)
    return buffer.getvalue()


def test_longvideobench_from_a_cached_hub_snapshot(lvb_subtitled, tmp_path):
    """The gated repository's files (lvb_val.json, videos.tar.part.*, subtitles.tar) from the hub cache, offline:
    unpacked once into the --data layout, they give the prompts the same files give from --data."""
    videos = tar_bytes(lvb_subtitled, ["videos/a.mp4", "videos/b.mp4", "videos/c.mp4"])
    half = len(videos) // 2
    home = tmp_path / "hf"
    fake_snapshot(home, "longvideobench/LongVideoBench", {
        "lvb_val.json": (lvb_subtitled / "lvb_val.json").read_bytes(),
        "videos.tar.part.aa": videos[:half], "videos.tar.part.ab": videos[half:],
        "subtitles.tar": tar_bytes(lvb_subtitled, ["subtitles/a_en.json", "subtitles/b_en.json"]),
        "lvb_test_wo_gt.json": b"not needed, not unpacked"})
    hub_out, data_out = tmp_path / "hub.jsonl", tmp_path / "data.jsonl"
    done = cli(home, "longvideobench", "--subtitles", "--prompts-only", hub_out)
    assert done.returncode == 0, done.stderr
    assert "longvideobench/LongVideoBench" in done.stderr
    assert run_cli("longvideobench", "--data", lvb_subtitled, "--subtitles", "--prompts-only", data_out) == 0
    hub, local = [[json.loads(line) for line in p.read_text().splitlines()] for p in (hub_out, data_out)]
    assert hub == local and sum("skipped" not in r for r in hub) == 2
    unpacked = next((home / "videoxl-eval" / "longvideobench--LongVideoBench").iterdir())
    assert (unpacked / "videos" / "a.mp4").read_bytes() == (lvb_subtitled / "videos" / "a.mp4").read_bytes()
    assert not (unpacked / "lvb_test_wo_gt.json").exists()  # only the files the run needs
    assert sorted(p.name for p in (unpacked / ".videoxl-unpacked").iterdir()) == ["subtitles.tar", "videos.tar"]
    (unpacked / "videos" / "a.mp4").unlink()  # unpacked once: a second run does not unpack again
    assert cli(home, "longvideobench", "--prompts-only", hub_out).returncode == 0
    assert not (unpacked / "videos" / "a.mp4").exists()
    assert [r.get("skipped", "") for r in map(json.loads, hub_out.read_text().splitlines())].count(
        "video not found: videos/a.mp4") == 1


def test_charades_from_lmms_eval_copy_in_the_hub_cache(charades, tmp_path):
    """lmms-lab/charades_sta's layout (a parquet of video, caption, timestamp; the videos in zips) read offline
    from the cache gives the prompts of the benchmark's own charades_sta_test.txt."""
    import io
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([
        {"video": "CHA.mp4", "caption": "person sees an object", "timestamp": [1.0, 2.5]},
        {"video": "CHB.mp4", "caption": "the shape turns red", "timestamp": [0.0, 3.0]},
        {"video": "CHX.mp4", "caption": "no such video", "timestamp": [0.0, 1.0]}]), table)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for v in ("CHA.mp4", "CHB.mp4"):
            z.write(charades / "Charades_v1_480" / v, f"Charades_v1_480/{v}")
    home = tmp_path / "hf"
    fake_snapshot(home, "lmms-lab/charades_sta", {"data/test-00000-of-00001.parquet": table.getvalue(),
                                                  "Charades_v1_480_part_1.zip": archive.getvalue()})
    out, ref = tmp_path / "hub.jsonl", tmp_path / "txt.jsonl"
    done = cli(home, "charades-sta", "--prompts-only", out)
    assert done.returncode == 0, done.stderr
    assert run_cli("charades-sta", "--data", charades, "--prompts-only", ref) == 0
    hub = [json.loads(line) for line in out.read_text().splitlines()]
    txt = [json.loads(line) for line in ref.read_text().splitlines() if "skipped" not in line]
    assert [r["id"] for r in hub] == ["CHA.mp4>>>person sees an object>>>[1.0, 2.5]",
                                      "CHB.mp4>>>the shape turns red>>>[0.0, 3.0]", "test-00000-of-00001.parquet:2"]
    assert [r["prompt"] for r in hub[:2]] == [r["prompt"] for r in txt]
    assert hub[2]["skipped"] == "video not found: Charades_v1_480/CHX.mp4"


# -- selection files: the category names of the published ones --------------------------------------------------
def test_selection_categories_are_the_published_ones(mlvu, videomme, longvideobench, lvbench, tmp_path):
    from videoxl.eval.tasks.mlvu import MULTIPLE_CHOICE

    # MLVU's task names as the published log's file names them (logs/videoxl2-w_chunk_bilevel-mlvu/*/mlvu.json_
    # results_each_dataset_holistic_single_multi_needle_anomaly_reco_count_ego_plotQA_topic_reasoning_order.json)
    assert set(MULTIPLE_CHOICE) == {"needle", "anomaly_reco", "count", "ego", "plotQA", "topic_reasoning", "order"}
    # the field each published file is keyed by: task_type ("Action Recognition"), question_category ("E2O"),
    # LVBench's question types ("event understanding"; a question's first)
    datasets = {"mlvu": mlvu, "videomme": videomme, "longvideobench": longvideobench, "lvbench": lvbench}
    found = {t: {TASKS[t].selection_category(s.categories) for s in TASKS[t].read(d)[0]} for t, d in datasets.items()}
    assert found == {"mlvu": {"needle", "count"}, "videomme": {"Object Recognition"}, "longvideobench": {"E2O"},
                     "lvbench": {"entity recognition", "reasoning"}}
    assert TASKS["charades-sta"].selection_category({}) is None

    out = tmp_path / "p.jsonl"
    videomme_file = tmp_path / "videomme_short.json"  # another benchmark's file: refused, naming both
    videomme_file.write_text(json.dumps({"Action Recognition": {**SELECTION["count"],
                                                                "selected_unit_indices": {"x.mp4_Q": [1]}}}))
    assert run_cli("mlvu", "--data", mlvu, "--selection", videomme_file, "--prompts-only", out) == 2
    mlvu_file = tmp_path / "mlvu.json"  # needle null, as topic_reasoning is in the published file
    mlvu_file.write_text(json.dumps({"needle": None, "count": SELECTION["count"]}))
    assert run_cli("mlvu", "--data", mlvu, "--selection", mlvu_file, "--prompts-only", out) == 0
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["2_needle:0"]["decoding"]["note"] == ("category needle is null in the selection file: dense, "
                                                         "full attention (as published)")
    assert records["4_count:0"]["decoding"]["note"] == "no selection entry: dense, full attention (as published)"
