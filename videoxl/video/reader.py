"""Reading videos with PyAV: a demux-only probe for exact frame times, then decoding of chosen frames.

The probe walks the packets without decoding them, which gives every frame's presentation time (variable frame
rate included) and the keyframes. Decoding then streams the chosen frames in order: it decodes forward while the
next chosen frame is near, and seeks to the last keyframe before it when a keyframe lies in between, so sparse
sampling of long videos does not decode the whole stream and dense sampling does not seek at all. In H.264 the
decoder also skips the frames between samples that no other frame is predicted from (``skip_frame`` NONREF, set per
packet), which changes no returned pixel.
"""

from __future__ import annotations

import bisect
import logging
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from PIL import Image

from ..errors import VideoError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What the probe learned about a video's first video stream."""

    path: str
    pts: list[int]  # presentation timestamps of all frames, ascending, in stream time base
    time_base: float
    keyframes: list[int]  # indices (into pts) of keyframes
    width: int
    height: int
    average_rate: float | None = None  # the container's average frame rate (FFmpeg's avg_frame_rate), if it has one

    @property
    def native_fps(self) -> float:
        """Frames per second, as the published harness reads it (decord's ``get_avg_fps``): the container's average
        rate; where the container has none, the frame count over the span of the frame times."""
        if self.average_rate:
            return self.average_rate
        duration = self.duration
        return (self.frames - 1) / duration if duration > 0 else 1.0

    @property
    def frames(self) -> int:
        return len(self.pts)

    @property
    def frame_times(self) -> list[float]:
        start = self.pts[0]
        return [(p - start) * self.time_base for p in self.pts]

    @property
    def duration(self) -> float:
        return self.frame_times[-1] if self.pts else 0.0


URL_SCHEMES = ("http://", "https://", "ftp://", "rtsp://", "rtmp://", "s3://", "gs://", "data:", "file://")


NOT_VIDEO_FORMATS = {"tty"}

# The largest frame accepted, in pixels (4096 x 4096; 4K UHD is 3840 x 2160). Frames are shrunk to 384 x 384
# for the vision tower anyway, and one RGB frame of 16000 x 16000 alone takes 768 MB: a few hundred kilobytes of
# video or PNG could otherwise take gigabytes of memory.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
MAX_PIXELS = 4096 * 4096


def check_pixels(name: str, width: int, height: int) -> None:
    """VideoError if a ``width`` x ``height`` frame exceeds :data:`MAX_PIXELS`."""
    if width * height > MAX_PIXELS:
        raise VideoError(f"{name}: frames of {width} x {height} pixels are larger than the limit of "
                         f"{MAX_PIXELS:,} pixels per frame (4096 x 4096); scale the video down first")


