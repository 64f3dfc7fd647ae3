"""The GPU benchmark script runs end to end (tiny config, CPU) and writes the rows issue 13 asks for."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"frames", "tokens", "dense_s", "chunked_s", "time_ratio", "chunked_tflops", "peak_gb_dense",
        "peak_gb_chunked", "select_s", "question_s", "gen_tokens_per_s"}


def test_gpu_benchmark_smoke_run_writes_the_rows(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--json", str(out),
                    "--dense-max-frames", "16"], check=True, cwd=tmp_path, timeout=120,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE)
    rows = json.loads(out.read_text())
    assert [r["frames"] for r in rows] == [16, 64]
    for row in rows:
        assert KEYS <= row.keys()
        assert row["chunked_s"] > 0 and row["gen_tokens_per_s"] > 0
    assert rows[0]["time_ratio"] > 0 and rows[0]["dense_s"] > 0
    assert rows[1]["dense_s"] is None and "dense_skipped" in rows[1]  # above --dense-max-frames, and says so
    assert rows[1]["kv_ratio"] < 1  # 16 decoding chunks, 4 + first and last reloaded dense


def test_prefill_benchmark_times_dense_and_both_chunked_modes(tmp_path):
    out = tmp_path / "prefill.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prefill.py"), "--frames", "64", "--repeats", "1",
                    "--json", str(out)], check=True, cwd=tmp_path, timeout=120,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE)
    rows = json.loads(out.read_text())
    assert [r["run"] for r in rows] == ["dense", "chunked, 1 chunk per forward", "chunked, default (4 per forward)"]
    assert len({r["tokens"] for r in rows}) == 1 and rows[0]["tokens"] > 64 * 4  # 16 groups of tokens and stamps
    assert rows[0]["vs_dense"] == 1.0
    for r in rows:
        assert r["median_s"] > 0 and len(r["all_s"]) == 1
