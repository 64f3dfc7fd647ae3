"""Training recipes: stages that say which parts train, on what data, for how long, at what learning rate."""

from __future__ import annotations

from dataclasses import dataclass, field

PARTS = ("vision", "dts", "projector", "llm")


@dataclass(frozen=True)
class Stage:
    """One training stage. ``trainable`` names the parts that learn; the others are frozen."""

    name: str
    trainable: tuple[str, ...]
    steps: int
    lr: float
    batch: int = 8  # samples per optimizer step (gradient accumulation over single samples)
    warmup: float = 0.03  # fraction of steps
    weight_decay: float = 0.0
    min_groups: int = 4  # clip length range, in 4-frame groups
    max_groups: int = 16
    families: dict = field(default_factory=dict)  # synthetic question-family weights (empty: uniform)
    chunk: int = 4
    windows: tuple[int, ...] = (3,)  # each sample draws its chunk window from these
    random_positions: float = 0.0  # share of samples trained with randomly spaced (sorted) position ids
    caption_weight: float = 0.0  # weight of the dense caption loss on visual tokens (synthetic data only)

    def __post_init__(self):
        unknown = set(self.trainable) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; parts are {', '.join(PARTS)}")
        if self.steps < 1 or self.batch < 1 or self.lr <= 0:
            raise ValueError("a stage needs steps >= 1, batch >= 1 and lr > 0")
        if not 1 <= self.min_groups <= self.max_groups:
            raise ValueError(f"need 1 <= min_groups <= max_groups, got {self.min_groups}, {self.max_groups}")


@dataclass(frozen=True)
class Recipe:
    """A model preset and the stages that train it."""

    name: str
    preset: str
    stages: tuple[Stage, ...]
    seed: int = 0
    notes: str = ""


ALL = PARTS

# The default model: a Video-XL-2-family model trained from scratch on the synthetic world, on 2 CPU cores in
# under an hour, always with the chunk attention pattern. "see" learns to see on short clips, with a dense caption
# loss (each visual token predicts what its group shows) so the vision side learns from every group, not only from
# the rare answer tokens; "attend" learns every question family on longer clips and several chunk windows; "long"
# stretches to 64 groups with randomly spaced position ids, so positions of hour-long videos are not new to it.
SYNTH = Recipe(
    name="synth",
    preset="synth",
    seed=0,
    stages=(
        Stage("see", trainable=ALL, steps=600, lr=1e-3, batch=8, min_groups=2, max_groups=6,
              families={"needle": 3, "detail": 2, "count": 1, "grounding": 1, "order": 1}, caption_weight=1.0),
        Stage("attend", trainable=ALL, steps=600, lr=1e-3, batch=8, min_groups=4, max_groups=32,
              families={"needle": 3, "detail": 2, "count": 1, "grounding": 2, "order": 1},
              windows=(1, 2, 3), caption_weight=0.5),
        Stage("long", trainable=ALL, steps=250, lr=5e-4, batch=8, min_groups=16, max_groups=64,
              families={"needle": 3, "detail": 2, "count": 1, "grounding": 2, "order": 1},
              windows=(0, 1, 2, 3), random_positions=0.5, caption_weight=0.3),
    ),
    notes="python -m videoxl.train --recipe synth --out runs/synth --export videoxl/assets/synth",
)

# The published four-stage recipe (VectorSpaceLab/Video-XL ``Video-XL-2/train/scripts/finetune_stage{3,4}.sh``), for the official sizes on GPUs with external data (a JSONL of
# video/question/answer). Stage 1's DTS reconstruction objective is not released; start from its weights instead.
PUBLISHED = Recipe(
    name="video-xl-2",
    preset="video-xl-2",
    stages=(
        Stage("projector", trainable=("projector",), steps=558_000 // 16, lr=1e-3, batch=16, warmup=0.03),
        Stage("stage3", trainable=ALL, steps=8000, lr=1e-5, batch=256, min_groups=1, max_groups=4),
        Stage("stage4", trainable=ALL, steps=8000, lr=1e-5, batch=256, min_groups=1, max_groups=38),
    ),
    notes="stage 1 (DTS reconstruction) is unreleased: initialise DTS from BAAI/Stage1_and_Stage2_Weights dts.pth",
)

RECIPES = {r.name: r for r in (SYNTH, PUBLISHED)}