def check_file(path: str | os.PathLike) -> str:
    """Return ``path`` as a string if it names a readable, non-empty regular file; VideoError naming it if not.

    Runs before any decoding, so bad input is refused at once: URLs (only local files are read), missing paths,
    directories, FIFOs and devices (``/dev/zero`` would never end), empty and unreadable files.
    """
    path = os.fspath(path)
    if path.lower().startswith(URL_SCHEMES):
        raise VideoError(f"{path}: URLs are not read; download the video and pass the local file "
                         "(the server, `videoxl serve`, reads URLs from allowed domains)")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoError(f"{path}: no such file") from None
    except OSError as e:
        raise VideoError(f"{path}: cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoError(f"{path}: is a directory, not a video file")
    if not stat.S_ISREG(info.st_mode):
        raise VideoError(f"{path}: not a regular file (a FIFO, socket or device); pass a video file")
    if info.st_size == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise VideoError(f"{path}: permission denied")
    return path


def _open(path: str):
    path = check_file(path)
    try:
        container = av.open(path)
    except av.FFmpegError as e:
        raise VideoError(f"{path}: not a readable video ({e.__class__.__name__}: {e})") from None
    if container.format.name in NOT_VIDEO_FORMATS:  # FFmpeg renders text files as a video of characters
        container.close()
        raise VideoError(f"{path}: a text file, not a video")
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
        container.close()
        raise VideoError(f"{path}: has no video stream (found: {kinds})")
    return container


def upright(frame: av.VideoFrame) -> np.ndarray:
    """The frame as an H x W x 3 RGB array, turned as its display matrix says (phones store portrait video
    sideways with a rotation tag; ffmpeg's autorotate turns it the same way). Mirroring flags are not applied."""
    image = frame.to_ndarray(format="rgb24")
    turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def probe(path: str | os.PathLike) -> VideoInfo:
    """Demux ``path`` (no decoding) and return its frame times and keyframes; VideoError if unusable."""
    path = os.fspath(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        check_pixels(path, stream.codec_context.width, stream.codec_context.height)  # from the header, at once
        entries = []
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            entries.append((packet.pts, packet.is_keyframe))
        width, height = stream.codec_context.width, stream.codec_context.height
        time_base = float(stream.time_base)
        average_rate = float(stream.average_rate) if stream.average_rate else None
    except av.FFmpegError as e:
        raise VideoError(f"{path}: corrupt or truncated video ({e})") from None
    finally:
        container.close()
    if not entries:
        raise VideoError(f"{path}: the video stream has no frames")
    entries.sort()
    pts = [p for p, _ in entries]
    keyframes = [i for i, (_, key) in enumerate(entries) if key] or [0]
    return VideoInfo(path, pts, time_base, keyframes, width, height, average_rate)


# Decoders whose AVDISCARD_NONREF drops only pictures that no other picture predicts from. H.264 marks them
# itself (``nal_ref_idc`` 0, ITU-T H.264 7.4.1) and FFmpeg's ``h264dec.c`` skips exactly those NAL units. HEVC is
# left out: its "sub-layer non-reference" pictures may still be references for higher temporal sub-layers.
SKIPS_ONLY_UNREFERENCED = {"h264"}


def _discard(packet: av.Packet, wanted: set[int]) -> str:
    """The decoder's ``skip_frame`` for ``packet``: skip it if it is unreferenced (NONREF) unless its frame is
    wanted or unknown (no timestamp, or the empty packet that flushes the decoder)."""
    return "NONREF" if packet.size and packet.pts is not None and packet.pts not in wanted else "DEFAULT"


def _check_indices(indices: list[int], frames: int) -> None:
    if any(b < a for a, b in zip(indices, indices[1:])):
        raise ValueError("frame indices must be non-decreasing")
    if indices and not 0 <= indices[0] <= indices[-1] < frames:
        raise ValueError(f"frame indices must lie in [0, {frames})")


def decode_frames(info: VideoInfo, indices: list[int], *, skip_unused: bool = True) -> Iterator[np.ndarray]:
    """Yield the frames at ``indices`` (non-decreasing, repeats allowed) as H x W x 3 uint8 RGB arrays.

    With ``skip_unused`` (H.264 only) the decoder skips the frames that are neither wanted nor referenced by
    another frame (non-reference B-frames): the wanted frames are decoded from the same references as in a full
    decode, so the arrays are identical; with libx264's default B-frames about 40% of the frames between samples
    need no decoding.
    """
    _check_indices(indices, info.frames)
    container = _open(info.path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame and slice threads; PyAV's thread_count 0 starts one per core (and one more)
    codec = stream.codec_context
    skip = skip_unused and codec.name in SKIPS_ONLY_UNREFERENCED
    wanted = {info.pts[i] for i in indices}
    position = -1  # index of the last decoded frame

    def decoded_from(key: int) -> Iterator[av.VideoFrame]:
        container.seek(info.pts[key], stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            # read per packet, by frame threads too (FFmpeg copies skip_frame to a thread with each packet)
            codec.skip_frame = _discard(packet, wanted) if skip else "DEFAULT"
            yield from codec.decode(packet)

    def first_from(frames: Iterator[av.VideoFrame], target: int) -> tuple[av.VideoFrame, int]:
        nonlocal position
        for frame in frames:
            index = bisect.bisect_left(info.pts, frame.pts) if frame.pts is not None else position + 1
            position = index
            if index >= target:
                return frame, index
        raise VideoError(f"{info.path}: the stream ended before frame {target} of {info.frames} "
                         "(truncated or corrupt file)")

    frames = None
    last: tuple[int, np.ndarray] | None = None
    try:
        for target in indices:
            if last is not None and last[0] == target:
                yield last[1]
                continue
            key = info.keyframes[bisect.bisect_right(info.keyframes, target) - 1]
            if frames is None or key > position + 1 or target <= position:
                frames, position = decoded_from(key), -1
            frame, index = first_from(frames, target)
            check_pixels(info.path, frame.width, frame.height)  # a stream whose header understated its size
            if skip and (index != target or frame.pts is None):
                # the wanted frame did not come out as itself while skipping (a stream that breaks its own
                # reference marks, or frames without timestamps): from here on decode everything, as without skipping
                log.info("%s: frame %d missing while skipping unreferenced frames; decoding all frames from "
                         "frame %d on", info.path, target, key)
                skip = False
                frames, position = decoded_from(key), -1
                frame, index = first_from(frames, target)
            last = (target, upright(frame))
            yield last[1]
    except av.FFmpegError as e:
        raise VideoError(f"{info.path}: corrupt or truncated video, decoding failed ({e})") from None
    finally:
        container.close()


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file, reading only its header; VideoError if it is unreadable or has more pixels than
    ``MAX_PIXELS`` (checked here, so PIL's own decompression-bomb warning is not shown)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise VideoError(f"{path}: not a readable image ({e})") from None
    try:
        check_pixels(str(path), *opened.size)
    except VideoError:
        opened.close()
        raise
    return opened


def open_video(path: str | os.PathLike) -> str | VideoInfo:
    """An image path as it is (its header checked), or a video probed (VideoError for a file FFmpeg cannot read, or
    frames over the pixel limit): bad input is refused before the model loads."""
    if Path(path).suffix.lower() in IMAGE_SUFFIXES:
        open_image(path).close()
        return str(path)
    return probe(path)
