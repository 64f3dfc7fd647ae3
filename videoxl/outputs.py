"""Files the command line writes (pictures, tables): checked before any work, written whole or not at all."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .errors import OptionError


def png_target(text: str, option: str) -> Path:
    """An output picture path checked up front: ends in .png, not a folder, and its folder takes new files."""
    path = Path(text)
    if path.is_dir():
        raise OptionError(f"{option} {text}: is a folder; give a file name ending in .png")
    if path.suffix.lower() != ".png":
        raise OptionError(f"{option} {text}: must be a file name ending in .png")
    folder = path.parent
    if not folder.is_dir():
        raise OptionError(f"{option} {text}: the folder {folder} does not exist")
    try:  # the real test: root passes every permission check, a read-only file system does not
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".videoxl-check-", suffix=".png"):
            pass
    except OSError as e:
        raise OptionError(f"{option} {text}: cannot write in {folder} ({e.strerror})") from None
    return path


def write_atomically(path: Path, draw) -> None:
    """Call ``draw(temporary path)``, then rename it onto ``path``: never half a picture."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".videoxl-", suffix=".png")
    os.close(fd)
    try:
        draw(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ProgressBars:
    """tqdm progress bars for the ingest stages, shown only on a terminal (or when forced)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bars = enabled, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            unit = "frame" if stage == "encode" else "chunk"
            bar = self.bars[stage] = tqdm(total=total, desc=f"{'decode+encode' if stage == 'encode' else stage}",
                                          unit=unit, file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
