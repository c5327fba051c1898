"""Incremental reading of one JSON list or object inside a file with ijson, in memory independent of the file size.

A file that breaks off part-way (truncated or corrupt) yields the items read so far, then one `Raw` error for the
remainder naming how many items were read and where the parser stopped. A file whose list never starts (wrong
layout, not JSON) raises a `ValueError` naming the file and what was found instead.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import ijson

from shards.readers.common import Raw
from shards.readers.files import open_binary

# What a parse error mid-file looks like: the parser's own, or the decompressor's / the file system's.
READ_ERRORS = (ijson.JSONError, EOFError, OSError, zlib.error)

EVENT_NAMES = {
    "start_array": "a list",
    "start_map": "an object",
    "string": "a string",
    "number": "a number",
    "integer": "a number",
    "double": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def _label(container: str) -> str:
    return f"{container!r}" if container else "the top level"


def json_items(path: str, container: str = "") -> Iterator[Raw]:
    """Each element of the list at `container` (a dotted ijson prefix, "" for the top level) as a `Raw`."""
    prefix = f"{container}.item" if container else "item"
    with open_binary(path) as f:
        yield from _stream(path, container, "start_array", ijson.items(f, prefix, use_float=True), f, False)


def json_pairs(path: str, container: str = "") -> Iterator[Raw]:
    """Each (key, value) of the object at `container` as a `Raw` whose value is the pair."""
    with open_binary(path) as f:
        yield from _stream(path, container, "start_map", ijson.kvitems(f, container, use_float=True), f, True)


def _stream(path: str, container: str, start: str, items: Iterator, f, pairs: bool) -> Iterator[Raw]:
    n = 0
    failure: BaseException | None = None
    where = ""
    try:
        for item in items:
            where = f"key {item[0]!r}" if pairs else f"{container}[{n}]"
            yield Raw(item, None, where)
            n += 1
    except READ_ERRORS as e:
        failure = e
        stopped = _tell(f)
    if n == 0:
        _check_container(path, container, start, failure)
    if failure is not None:
        after = f"after {where}" if n else f"at the start of {_label(container)}"
        reason = _first_line(failure)
        yield Raw(
            None,
            None,
            f"{container}[{n}:]" if not pairs else f"{_label(container)} from item {n}",
            f"JSON breaks off {after} ({n} items read; parser stopped by byte {stopped}): {reason}",
        )


def _first_line(error: BaseException) -> str:
    arg = error.args[0] if error.args else None
    text = (arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(error)).strip()  # yajl gives bytes
    return text.splitlines()[0] if text else type(error).__name__


def _tell(f) -> int | str:
    try:
        return f.tell()
    except (OSError, ValueError):
        return "?"


def _check_container(path: str, container: str, start: str, failure: BaseException | None) -> None:
    """Raise unless the file really has a `start` container at `container` (then it is empty or broke early)."""
    found = None
    try:
        with open_binary(path) as f:
            for prefix, event, _ in ijson.parse(f):
                if prefix == container and event not in ("map_key", "end_map", "end_array"):
                    found = event
                    break
    except READ_ERRORS as e:
        failure = failure or e
    if found == start:
        return
    what = EVENT_NAMES.get(found, "nothing") if found else "nothing"
    broken = f" (not valid JSON: {_first_line(failure)})" if failure is not None else ""
    raise ValueError(f"{path}: expected {EVENT_NAMES[start]} at {_label(container)}, found {what}{broken}")
