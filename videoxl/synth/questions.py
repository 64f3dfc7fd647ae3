"""Question-answer pairs about synthetic videos, in the families long-video benchmarks use.

* ``needle``: an object (or a word card) is shown once; "What object appears in the video?"
* ``grounding``: "When does the moon appear?" -> the timestamp of its group, e.g. "12.0s"
* ``order``: two objects (or words); "Which appears first, the moon or the heart?"
* ``count``: "How many times does a star appear?"
* ``detail``: "What colour is the shape at 12.0s?" / "What shape is shown at 12.0s?"

Each family comes open-ended or multiple-choice ("(A) ... (D) ...", answered with the letter). Timestamps are the
group times the model sees (``Time {t}s:``): the first frame of each 4-frame group, rounded to 0.1 s.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from .world import COLOURS, OBJECTS, SHAPES, WORDS, Event, Script, make_scenes

FAMILIES = ("needle", "grounding", "order", "count", "detail")
GROUP = 4
LETTERS = "ABCD"


@dataclass(frozen=True)
class QA:
    """A question about a video, its answer, and (for multiple choice) the options."""

    family: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, hash=False, compare=False)


def group_time(frame: int, fps: float) -> float:
    """Timestamp of the group holding ``frame`` (videos sampled at their native rate, groups of 4 frames)."""
    return round((frame // GROUP) * GROUP / fps, 1)


def _word_event(rng: random.Random, word: str, start: int, hold: int | None = None, kind: str = "word") -> Event:
    return Event(kind, start, start + (hold or rng.randint(4, 8)), word=word)


def _slot(rng: random.Random, frames: int, taken: list[tuple[int, int]], length: int = 8,
          lo: float = 0.0, hi: float = 1.0) -> int:
    """A start frame in [lo, hi) of the video whose [start - 4, start + length + 4) avoids the taken slots."""
    first = int(lo * max(0, frames - length))
    last = max(first, int(hi * max(0, frames - length)))
    for _ in range(200):
        start = rng.randint(first, last)
        if all(start + length + 4 <= a or start >= b + 4 for a, b in taken):
            taken.append((start, start + length))
            return start
    raise ValueError(f"no free slot for an event in a {frames}-frame video")


def _multiple_choice(rng: random.Random, question: str, answer: str, pool: tuple[str, ...]) -> tuple[str, str, tuple]:
    options = [answer] + rng.sample([p for p in pool if p != answer], 3)
    rng.shuffle(options)
    listed = " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{question} {listed}", LETTERS[options.index(answer)], tuple(options)


# long: one short branch per question family; apart they would scatter the families
def make_qa(rng: random.Random, frames: int, fps: float = 4.0, size: int = 64, family: str | None = None,
            multiple_choice: bool | None = None, depth: float | None = None,
            hold: int | None = None, needle: str = "object") -> tuple[Script, QA]:
    """A random video of ``frames`` frames and a question about it (``family`` random when None). ``depth`` places
    a needle at that fraction of the video; ``hold`` shows it for that many frames (default 4 to 8); ``needle``
    says whether needles (and the things grounded or ordered) are objects or word cards."""
    if needle not in ("object", "word"):
        raise ValueError(f"needle must be 'object' or 'word', got {needle!r}")
    names = tuple(OBJECTS) if needle == "object" else WORDS
    family = family or rng.choice(FAMILIES)
    if family not in FAMILIES:
        raise ValueError(f"unknown question family {family!r}; choose one of {', '.join(FAMILIES)}")
    if frames < 8:
        raise ValueError(f"videos need at least 8 frames, got {frames}")
    if family == "order" and frames < 40:  # two separated word cards do not fit
        family = "needle"
    mc = rng.random() < 0.3 if multiple_choice is None else multiple_choice
    script = Script(frames, fps, size, tuple(make_scenes(rng, frames, fps)))
    taken: list[tuple[int, int]] = []
    meta: dict = {}

    thing = (lambda n: f"the {n}") if needle == "object" else (lambda n: f"the word {n}")
    if family in ("needle", "grounding"):
        name = rng.choice(names)
        lo, hi = (depth, depth) if depth is not None else (0.0, 1.0)
        length = min(frames, hold or 8)
        event = _word_event(rng, name, _slot(rng, frames, taken, length, lo, hi), length if hold else None, needle)
        script = script.with_events(event)
        meta = {"word": name, "frame": event.start, "time": group_time(event.start, fps)}
        if family == "needle":
            question, answer, pool = f"What {needle} appears in the video?", name, names
        else:
            question, answer, pool = f"When does {thing(name)} appear?", f"{meta['time']}s", ()
            mc = False
    elif family == "order":
        a, b = rng.sample(names, 2)
        ea = _word_event(rng, a, _slot(rng, frames, taken), kind=needle)
        eb = _word_event(rng, b, _slot(rng, frames, taken), kind=needle)
        script = script.with_events(ea, eb)
        first = a if ea.start < eb.start else b
        x, y = (a, b) if rng.random() < 0.5 else (b, a)
        question, answer, pool = f"Which appears first, {thing(x)} or {thing(y)}?", first, ()
        mc = False
        meta = {"first": first, "frames": (ea.start, eb.start)}
    elif family == "count":
        k = rng.randint(1, max(1, min(5, frames // 12)))
        stars = []
        for _ in range(k):
            start = _slot(rng, frames, taken, 4)
            stars.append(Event("star", start, start + rng.randint(2, 4), x=rng.uniform(0.25, 0.75),
                               y=rng.uniform(0.25, 0.75)))
        script = script.with_events(*stars)
        question, answer, pool = "How many times does a star appear?", str(k), tuple(str(i) for i in range(1, 7))
        meta = {"count": k}
    else:  # detail
        groups = [g for g in range(frames // GROUP)
                  if script.scene_at(g * GROUP) is script.scene_at(min(frames, g * GROUP + GROUP) - 1)]
        g = rng.choice(groups or [0])
        scene = script.scene_at(g * GROUP)
        t = group_time(g * GROUP, fps)
        if rng.random() < 0.6:
            question, answer, pool = f"What colour is the shape at {t}s?", scene.colour, tuple(COLOURS)
        else:
            question, answer, pool = f"What shape is shown at {t}s?", scene.shape, SHAPES + ("star",)
        meta = {"time": t}
    # distractors from other families keep the world mixed: stars around words, a word card among stars
    if rng.random() < 0.3:
        try:
            if family == "count":
                if frames >= 48:
                    word = rng.choice(WORDS)
                    script = script.with_events(_word_event(rng, word, _slot(rng, frames, taken)))
            else:
                for _ in range(rng.randint(1, 2)):
                    start = _slot(rng, frames, taken, 4)
                    script = script.with_events(Event("star", start, start + rng.randint(2, 4),
                                                      x=rng.uniform(0.25, 0.75), y=rng.uniform(0.25, 0.75)))
        except ValueError:
            pass  # no room left in a short clip
    choices: tuple[str, ...] = ()
    if mc and pool:
        question, answer, choices = _multiple_choice(rng, question, answer, pool)
    return script, QA(family, question, answer, choices, meta)


def _normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", " ", text.lower()).strip()


def is_correct(qa: QA, prediction: str) -> bool:
    """Score a model's answer: grounding within one group (1 s at 4 fps), letters for choices, else the word."""
    pred = _normalize(prediction)
    if qa.family == "grounding":
        m = re.search(r"\d+(\.\d+)?", pred)
        return m is not None and abs(float(m.group()) - float(qa.answer.rstrip("s"))) <= 1.0
    words = pred.split()
    if not words:
        return False
    if qa.choices:
        letter = words[0].strip("()").upper()
        return letter == qa.answer or words[0] == qa.choices[LETTERS.index(qa.answer)]
    return words[0] == _normalize(qa.answer)


