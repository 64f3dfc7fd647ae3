"""Training: recipes (stages with frozen and trainable parts), data sources, the objective and the loop."""

from .recipe import PUBLISHED, RECIPES, SYNTH, Recipe, Stage
from .trainer import Trainer

__all__ = ["Recipe", "Stage", "SYNTH", "PUBLISHED", "RECIPES", "Trainer"]
