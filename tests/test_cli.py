"""The videoxl command line, run as a real subprocess."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from helpers import videoxl_here

from videoxl.synth import make_qa, write


def videoxl(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "videoxl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    import random

    script, _ = make_qa(random.Random(11), 64, family="needle")
    return write(script, tmp_path_factory.mktemp("cli") / "clip.mp4")


def test_ask_prints_answer_and_stats(tiny_checkpoint, clip, capsys):
    run = videoxl_here(capsys, "ask", clip, "What object appears in the video?", "--model", tiny_checkpoint,
                       "--max-new-tokens", 3)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()  # the answer (a random tiny model says something)
    assert "64 frames" in run.stderr and "chunks" in run.stderr and "MB used" in run.stderr
    assert "pre-fill FLOPs vs dense: attention" in run.stderr


def test_ask_json(tiny_checkpoint, clip, capsys):
    run = videoxl_here(capsys, "ask", clip, "What colour is the shape at 2.0s?", "--model", tiny_checkpoint,
                       "--json", "--topk", 1, "--max-new-tokens", 2, "--window", 1)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    for key in ("answer", "frames", "tokens", "chunks", "dense_chunks", "kv_bytes_dense", "kv_bytes_used", "seconds"):
        assert key in out
    assert out["frames"] == 64 and out["chunks"] == 16 and out["dense_chunks"] == 3  # first, last and top-1
    assert out["kv_bytes_used"] < out["kv_bytes_dense"]
    assert 0 < out["prefill_attn_flops"] < out["dense_attn_flops"]  # 4 pre-fill chunks, window 1: less than causal
    assert out["dense_total_flops"] - out["prefill_total_flops"] == out["dense_attn_flops"] - out["prefill_attn_flops"]
    assert set(out["seconds"]) >= {"load", "decode", "encode", "prefill", "answer"}
    assert 0 < out["tail_share"] <= 1 and out["followed_tail"] == (out["tail_share"] >= 0.25)
    assert out["profile"] == "published"  # a checkpoint in the release's layout, without videoxl's own marker
    dense = videoxl_here(capsys, "ask", clip, "What colour is the shape at 2.0s?", "--model", tiny_checkpoint, "--json",
                         "--dense", "--max-new-tokens", 2, "--window", 1)
    assert json.loads(dense.stdout)["dense_chunks"] == 16 and json.loads(dense.stdout)["tail_share"] is None


def test_explain_writes_a_picture(tiny_checkpoint, clip, tmp_path, capsys):
    png = tmp_path / "why.png"
    run = videoxl_here(capsys, "ask", clip, "What object appears in the video?", "--model", tiny_checkpoint,
                       "--explain", png, "--max-new-tokens", 2)
    assert run.returncode == 0, run.stderr
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 1000


def test_bad_inputs_exit_2_with_a_message(tiny_checkpoint, tmp_path, clip):
    """The full list is tests/test_bad_input.py; the video is checked before the model is looked for."""
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"garbage" * 100)
    run = videoxl("ask", junk, "q?", "--model", tmp_path / "no-model")
    assert run.returncode == 2 and "junk.mp4" in run.stderr and "Traceback" not in run.stderr
    run = videoxl("ask", clip, "q?", "--model", tmp_path / "no-model")
    assert run.returncode == 2 and "not a checkpoint folder" in run.stderr
    run = videoxl("ask", junk, "q?", "--kv-budget", "3")
    assert run.returncode == 2 and "kv-budget" in run.stderr


def test_demo_writes_the_demo_video(tmp_path):
    run = videoxl("demo", tmp_path / "demo.mp4")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "demo.mp4").stat().st_size > 10_000
    assert "What object appears in the video?" in run.stdout and "expected: moon" in run.stdout


def test_bundled_model_answers_the_readme_question_on_the_demo(tmp_path):
    """The README's first command: the shipped model, the demo video generated on first use, the right answer."""
    import os

    env = {**os.environ, "VIDEOXL_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "ask", "demo", "What object appears in the video?",
                          "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["answer"] == "moon"
    assert (tmp_path / "demo.mp4").is_file() and out["frames"] == 480 and out["chunks"] == 120
    assert 84 in out["dense_chunk_indices"]  # the moon is at 84.25 s: group 84 (one group per second) is dense
    assert out["kv_bytes_used"] < 0.62 * out["kv_bytes_dense"]


def test_eval_needle_resumes_merges_and_runs_workers(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIDEOXL_CACHE", str(tmp_path / "cache"))  # haystack videos are written under it
    rows, table, png = tmp_path / "rows.jsonl", tmp_path / "needle.json", tmp_path / "heat.png"
    common = ("eval", "needle", "--model", tiny_checkpoint, "--cases", "2", "--rows", rows, "--json", table)
    first = videoxl_here(capsys, *common, "--lengths", "32")
    assert first.returncode == 0, first.stderr
    before = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [(r["frames"], r["index"], r["topk"], r["chunk"], r["sparse_stamps"]) for r in before] == \
        [(32, 0, 4, 1, False), (32, 1, 4, 1, False)]
    for flag, value, message in [("--topk", "2", "topk 4, not 2"),
                                 ("--sparse-stamps", "on", "sparse_stamps False, not True")]:
        mixed = videoxl_here(capsys, *common, "--lengths", "32", flag, value)
        assert mixed.returncode == 2 and message in mixed.stderr  # one decoding per rows file
    with open(rows, "a") as f:
        f.write('{"frames": 48, "dep')  # the last line of a run killed while writing it

    second = videoxl_here(capsys, *common, "--lengths", "32,48", "--workers", "2", "--heatmap", png)
    assert second.returncode == 0, second.stderr
    assert "2 of 4 cases already measured" in second.stdout
    after = [json.loads(line) for line in rows.read_text().splitlines()]  # every line whole again
    assert after[:2] == before  # the 32-frame cases were kept, not run again
    assert sorted((r["frames"], r["index"], r["workers"]) for r in after[2:]) == [(48, 0, 2), (48, 1, 2)]
    summary = json.loads(table.read_text())
    assert [(s["frames"], s["cases"]) for s in summary] == [(32, 2), (48, 2)]
    assert summary[1]["acc_bilevel"] == 100 * sum(r["bilevel"] for r in after[2:]) / 2
    with Image.open(png) as image:
        assert image.format == "PNG"


def test_eval_needle_workers_report_a_bad_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOXL_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("not json")
    run = videoxl("eval", "needle", "--model", bad, "--lengths", "32", "--cases", "2", "--workers", "2", timeout=120)
    assert run.returncode == 2  # the workers' load error reaches the parent; no pool respawning forever
    assert "config.json" in run.stderr


def _leftovers(*folders):
    """Temporary files videoxl writes before renaming them into place."""
    return [p for folder in folders for p in Path(folder).rglob("*") if p.name.startswith((".partial-", ".videoxl-"))]


@pytest.mark.parametrize("after", [0.15, 0.6, 1.5, 3.0, 4.5])
def test_ctrl_c_at_any_moment_exits_130_with_one_line(tmp_path, after):
    """SIGINT while importing, writing the demo video, loading, decoding or answering: exit 130, one line."""
    env = {**os.environ, "VIDEOXL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "videoxl.cli", "ask", "demo", "What object appears in the video?",
                             "--explain", tmp_path / "why.png"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip(f"the run finished within {after} s, before the signal")  # on a fast machine
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1:] == ["videoxl: interrupted"] and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not _leftovers(tmp_path)
    demo = tmp_path / "cache" / "demo.mp4"
    assert not demo.exists() or demo.stat().st_size > 10_000  # a demo video is whole or absent


def test_ctrl_c_that_an_extension_turns_into_its_own_error_still_exits_130(tmp_path):
    """Ctrl-C landing inside an extension's import comes back as that extension's error (numpy raises ImportError
    from the KeyboardInterrupt, seen under load at 0.15 s): still an interrupt, one line and 130, not an internal
    error. The command here interrupts itself the way numpy's import reports it."""
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import os, signal, sys\n"
        "import videoxl.cli as cli\n"
        "def importing(args):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        signal.pause()\n"
        "    except KeyboardInterrupt as e:\n"
        "        raise ImportError('Importing the numpy C-extensions failed.') from e\n"
        "original = cli._add_demo\n"
        "def add_demo(sub):\n"
        "    original(sub)\n"
        "    sub.choices['demo'].set_defaults(run=importing)\n"
        "cli._add_demo = add_demo\n"
        "sys.exit(cli.main(['demo']))\n")
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 130, run.stderr
    assert run.stderr.strip().splitlines() == ["videoxl: interrupted"]


def test_the_answer_is_printed_before_the_picture_and_kept_if_it_fails(tiny_checkpoint, clip, tmp_path, monkeypatch,
                                                                      capsys):
    """A failure after the answer (here: the picture cannot be drawn) reports it and exits non-zero, with the
    answer already on stdout and no half-written picture."""
    import videoxl.explain
    from videoxl.cli import main

    def broken(path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(videoxl.explain, "render_explanation", broken)
    png = tmp_path / "why.png"
    code = main(["ask", str(clip), "What object appears in the video?", "--model", str(tiny_checkpoint), "--json",
                 "--explain", str(png), "--max-new-tokens", "2"])
    out = capsys.readouterr()
    assert code == 1
    assert "answer" in json.loads(out.out)
    assert "the answer is above" in out.err and "No space left on device" in out.err
    assert not png.exists() and not _leftovers(tmp_path)


def test_demo_cache_is_regenerated_when_cut_short_and_has_normal_permissions(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VIDEOXL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    question = ["ask", "demo", "What object appears in the video?", "--json"]
    first = videoxl_here(capsys, *question)
    assert first.returncode == 0, first.stderr
    demo = tmp_path / "cache" / "demo.mp4"
    assert stat.S_IMODE(demo.stat().st_mode) == 0o666 & ~_umask()  # an ordinary file, not mkstemp's 0600
    whole = demo.read_bytes()
    demo.write_bytes(whole[: len(whole) // 2])  # a copy cut short (a full disk, a killed copy)
    (tmp_path / "demo").mkdir()  # a folder named demo in the working directory does not shadow 'ask demo'
    second = videoxl_here(capsys, *question)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["answer"] == "moon"
    assert demo.read_bytes() == whole  # written again, identically (the demo is deterministic)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_help_does_not_load_torch():
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "videoxl.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0 and "ask" in run.stdout
    assert "| torch" not in run.stderr and "transformers" not in run.stderr
