"""Finding and opening a source's files through fsspec, so local paths, globs and `s3://`/`file://` URLs read alike.

Compressed files (`.gz`, `.bz2`, `.xz`, `.zst` …) are decompressed on the fly, inferred from the name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

GLOB_CHARS = frozenset("*?[")
LINE_BATCH_BYTES = 1 << 20


def _has_glob(path: str) -> bool:
    return any(c in GLOB_CHARS for c in path)


def expand_paths(patterns: list[str]) -> list[str]:
    """Every file named or matched by `patterns`, de-duplicated and sorted by path (the read order of a source).

    Local files come back as local paths, others as full URLs. A plain path that is not a file, or a glob that
    matches no file, is a `FileNotFoundError` naming it.
    """
    if not patterns:
        raise ValueError("a source needs at least one path")
    found: set[str] = set()
    for pattern in patterns:
        fs, path = url_to_fs(pattern)
        if _has_glob(path):
            matches = [m for m in fs.glob(path) if fs.isfile(m)]
            if not matches:
                raise FileNotFoundError(f"{pattern}: no file matches this pattern")
        elif fs.isfile(path):
            matches = [path]
        else:
            raise FileNotFoundError(f"{pattern}: no such file")
        local = isinstance(fs, LocalFileSystem)
        found.update(m if local else fs.unstrip_protocol(m) for m in matches)
    return sorted(found)


@contextmanager
def open_binary(path: str) -> Iterator[IO[bytes]]:
    """`path` opened for binary reading (decompressed if its name says so); errors name the path."""
    opened = fsspec.open(path, "rb", compression="infer")
    try:
        f = opened.open()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot open: {e}") from e
    try:
        yield f
    finally:
        opened.close()


def text_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its `\\n` / `\\r\\n`) for every line, read in ~1 MiB chunks.

    Chunked `read` rather than `readline`: it is fast on every fsspec file, remote ones included.
    """
    number = 0
    partial: list[bytes] = []  # the pieces of a line that spans chunks
    with open_binary(path) as f:
        while chunk := f.read(LINE_BATCH_BYTES):
            lines = chunk.split(b"\n")
            if len(lines) == 1:
                partial.append(chunk)
                continue
            if partial:
                lines[0] = b"".join([*partial, lines[0]])
            partial = [lines.pop()]
            for line in lines:
                number += 1
                yield number, line.rstrip(b"\r")
    last = b"".join(partial)
    if last:
        yield number + 1, last.rstrip(b"\r")


def folder_of(path: str) -> str:
    """The folder holding a file, for a local path or URL (used as the default image root)."""
    if "://" in path:
        return path.rsplit("/", 1)[0]
    return os.path.dirname(path)
