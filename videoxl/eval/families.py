"""Accuracy per question family on held-out synthetic clips (seeds disjoint from training)."""

from __future__ import annotations

import random

from ..decoding import Generation, Selection
from ..engine.prefill import PrefillConfig
from ..model.videoxl2 import VideoXL2
from ..pipeline import ingest
from ..synth import FAMILIES, is_correct, make_qa, render


def family_accuracy(model: VideoXL2, cases: int = 20, groups: int = 16, seed: int = 0,
                    prefill_config: PrefillConfig = PrefillConfig(),
                    selection: Selection = Selection(dense=True),
                    generation: Generation = Generation(max_new_tokens=8)) -> dict[str, float]:
    """Percent correct per family over ``cases`` clips of ``groups`` 4-frame groups each (4 fps), decoded dense
    unless ``selection`` says otherwise."""
    scores = {}
    for family in FAMILIES:
        right = 0
        for i in range(cases):
            rng = random.Random(f"eval/{seed}/{family}/{i}")
            script, qa = make_qa(rng, groups * 4, family=family)
            frames = [render(script, k) for k in range(script.frames)]
            session = ingest(model, frames, frame_times=[k / script.fps for k in range(script.frames)],
                                   prefill_config=prefill_config)
            right += is_correct(qa, session.ask(qa.question, selection, generation).text)
        scores[family] = 100.0 * right / cases
    return scores
