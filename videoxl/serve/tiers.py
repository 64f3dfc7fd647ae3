"""Where pre-filled videos live: on the GPU, in CPU memory or on disk, each tier within a byte budget, LRU.

A new store lands on the model's device. When a tier is over budget its least recently used store moves down:
GPU -> CPU memory -> disk -> deleted. A question on a store that moved down brings it back to the model's device
first, so decoding always reads the same bytes on the same device and answers stay token-identical.

On disk the tier owns one subfolder of the folder it is given, ``videoxl-kv/``, which it creates with a marker file
and in which it touches nothing else: it never deletes a file outside it, and refuses to start on a subfolder that
lacks the marker or holds a file that is not a store's. A store is two files named by its key:
``KEY.safetensors`` (the tensors of ``KVStore.state_dict``) and ``KEY.json``, a manifest written last (the commit
point) with the format version, the model fingerprint, the tensor file's size and SHA-256, what is needed to
rebuild the session, and a SHA-256 over all of that. Both are written to a temporary name,
fsynced and renamed, so a crash leaves either a complete store or leftovers that the next start deletes. A store
whose manifest or tensors do not check out (cut short, edited, another model, another format), or that fails to
rebuild, is deleted with a log line and never used: its video is pre-filled again. Nothing is unpickled:
safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..engine.prefill import PrefillConfig, PrefilledVideo, PrefillStats
from ..engine.store import KVStore
from ..errors import InputError
from ..pipeline import IngestStats, Session

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the files' layout or the meaning of their tensors changes


def videoxl_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("videoxl")
    except PackageNotFoundError:
        return "unknown"


def session_meta(session: Session) -> dict:
    """What, beside the KV store, rebuilds a :class:`Session` (JSON-able)."""
    stats = session.video.stats
    return {"prefill_config": asdict(session.video.config), "group_times": session.group_times,
            "ingest": {"frames": session.stats.frames, "groups": session.stats.groups,
                       "tokens": session.stats.tokens, "chunks": session.stats.chunks,
                       "seconds": session.stats.seconds},
            "prefill": {"tokens": stats.tokens, "groups": stats.groups, "chunks": stats.chunks,
                        "pairs": stats.pairs, "seconds": stats.seconds}}


def rebuild_session(model, store: KVStore, meta: dict) -> Session:
    stats = PrefillStats(**meta["prefill"], config=model.llm.config)
    video = PrefilledVideo(store, PrefillConfig(**meta["prefill_config"]), stats)
    return Session(model, video, list(meta["group_times"]), IngestStats(**meta["ingest"]))


class StoreFileError(Exception):
    """A store on disk that must not be loaded; the message says why."""


SUBFOLDER, MARKER = "videoxl-kv", ".videoxl-kv-tier"
_STORE_FILE = re.compile(r"[A-Za-z0-9_-]{1,128}\.(json|safetensors)")


class ForeignFolderError(InputError):
    """A disk-tier folder holding files the tier did not write; the tier refuses it rather than delete them."""


def _manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in manifest.items() if k != "checksum"}, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()


def own_folder(folder: str | os.PathLike) -> Path:
    """The tier's subfolder of ``folder``, created with its marker file if new; ForeignFolderError if it exists
    without the marker or holds anything but the tier's own files."""
    path = Path(folder) / SUBFOLDER
    try:
        path.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in path.iterdir())
        if not names:
            (path / MARKER).write_text("videoxl KV tier: files here are written and deleted by `videoxl serve`\n")
            names = [MARKER]
    except OSError as e:
        raise ForeignFolderError(f"--disk-kv-dir {folder}: cannot use {path} ({e.strerror or e})") from None
    if MARKER not in names:
        raise ForeignFolderError(f"--disk-kv-dir {folder}: {path} exists but was not made by videoxl (no {MARKER}); "
                                 "move it away or choose another folder")
    foreign = [n for n in names if n != MARKER and not n.startswith(".tmp-") and not _STORE_FILE.fullmatch(n)]
    if foreign:
        raise ForeignFolderError(f"--disk-kv-dir {folder}: {path} holds files videoxl did not write "
                                 f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); move them away")
    return path


