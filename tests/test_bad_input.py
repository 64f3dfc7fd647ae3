"""Bad input through the real ``videoxl`` command: exit 2, a message naming the culprit, no traceback, no file left
behind, and refused before any heavy work (every case runs against a one-hour video, so work done before the
refusal would show in the time).

The cases run as concurrent subprocesses in one fixture; each case is then its own test.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import write_audio, write_video

QUESTION = "What object appears in the video?"


@dataclass
class Case:
    args: list
    culprit: str  # text the message must contain
    stdin: bytes | None = None
    fast: bool = True  # refused before torch is imported


def _videoxl(args, cwd, env, stdin=None, timeout=240):
    started = time.perf_counter()
    argv = [a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args]
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", *argv], cwd=cwd, env=env,
                         input=stdin, capture_output=True, timeout=timeout)
    return run, time.perf_counter() - started


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint):
    """Files for every case: an hour-long video, broken videos and checkpoints, special files."""
    d = tmp_path_factory.mktemp("bad")
    files = {}
    hour = d / "hour.mp4"
    write_video(hour, 3600, fps=1, size=16, gop=60)  # one hour at 1 fps
    files["hour"] = hour
    good = d / "good.mp4"
    write_video(good, 48, fps=4)
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (d / "random.mp4").write_bytes(os.urandom(50_000))
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.txt").write_text("These are notes, not a video.\n" * 100)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    write_audio(d / "tone.m4a")
    (d / "folder.mp4").mkdir()
    os.mkfifo(d / "pipe.mp4")
    (d / "outdir").mkdir()
    for name, mutate in {
        "ckpt_truncated": lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
        "ckpt_garbled": lambda f: f.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": [1, 2" + os.urandom(200)),
        "ckpt_badconfig": lambda f: (f.parent / "config.json").write_text("{not json"),
    }.items():
        folder = d / name
        shutil.copytree(tiny_checkpoint, folder)
        mutate(folder / "model.safetensors")
    return d


def _cases(d: Path, ckpt: Path) -> dict[str, Case]:
    hour = d / "hour.mp4"
    return {
        "question_not_utf8": Case([hour, b"which \xff\xfe object?", "--model", ckpt], "UTF-8"),
        "question_100k_chars": Case([hour, "why " * 25_000, "--model", ckpt], "the limit is 2048 tokens", fast=False),
        "question_over_limit": Case([hour, QUESTION, "--max-question-tokens", 3, "--model", ckpt], "the limit is 3",
                                    fast=False),
        "question_empty": Case([hour, "   ", "--model", ckpt], "question is empty"),
        "max_question_tokens_0": Case([hour, QUESTION, "--max-question-tokens", 0], "--max-question-tokens"),
        "device_banana": Case([hour, QUESTION, "--device", "banana"], "--device"),
        "device_cuda_without_gpu": Case([hour, QUESTION, "--device", "cuda", "--model", ckpt], "no CUDA GPU",
                                        fast=False),
        "device_cuda_index": Case([hour, QUESTION, "--device", "cuda:x"], "--device"),
        "max_fps_0": Case([hour, QUESTION, "--max-fps", 0], "--max-fps"),
        "max_fps_negative": Case([hour, QUESTION, "--max-fps", -1], "--max-fps"),
        "max_fps_nan": Case([hour, QUESTION, "--max-fps", "nan"], "--max-fps"),
        "fps_nan": Case([hour, QUESTION, "--fps", "nan"], "--fps"),
        "fps_inf": Case([hour, QUESTION, "--fps", "inf"], "--fps"),
        "max_frames_0": Case([hour, QUESTION, "--max-frames", 0], "--max-frames"),
        "max_frames_huge": Case([hour, QUESTION, "--max-frames", 10**9], "--max-frames"),
        "chunk_0": Case([hour, QUESTION, "--chunk", 0], "--chunk"),
        "decode_chunk_0": Case([hour, QUESTION, "--decode-chunk", 0], "--decode-chunk"),
        "window_below_minus_1": Case([hour, QUESTION, "--window", -2], "--window"),
        "topk_negative": Case([hour, QUESTION, "--topk", -1], "--topk"),
        "kv_budget_3": Case([hour, QUESTION, "--kv-budget", 3], "--kv-budget"),
        "kv_budget_nan": Case([hour, QUESTION, "--kv-budget", "nan"], "--kv-budget"),
        "max_new_tokens_0": Case([hour, QUESTION, "--max-new-tokens", 0], "--max-new-tokens"),
        "min_confidence_2": Case([hour, QUESTION, "--min-confidence", 2], "--min-confidence"),
        "temperature_nan": Case([hour, QUESTION, "--temperature", "nan"], "--temperature"),
        "top_p_0": Case([hour, QUESTION, "--top-p", 0], "--top-p"),
        "seed_negative": Case([hour, QUESTION, "--seed", -1], "--seed"),
        "sparse_stamps_maybe": Case([hour, QUESTION, "--sparse-stamps", "maybe"], "--sparse-stamps"),
        "url": Case(["http://example.com/videos/v.mp4", QUESTION], "http://example.com/videos/v.mp4: URLs are not"),
        "dev_zero": Case(["/dev/zero", QUESTION], "/dev/zero: not a regular file"),
        "fifo": Case([d / "pipe.mp4", QUESTION], "pipe.mp4: not a regular file"),
        "directory": Case([d / "folder.mp4", QUESTION], "folder.mp4: is a directory"),
        "missing": Case([d / "nowhere.mp4", QUESTION], "nowhere.mp4: no such file"),
        "empty_file": Case([d / "empty.mp4", QUESTION], "empty.mp4: the file is empty"),
        "random_bytes": Case([d / "random.mp4", QUESTION, "--model", ckpt], "random.mp4"),
        "truncated_video": Case([d / "truncated.mp4", QUESTION, "--model", ckpt], "truncated.mp4"),
        "text_file": Case([d / "notes.txt", QUESTION, "--model", ckpt], "notes.txt"),
        "audio_only": Case([d / "tone.m4a", QUESTION, "--model", ckpt], "has no video stream"),
        "broken_image": Case([d / "broken.png", QUESTION, "--model", ckpt], "broken.png: not a readable image"),
        "explain_not_png": Case([hour, QUESTION, "--explain", d / "out.txt"], "--explain"),
        "explain_folder": Case([hour, QUESTION, "--explain", d / "outdir"], "is a folder"),
        "explain_folder_png": Case([hour, QUESTION, "--explain", d / "outdir.png" / "x.png"], "does not exist"),
        "explain_read_only": Case([hour, QUESTION, "--explain", "/proc/why.png"], "cannot write in /proc"),
        "model_missing": Case([hour, QUESTION, "--model", d / "no-model"], "not a checkpoint folder"),
        "model_truncated_weights": Case([hour, QUESTION, "--model", d / "ckpt_truncated"],
                                        "ckpt_truncated/model.safetensors: not a valid safetensors file"),
        "model_garbled_weights": Case([hour, QUESTION, "--model", d / "ckpt_garbled"],
                                      "ckpt_garbled/model.safetensors: not a valid safetensors file"),
        "model_bad_config": Case([hour, QUESTION, "--model", d / "ckpt_badconfig"], "config.json"),
        "needle_workers_0": Case(["--workers", 0], "--workers"),
        "needle_lengths_words": Case(["--lengths", "many"], "--lengths"),
        "demo_into_folder": Case([d / "outdir"], "is a folder"),
    }


COMMANDS = {"needle_workers_0": ("eval", "needle"), "needle_lengths_words": ("eval", "needle"),
            "demo_into_folder": ("demo",)}
NAMES = list(_cases(Path("/x"), Path("/y")))


@pytest.fixture(scope="module")
def results(world, tiny_checkpoint, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")  # every file a run might leave would appear here or beside its inputs
    env = {**os.environ, "VIDEOXL_CACHE": str(tmp_path_factory.mktemp("cache"))}
    # "fast" cases must be refused before torch is imported: here importing it fails loudly
    poison = tmp_path_factory.mktemp("poison")
    (poison / "torch").mkdir()
    (poison / "torch" / "__init__.py").write_text("raise ImportError('torch was imported before the refusal')\n")
    fast_env = {**env, "PYTHONPATH": str(poison)}
    cases = _cases(world, tiny_checkpoint)
    before = sorted(p.name for p in world.iterdir())

    def one(name):
        case = cases[name]
        args = [*COMMANDS.get(name, ("ask",)), *case.args]
        return name, _videoxl(args, cwd, fast_env if case.fast else env, case.stdin)

    with ThreadPoolExecutor(max_workers=2) as pool:
        out = dict(pool.map(one, NAMES))
    return out, cases, cwd, before, world


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_exits_2_and_names_it(results, name):
    out, cases, cwd, before, world = results
    if name == "device_cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run, seconds = out[name]
    stderr, stdout = run.stderr.decode(errors="replace"), run.stdout.decode(errors="replace")
    assert run.returncode == 2, (name, run.returncode, stderr)
    assert cases[name].culprit in stderr, stderr
    assert "Traceback" not in stderr + stdout
    assert stdout == ""  # nothing that looks like an answer
    assert len(stderr.strip().splitlines()) == 1  # one message
    assert not list(cwd.iterdir())
    assert sorted(p.name for p in world.iterdir()) == before  # no temporary file left beside the inputs
    # refused before any heavy work: "fast" cases before torch is imported (a poisoned torch is on the path), the
    # rest before any frame of the hour is decoded; generous bounds, as the tests share 2 cores
    assert "torch was imported" not in stderr
    assert seconds < (20 if cases[name].fast else 90), seconds


def test_a_valid_run_on_the_same_hour_is_real_work(world, tiny_checkpoint, tmp_path):
    """The reference for the timings above: the same video and model, with good arguments, answer."""
    run, seconds = _videoxl(["ask", world / "hour.mp4", QUESTION, "--model", tiny_checkpoint, "--max-frames", 64,
                             "--max-new-tokens", 2, "--json"], tmp_path, os.environ)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["frames"] == 64


def test_remote_code_folder_is_refused_and_never_run(tiny_checkpoint, tmp_path, world):
    """A folder whose tokenizer_config.json maps AutoTokenizer to its own Python file: exit 2, no prompt, the
    code never runs (the marker file it would write stays absent)."""
    folder = tmp_path / "evil"
    shutil.copytree(tiny_checkpoint, folder)
    marker = tmp_path / "code-ran"
    (folder / "evil_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                              "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    run, _ = _videoxl(["ask", world / "hour.mp4", QUESTION, "--model", folder, "--json"], tmp_path, os.environ,
                      stdin=b"y\ny\n")
    stderr = run.stderr.decode()
    assert run.returncode == 2, stderr
    assert "never runs code from a model folder" in stderr and "evil_tokenizer.py" in stderr
    assert run.stdout == b""  # no "Do you wish to run the custom code? [y/N]" prompt
    assert not marker.exists()


def test_config_auto_map_of_the_official_release_is_harmless(tiny_checkpoint, tmp_path, world):
    """The official checkpoint's config.json names remote modeling code; videoxl reads the config itself, so the
    folder loads and nothing of it runs."""
    folder = tmp_path / "release"
    shutil.copytree(tiny_checkpoint, folder)
    marker = tmp_path / "code-ran"
    (folder / "modeling_videoxl2.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_videoxl2.Config", "AutoModel": "modeling_videoxl2.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    run, _ = _videoxl(["ask", world / "hour.mp4", QUESTION, "--model", folder, "--max-frames", 16,
                       "--max-new-tokens", 1], tmp_path, os.environ, stdin=b"")
    assert run.returncode == 0, run.stderr
    assert not marker.exists()


def test_pickle_posing_as_safetensors_is_never_unpickled(tiny_checkpoint, tmp_path, world):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_checkpoint, folder)
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(folder / "model.safetensors", "wb") as f:
        pickle.dump({"lm_head.weight": Payload()}, f)
    run, _ = _videoxl(["ask", world / "hour.mp4", QUESTION, "--model", folder], tmp_path, os.environ)
    assert run.returncode == 2
    assert "pickled/model.safetensors: not a valid safetensors file" in run.stderr.decode()
    assert not marker.exists()
    with pytest.raises(Exception):  # the file really is a pickle that would have run code
        torch.load(folder / "model.safetensors", weights_only=True)
