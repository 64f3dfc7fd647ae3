"""The needle-in-a-video benchmark machinery, on a tiny model and short haystacks."""

import json

import numpy as np
import pytest
from helpers import videoxl_here
from PIL import Image

from videoxl.decoding import Selection
from videoxl.eval import needle
from videoxl.model import VideoXL2
from videoxl.synth import render
from videoxl.synth.world import OBJECTS
from videoxl.video import decode_frames, probe


def test_needle_rows_summary_and_heatmap(tiny_checkpoint, tmp_path):
    model = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    rows = needle.run(model, [32, 48], cases=2, depths=2, folder=tmp_path / "videos",
                      bilevel=Selection(topk=1, chunk=1))
    assert len(rows) == 4 and {r["depth"] for r in rows} == {0.25, 0.75}
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4  # real files, reused on a second run
    for r in rows:
        assert set(r) >= {"dense", "chunked", "bilevel", "kv_ratio", "tokens", "dense_s", "bilevel_s"}
        assert 0 < r["kv_ratio"] < 1
    summary = needle.summarize(rows)
    assert [s["frames"] for s in summary] == [32, 48] and all(s["cases"] == 2 for s in summary)
    needle.write_json(rows, tmp_path / "needle.json")
    assert json.loads((tmp_path / "needle.json").read_text())[0]["acc_bilevel"] in (0.0, 50.0, 100.0)
    needle.heatmap(rows, tmp_path / "heat.png")
    with Image.open(tmp_path / "heat.png") as image:
        assert image.format == "PNG"


def test_cases_are_deterministic_and_apart_from_training():
    a, b = needle.NeedleCase(256, 0.35, 3), needle.NeedleCase(256, 0.35, 3)
    assert a.make() == b.make()
    script, qa = a.make()
    start = [e for e in script.events if e.kind == "object"][0].start  # the needle is an object icon by default
    assert abs(start / 256 - 0.35) < 0.05  # the needle sits at the requested depth


def _palette_area(frame: np.ndarray) -> float:
    """Share of the frame in the object icons' colours: in a plain haystack, what picks out the needle's frames."""
    palette = np.array(list(OBJECTS.values()))
    distance = np.abs(frame.astype(int)[:, :, None, :] - palette).sum(-1).min(-1)
    return float((distance < 40).mean())


def test_lookalike_haystack_hides_the_needle_from_pixel_statistics(tmp_path):
    flagged = {}
    for haystack in needle.HAYSTACKS:
        flagged[haystack] = []
        for index in range(4):
            case = needle.NeedleCase(256, 0.5, index, haystack=haystack)
            script, qa = case.make()
            path = case.video(tmp_path)
            area = np.array([_palette_area(f) for f in decode_frames(probe(path), list(range(256)))])
            event = next(e for e in script.events if e.kind == "object")
            inside = np.zeros(256, bool)
            inside[event.start:event.end] = True
            # a detector that thresholds this statistic at the needle's level: which needle-free frames it flags too
            flagged[haystack].append(float((area[~inside] >= np.median(area[inside])).mean()))
            if haystack == "lookalike":
                glyphs = [e for e in script.events if e.kind == "glyph"]
                shown = np.mean([_palette_area(render(script, e.start)) for e in glyphs])
                assert abs(shown - _palette_area(render(script, event.start))) < 0.1  # glyphs are needle-sized
    assert len(list(tmp_path.glob("needle-lookalike-*.mp4"))) == 4 and len(list(tmp_path.glob("*.mp4"))) == 8
    assert np.mean(flagged["plain"]) < 0.1  # the needle stands out: almost nothing else is as palette-rich ...
    assert np.mean(flagged["lookalike"]) > 0.25  # ... and among look-alikes it does not
    assert all(p < q for p, q in zip(flagged["plain"], flagged["lookalike"]))  # paired: same video plus glyphs


def test_rows_of_each_haystack_are_keyed_and_summarized_apart():
    old = {"seed": 0, "frames": 32, "index": 1}  # a row written before haystacks existed is a plain one
    assert needle.key(old) == needle.key(needle.NeedleCase(32, 0.5, 1)) == ("plain", 0, 32, 1)
    assert needle.key(needle.NeedleCase(32, 0.5, 1, haystack="lookalike")) == ("lookalike", 0, 32, 1)
    plain, lookalike = needle.NeedleCase(64, 0.5, 0).make(), needle.NeedleCase(64, 0.5, 0, haystack="lookalike").make()
    assert plain[1] == lookalike[1] and set(plain[0].events) < set(lookalike[0].events)  # the same case, plus glyphs
    with pytest.raises(ValueError, match="unknown haystack"):
        needle.plan([32], 1, haystack="busy")


def test_cli_haystack_option_runs_and_resumes_each_haystack_apart(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIDEOXL_CACHE", str(tmp_path / "cache"))  # haystack videos are written under it
    rows, table, png = tmp_path / "rows.jsonl", tmp_path / "needle.json", tmp_path / "heat.png"

    def videoxl(*args):
        run = videoxl_here(capsys, "eval", "needle", "--model", tiny_checkpoint, "--lengths", "32", "--cases", "2",
                           "--rows", rows, "--json", table, "--heatmap", png, *args)
        assert run.returncode == 0, run.stderr
        return run.stdout

    out = videoxl("--haystack", "lookalike")
    assert any(line.split()[:2] == ["lookalike", "32"] for line in out.splitlines())  # the table says which
    first = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [(r["haystack"], r["index"]) for r in first] == [("lookalike", 0), ("lookalike", 1)]
    assert len(list((tmp_path / "cache" / "needle").glob("needle-lookalike-*.mp4"))) == 2

    out = videoxl()  # the default haystack: not resumed from the look-alike rows ...
    assert "already measured" not in out
    both = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["haystack"] for r in both] == ["lookalike"] * 2 + ["plain"] * 2
    assert [(s["haystack"], s["frames"], s["cases"]) for s in json.loads(table.read_text())] == \
        [("plain", 32, 2), ("lookalike", 32, 2)]  # ... and summarized apart, even merged in one file

    out = videoxl("--haystack", "lookalike")  # ... while its own rows are
    assert "2 of 2 cases already measured" in out
    assert rows.read_text().count("\n") == 4
    with Image.open(png) as image:
        assert image.format == "PNG"
