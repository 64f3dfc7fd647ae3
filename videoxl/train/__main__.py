"""python -m videoxl.train --recipe synth --out runs/synth [--export DIR]: train (or resume) a recipe."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def synth_tokenizer():
    from ..model.tokenizer import build_tokenizer
    from ..synth.questions import tokenizer_corpus

    return build_tokenizer(tokenizer_corpus(), vocab_size=1024)


def plot_curve(log: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text().splitlines()]
    x = [r["elapsed_s"] / 60 for r in rows]
    loss = [r["loss"] for r in rows]
    smooth, s = [], None
    for v in loss:
        s = v if s is None else 0.95 * s + 0.05 * v
        smooth.append(s)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot(x, loss, color="#bbbbbb", lw=0.6, label="loss per step")
    ax.plot(x, smooth, color="#1f5fa8", lw=1.8, label="smoothed")
    changes = [i for i in range(1, len(rows)) if rows[i]["stage"] != rows[i - 1]["stage"]]
    for i in changes:
        ax.axvline(x[i], color="#999999", ls="--", lw=0.8)
        ax.text(x[i], max(loss) * 0.95, f" {rows[i]['stage']}", fontsize=8, color="#555555")
    ax.set_xlabel("training time (minutes, 2 CPU cores)")
    ax.set_ylabel("loss (answer + caption)")
    ax.set_yscale("log")
    ax.legend(frameon=False)
    ax.set_title("videoxl synth model: training curve", fontsize=10)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from ..model import VideoXL2, preset
    from .data import SyntheticData, VideoQAFile
    from .recipe import RECIPES
    from .trainer import Trainer

    parser = argparse.ArgumentParser(prog="python -m videoxl.train", description=__doc__)
    parser.add_argument("--recipe", default="synth", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds a run)")
    parser.add_argument("--data", type=Path, help="JSONL of {video, question, answer} (real data); default synthetic")
    parser.add_argument("--init", help="start from this checkpoint instead of random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--export", type=Path, help="also copy the final model here (e.g. videoxl/assets/synth)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = RECIPES[args.recipe]
    torch.manual_seed(recipe.seed)
    if args.init:
        model = VideoXL2.from_pretrained(args.init, dtype=torch.float32, device=args.device)
    else:
        tokenizer = synth_tokenizer() if recipe.preset == "synth" else None
        if tokenizer is None:
            print("this recipe needs --init (a checkpoint with its tokenizer)", file=sys.stderr)
            return 2
        model = VideoXL2(preset(recipe.preset), tokenizer).to(args.device)
    data = VideoQAFile(args.data) if args.data else SyntheticData(seed=recipe.seed)
    trainer = Trainer(model, recipe, data, args.out, save_every=args.save_every, progress=not args.no_progress)
    trainer.run()
    model.save_pretrained(args.out / "model")
    plot_curve(args.out / "log.jsonl", args.out / "curve.png")
    if args.export:
        model.save_pretrained(args.export)
        import shutil

        shutil.copy(args.out / "curve.png", args.export / "curve.png")
        shutil.copy(args.out / "log.jsonl", args.export / "training_log.jsonl")
    print(f"trained {recipe.name} in {trainer.elapsed / 60:.1f} min -> {args.out / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