class DiskStores:
    """Stores as safetensors + JSON manifest files in the tier's own subfolder of ``folder``, for one model."""

    def __init__(self, folder: str | os.PathLike, fingerprint: str):
        self.folder = own_folder(folder)
        self.fingerprint = fingerprint
        self.version = videoxl_version()

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.safetensors", self.folder / f"{key}.json"

    @staticmethod
    def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
        tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, key: str, store: KVStore, meta: dict) -> int:
        """Write a store; returns its size on disk in bytes."""
        tensors, manifest_path = self._paths(key)
        state = {name: t.cpu() for name, t in store.state_dict().items()}
        self._write_atomically(tensors, lambda p: save_file(state, str(p), metadata={
            "key": key, "model": self.fingerprint, "format": str(FORMAT)}))
        size = tensors.stat().st_size
        h = hashlib.sha256()
        with open(tensors, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        manifest = {"format": FORMAT, "videoxl": self.version, "model": self.fingerprint, "key": key,
                    "bytes": size, "sha256": h.hexdigest(), "memory_bytes": store_bytes(state), "meta": meta}
        manifest["checksum"] = _manifest_digest(manifest)
        self._write_atomically(manifest_path, lambda p: p.write_text(json.dumps(manifest)))
        return size + manifest_path.stat().st_size

    def _manifest(self, key: str) -> dict:
        tensors, manifest_path = self._paths(key)
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreFileError(f"unreadable manifest ({e})") from None
        if not isinstance(manifest, dict) or "format" not in manifest:
            raise StoreFileError("the manifest is not a JSON object")
        if manifest.get("format") != FORMAT or manifest.get("videoxl") != self.version:
            raise StoreFileError(f"written by another version (format {manifest.get('format')}, videoxl "
                                 f"{manifest.get('videoxl')}; this is format {FORMAT}, videoxl {self.version})")
        if manifest.get("model") != self.fingerprint:
            raise StoreFileError("written by another model")
        if manifest.get("key") != key:
            raise StoreFileError("the manifest names another store")
        try:
            size = tensors.stat().st_size
        except OSError:
            raise StoreFileError("the tensor file is missing") from None
        if size != manifest.get("bytes"):
            raise StoreFileError(f"the tensor file has {size} bytes, the manifest says {manifest.get('bytes')} "
                                 "(cut short?)")
        if manifest.get("checksum") != _manifest_digest(manifest):
            raise StoreFileError("the manifest's checksum does not match its content (edited or corrupt)")
        return manifest

    def scan(self) -> list[tuple[str, dict, int, float]]:
        """(key, manifest, bytes on disk, mtime) of every valid store, oldest first; leftovers and invalid
        stores are deleted with a log line."""
        found = []
        for manifest_path in self.folder.glob("*.json"):  # before anything is deleted: is every .json ours?
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # a manifest cut short by a crash: discarded below
            if not isinstance(manifest, dict) or manifest.get("key") != manifest_path.stem:
                raise ForeignFolderError(f"{manifest_path}: not a manifest videoxl wrote; move it out of "
                                         f"{self.folder}")
        for path in self.folder.iterdir():
            if path.name.startswith(".tmp-"):
                log.warning("deleting %s: an unfinished write (the server stopped while writing it)", path)
                path.unlink(missing_ok=True)
        for path in self.folder.glob("*.safetensors"):
            if not path.with_suffix(".json").exists():
                log.warning("deleting %s: no manifest (the server stopped before the write was complete)", path)
                path.unlink(missing_ok=True)
        for manifest_path in self.folder.glob("*.json"):
            key = manifest_path.stem
            try:
                manifest = self._manifest(key)
            except StoreFileError as e:
                self.discard(key, str(e))
                continue
            tensors = self._paths(key)[0]
            found.append((key, manifest, tensors.stat().st_size + manifest_path.stat().st_size,
                          manifest_path.stat().st_mtime))
        return sorted(found, key=lambda f: f[3])

    def read(self, key: str, device: torch.device) -> tuple[KVStore, dict]:
        """Load a store onto ``device``; StoreFileError if it does not check out."""
        manifest = self._manifest(key)
        tensors = self._paths(key)[0]
        h = hashlib.sha256()
        with open(tensors, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        if h.hexdigest() != manifest.get("sha256"):
            raise StoreFileError("the tensor file's SHA-256 does not match its manifest (corrupt)")
        try:
            state = load_file(str(tensors), device="cpu")
            store = KVStore.from_state_dict(state, device)
        except (SafetensorError, KeyError, ValueError, AssertionError, RuntimeError) as e:
            raise StoreFileError(f"unusable tensors ({type(e).__name__}: {e})") from None
        os.utime(self._paths(key)[1])  # recently used, for the LRU order after a restart
        return store, manifest["meta"]

    def delete(self, key: str) -> None:
        for path in self._paths(key):
            path.unlink(missing_ok=True)

    def discard(self, key: str, why: str) -> None:
        log.warning("discarding stored KV %s in %s: %s", key, self.folder, why)
        self.delete(key)


def store_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


@dataclass
class _Entry:
    key: str
    meta: dict
    memory: str | None  # "gpu", "cpu", or None (on disk only)
    nbytes: int = 0  # in memory
    disk_bytes: int = 0  # 0: no copy on disk
    store: KVStore | None = None
    session: Session | None = None  # kept while on the model's device (it caches chunk summaries)
    pins: int = 0


class KVTiers:
    """The pre-filled videos of one model, by key, in tiers with byte budgets (see the module docstring).

    Every method may be called from any thread; the server calls the moving ones from its model worker only.
    ``on_event(name, **labels)`` counts moves and discards for the metrics.
    """

    def __init__(self, model, gpu_bytes: int, cpu_bytes: int, disk: DiskStores | None = None, disk_bytes: int = 0,
                 on_event: Callable[..., None] | None = None):
        self.model = model
        self.device = model.device
        self.home = "gpu" if self.device.type == "cuda" else "cpu"
        self.memory_tiers = ["gpu", "cpu"] if self.home == "gpu" else ["cpu"]
        self.budget = {"gpu": gpu_bytes, "cpu": cpu_bytes, "disk": disk_bytes if disk else 0}
        self.disk = disk
        self.on_event = on_event or (lambda name, **labels: None)
        self.entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self.lock = threading.RLock()
        if disk is not None:
            for key, manifest, size, _ in disk.scan():
                self.entries[key] = _Entry(key, manifest["meta"], None, manifest.get("memory_bytes", 0), size)
            if self.entries:
                log.info("found %d stored videos in %s", len(self.entries), disk.folder)
            self._enforce()

    # Reads take no lock (a snapshot under the GIL), so the event loop never waits for a disk write.
    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def usage(self) -> dict[str, int]:
        """Bytes held per tier."""
        used = {"gpu": 0, "cpu": 0, "disk": 0}
        for e in list(self.entries.values()):
            if e.memory:
                used[e.memory] += e.nbytes
            used["disk"] += e.disk_bytes
        return used

    # -- moving -------------------------------------------------------------------------------------------------
    def add(self, key: str, session: Session) -> None:
        """Take a freshly pre-filled session; its store is compacted (no spare capacity) on the model's device."""
        store = KVStore.from_state_dict(session.video.store.state_dict(), self.device)
        meta = session_meta(session)
        with self.lock:
            old = self.entries.pop(key, None)
            if old is not None and old.disk_bytes:
                self.disk.delete(key)
            self.entries[key] = _Entry(key, meta, self.home, store.nbytes, 0, store,
                                       rebuild_session(self.model, store, meta))
            self._enforce()

    def checkout(self, key: str) -> tuple[Session, str]:
        """The session of ``key`` on the model's device, pinned until :meth:`release`, and the tier it was
        found in. KeyError if there is no such store (or its file turned out broken)."""
        with self.lock:
            e = self.entries[key]
            found = e.memory or "disk"
            if e.memory is None:
                try:
                    e.store, e.meta = self.disk.read(key, self.device)
                except StoreFileError as err:
                    self._drop(key, str(err))
                    raise KeyError(key) from None
                self.on_event("loaded", tier="disk")
            elif e.memory != self.home:
                e.store = KVStore.from_state_dict(e.store.state_dict(), self.device)
                self.on_event("loaded", tier=e.memory)
            if e.memory != self.home:
                try:
                    session = rebuild_session(self.model, e.store, e.meta)
                except Exception as err:  # a manifest that checked out but does not fit: never answer from it
                    self._drop(key, f"cannot rebuild the session ({type(err).__name__}: {err})")
                    raise KeyError(key) from None
                e.memory, e.nbytes, e.session = self.home, e.store.nbytes, session
            e.pins += 1
            self.entries.move_to_end(key)
            self._enforce()
            return e.session, found

    def _drop(self, key: str, why: str) -> None:
        """Forget a store that must not be used, deleting its files."""
        if self.disk is not None:
            self.disk.discard(key, why)
        else:
            log.warning("discarding KV %s: %s", key, why)
        self.on_event("discarded")
        del self.entries[key]

    def release(self, key: str) -> None:
        with self.lock:
            e = self.entries.get(key)
            if e is not None:
                e.pins -= 1
            self._enforce()

    def flush(self) -> int:
        """Write every store that is only in memory to disk (within the disk budget); returns how many."""
        if self.disk is None:
            return 0
        written = 0
        with self.lock:
            for e in reversed(list(self.entries.values())):  # most recently used first
                if e.memory and not e.disk_bytes and self.usage()["disk"] + e.nbytes <= self.budget["disk"]:
                    e.disk_bytes = self.disk.write(e.key, e.store, e.meta)
                    written += 1
        return written

    def _enforce(self) -> None:
        used = self.usage()
        for tier in self.memory_tiers:
            for e in [e for e in self.entries.values() if e.memory == tier and not e.pins]:
                if used[tier] <= self.budget[tier]:
                    break
                used[tier] -= e.nbytes
                nxt = self.memory_tiers[self.memory_tiers.index(tier) + 1] if tier != self.memory_tiers[-1] else None
                if nxt is not None:
                    e.store = KVStore.from_state_dict(e.store.state_dict(), "cpu")
                    e.memory, e.nbytes, e.session = nxt, e.store.nbytes, None
                    used[nxt] += e.nbytes
                    self.on_event("evicted", tier=tier, to=nxt)
                    continue
                if self.disk is not None and not e.disk_bytes and e.nbytes <= self.budget["disk"]:
                    started = time.perf_counter()
                    e.disk_bytes = self.disk.write(e.key, e.store, e.meta)
                    used["disk"] += e.disk_bytes
                    log.info("wrote %s to disk (%d bytes, %.2f s)", e.key, e.disk_bytes,
                             time.perf_counter() - started)
                e.memory, e.store, e.session = None, None, None
                self.on_event("evicted", tier=tier, to="disk" if e.disk_bytes else "none")
                if not e.disk_bytes:
                    del self.entries[e.key]
        for e in [e for e in self.entries.values() if e.disk_bytes and not e.pins]:
            if used["disk"] <= self.budget["disk"]:
                break
            used["disk"] -= e.disk_bytes
            self.disk.delete(e.key)
            e.disk_bytes = 0
            self.on_event("evicted", tier="disk", to="none")
            if e.memory is None:
                del self.entries[e.key]
