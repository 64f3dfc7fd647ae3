"""The synthetic world: scenes of coloured shapes moving over backgrounds, scene cuts, and events (a word card,
a flashing star, an object icon, a look-alike glyph) at known frames. A :class:`Script` describes a whole video;
:func:`render` draws any frame of it.

Everything is a pure function of a seed, so a video, its questions and its answers are reproducible anywhere.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (60, 100, 235), "yellow": (240, 210, 40),
    "purple": (160, 70, 210), "orange": (250, 140, 30), "white": (235, 235, 235), "pink": (250, 120, 180),
}
BACKGROUNDS = {
    "black": (12, 12, 12), "navy": (18, 28, 72), "maroon": (74, 18, 30), "forest": (18, 62, 30),
    "grey": (92, 92, 92), "teal": (16, 82, 92),
}
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "dog", "sun", "box", "cup", "hat", "key", "map", "pen", "bus", "egg", "fox", "owl", "bee", "ant",
         "cow", "pig", "car", "bat", "jam", "ice", "ink", "oak", "zip")
STAR = (250, 225, 60)
# objects shown as needles: each has its own outline and colour
OBJECTS = {"heart": (230, 30, 60), "moon": (245, 240, 170), "arrow": (40, 220, 230), "cross": (150, 240, 40),
           "diamond": (230, 40, 230), "ring": (250, 150, 20), "bolt": (255, 255, 255), "house": (150, 90, 40)}
# look-alikes of the objects: drawn like them (centred, same size, fill, outline and cut-outs, in an object's
# colour) but none of them an object, so a haystack of glyphs hides a needle from low-level statistics
GLYPHS = ("hexagon", "octagon", "tick", "tee", "ell", "hourglass", "semicircle", "frame", "parallelogram", "pie")


@dataclass(frozen=True)
class Scene:
    """A stretch of frames [start, end) with one background and one moving shape."""

    start: int
    end: int
    background: str
    shape: str
    colour: str
    x: float  # centre at the scene's first frame, in units of the frame size
    y: float
    vx: float  # motion per frame, in units of the frame size (bounces off the borders)
    vy: float
    radius: float
    digit: int  # a small digit drawn in a corner (a distractor)


@dataclass(frozen=True)
class Event:
    """Something shown over frames [start, end): a word card ("word"), an object icon ("object"), a look-alike glyph
    ("glyph") or a star ("star") at (x, y)."""

    kind: str  # "word", "object" (word names the object), "glyph" (word names the glyph) or "star"
    start: int
    end: int
    word: str = ""
    x: float = 0.5
    y: float = 0.5
    colour: str = ""  # a glyph's: the object whose colour it wears
    scale: float = 1.0  # a glyph's: its radius over an object's


@dataclass(frozen=True)
class Script:
    """A whole synthetic video."""

    frames: int
    fps: float
    size: int
    scenes: tuple[Scene, ...]
    events: tuple[Event, ...] = field(default_factory=tuple)

    def time(self, frame: int) -> float:
        return frame / self.fps

    def scene_at(self, frame: int) -> Scene:
        for scene in self.scenes:
            if scene.start <= frame < scene.end:
                return scene
        return self.scenes[-1]

    def with_events(self, *events: Event) -> "Script":
        return Script(self.frames, self.fps, self.size, self.scenes,
                      tuple(sorted(self.events + events, key=lambda e: e.start)))


def make_scenes(rng: random.Random, frames: int, fps: float, min_s: float = 3.0, max_s: float = 12.0) -> list[Scene]:
    """Scene cuts every min_s..max_s seconds; consecutive scenes differ in background and shape colour."""
    scenes, start, prev = [], 0, None
    while start < frames:
        length = max(1, round(rng.uniform(min_s, max_s) * fps))
        end = min(frames, start + length)
        while True:
            background, colour = rng.choice(list(BACKGROUNDS)), rng.choice(list(COLOURS))
            if prev is None or (background != prev.background and colour != prev.colour):
                break
        speed = rng.uniform(0.004, 0.03)
        angle = rng.uniform(0, 2 * math.pi)
        prev = Scene(start, end, background, rng.choice(SHAPES), colour, rng.uniform(0.25, 0.75),
                     rng.uniform(0.25, 0.75), speed * math.cos(angle), speed * math.sin(angle),
                     rng.uniform(0.14, 0.22), rng.randrange(10))
        scenes.append(prev)
        start = end
    return scenes


def _bounce(p: float, v: float, t: int, r: float) -> float:
    lo, hi = r, 1 - r
    span = hi - lo
    q = (p - lo + v * t) % (2 * span)
    return lo + (q if q <= span else 2 * span - q)


_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont:
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)], fill=fill)


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def _draw_object(draw: ImageDraw.ImageDraw, name: str, s: float) -> None:
    """A large object in the middle of the frame, outlined in black."""
    c, r = s / 2, s * 0.3
    fill, line = OBJECTS[name], (0, 0, 0)
    w = max(1, int(s / 32))
    if name == "heart":
        draw.ellipse([c - r, c - r * 0.8, c, c + r * 0.1], fill=fill, outline=line, width=w)
        draw.ellipse([c, c - r * 0.8, c + r, c + r * 0.1], fill=fill, outline=line, width=w)
        draw.polygon([(c - r * 0.97, c - r * 0.2), (c + r * 0.97, c - r * 0.2), (c, c + r)], fill=fill)
    elif name == "moon":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=fill, outline=line, width=w)
        draw.ellipse([c - r * 0.35, c - r * 1.05, c + r * 1.25, c + r * 0.75], fill=(0, 0, 0))
    elif name == "arrow":
        draw.polygon([(c - r, c - r * 0.3), (c, c - r * 0.3), (c, c - r), (c + r, c), (c, c + r), (c, c + r * 0.3),
                      (c - r, c + r * 0.3)], fill=fill, outline=line)
    elif name == "cross":
        t = r * 0.35
        draw.polygon([(c - t, c - r), (c + t, c - r), (c + t, c - t), (c + r, c - t), (c + r, c + t), (c + t, c + t),
                      (c + t, c + r), (c - t, c + r), (c - t, c + t), (c - r, c + t), (c - r, c - t), (c - t, c - t)],
                     fill=fill, outline=line)
    elif name == "diamond":
        draw.polygon([(c, c - r), (c + r * 0.7, c), (c, c + r), (c - r * 0.7, c)], fill=fill, outline=line)
    elif name == "ring":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=fill, outline=line, width=w)
        draw.ellipse([c - r * 0.5, c - r * 0.5, c + r * 0.5, c + r * 0.5], fill=(0, 0, 0))
    elif name == "bolt":
        draw.polygon([(c + r * 0.2, c - r), (c - r * 0.6, c + r * 0.1), (c - r * 0.05, c + r * 0.1),
                      (c - r * 0.3, c + r), (c + r * 0.6, c - r * 0.15), (c + r * 0.05, c - r * 0.15)],
                     fill=fill, outline=line)
    else:  # house
        draw.polygon([(c, c - r), (c + r, c - r * 0.1), (c + r * 0.75, c - r * 0.1), (c + r * 0.75, c + r),
                      (c - r * 0.75, c + r), (c - r * 0.75, c - r * 0.1), (c - r, c - r * 0.1)], fill=fill,
                     outline=line)


def _draw_glyph(draw: ImageDraw.ImageDraw, name: str, fill: tuple[int, int, int], s: float,
                scale: float = 1.0) -> None:
    """A look-alike in the middle of the frame: the objects' centre, radius, fill, black outline and black cut-outs
    (polygons outlined 1 px, round shapes ``s / 32``, as in :func:`_draw_object`). At ``scale`` 1 each fills 7-22%
    of the frame (mean 15%), as the objects fill 5-22% (mean 15%)."""
    c, r = s / 2, s * 0.3 * scale
    line, hole = (0, 0, 0), (0, 0, 0)
    w = max(1, int(s / 32))

    def regular(k: int, scale: float, turn: float) -> list[tuple[float, float]]:
        angles = [turn + 2 * math.pi * i / k for i in range(k)]
        return [(c + scale * r * math.cos(a), c + scale * r * math.sin(a)) for a in angles]

    if name == "hexagon":
        draw.polygon(regular(6, 1.0, 0), fill=fill, outline=line)
    elif name == "octagon":
        draw.polygon(regular(8, 0.9, math.pi / 8), fill=fill, outline=line)
    elif name == "tick":
        draw.polygon([(c - r * 0.9, c), (c - r * 0.6, c - r * 0.25), (c - r * 0.25, c + r * 0.3), (c + r * 0.7, c - r),
                      (c + r * 0.95, c - r * 0.75), (c - r * 0.25, c + r * 0.85)], fill=fill, outline=line)
    elif name == "tee":
        t = r * 0.3
        draw.polygon([(c - r, c - r), (c + r, c - r), (c + r, c - r + 2 * t), (c + t, c - r + 2 * t), (c + t, c + r),
                      (c - t, c + r), (c - t, c - r + 2 * t), (c - r, c - r + 2 * t)], fill=fill, outline=line)
    elif name == "ell":
        t = r * 0.65
        draw.polygon([(c - r, c - r), (c - r + t, c - r), (c - r + t, c + r - t), (c + r, c + r - t), (c + r, c + r),
                      (c - r, c + r)], fill=fill, outline=line)
    elif name == "hourglass":
        draw.polygon([(c - r * 0.8, c - r), (c + r * 0.8, c - r), (c + r * 0.12, c), (c + r * 0.8, c + r),
                      (c - r * 0.8, c + r), (c - r * 0.12, c)], fill=fill, outline=line)
    elif name == "semicircle":
        draw.pieslice([c - r, c - r * 0.6, c + r, c + r * 1.4], 180, 360, fill=fill, outline=line, width=w)
    elif name == "frame":
        draw.rectangle([c - r * 0.85, c - r * 0.85, c + r * 0.85, c + r * 0.85], fill=fill, outline=line, width=w)
        draw.rectangle([c - r * 0.4, c - r * 0.4, c + r * 0.4, c + r * 0.4], fill=hole)
    elif name == "parallelogram":
        draw.polygon([(c - r * 0.4, c - r * 0.6), (c + r, c - r * 0.6), (c + r * 0.4, c + r * 0.6),
                      (c - r, c + r * 0.6)], fill=fill, outline=line)
    else:  # pie
        draw.pieslice([c - r * 0.9, c - r * 0.9, c + r * 0.9, c + r * 0.9], 35, 325, fill=fill, outline=line, width=w)


def render(script: Script, frame: int) -> np.ndarray:
    """Frame ``frame`` of the video as an (size, size, 3) uint8 RGB array."""
    s = script.size
    scene = script.scene_at(frame)
    image = Image.new("RGB", (s, s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    t = frame - scene.start
    r = scene.radius * s
    cx = _bounce(scene.x, scene.vx, t, scene.radius) * s
    cy = _bounce(scene.y, scene.vy, t, scene.radius) * s
    _draw_shape(draw, scene.shape, cx, cy, r, COLOURS[scene.colour])
    draw.text((s * 0.04, s * 0.02), str(scene.digit), font=_font(max(6, s // 8)), fill=(200, 200, 200))
    for event in script.events:
        if event.start <= frame < event.end:
            if event.kind == "word":
                m = s * 0.12
                draw.rectangle([m, s * 0.3, s - m, s * 0.7], fill=(250, 250, 250))
                draw.text((s / 2, s / 2), event.word.upper(), font=_font(int(s * 0.3)), fill=(0, 0, 0), anchor="mm")
            elif event.kind == "object":
                _draw_object(draw, event.word, s)
            elif event.kind == "glyph":
                _draw_glyph(draw, event.word, OBJECTS[event.colour], s, event.scale)
            elif event.kind == "star":
                draw.polygon(_star(event.x * s, event.y * s, s * 0.16), fill=STAR)
    return np.asarray(image)
