"""Haystacks around a needle. ``plain`` is what :func:`~videoxl.synth.questions.make_qa` draws: scene cuts, moving
shapes and star distractors, so the needle is the only large centred icon and a frame's palette alone finds it.
``lookalike`` adds glyphs drawn exactly like the object icons (see :data:`~videoxl.synth.world.GLYPHS`) in every free
stretch, with the needle's placement and timing, so that frames with and without the needle look alike."""

from __future__ import annotations

import random

from .world import GLYPHS, OBJECTS, Event, Script

HAYSTACKS = ("plain", "lookalike")


def fill_lookalikes(rng: random.Random, script: Script, hold: tuple[int, int] = (4, 8),
                    gap: tuple[int, int] = (4, 8), scale: tuple[float, float] = (0.9, 1.1)) -> Script:
    """``script`` with look-alike glyphs added, one after another from start to end: each centred, shown for ``hold``
    frames (the needle's 1-2 s at 4 fps), in the colour of a random object (the needle's own colour included), its
    radius ``scale`` times an object's (so that glyph areas spread over the objects' 5-22% of the frame instead of
    taking ten fixed values), and ``gap`` frames after the previous glyph or event. ``gap[0]`` is also the margin
    kept around every event already there, as ``make_qa`` keeps it around a needle, so a glyph never shares a frame
    with the needle or a star."""
    busy = [(e.start, e.end) for e in script.events]
    margin = gap[0]
    glyphs = []
    start = rng.randint(0, gap[1])
    while True:
        end = start + rng.randint(*hold)
        if end > script.frames:
            break
        clash = [b for a, b in busy if start < b + margin and a < end + margin]
        if clash:
            start = max(clash) + rng.randint(*gap)
            continue
        glyphs.append(Event("glyph", start, end, word=rng.choice(GLYPHS), colour=rng.choice(list(OBJECTS)),
                            scale=round(rng.uniform(*scale), 3)))
        start = end + rng.randint(*gap)
    return script.with_events(*glyphs)
