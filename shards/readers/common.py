"""The source spec and the row driver every reader family runs through: numbering, split filter, limit, bad rows.

A family says how to list a file's raw items (`Family.items`), how to turn one into a sample (`Family.convert`,
raising `RowError` for a bad row) and, if it has splits, which split an item belongs to (`Family.split_of`).
`read_rows` does the rest, identically for every family:

- files are read in path order after glob expansion (`files.expand_paths`);
- an item whose split is not in `options.split` is not an input row of the source: it is skipped unnumbered;
- every other item is one input row, numbered from 0 across all files, and yields exactly one `Record` or `BadRow`;
- `options.max_samples` stops reading after that many input rows (bad rows included).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from shards.fs import join
from shards.options import ReaderOptions
from shards.policy import url_error
from shards.readers.files import expand_paths, folder_of
from shards.record import IMAGE_PLACEHOLDER, BadRow, Record

# Split names as found in the data or a manifest → one canonical name (OCR-VQA numbers its splits 1/2/3).
SPLIT_ALIASES = {
    "1": "train",
    "2": "val",
    "3": "test",
    "training": "train",
    "validation": "val",
    "valid": "val",
    "testing": "test",
}


@dataclass(frozen=True)
class SourceSpec:
    """One source to read.

    `paths` are files or globs, absolute or fsspec URLs. `task` is the task tag every record gets. `image_root`
    is the folder the family's relative image names are joined to (each reader module says what it means there);
    an image name that resolves outside it is a bad row unless `allow_outside_root`.
    """

    name: str
    kind: str
    paths: list[str]
    task: str
    image_root: str | None = None
    options: ReaderOptions = field(default_factory=ReaderOptions)
    allow_outside_root: bool = False


class RowError(ValueError):
    """Why one input row cannot become a record; `read_rows` turns it into a `BadRow`."""


class Raw(NamedTuple):
    """One raw item of a file, before it is checked.

    `line` is its 1-based line in line-based files, else None; `where` locates it for messages (`data[17]`,
    `key '123'`); `error` is set instead of `value` when the item could not even be parsed.
    """

    value: Any
    line: int | None
    where: str
    error: str | None = None


class Sample(NamedTuple):
    """The family-specific part of a record; `image_root` is set when `image` is a file under that root (else a URL).

    `image_bytes` is an image embedded in the source file (then `image` is only its label, and nothing is fetched).
    """

    conversation: list[dict[str, str]]
    image: str | None
    ids: dict[str, Any]
    meta: dict[str, Any]
    image_root: str | None = None
    image_bytes: bytes | None = None


@dataclass(frozen=True)
class Family:
    """How one dataset family is read; see the module docstring.

    `items` must return a generator (it is closed when reading stops early); `columns` are the `options.columns`
    keys the family accepts; `captions_path` says whether it takes `options.captions_path`; `answers` the
    `options.answers` values it takes.
    """

    items: Callable[[str, SourceSpec], Iterator[Raw]]
    convert: Callable[[Any, str, SourceSpec], Sample]
    split_of: Callable[[Any, str], Any] | None = None
    columns: frozenset[str] = frozenset()
    captions_path: bool = False
    answers: frozenset[str] = frozenset()


def normalise_split(value: Any) -> str:
    """`1`, `"1"`, `"Train"` → `"train"`; `"validation"` → `"val"`; other names lower-cased."""
    name = str(value).strip().lower()
    return SPLIT_ALIASES.get(name, name)


def _check_options(spec: SourceSpec, family: Family) -> None:
    opts = spec.options
    if opts.split is not None and family.split_of is None:
        raise ValueError(f"source {spec.name!r}: kind {spec.kind} has no splits to filter; remove options.split")
    unknown = sorted(set(opts.columns) - family.columns)
    if unknown:
        known = ", ".join(sorted(family.columns)) or "none"
        raise ValueError(f"source {spec.name!r}: kind {spec.kind} cannot rename {unknown} (renamable: {known})")
    if opts.captions_path is not None and not family.captions_path:
        raise ValueError(f"source {spec.name!r}: options.captions_path only applies to sbu-json")
    if opts.answers is not None and opts.answers not in family.answers:
        takes = ", ".join(sorted(family.answers)) or "no answers option"
        raise ValueError(f"source {spec.name!r}: kind {spec.kind} cannot take answers {opts.answers!r} ({takes})")


def read_rows(spec: SourceSpec, family: Family) -> Iterator[Record | BadRow]:
    """The records and bad rows of a source, one per input row, in input order."""
    _check_options(spec, family)
    wanted = None if spec.options.split is None else {normalise_split(s) for s in spec.options.split}
    limit = spec.options.max_samples
    row = 0
    for path in expand_paths(spec.paths):
        items = family.items(path, spec)
        try:
            for raw in items:
                out = _one(raw, row, path, spec, family, wanted)
                if out is None:
                    continue
                yield out
                row += 1
                if limit is not None and row >= limit:
                    return
        finally:
            items.close()


def _one(
    raw: Raw, row: int, path: str, spec: SourceSpec, family: Family, wanted: set[str] | None
) -> Record | BadRow | None:
    def bad(message: str) -> BadRow:
        return BadRow(row, spec.name, path, raw.line, f"{raw.where}: {message}" if raw.where else message)

    if raw.error is not None:
        return bad(raw.error)
    try:
        if wanted is not None and family.split_of is not None:
            if normalise_split(family.split_of(raw.value, path)) not in wanted:
                return None
        sample = family.convert(raw.value, path, spec)
    except RowError as e:
        return bad(str(e))
    return Record(
        row,
        spec.name,
        spec.task,
        sample.conversation,
        sample.image,
        sample.ids,
        sample.meta,
        path,
        sample.image_root if sample.image is not None and sample.image_bytes is None else None,
        spec.allow_outside_root,
        sample.image_bytes if sample.image is not None else None,
    )


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def get_field(item: Any, key: str, kinds: type | tuple[type, ...] = str) -> Any:
    """`item[key]`, which must be present, not null and of one of `kinds` (a bool is never an int here)."""
    if not isinstance(item, dict):
        raise RowError(f"expected an object, found {_type_name(item)}")
    if item.get(key) is None:
        raise RowError(f"missing field {key!r}")
    value = item[key]
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        expected = " or ".join(k.__name__ for k in allowed)
        raise RowError(f"field {key!r} is {_type_name(value)}, expected {expected}")
    return value


def get_text(item: Any, key: str) -> str:
    """`item[key]` as a stripped, non-empty string."""
    text = get_field(item, key, str).strip()
    if not text:
        raise RowError(f"empty {key!r}")
    return text


def get_url(item: Any, key: str) -> str:
    """`item[key]` as a URL to fetch: http(s) only, since a URL column is untrusted (a path there is not read)."""
    url = get_text(item, key)
    error = url_error(url)
    if error:
        raise RowError(f"{key}: {error}")
    return url


def get_strings(item: Any, key: str) -> list[str]:
    """`item[key]` as a non-empty list of strings."""
    values = get_field(item, key, list)
    if not values:
        raise RowError(f"empty list {key!r}")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise RowError(f"{key}[{i}] is {_type_name(v)}, expected str")
    return values


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowError(f"{what} is not UTF-8 ({e.reason} at byte {e.start})") from None


def caption_sample(
    url: Any,
    caption: Any,
    ids: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    names: tuple[str, str] = ("url", "caption"),
) -> Sample:
    """A caption record: the user turn is the image alone, the assistant turn the caption.

    `names` are the native names of the two fields, for the messages of a bad row.
    """
    item = dict(zip(names, (url, caption), strict=True))
    image = get_url(item, names[0])
    text = get_text(item, names[1])
    conversation = [{"role": "user", "content": IMAGE_PLACEHOLDER}, {"role": "assistant", "content": text}]
    return Sample(conversation, image, ids or {}, meta or {})


def qa_conversation(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    """User/assistant turns for question–answer pairs about one image, the image placeholder opening the first."""
    turns = []
    for i, (question, answer) in enumerate(pairs):
        content = f"{IMAGE_PLACEHOLDER}\n{question}" if i == 0 else question
        turns += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    return turns


def finite_or_none(value: Any) -> Any:
    """NaN and ±inf floats become None so records stay valid JSON; anything else is returned as is."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def image_path(name: str, root: str | None, listed_in: str) -> tuple[str, str | None]:
    """(image, image root) for an image name from a row: an http(s) URL as it is (root None), anything else a file.

    A file name is joined to `root`, or to the folder of the file `listed_in` when root is None, and that folder is
    the root it must resolve inside when read (an absolute name is kept as it is, and so stays outside unless the
    source allows it). A URL of another scheme (`file://`, `s3://`) is a `RowError`: rows do not pick the storage.
    """
    folder = root if root is not None else folder_of(listed_in)
    if "://" in name:
        error = url_error(name)
        if error:
            raise RowError(f"image {name!r}: {error}")
        return name, None
    return (name if os.path.isabs(name) else join(folder, name)), folder
