"""Live video sources: anything FFmpeg opens as a live input (through PyAV), and a file that is still growing.

A source yields frames sampled at ``fps`` by the stream's own clock, stamped in seconds since the stream began.
Stamps never go back: a source that stalls or drops is reopened with backoff, and if the reopened stream's clock
continues (a camera's or a broadcast's), its frames keep their own times, so the outage shows as a gap; if the clock
restarted (a sender that begins again at zero), the frames continue from the last stamp plus the wall-clock time
the outage lasted. A source that stays away longer than ``reconnect`` seconds has ended.

A growing file (``follow``, like ``tail -f``) is read through a file object that waits for more bytes at its end
and reports the end once the file has not grown for ``idle`` seconds; the container must be one that can be read
while written (MPEG-TS, Matroska/WebM, FLV, fragmented MP4; a plain MP4 writes its index last).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import av
import numpy as np

from ..errors import OptionError, VideoError

log = logging.getLogger(__name__)

# schemes FFmpeg reads live; http(s) for HLS playlists (.m3u8)
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt", "http", "https")


@dataclass(frozen=True)
class SourceOptions:
    """How a live source is sampled and kept alive."""

    fps: float = 1.0  # frames kept per second of stream time
    follow: bool = False  # a local file that is still being written: read it as it grows
    reconnect: float = 30.0  # seconds a dropped source may stay away before it counts as ended
    timeout: float = 5.0  # seconds to open a source, and to wait for data before treating it as stalled
    idle: float = 5.0  # follow: seconds without growth after which the file has ended

    def __post_init__(self):
        if not (isinstance(self.fps, (int, float)) and 0 < self.fps <= 30):
            raise OptionError(f"fps must be in (0, 30], got {self.fps!r}")
        for name in ("reconnect", "timeout", "idle"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise OptionError(f"{name} must be a number of seconds >= 0, got {value!r}")


@dataclass
class SourceStats:
    """What a source delivered: frames, reconnects, and the gaps (stream seconds) its outages left."""

    decoded: int = 0
    sampled: int = 0
    reconnects: int = 0
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (last stamp before, first stamp after)
    latest: float | None = None  # stamp of the newest frame decoded (sampled or not)
    ended: bool = False


def check_source(url: str, allowed_schemes: tuple[str, ...] | None = None, follow: bool = False) -> str:
    """The source as FFmpeg will open it; OptionError for an unknown or disallowed scheme or a missing file."""
    if not isinstance(url, str) or not url.strip():
        raise OptionError("the source is empty: give a stream URL (tcp://, rtsp://, ...) or a file to follow")
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme in ("", "file"):
        path = url[len("file://"):] if scheme == "file" else url
        if not Path(path).is_file():
            raise OptionError(f"{path}: no such file (a live source is a URL, or a file being written with --follow)")
        return path
    if scheme not in LIVE_SCHEMES:
        raise OptionError(f"unsupported live scheme {scheme!r}: use one of {', '.join(LIVE_SCHEMES)}")
    if allowed_schemes is not None and scheme not in allowed_schemes:
        raise OptionError(f"stream scheme {scheme!r} is not allowed here")
    if follow:
        raise OptionError("--follow reads a local file that is still growing, not a URL")
    return url


class _GrowingFile:
    """A file object over a file that is still being written: a read at the end waits for more bytes, and returns
    nothing (the end) once the file has not grown for ``idle`` seconds or ``stop`` is set."""

    def __init__(self, path: str, idle: float, stop: threading.Event):
        self.file = open(path, "rb")
        self.idle, self.stop = idle, stop
        self.grew = time.monotonic()

    def read(self, n: int = -1) -> bytes:
        while True:
            data = self.file.read(n)
            if data:
                self.grew = time.monotonic()
                return data
            if self.stop.is_set() or time.monotonic() - self.grew > self.idle:
                return b""
            time.sleep(0.05)

    def close(self) -> None:
        self.file.close()


class _Clock:
    """Stamps on one monotonic clock across connections, and sampling at one frame per ``step`` seconds."""

    def __init__(self, step: float, stats: SourceStats):
        self.step, self.stats = step, stats
        self.due = 0.0  # stamp of the next frame to keep
        self.last: float | None = None  # last stamp handed out
        self.raw_last: float | None = None  # last raw stream time (to tell a continuing clock from a restarted one)
        self.offset: float | None = None  # stamp = raw time + offset
        self.lost_at: float | None = None
        self.first = True

    def connected(self, lost_at: float | None) -> None:
        """A new connection begins; ``lost_at`` is the wall time the previous one was lost (None: first)."""
        self.first, self.lost_at = True, lost_at

    def keep(self, raw: float | None) -> float | None:
        """The stamp of a decoded frame at stream time ``raw`` if it is sampled, else None."""
        if raw is None:
            return None
        if self.first:
            self.first = False
            if self.offset is None:
                self.offset = -raw
            elif self.raw_last is None or raw <= self.raw_last:  # the clock restarted: bridge by wall time
                away = time.monotonic() - self.lost_at if self.lost_at is not None else 0.0
                self.offset = self.last + max(away, self.step) - raw
            if self.lost_at is not None and self.last is not None:
                self.stats.gaps.append((self.last, round(raw + self.offset, 3)))
        self.raw_last = raw
        t = raw + self.offset
        self.stats.decoded += 1
        self.stats.latest = t
        if t < self.due - 1e-6 or (self.last is not None and t <= self.last):
            return None
        self.due = self.due + self.step if t < self.due + self.step else t + self.step  # after a gap: from there
        self.last = t
        self.stats.sampled += 1
        return t


class LiveSource:
    """Sampled, stamped frames of a live input: iterate :meth:`frames`; :meth:`close` stops it from any thread."""

    def __init__(self, url: str, options: SourceOptions = SourceOptions()):
        self.options = options
        self.url = check_source(url, follow=options.follow)
        self.is_file = "://" not in self.url
        self.stats = SourceStats()
        self._stop = threading.Event()

    def close(self) -> None:
        self._stop.set()

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """(stamp in seconds, H x W x 3 uint8 RGB frame), one per ``1/fps`` seconds of stream time, until the
        source ends or :meth:`close`; VideoError if it cannot be opened at all."""
        clock = _Clock(1.0 / self.options.fps, self.stats)
        lost_at = None  # wall time the source was lost, while reconnecting
        backoff, opened_once = 0.25, False
        while not self._stop.is_set():
            try:
                container = self._open()
            except (av.FFmpegError, OSError) as e:
                lost_at = time.monotonic() if lost_at is None else lost_at  # not up yet, or gone: retry a while
                if self._give_up(lost_at):
                    if not opened_once and not self._stop.is_set():
                        raise VideoError(f"{self.url}: cannot open the stream ({e})") from None
                    break
                time.sleep(backoff)
                backoff = min(2 * backoff, 2.0)
                continue
            if opened_once:
                self.stats.reconnects += 1
            opened_once, backoff = True, 0.25
            clock.connected(lost_at)
            try:
                for frame in container.decode(video=0):
                    if self._stop.is_set():
                        break
                    t = clock.keep(frame.time)
                    if t is not None:
                        lost_at = None
                        yield round(t, 3), frame.to_ndarray(format="rgb24")
            except (av.FFmpegError, OSError) as e:
                log.info("%s: stream lost (%s)", self.url, e)
            finally:
                container.close()
            if self.is_file or self._stop.is_set():
                break
            lost_at = time.monotonic() if lost_at is None else lost_at
            if self._give_up(lost_at):
                break
        self.stats.ended = True

    def _give_up(self, lost_at: float | None) -> bool:
        return self._stop.is_set() or lost_at is None or time.monotonic() - lost_at > self.options.reconnect

    def _open(self) -> av.container.InputContainer:
        # probe one second of stream, not FFmpeg's default five: a live viewer starts that much sooner
        options = {"analyzeduration": "1000000"}
        if self.is_file:
            if not self.options.follow:
                return av.open(self.url, options=options)
            growing = _GrowingFile(self.url, self.options.idle, self._stop)
            try:
                return av.open(growing, mode="r", options=options)
            except BaseException:
                growing.close()
                raise
        if self.options.timeout:  # any read or write waiting longer fails, and the source is reopened
            options["rw_timeout"] = str(int(self.options.timeout * 1e6))
        if self.url.startswith("rtsp"):
            options["rtsp_transport"] = "tcp"
        return av.open(self.url, options=options)


def is_live(url: str) -> bool:
    """Whether ``url`` names a live scheme (as opposed to a local file)."""
    return "://" in url and urlsplit(url).scheme.lower() in LIVE_SCHEMES


__all__ = ["LIVE_SCHEMES", "LiveSource", "SourceOptions", "SourceStats", "check_source", "is_live"]
