"""Writing synthetic scripts as real video files (H.264 in MP4 through PyAV)."""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from pathlib import Path

import av

from .world import Script, render


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write(script: Script, path: str | os.PathLike, crf: int = 16) -> Path:
    """Render every frame of ``script`` into ``path``; written beside it and renamed, so never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix or ".mp4", prefix=".partial-", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); the finished file is an ordinary one
    try:
        with av.open(tmp, "w") as container:
            stream = container.add_stream("libx264", rate=Fraction(script.fps).limit_denominator(1000))
            stream.width = stream.height = script.size
            stream.pix_fmt = "yuv420p"
            stream.codec_context.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
            for i in range(script.frames):
                frame = av.VideoFrame.from_ndarray(render(script, i), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
