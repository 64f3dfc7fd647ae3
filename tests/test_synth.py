"""The synthetic world: determinism, answers that match the rendered events, real video files."""

import random

import numpy as np
import pytest

from videoxl.synth import FAMILIES, QA, Script, group_time, is_correct, make_qa, render, write
from videoxl.synth.haystack import fill_lookalikes
from videoxl.synth.world import GLYPHS, OBJECTS, WORDS, Event
from videoxl.video import decode_frames, probe


def test_same_seed_same_video_and_question():
    a_script, a_qa = make_qa(random.Random("x"), 120)
    b_script, b_qa = make_qa(random.Random("x"), 120)
    assert a_script == b_script and a_qa == b_qa
    assert all(np.array_equal(render(a_script, i), render(b_script, i)) for i in (0, 37, 119))
    c_script, _ = make_qa(random.Random("y"), 120)
    assert c_script != a_script


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("needle", ["object", "word"])
def test_answers_follow_from_the_script(seed, needle):
    for family in FAMILIES:
        script, qa = make_qa(random.Random(f"{seed}/{family}"), 160, family=family, multiple_choice=False,
                             needle=needle)
        words = [e for e in script.events if e.kind == needle]
        stars = [e for e in script.events if e.kind == "star"]
        if family == "needle":
            assert [w.word for w in words] == [qa.answer]
        elif family == "grounding":
            assert qa.answer == f"{group_time(words[0].start, script.fps)}s"
        elif family == "order":
            assert min(words, key=lambda e: e.start).word == qa.answer
        elif family == "count":
            assert int(qa.answer) == len(stars)
        else:
            t = float(qa.question.split(" at ")[1].rstrip("s?"))
            scene = script.scene_at(round(t * script.fps))
            assert qa.answer in (scene.colour, scene.shape)


def test_word_card_is_visible_where_the_script_says():
    script, qa = make_qa(random.Random(3), 64, family="needle", needle="word")
    event = script.events[0]
    inside, outside = render(script, event.start), render(script, max(0, event.start - 6))
    assert (inside > 240).all(axis=2).mean() > 0.25  # the white card covers the middle of the frame
    assert (outside > 240).all(axis=2).mean() < 0.05


def test_each_object_needle_draws_its_own_icon():
    frames = {}
    for name in OBJECTS:
        script = Script(16, 4.0, 64, make_qa(random.Random(0), 16)[0].scenes)
        script = script.with_events(Event("object", 4, 8, word=name))
        inside, before = render(script, 5).astype(int), render(script, 0).astype(int)
        assert np.abs(inside - before).mean() > 10, name  # the icon changes the frame ...
        assert np.array_equal(render(script, 9), render(Script(16, 4.0, 64, script.scenes), 9))  # ... only while shown
        frames[name] = inside
    names = list(frames)
    for i, a in enumerate(names):  # ... and no two objects look alike
        for b in names[i + 1:]:
            assert np.abs(frames[a] - frames[b]).mean() > 3, (a, b)


def test_multiple_choice_and_scoring():
    script, qa = make_qa(random.Random(5), 100, family="needle", multiple_choice=True)
    assert len(qa.choices) == 4 and qa.answer in "ABCD"
    word = qa.choices["ABCD".index(qa.answer)]
    assert is_correct(qa, qa.answer) and is_correct(qa, f"({qa.answer})") and is_correct(qa, word)
    assert not is_correct(qa, "E") and not is_correct(qa, "")
    grounding = QA("grounding", "When?", "12.0s")
    assert is_correct(grounding, "12.5s") and is_correct(grounding, "At 11.0 seconds")
    assert not is_correct(grounding, "14.0s") and not is_correct(grounding, "never")


def test_written_video_decodes_to_the_rendered_frames(tmp_path):
    script, _ = make_qa(random.Random(9), 48, family="needle")
    path = write(script, tmp_path / "clip.mp4")
    info = probe(path)
    assert info.frames == 48
    assert info.frame_times[:3] == pytest.approx([0, 0.25, 0.5])
    for frame, i in zip(decode_frames(info, [0, 20, 47]), [0, 20, 47]):
        assert np.abs(frame.astype(int) - render(script, i).astype(int)).mean() < 6
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_failed_write_leaves_nothing(tmp_path):
    bad = Script(frames=4, fps=4.0, size=0, scenes=make_qa(random.Random(1), 8)[0].scenes)
    with pytest.raises(Exception):
        write(bad, tmp_path / "bad.mp4")
    assert list(tmp_path.iterdir()) == []


def test_short_and_invalid_requests():
    with pytest.raises(ValueError, match="at least 8 frames"):
        make_qa(random.Random(0), 4)
    with pytest.raises(ValueError, match="unknown question family"):
        make_qa(random.Random(0), 40, family="plot")
    for i in range(50):  # every family fits in a short clip (order falls back to a needle there)
        make_qa(random.Random(i), 8)


def _icon(kind: str, name: str, colour: str = "", scale: float = 1.0) -> np.ndarray:
    scenes = make_qa(random.Random(0), 16)[0].scenes
    event = Event(kind, 4, 8, word=name, colour=colour, scale=scale)
    return render(Script(16, 4.0, 64, scenes).with_events(event), 5).astype(int)


def test_glyphs_are_drawn_like_objects_but_are_none_of_them():
    assert not set(GLYPHS) & set(OBJECTS) and not set(GLYPHS) & set(WORDS)
    for name in OBJECTS:
        icon = _icon("object", name)
        for glyph in GLYPHS:
            for scale in (0.9, 1.0, 1.1):  # even in the object's own colour, at any size, a glyph's shape ...
                drawn = _icon("glyph", glyph, name, scale)
                assert (np.abs(drawn - icon).max(-1) > 30).mean() > 0.05, (glyph, scale, name)  # ... is not its
    palette = np.array(list(OBJECTS.values()))
    for glyph in GLYPHS:
        inside = (np.abs(_icon("glyph", glyph, "heart") - palette[0]).sum(-1) < 10).mean()
        assert 0.05 < inside < 0.25, glyph  # an object's size: bolt 5% of the frame, house 22%


@pytest.mark.parametrize("seed", range(6))
def test_lookalike_haystack_keeps_one_answer_and_the_needles_timing(seed):
    script, qa = make_qa(random.Random(seed), 400, family="needle", multiple_choice=False)
    filled = fill_lookalikes(random.Random(seed), script)
    assert set(script.events) < set(filled.events) and filled.scenes == script.scenes  # only glyphs are added
    assert [e.word for e in filled.events if e.kind == "object"] == [qa.answer]  # still the one object to name
    glyphs = [e for e in filled.events if e.kind == "glyph"]
    assert all(4 <= e.end - e.start <= 8 and e.word in GLYPHS and e.colour in OBJECTS for e in glyphs)
    for i, e in enumerate(filled.events):  # no glyph within 4 frames of another event, as make_qa spaces needles
        for f in filled.events[i + 1:]:
            assert f.start >= e.end + 4 or "glyph" not in (e.kind, f.kind), (e, f)
    covered = sum(e.end - e.start for e in glyphs) / script.frames
    assert 0.35 < covered < 0.6  # a haystack full of them
