"""Pre-fill alone on a video model: dense one-shot forward against chunked pre-fill, one chunk per forward and
several (``PrefillConfig.per_forward``), side by side in one process.

    python benchmarks/prefill.py [--model PATH] [--frames 2048] [--repeats 3] [--device cpu|cuda] [--json PATH]

Visual tokens are random (the LLM's cost does not depend on what they show), with the model's own prompt:
ChatML prefix, ``Time {t}s:`` before every 4-frame group, a question. Dense is transformers' forward over the
whole prompt with SDPA (``model.llm.model(inputs_embeds=..., use_cache=True)``); chunked is
``videoxl.engine.prefill`` with the published pattern (chunks of 4 groups, window 3). The three are run in turn,
``--repeats`` times, after one warm-up each; the table gives the median and the best.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from videoxl import DEFAULT_MODEL  # noqa: E402
from videoxl.engine.layout import Group  # noqa: E402
from videoxl.engine.prefill import PrefillConfig, prefill  # noqa: E402
from videoxl.model.videoxl2 import VideoXL2, resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="checkpoint (default: the bundled model)")
    parser.add_argument("--frames", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    model = VideoXL2.from_pretrained(args.model, device=device)
    groups_n = args.frames // 4
    cfg = model.llm.config
    torch.manual_seed(0)
    visual = torch.randn(groups_n, model.config.tokens_per_group, cfg.hidden_size, device=device,
                         dtype=model.dtype) * 0.02
    times = [4.0 * g / 4 for g in range(groups_n)]  # 1 fps sampling, 4 frames per group
    ids = model.prompt_ids(times, "What object appears in the video?")
    groups = [Group(model.timestamp_ids(t), v) for t, v in zip(times, visual)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def dense():
        with torch.inference_mode():
            model.llm.model(inputs_embeds=model.embed_prompt(ids, visual)[None], use_cache=True)

    def chunked(per_forward):
        with torch.inference_mode():
            prefill(model.llm, model._prompt_prefix(), groups, PrefillConfig(chunk=4, window=3,
                                                                               per_forward=per_forward))

    runs = {"dense": dense, "chunked, 1 chunk per forward": lambda: chunked(1),
            "chunked, default (4 per forward)": lambda: chunked(None)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(args.repeats + 1):
        for name, run in runs.items():
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            if rep:  # the first round warms up
                seconds[name].append(time.perf_counter() - t0)
    dense_s = statistics.median(seconds["dense"])
    rows = []
    print(f"{args.frames} frames, {ids.numel():,} tokens, {device}, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats")
    print(f"{'':<34} {'median s':>8} {'best s':>7} {'vs dense':>8}")
    for name, s in seconds.items():
        row = {"frames": args.frames, "tokens": ids.numel(), "device": str(device), "run": name,
               "median_s": statistics.median(s), "best_s": min(s), "all_s": s,
               "vs_dense": statistics.median(s) / dense_s}
        rows.append(row)
        print(f"{name:<34} {row['median_s']:>8.2f} {row['best_s']:>7.2f} {row['vs_dense']:>8.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
