"""fsspec helpers for build outputs: join, exists, list, whole and ranged reads, atomic publish of a file or bytes.

Every output path is a string that is either a local path or an fsspec URL (`s3://…`, `gs://…`, `memory://…`,
`file://…`). Publishing never leaves a partial file under a final name: locally a temp name inside the destination
folder is renamed with `os.replace`; on an object store a single `put_file` (PUT or multipart-complete) is atomic.
Atomicity is against a killed process, not a power cut (no fsync), which is what a resumable build needs.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterable

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

TMP_MARK = ".tmp-"


def resolve(url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem and its own path for a local path or fsspec URL."""
    return url_to_fs(url)


def is_local(url: str) -> bool:
    return isinstance(resolve(url)[0], LocalFileSystem)


def join(base: str, *names: str) -> str:
    """`base/name/...` for a local path or a URL (URLs always use `/`)."""
    if "://" not in base:
        return os.path.join(base, *names)
    return "/".join([base.rstrip("/"), *names])


def exists(url: str) -> bool:
    """Whether a file exists now (object-store listing caches are dropped first: another node may have written it)."""
    fs, path = resolve(url)
    if not isinstance(fs, LocalFileSystem):
        fs.invalidate_cache(fs._parent(path))
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = resolve(url)
    fs.makedirs(path, exist_ok=True)


def list_names(dir_url: str) -> list[str]:
    """Sorted base names of the files directly in a folder; [] when the folder does not exist."""
    fs, path = resolve(dir_url)
    if isinstance(fs, LocalFileSystem):
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)


def list_sizes(dir_url: str) -> dict[str, int]:
    """Base name → size in bytes of the files directly in a folder (one listing); {} when it does not exist."""
    fs, path = resolve(dir_url)
    if isinstance(fs, LocalFileSystem):
        try:
            with os.scandir(path) as entries:
                return {e.name: e.stat().st_size for e in entries if e.is_file()}
        except FileNotFoundError:
            return {}
    fs.invalidate_cache(path)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries if e["type"] == "file"}


def is_temp_name(name: str) -> bool:
    """True for the temp names `publish` uses (`.NAME.tmp-…`); readers ignore them."""
    return name.startswith(".") and TMP_MARK in name


def remove(url: str) -> None:
    """Delete a file if it exists."""
    fs, path = resolve(url)
    if isinstance(fs, LocalFileSystem):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
    elif fs.exists(path):
        fs.rm(path)


def clean_stale(dir_url: str, names: Iterable[str]) -> list[str]:
    """Remove temp files left in `dir_url` by killed publishes of the files called `names`.

    Only local folders get temp files (remote publishes are single PUTs), so this is a no-op elsewhere.
    A concurrent publish of the same name would lose its temp file too: one shard has one writer at a time.
    Returns the names removed.
    """
    if not is_local(dir_url):
        return []
    pattern = re.compile(r"^\.(?:" + "|".join(re.escape(n) for n in names) + ")" + re.escape(TMP_MARK))
    removed = [n for n in list_names(dir_url) if pattern.match(n)]
    for name in removed:
        remove(join(dir_url, name))
    return removed


def publish(local_path: str, final_url: str) -> None:
    """Move a finished local file to its final local path or URL so that no partial file is ever visible there.

    Local: the file is moved (renamed, or copied across devices) to `.NAME.tmp-PID-RANDOM` inside the destination
    folder, then `os.replace`d onto the final name. Remote: `put_file` to the final key; the local file is removed.
    """
    fs, path = resolve(final_url)
    if isinstance(fs, LocalFileSystem):
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(local_path, tmp)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copyfile(local_path, tmp)
            os.remove(local_path)
        os.replace(tmp, path)
        return
    fs.put_file(local_path, path)
    os.remove(local_path)


def read_bytes(url: str) -> bytes:
    """A whole file (one GET on object stores)."""
    fs, path = resolve(url)
    return fs.cat_file(path)


def put_bytes(url: str, data: bytes) -> None:
    """Write a whole small file so that no partial file is ever visible under its name (see `publish`).

    Local: written to a temp name in the destination folder, then `os.replace`d. Remote: one `pipe_file` (a PUT).
    """
    fs, path = resolve(url)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_range(url: str, start: int, size: int) -> bytes:
    """`size` bytes of a file from byte `start` (one ranged GET on object stores)."""
    fs, path = resolve(url)
    data = fs.cat_file(path, start=start, end=start + size)
    if len(data) != size:
        raise ValueError(f"{url}: wanted {size} bytes at offset {start}, got {len(data)} (file truncated?)")
    return data
