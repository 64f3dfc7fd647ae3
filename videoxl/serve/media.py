"""Getting a request's video into a local file, under the server's rules, and naming it by its content.

Three sources: a local path or ``file://`` URL, confined to ``--allowed-local-media-path`` (no ``..``, no symlink
that leads out, regular files only); a base64 ``data:`` URL, capped in size; an ``http(s)`` URL whose host is in
``--allowed-media-domains`` (redirects re-checked), capped in size and time. Every video is named by the SHA-256
of its bytes, so the same video sent twice, by any route, is pre-filled once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .protocol import ServeError

DATA_BLOCK = 4 << 20  # characters of a data URL decoded at a time (a multiple of 4: whole base64 quanta)
IMAGE_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
               "image/bmp": ".bmp"}


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may come from, and how big and slow it may be."""

    local_root: Path | None = None
    domains: tuple[str, ...] = ()
    max_bytes: int = 512 * 2**20
    timeout_s: float = 30.0


@dataclass
class Media:
    """A video (or image) as a local file, with its content hash; ``temporary`` files are deleted by
    :meth:`release` once pre-filled."""

    path: Path
    sha256: str
    temporary: bool = False

    def release(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike, fd: int | None = None) -> str:
    h = hashlib.sha256()
    with (os.fdopen(fd, "rb", closefd=False) if fd is not None else open(path, "rb")) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class MediaResolver:
    """Turns a media URL into :class:`Media` per a :class:`MediaPolicy`; blocking (run it in a thread)."""

    def __init__(self, policy: MediaPolicy, scratch: Path):
        self.policy = policy
        self.scratch = scratch
        self.root = Path(os.path.realpath(policy.local_root)) if policy.local_root else None
        self._hashes: dict[tuple, str] = {}  # (path, device, inode, size, mtime) -> sha256
        self._lock = threading.Lock()

    def resolve(self, url: str, kind: str = "video") -> Media:
        if url[:5].lower() == "data:":  # before urlsplit, which would copy a URL of hundreds of megabytes
            return self._data(url, kind)
        scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
        if scheme in ("http", "https"):
            return self._http(url, kind)
        if scheme == "file":
            parts = urllib.parse.urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                raise ServeError(403, f"file URLs must name a local file, not host {parts.netloc!r}")
            return self._local(urllib.parse.unquote(parts.path))
        if scheme:
            raise ServeError(400, f"unsupported media URL scheme {scheme!r}: use http(s), data: or a local path")
        return self._local(url)

    # -- local files --------------------------------------------------------------------------------------------
    def _local(self, given: str) -> Media:
        if self.root is None:
            raise ServeError(403, "local media paths are not allowed: start the server with "
                                  "--allowed-local-media-path DIR")
        if "\0" in given:
            raise ServeError(400, "the media path contains a NUL character")
        if ".." in Path(given).parts:
            raise ServeError(403, f"{given!r}: paths with '..' are not allowed")
        path = Path(given) if os.path.isabs(given) else self.root / given
        real = Path(os.path.realpath(path))
        if real != self.root and self.root not in real.parents:
            raise ServeError(403, f"{given!r} is outside the allowed media folder")
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise ServeError(404, f"{given!r}: no such file in the allowed media folder") from None
        except OSError as e:
            raise ServeError(403, f"{given!r}: cannot be opened ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ServeError(403, f"{given!r} is not a regular file")
            if st.st_size > self.policy.max_bytes:
                raise ServeError(413, f"{given!r} has {st.st_size} bytes; the limit is {self.policy.max_bytes}")
            ident = (str(real), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            with self._lock:
                digest = self._hashes.get(ident)
            if digest is None:
                digest = sha256_file(real, fd)
                with self._lock:
                    self._hashes[ident] = digest
        finally:
            os.close(fd)
        return Media(real, digest)

    # -- data: URLs ---------------------------------------------------------------------------------------------
    def _data(self, url: str, kind: str) -> Media:
        comma = url.find(",")
        header = url[5:comma] if comma > 0 else ""
        if not header.endswith(";base64") or len(header) > 256:
            raise ServeError(400, "data URLs must be base64: data:video/mp4;base64,...")
        size = (len(url) - comma - 1) * 3 // 4
        if size > self.policy.max_bytes + 2:
            raise ServeError(413, f"the data URL holds about {size} bytes; the limit is {self.policy.max_bytes}")
        suffix = IMAGE_TYPES.get(header[:-7].lower(), ".mp4") if kind == "image" else ".mp4"
        # decoded block by block straight into the file: the URL is never copied whole
        blocks = (base64.b64decode(url[i:i + DATA_BLOCK], validate=True)
                  for i in range(comma + 1, len(url), DATA_BLOCK))
        return self._write(blocks, suffix, "the data URL is not valid base64")

    def _write(self, blocks, suffix: str, invalid: str = "") -> Media:
        """Write ``blocks`` of bytes to a scratch file named by their SHA-256."""
        digest = hashlib.sha256()
        self.scratch.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="media-", dir=self.scratch)
        try:
            with os.fdopen(fd, "wb") as f:
                for block in blocks:
                    digest.update(block)
                    f.write(block)
        except (binascii.Error, ValueError):
            Path(tmp).unlink(missing_ok=True)
            raise ServeError(400, invalid) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Media(Path(tmp), digest.hexdigest(), temporary=True)

    # -- http(s) --------------------------------------------------------------------------------------------------
    def allowed_host(self, url: str) -> bool:
        host = (urllib.parse.urlsplit(url).hostname or "").lower().rstrip(".")
        return any(host == d or host.endswith("." + d) for d in self.policy.domains)

    def _http(self, url: str, kind: str) -> Media:
        netloc = urllib.parse.urlsplit(url).netloc
        if "@" in netloc or "\\" in netloc or any(c.isspace() or ord(c) < 32 for c in url):
            raise ServeError(400, "media URLs may not carry user names, backslashes or spaces in the host part")
        if not self.allowed_host(url):
            raise ServeError(403, f"media from {urllib.parse.urlsplit(url).hostname!r} is not allowed: start the "
                                  "server with --allowed-media-domains listing it")
        resolver = self

        class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req, fp, code, msg, headers, newurl):
                if not resolver.allowed_host(newurl):
                    raise ServeError(403, f"the media URL redirects to {newurl!r}, which is not allowed")
                return super().redirect_request(req, fp, code, msg, headers, newurl)

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _CheckedRedirects)
        deadline = time.monotonic() + self.policy.timeout_s
        limit = self.policy.max_bytes
        try:
            with opener.open(url, timeout=self.policy.timeout_s) as response:
                size = response.headers.get("Content-Length")
                if size is not None and size.isdigit() and int(size) > limit:
                    raise ServeError(413, f"the media has {size} bytes; the limit is {limit}")
                blocks, total = [], 0
                while block := response.read(1 << 16):
                    total += len(block)
                    if total > limit:
                        raise ServeError(413, f"the media is larger than the limit of {limit} bytes")
                    if time.monotonic() > deadline:
                        raise ServeError(400, f"fetching the media took longer than {self.policy.timeout_s} s")
                    blocks.append(block)
                ctype = response.headers.get_content_type()
        except urllib.error.HTTPError as e:
            raise ServeError(400, f"fetching the media failed: HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:  # http.client.InvalidURL: ValueError
            raise ServeError(400, f"fetching the media failed: {getattr(e, 'reason', e)}") from None
        suffix = IMAGE_TYPES.get(ctype, Path(urllib.parse.urlsplit(url).path).suffix or ".jpg") \
            if kind == "image" else ".mp4"
        return self._write(blocks, suffix)
