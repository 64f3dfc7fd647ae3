"""The training loop: stages, frozen parts, gradient accumulation, checkpoints, resume, progress, seeds.

State lives in ``out/state`` (weights, optimizer, counters), replaced atomically every ``save_every`` steps, so a
run killed at any moment resumes from its last save with the same data order (samples are a pure function of
their index). ``out/log.jsonl`` holds the curve; ``out/model`` the final checkpoint in the official layout.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from ..model.videoxl2 import VideoXL2
from .objective import answer_loss
from .recipe import Recipe, Stage


def part_modules(model: VideoXL2) -> dict[str, torch.nn.Module]:
    return {"vision": model.visual.vision_tower, "dts": model.visual.sae, "projector": model.visual.mm_projector,
            "llm": model.llm}


def set_trainable(model: VideoXL2, parts: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Freeze every part not named; returns the parameters that train."""
    params = []
    for name, module in part_modules(model).items():
        for p in module.parameters():
            p.requires_grad_(name in parts)
            if name in parts:
                params.append(p)
    return params


def lr_at(stage: Stage, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    warm = max(1, int(stage.warmup * stage.steps))
    if step < warm:
        return stage.lr * (step + 1) / warm
    progress = (step - warm) / max(1, stage.steps - warm)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    """Runs a :class:`Recipe` on a model and a data source, resumable from ``out``."""

    def __init__(self, model: VideoXL2, recipe: Recipe, data, out: str | Path, save_every: int = 50,
                 progress: bool = True, on_log: Callable[[dict], None] | None = None):
        self.model, self.recipe, self.data = model, recipe, data
        self.out = Path(out)
        self.save_every, self.progress, self.on_log = save_every, progress, on_log
        self.stage_index, self.step, self.elapsed = 0, 0, 0.0
        self.optimizer: torch.optim.Optimizer | None = None

    # -- state -------------------------------------------------------------------------------------------
    def _new_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        params = set_trainable(self.model, stage.trainable)
        return torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.95), weight_decay=stage.weight_decay)

    def save(self) -> None:
        state = self.out / "state"
        tmp = self.out / "state.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "trainer.json").write_text(json.dumps(
            {"recipe": self.recipe.name, "stage": self.stage_index, "step": self.step, "elapsed": self.elapsed}))
        old = self.out / "state.old"
        if state.exists():
            state.rename(old)
        tmp.rename(state)
        shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> bool:
        """Load ``out/state`` if a previous run left one; True if it did."""
        state = self.out / "state"
        if not (state / "trainer.json").is_file():
            return False
        meta = json.loads((state / "trainer.json").read_text())
        if meta["recipe"] != self.recipe.name:
            raise ValueError(f"{state} belongs to recipe {meta['recipe']!r}, not {self.recipe.name!r}")
        self.model.load_state_dict(load_file(str(state / "model.safetensors"), device=str(self.model.device)))
        self.stage_index, self.step, self.elapsed = meta["stage"], meta["step"], meta["elapsed"]
        if self.stage_index < len(self.recipe.stages):
            self.optimizer = self._new_optimizer(self.recipe.stages[self.stage_index])
            self.optimizer.load_state_dict(torch.load(state / "optimizer.pt", map_location=self.model.device))
        self._trim_log()
        return True

    def _trim_log(self) -> None:
        """Drop the curve's records of steps after the last save: the resumed run logs them again."""
        log = self.out / "log.jsonl"
        if not log.is_file():
            return
        order = {stage.name: i for i, stage in enumerate(self.recipe.stages)}
        saved = (self.stage_index, self.step)
        kept = []
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
                done = (order[record["stage"]], record["step"])
            except (json.JSONDecodeError, KeyError):
                break  # a line cut short by the interruption, and everything after it
            if done > saved:
                break
            kept.append(line)
        tmp = log.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(log)

    # -- the loop --------------------------------------------------------------------------------------------
    # long: the training loop reads top to bottom: stages, steps, evaluation, checkpoints
    def run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.resume()
        device = self.model.device
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
        while self.stage_index < len(self.recipe.stages):
            stage = self.recipe.stages[self.stage_index]
            if self.optimizer is None:
                self.optimizer = self._new_optimizer(stage)
            self.model.train()
            bar = None
            if self.progress:
                from tqdm import tqdm

                bar = tqdm(total=stage.steps, initial=self.step, desc=f"stage {stage.name}", unit="step")
            smooth = None
            while self.step < stage.steps:
                started = time.perf_counter()
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(stage, self.step)
                total, tokens = 0.0, 0
                for micro in range(stage.batch):
                    index = self.step * stage.batch + micro
                    sample = self.data.sample(stage, self.stage_index, index)
                    rng = random.Random(f"{self.recipe.seed}/{self.stage_index}/{index}/pattern")
                    window = rng.choice(stage.windows)
                    positions = rng.random() < stage.random_positions
                    with autocast if autocast is not None else contextlib.nullcontext():
                        loss, n = answer_loss(self.model, sample, stage.chunk, window, rng, positions,
                                              stage.caption_weight)
                    (loss / stage.batch).backward()
                    total += float(loss.detach()) / stage.batch
                    tokens += n
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                seconds = time.perf_counter() - started
                self.elapsed += seconds
                smooth = total if smooth is None else 0.9 * smooth + 0.1 * total
                record = {"stage": stage.name, "step": self.step, "loss": total, "lr": lr_at(stage, self.step - 1),
                          "grad_norm": float(grad_norm), "samples_per_s": stage.batch / seconds,
                          "tokens_per_s": tokens / seconds, "elapsed_s": self.elapsed}
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                if self.on_log:
                    self.on_log(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{smooth:.3f}", samples_s=f"{record['samples_per_s']:.1f}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                    bar.update(1)
                if self.step % self.save_every == 0 and self.step < stage.steps:
                    self.save()
            if bar is not None:
                bar.close()
            # the stage is done: the next one starts with a fresh optimizer over its own trainable parts
            self.stage_index += 1
            self.step = 0
            if self.stage_index < len(self.recipe.stages):
                self.optimizer = self._new_optimizer(self.recipe.stages[self.stage_index])
            self.save()
        self.model.eval()
