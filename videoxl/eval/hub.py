"""A benchmark's files from its Hugging Face dataset repository, laid out as ``--data`` wants them.

``videoxl eval TASK`` without ``--data`` downloads, with ``huggingface_hub.snapshot_download``, only the files the
run needs (the task's :class:`~videoxl.eval.tasks.base.HubData` patterns: annotations, videos, and subtitles with
``--subtitles``) into the hub cache, then unpacks its archives (``.zip``, ``.tar``, a tar split in
``.tar.part.*`` files) once into ``$HF_HOME/videoxl-eval/<repo>/<commit>``, beside links to its plain files. That
folder is the ``--data`` folder. lmms-eval fetches these repositories the same way (the whole snapshot, archives
unpacked into ``$HF_HOME/<task>``: ``lmms_eval/api/task.py``, ``video: True`` datasets).

Offline (``HF_HUB_OFFLINE=1``, or the hub out of reach) a complete cached snapshot is used as it is; with nothing
cached the run stops with one line naming the repository and asking for ``--data DIR``.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from ..errors import InputError
from .tasks.base import HubData

DONE = ".videoxl-unpacked"  # marker folder: one empty file per archive fully unpacked


def fetch(task_name: str, hub: HubData, *, subtitles: bool = False) -> Path:
    """The ``--data`` folder of a benchmark, from its dataset repository (downloaded, or cached); InputError with
    what to do when that cannot be had."""
    if hub.videos_elsewhere:
        raise InputError(f"{task_name}: its dataset repository {hub.repo} holds the annotations but not the videos "
                         f"({hub.videos_elsewhere}); download them and pass --data DIR")
    patterns = [*hub.annotations, *hub.videos, *(hub.subtitles if subtitles else ())]
    snapshot = Path(download(task_name, hub.repo, patterns))
    target = unpack_root(hub.repo, snapshot.name)
    unpack(snapshot, target, patterns)
    root = target / hub.root if hub.root else target
    if not root.is_dir():
        raise InputError(f"{task_name}: {hub.repo} has no folder {hub.root!r}; download the benchmark and pass "
                         "--data DIR")
    return root


def download(task_name: str, repo: str, patterns: list[str]) -> str:
    """The snapshot folder of ``repo`` holding the files that match ``patterns`` (a cached one when offline)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub import errors
    except ImportError:  # a transformers dependency, so normally there
        raise InputError(f"{task_name}: fetching {repo} needs huggingface_hub (pip install huggingface_hub); or "
                         "pass --data DIR") from None
    where = f"https://huggingface.co/datasets/{repo}"
    try:
        return snapshot_download(repo, repo_type="dataset", allow_patterns=patterns)
    except errors.GatedRepoError:
        raise InputError(f"{task_name}: {repo} is gated: accept its terms at {where}, log in (hf auth login, or "
                         "HF_TOKEN), or pass --data DIR") from None
    except errors.RepositoryNotFoundError:
        raise InputError(f"{task_name}: no dataset {repo} on the hub (or it is private); pass --data DIR") from None
    except (errors.LocalEntryNotFoundError, getattr(errors, "IncompleteSnapshotError", errors.LocalEntryNotFoundError),
            errors.HfHubHTTPError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise InputError(f"{task_name}: {why} and the hub cache has no complete copy of the dataset {repo} "
                         f"({type(e).__name__}); pass --data DIR (a folder with the benchmark's files)") from None


def unpack_root(repo: str, commit: str) -> Path:
    """Where a snapshot of ``repo`` at ``commit`` is laid out as ``--data``: ``$HF_HOME/videoxl-eval/...``."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "videoxl-eval" / repo.replace("/", "--") / commit


def unpack(snapshot: Path, target: Path, patterns: list[str]) -> None:
    """Lay out ``snapshot``'s files matching ``patterns`` under ``target``: plain files linked (copied where links
    cannot be made) at the same path, archives unpacked (once; a marker records each one done)."""
    from fnmatch import fnmatch

    files = sorted(p for p in snapshot.rglob("*") if p.is_file()
                   and any(fnmatch(p.relative_to(snapshot).as_posix(), pat) for pat in patterns))
    done = target / DONE
    done.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[Path]] = {}
    for path in files:
        rel = path.relative_to(snapshot)
        name = rel.as_posix()
        if ".tar.part." in path.name:  # LongVideoBench: cat videos.tar.part.* > videos.tar
            parts.setdefault(name.split(".part.")[0], []).append(path)
        elif path.suffix == ".zip" or path.name.endswith(".tar"):
            _once(done, name, lambda p=path: _extract(p, target))
        else:
            _link(path, target / rel)
    for name, pieces in parts.items():
        _once(done, name, lambda pieces=pieces: _extract_parts(sorted(pieces), target))


def _once(done: Path, name: str, work) -> None:
    marker = done / name.replace("/", "--")
    if marker.exists():
        return
    work()
    marker.touch()


def _link(source: Path, dest: Path) -> None:
    if dest.exists() or dest.is_symlink():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        dest.symlink_to(source.resolve())
    except OSError:
        shutil.copy2(source, dest)


def _extract(path: Path, target: Path) -> None:
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:  # member names with "..", or absolute, are made safe
                archive.extractall(target)
        else:
            with tarfile.open(path) as archive:
                _extract_tar(archive, target)
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as e:
        raise InputError(f"{path.name}: cannot unpack it into {target} ({type(e).__name__}: {e}); free some space, "
                         "or unpack the benchmark yourself and pass --data DIR") from None


def _extract_parts(pieces: list[Path], target: Path) -> None:
    try:
        with io.BufferedReader(_Concatenated(pieces), 1 << 20) as stream, \
                tarfile.open(fileobj=stream, mode="r|*") as archive:
            _extract_tar(archive, target)
    except (OSError, tarfile.TarError) as e:
        raise InputError(f"{pieces[0].name}...: cannot unpack the parts into {target} ({type(e).__name__}: {e})") \
            from None


def _extract_tar(archive: tarfile.TarFile, target: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # no absolute paths, "..", devices or links out of the folder
        archive.extractall(target, filter="data")
    else:
        archive.extractall(target)


class _Concatenated(io.RawIOBase):
    """Files read one after the other as one stream (a tar split into parts), without joining them on disk."""

    def __init__(self, paths: list[Path]):
        self._paths, self._file = list(paths), None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb")
            n = self._file.readinto(buffer)
            if n:
                return n
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()
