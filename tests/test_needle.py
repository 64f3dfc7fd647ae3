"""The needle-in-a-video benchmark machinery, on a tiny model and short haystacks."""

import json

from PIL import Image

from videoxl.engine.decode import DecodeConfig
from videoxl.eval import needle
from videoxl.model import VideoXL2


def test_needle_rows_summary_and_heatmap(tiny_checkpoint, tmp_path):
    model = VideoXL2.from_pretrained(tiny_checkpoint, device="cpu")
    rows = needle.run(model, [32, 48], cases=2, depths=2, folder=tmp_path / "videos",
                      bilevel=DecodeConfig(topk=1, chunk=1, max_new_tokens=2))
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
