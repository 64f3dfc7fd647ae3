"""The demo video: two minutes of the synthetic world with an object, three stars and scene cuts, generated
deterministically on first use."""

from __future__ import annotations

import random
from pathlib import Path

from ..cache import cache_dir
from .questions import QA
from .video import write
from .world import Event, Script, make_scenes

FPS = 4.0
FRAMES = 480  # 2 minutes


def demo_script() -> tuple[Script, list[QA]]:
    rng = random.Random("videoxl-demo")
    script = Script(FRAMES, FPS, 64, tuple(make_scenes(rng, FRAMES, FPS)))
    word = Event("object", 337, 343, word="moon")  # 84.25 s: in the group that starts at 84.0 s
    stars = [Event("star", f, f + 3, x=x, y=y) for f, x, y in ((61, 0.3, 0.4), (202, 0.7, 0.6), (409, 0.5, 0.3))]
    script = script.with_events(word, *stars)
    questions = [QA("needle", "What object appears in the video?", "moon"),
                 QA("grounding", "When does the moon appear?", "84.0s"),
                 QA("count", "How many times does a star appear?", "3")]
    return script, questions


def demo_video(path: str | Path | None = None) -> Path:
    """The demo video's path, writing it first if needed (to ``path`` or the cache folder).

    A file already there is used only if it is the whole demo (every frame present); anything else, such as a copy
    cut short, is written again.
    """
    in_cache = path is None
    path = Path(path) if path is not None else cache_dir() / "demo.mp4"
    if not _is_whole_demo(path):
        try:
            write(demo_script()[0], path)
        except OSError as e:
            if not in_cache:
                raise
            from ..errors import InputError

            raise InputError(f"cannot write the demo video in the cache folder {path.parent} "
                             f"({e.strerror or e}); set VIDEOXL_CACHE to a writable folder") from None
    return path


def _is_whole_demo(path: Path) -> bool:
    from ..errors import VideoError
    from ..video import probe

    if not path.is_file():
        return False
    try:
        return probe(path).frames == FRAMES
    except VideoError:
        return False
