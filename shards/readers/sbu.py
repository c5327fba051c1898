"""sbu-json: SBU Captions → captions, from `sbu-captions-all.json` or the legacy pair of line-aligned text files.

The JSON is one object of three parallel lists, `image_urls`, `user_ids`, `captions`; they are streamed side by
side (the file is opened once per list) and zipped, so memory does not grow with the file. Index `i` of the lists
is input row `i`; where one list is longer, each extra index is a bad row. The legacy layout is selected by
`options.captions_path`: `paths` is then the one URL text file and `captions_path` the caption text file, line `n`
of one belonging to line `n` of the other. Images are the URLs; `image_root` is not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count, zip_longest
from typing import Any

from shards.readers.common import Family, Raw, Sample, SourceSpec, caption_sample, decode_utf8, read_rows
from shards.readers.files import expand_paths, text_lines
from shards.readers.jsonstream import json_items
from shards.record import BadRow, Record

LISTS = ("image_urls", "user_ids", "captions")
FIELDS = ("url", "user_id", "caption")


def _items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    if spec.options.captions_path is not None:
        return _legacy(path, spec.options.captions_path)
    return _parallel_lists(path)


def _parallel_lists(path: str) -> Iterator[Raw]:
    streams = [json_items(path, name) for name in LISTS]
    try:
        for i in count():
            raws = [next(s, None) for s in streams]
            if all(r is None for r in raws):
                return
            broken = next((r for r in raws if r is not None and r.error is not None), None)
            if broken is not None:
                yield broken
                return
            short = [name for name, r in zip(LISTS, raws, strict=True) if r is None]
            if short:
                yield Raw(None, None, f"index {i}", f"lists differ in length: {', '.join(short)} end before index {i}")
                continue
            yield Raw(dict(zip(FIELDS, (r.value for r in raws), strict=True)), None, f"index {i}")
    finally:
        for s in streams:
            s.close()


def _legacy(url_path: str, captions_path: str) -> Iterator[Raw]:
    captions_file = _single(captions_path, "options.captions_path")
    urls, captions = text_lines(url_path), text_lines(captions_file)
    try:
        for number, (u, c) in enumerate(zip_longest(urls, captions), 1):
            if u is None:
                yield Raw(None, number, "", f"{captions_file} has a caption on line {number} but no URL")
            elif c is None:
                yield Raw(None, number, "", f"no caption: {captions_file} ends before line {number}")
            else:
                yield Raw({"url": u[1], "caption": c[1]}, number, "")
    finally:
        urls.close()
        captions.close()


def _single(pattern: str, what: str) -> str:
    files = expand_paths([pattern])
    if len(files) != 1:
        raise ValueError(f"{what} {pattern!r}: the legacy SBU layout needs exactly one file, found {len(files)}")
    return files[0]


def _convert(item: dict[str, Any], path: str, spec: SourceSpec) -> Sample:
    if isinstance(item.get("url"), bytes):
        item = {"url": decode_utf8(item["url"], "URL line"), "caption": decode_utf8(item["caption"], "caption line")}
    ids = {"user_id": item["user_id"]} if item.get("user_id") is not None else {}
    return caption_sample(item["url"], item["caption"], ids)


SBU = Family(_items, _convert, captions_path=True)


def read_sbu(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of an sbu-json source (either layout)."""
    if spec.options.captions_path is not None and len(files := expand_paths(spec.paths)) != 1:
        raise ValueError(f"source {spec.name!r}: the legacy SBU layout needs exactly one URL file, found {len(files)}")
    return read_rows(spec, SBU)
