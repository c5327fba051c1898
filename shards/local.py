"""Reading an image a source names relative to its image root, from local disk or an object store, defensively.

The name comes from untrusted data, so: the path must resolve (symlinks included) inside the root unless the source
sets `allow_outside_root`; only a regular file is opened (a FIFO, device or socket is refused from `os.stat`, and the
open uses O_NONBLOCK so nothing can block in it); the size cap is checked before a byte is read; and the whole read
runs under a time limit, so a hung network or FUSE mount costs one row, not the shard.
"""

from __future__ import annotations

import os
import posixpath
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

T = TypeVar("T")
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | os.O_NOCTTY
_CHUNK = 1 << 20
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True)
class LocalImage:
    """An image named relative to an image root (never a URL column's value).

    `path` is the root joined with the row's name: a local path, a `file://` URL or an fsspec URL (`s3://b/r/x.jpg`).
    `root` is the folder `path` must resolve inside; None when the source allows reading outside it.
    """

    path: str
    root: str | None


class LocalReadError(Exception):
    """Why a local image was not read; the message is short and stable (`missing file: PATH`, `timeout: read`, ...)."""


def is_object_store(path: str) -> bool:
    """Whether a path is an fsspec URL other than `file://` (read through fsspec, no symlinks, no special files)."""
    scheme = urlsplit(path).scheme.lower()
    return len(scheme) > 1 and scheme != "file"


def local_path(path: str) -> str:
    """A local path or `file://` URL as a path."""
    parts = urlsplit(path)
    return url2pathname(unquote(parts.path)) if parts.scheme.lower() == "file" else path


def read_image_file(image: LocalImage, max_bytes: int, timeout: float) -> bytes:
    """The bytes of a local or object-store image; `LocalReadError` for every refusal and failure."""
    if is_object_store(image.path):
        return bounded(lambda: read_object(image.path, image.root, max_bytes), timeout)
    root = None if image.root is None else local_path(image.root)
    return bounded(lambda: read_local(local_path(image.path), root, max_bytes), timeout)


def bounded(fn: Callable[[], T], timeout: float) -> T:
    """`fn()` in a daemon thread, or `LocalReadError('timeout: read')` after `timeout` seconds.

    A read stuck in the kernel (a dead NFS server, a hung FUSE mount) cannot be interrupted; its thread is left
    behind, blocked, and the row fails instead of the whole shard waiting.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    worker = threading.Thread(target=run, name="tinymix-local-read", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise LocalReadError("timeout: read")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def inside(path: str, root: str) -> bool:
    """Whether a resolved path lies inside a resolved root (both absolute)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def read_local(path: str, root: str | None, max_bytes: int) -> bytes:
    """A local file's bytes: inside `root` once resolved (unless root is None), regular, at most `max_bytes`."""
    real = os.path.realpath(path)
    if root is not None and not inside(real, os.path.realpath(root)):
        raise LocalReadError(f"outside image_root: {path}")  # said before any stat: existence is not revealed
    try:
        before = os.stat(real)
    except FileNotFoundError:
        raise LocalReadError(f"missing file: {path}") from None
    except OSError as e:
        raise LocalReadError(f"read error: {path}: {e.strerror or type(e).__name__}") from None
    _check_regular(path, before, max_bytes)
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as e:  # ELOOP: the file became a symlink after it was resolved
        raise LocalReadError(f"read error: {path}: {e.strerror or type(e).__name__}") from None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise LocalReadError(f"read error: {path}: replaced while being opened")
        _check_regular(path, now, max_bytes)
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise LocalReadError(f"read error: {path}: {e.strerror or type(e).__name__}") from None
    finally:
        os.close(fd)
    if size > max_bytes:  # it grew after the stat
        raise LocalReadError(f"too large: > {max_bytes} bytes")
    return b"".join(chunks)


def _check_regular(path: str, st: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise LocalReadError(f"not a regular file: {path} is {kind}")
    if st.st_size > max_bytes:
        raise LocalReadError(f"too large: > {max_bytes} bytes")


def object_inside(url: str, root: str) -> bool:
    """Whether an object-store URL lies under a root URL, by its normalised key (object stores have no symlinks)."""
    a, b = urlsplit(url), urlsplit(root)
    if (a.scheme.lower(), a.netloc) != (b.scheme.lower(), b.netloc):
        return False
    key, top = posixpath.normpath("/" + a.path), posixpath.normpath("/" + b.path)
    return key == top or key.startswith(top.rstrip("/") + "/")


def read_object(url: str, root: str | None, max_bytes: int) -> bytes:
    """An object-store image's bytes, with the same root and size rules as a local file."""
    if root is not None and not object_inside(url, root):
        raise LocalReadError(f"outside image_root: {url}")
    import fsspec  # only sources on object stores pay for the import

    try:
        with fsspec.open(url, "rb") as f:
            size = getattr(f, "size", None)
            if isinstance(size, int) and size > max_bytes:
                raise LocalReadError(f"too large: > {max_bytes} bytes")
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise LocalReadError(f"missing file: {url}") from None
    except LocalReadError:
        raise
    except Exception as e:  # each backend raises its own types (botocore, aiohttp, ImportError for no s3fs)
        raise LocalReadError(f"read error: {url}: {type(e).__name__}") from None
    if len(data) > max_bytes:
        raise LocalReadError(f"too large: > {max_bytes} bytes")
    return data