def tokenizer_corpus() -> list[str]:
    """Every kind of text the synthetic world produces, for training its tokenizer."""
    from .world import BACKGROUNDS

    texts = ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
             "<|im_end|>\n<|im_start|>assistant\n"]
    for t in range(0, 4000, 7):
        texts.append(f"Time {t / 4:.1f}s: Time {t}.0s:")
    names = list(WORDS) + list(OBJECTS) + list(COLOURS) + list(SHAPES) + list(BACKGROUNDS) + ["star", "word"]
    for w in WORDS + tuple(OBJECTS):
        for thing in (f"the word {w}", f"the {w}"):
            texts += [f"\nWhen does {thing} appear?<|im_end|>\n<|im_start|>assistant\n12.5s<|im_end|>",
                      f"\nWhich appears first, {thing} or the {WORDS[0]}?<|im_end|>\n<|im_start|>assistant\n{w}"]
        texts += [f"\nWhat word appears in the video?<|im_end|>\n<|im_start|>assistant\n{w}<|im_end|>",
                  f"\nWhat object appears in the video?<|im_end|>\n<|im_start|>assistant\n{w}<|im_end|>"]
    for c in names:
        texts += [f"\nWhat colour is the shape at 3.0s? (A) {c} (B) {c} (C) {c} (D) {c}<|im_end|>",
                  f"\nWhat shape is shown at 7.5s?<|im_end|>\n<|im_start|>assistant\n{c}<|im_end|>"]
    texts += ["\nHow many times does a star appear?<|im_end|>\n<|im_start|>assistant\n3<|im_end|>",
              "Which word appears in the video? (A) (B) (C) (D) A B C D 0 1 2 3 4 5 6 7 8 9"]
    return texts
