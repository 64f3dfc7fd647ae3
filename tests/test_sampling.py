"""The reference frame-sampling rule against hand-computed indices and timestamps."""

import pytest

from videoxl.video.sampling import plan_frames, sample_indices


def cfr(n: int, fps: float) -> list[float]:
    return [i / fps for i in range(n)]


def test_short_video_is_raised_to_max_fps():
    # 10 s at 30 fps: 1 fps gives 10 frames; 64 // 10 = 6, capped at 4 fps -> step round(30 / 4) = round(7.5) = 8
    assert sample_indices(300, 30.0, fps=1, max_fps=4, max_frames=64) == list(range(0, 300, 8))
    plan = plan_frames(cfr(300, 30.0), fps=1, max_fps=4, max_frames=64)
    assert len(plan.indices) == 40  # 38 frames padded to a multiple of 4 with the last one
    assert plan.indices[-3:] == [296, 296, 296]
    # group g starts at frame 32 g: 0 s, 1.0667 s, 2.1333 s, 3.2 s, ...
    assert plan.group_times[:4] == [0.0, 1.1, 2.1, 3.2]
    assert plan.groups == 10


def test_budget_between_one_and_max_fps():
    # 100 s at 25 fps, budget 250: 1 fps gives 100 frames; 250 // 100 = 2 fps -> step round(25 / 2) = 12
    assert sample_indices(2500, 25.0, fps=1, max_fps=4, max_frames=250) == list(range(0, 2500, 12))


def test_long_video_is_spread_uniformly():
    # one hour at 25 fps, budget 256: 3600 1-fps frames > 256, 256 // 3600 = 0 -> linspace over all frames
    idx = sample_indices(90000, 25.0, fps=1, max_fps=4, max_frames=256)
    assert len(idx) == 256 and idx[0] == 0 and idx[-1] == 89999
    assert idx[1] == 352 and idx[128] == 45175  # int(89999 * k / 255) = int(45175.97)
    plan = plan_frames(cfr(90000, 25.0), max_frames=256)
    assert plan.group_times[1] == round(1411 / 25, 1) == 56.4  # group 1 starts at idx[4] = 1411


def test_without_max_fps_stays_at_base_rate():
    assert sample_indices(240, 24.0, fps=1, max_fps=None, max_frames=512) == [0, 24, 48, 72, 96, 120, 144, 168, 192, 216]
    assert sample_indices(240, 24.0, fps=2, max_fps=None, max_frames=512) == list(range(0, 240, 12))


def test_tiny_video_is_padded_to_one_group():
    plan = plan_frames(cfr(3, 30.0), max_frames=512)
    # 1 fps step 30 -> [0]; 512 // 1 = 512 -> min 4 -> step round(7.5) = 8 -> [0]; padded to 4
    assert plan.indices == [0, 0, 0, 0]
    assert plan.group_times == [0.0]


def test_variable_frame_rate_uses_presentation_times():
    # 9 frames shown at irregular times; average rate (9 - 1) / 4 s = 2 fps -> 1 fps step 2
    times = [0.0, 0.1, 0.5, 1.3, 2.0, 2.2, 2.9, 3.4, 4.0]
    plan = plan_frames(times, fps=1, max_fps=None, max_frames=512)
    assert plan.indices == [0, 2, 4, 6, 8, 8, 8, 8]
    assert plan.group_times == [0.0, 4.0]
    assert plan.frame_times[:4] == [0.0, 0.5, 2.0, 2.9]


def test_invalid_budgets():
    with pytest.raises(ValueError, match="max_frames"):
        sample_indices(100, 30.0, max_frames=0)
    with pytest.raises(ValueError, match="fps"):
        sample_indices(100, 30.0, fps=0)
