"""The reference frame-sampling rule (VectorSpaceLab/Video-XL ``Video-XL-2/eval/lvu/*/lmms_eval/models/videoxl2.py``,
``load_video``) and 4-frame grouping with timestamps.

1 fps base; raised up to ``max_fps`` when ``max_frames`` allows; then ``linspace`` down to ``max_frames``; the steps
are counted in frames at the video's native rate (the container's average rate, as decord's ``get_avg_fps``). The
frame count is padded to a multiple of 4 by repeating the last frame, as the model pads a video
(``llava_arch.py``); the published evaluation harness instead drops the frames past the last multiple of 4 before
the model sees them (``remainder="drop"``). Each group carries the timestamp of its first frame rounded to 0.1 s.
Timestamps come from the frames' presentation times, so variable-frame-rate video gets true times.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .. import defaults
from ..errors import OptionError

FRAMES_PER_GROUP = 4


def check_sampling(fps: float, max_fps: float | None, max_frames: int) -> None:
    """OptionError naming the option unless the sampling options are usable (finite, positive, in range)."""
    if not isinstance(max_frames, numbers.Integral) or not 1 <= max_frames <= defaults.FRAMES_LIMIT:
        raise OptionError(f"max_frames (--max-frames) must be a whole number from 1 to {defaults.FRAMES_LIMIT:,}, "
                          f"got {max_frames!r}")
    if not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
        raise OptionError(f"fps (--fps) must be a finite number > 0, got {fps!r}")
    if max_fps is not None and (not isinstance(max_fps, numbers.Real) or not math.isfinite(max_fps) or max_fps <= 0):
        raise OptionError(f"max_fps (--max-fps) must be a finite number > 0, got {max_fps!r}")


def sample_indices(total_frames: int, native_fps: float, fps: float = defaults.FPS,
                   max_fps: float | None = defaults.MAX_FPS,
                   max_frames: int = defaults.MAX_FRAMES) -> list[int]:
    """Indices (presentation order) of the frames the reference rule keeps."""
    check_sampling(fps, max_fps, max_frames)
    if total_frames <= 0:
        return []
    step = max(1, round(native_fps / fps)) if native_fps > 0 else 1
    indices = list(range(0, total_frames, step))
    if max_fps is not None:
        higher = min(max_frames // len(indices), max_fps)
        if higher > fps:
            indices = list(range(0, total_frames, max(1, round(native_fps / higher))))
    if len(indices) > max_frames:
        indices = np.linspace(0, total_frames - 1, max_frames, dtype=int).tolist()
    return indices


@dataclass(frozen=True)
class SampledFrames:
    """Which frames to decode (padded to whole groups) and the timestamp of each group."""

    indices: list[int]  # presentation-order frame indices, len % 4 == 0 (last frame repeated)
    frame_times: list[float]  # presentation time of each sampled frame, seconds
    group_times: list[float]  # timestamp of each 4-frame group: its first frame's time rounded to 0.1 s

    @property
    def groups(self) -> int:
        return len(self.group_times)


def plan_frames(frame_times: list[float], fps: float = defaults.FPS,
                max_fps: float | None = defaults.MAX_FPS, max_frames: int = defaults.MAX_FRAMES,
                native_fps: float | None = None, remainder: str = "pad") -> SampledFrames:
    """Apply the sampling rule to a video whose frames are shown at ``frame_times`` (seconds, ascending).

    ``native_fps`` is the video's frame rate (:attr:`VideoInfo.native_fps`); None estimates it from the frame
    times. ``remainder`` completes the last group: "pad" repeats the last frame (the model's rule), "drop" leaves
    out the frames past the last multiple of 4 (the published evaluation harness's ``load_video``; a video with
    fewer than 4 sampled frames is still padded to one group, where the published code would fail)."""
    if remainder not in ("pad", "drop"):
        raise ValueError(f"remainder is 'pad' or 'drop', got {remainder!r}")
    n = len(frame_times)
    if native_fps is None or native_fps <= 0:
        duration = frame_times[-1] - frame_times[0] if n > 1 else 0.0
        native_fps = (n - 1) / duration if duration > 0 else 1.0
    indices = sample_indices(n, native_fps, fps, max_fps, max_frames)
    if not indices:
        return SampledFrames([], [], [])
    if remainder == "drop" and len(indices) >= FRAMES_PER_GROUP:
        indices = indices[: len(indices) - len(indices) % FRAMES_PER_GROUP]
    pad = (-len(indices)) % FRAMES_PER_GROUP
    indices = indices + [indices[-1]] * pad
    times = [frame_times[i] for i in indices]
    groups = [round(times[g], 1) for g in range(0, len(indices), FRAMES_PER_GROUP)]
    return SampledFrames(indices, times, groups)
