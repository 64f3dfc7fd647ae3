"""CPU thread settings under contention: why videoxl asks OpenMP to wait passively.

    python benchmarks/threads.py [--json PATH] [--repeats 3]

PyTorch's CPU kernels run on OpenMP threads, one per core. Between parallel regions an idle OpenMP thread spins for
a while before it sleeps. When another process holds a core, a spinning thread burns the time slice the thread it
waits for needs, and every parallel region stalls. This benchmark runs two workloads in fresh processes under three
settings, on an idle machine and beside one busy process (a pure-Python loop, like any other job on the box):

- ``spin``: OpenMP's default wait policy (``OMP_WAIT_POLICY`` set empty, so libgomp's default applies);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, what ``import videoxl`` sets when torch is not yet imported;
- ``1 thread``: ``OMP_NUM_THREADS=1``.

Workloads: ``videoxl ask demo`` with the bundled model (the seconds of its encode, pre-fill and answer stages, from
``--json``), and one pre-fill forward of 2,048 tokens through SmolLM2-135M (large matrix products). Each number is
the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"spin": {"OMP_WAIT_POLICY": ""}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
            "1 thread": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}}
SMOLLM2 = """
import time, torch, videoxl
from videoxl.llm import load_smollm2
model, tokenizer = load_smollm2()
ids = torch.randint(100, 20000, (1, 2048))
with torch.inference_mode():
    model.model(input_ids=ids[:, :64])  # warm-up
    t = time.perf_counter(); model.model(input_ids=ids); print(time.perf_counter() - t)
"""


def ask_demo(env: dict) -> float:
    run = subprocess.run([sys.executable, "-m", "videoxl.cli", "ask", "demo", "What object appears in the video?",
                          "--json"], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    seconds = json.loads(run.stdout)["seconds"]
    return seconds["encode"] + seconds["prefill"] + seconds["answer"]


def smollm2_prefill(env: dict) -> float:
    run = subprocess.run([sys.executable, "-c", SMOLLM2], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return float(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    ask_demo(base)  # writes the demo video and the SmolLM2 copy once, outside the timings
    smollm2_prefill(base)
    rows = []
    print(f"{'workload':<18} {'setting':<9} {'idle s':>8} {'busy s':>8} {'slowdown':>9}   ({os.cpu_count()} cores)")
    for name, workload in (("ask demo (stages)", ask_demo), ("smollm2 2k prefill", smollm2_prefill)):
        for setting, extra in SETTINGS.items():
            env = {**base, **extra}
            idle = statistics.median(workload(env) for _ in range(args.repeats))
            busy_proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
            try:
                busy = statistics.median(workload(env) for _ in range(args.repeats))
            finally:
                busy_proc.kill()
                busy_proc.wait()
            row = {"workload": name, "setting": setting, "idle_s": idle, "busy_s": busy, "slowdown": busy / idle,
                   "cores": os.cpu_count(), "repeats": args.repeats}
            rows.append(row)
            print(f"{name:<18} {setting:<9} {idle:>8.2f} {busy:>8.2f} {busy / idle:>8.1f}x", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
