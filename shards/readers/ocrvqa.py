"""ocrvqa-json: OCR-VQA's `dataset.json` → one multi-turn record per book cover, streamed key by key.

The file is an object keyed by image id → `{imageURL, questions[], answers[], title, authorName, genre, split}`
with `split` 1 (train), 2 (val) or 3 (test); `options.split` takes `1`/`train`, `2`/`val`, `3`/`test`. Each key
is one input row: its question/answer pairs become one conversation (as LLaVA's mix665k does), the `<image>`
placeholder opening the first question. `image_root` is the folder the OCR-VQA download script fills
(`images/` in its repo, `ocr_vqa/images/` under LLaVA's image folder): the image is
`{image_root}/{key}{extension of imageURL}` (`.jpg` when the URL has none), which must stay inside `image_root`.
Without `image_root` it is the URL, downloaded only if http(s).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from shards.fs import join
from shards.readers.common import (
    Family,
    Raw,
    RowError,
    Sample,
    SourceSpec,
    get_field,
    get_strings,
    get_text,
    get_url,
    qa_conversation,
    read_rows,
)
from shards.readers.jsonstream import json_pairs
from shards.record import BadRow, Record

DEFAULT_EXTENSION = ".jpg"


def _items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    return json_pairs(path)


def _split_of(pair: tuple[str, Any], path: str) -> Any:
    return get_field(pair[1], "split", (int, str))


def extension(url: str) -> str:
    """The file extension of a URL's path (`.jpg` for `http://x/I/51Z.jpg?x=1`), or `.jpg` when it has none."""
    return posixpath.splitext(urlparse(url).path)[1] or DEFAULT_EXTENSION


def _convert(pair: tuple[str, Any], path: str, spec: SourceSpec) -> Sample:
    key, item = pair
    url = get_text(item, "imageURL") if spec.image_root is not None else get_url(item, "imageURL")
    questions, answers = get_strings(item, "questions"), get_strings(item, "answers")
    if len(questions) != len(answers):
        raise RowError(f"{len(questions)} questions but {len(answers)} answers")
    pairs = [(q.strip(), a.strip()) for q, a in zip(questions, answers, strict=True)]
    empty = next((i for i, (q, a) in enumerate(pairs) if not q or not a), None)
    if empty is not None:
        raise RowError(f"empty question or answer at index {empty}")
    image = url if spec.image_root is None else join(spec.image_root, f"{key}{extension(url)}")
    meta = {k: v for k, v in item.items() if k not in ("questions", "answers")}
    return Sample(qa_conversation(pairs), image, {"key": key}, meta, spec.image_root)


OCRVQA = Family(_items, _convert, split_of=_split_of)


def read_ocrvqa(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of an ocrvqa-json source."""
    return read_rows(spec, OCRVQA)
