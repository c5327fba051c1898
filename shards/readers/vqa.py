"""textvqa-json, docvqa-json, chartqa-json: single-question VQA files → one `<image>\\nquestion` / answer record each.

- TextVQA: `{dataset_name, …, data: [{image_id, question_id, question, answers[10], set_name, …}]}`. The target
  is the most common of the answers (ties: the first seen); all answers are in `meta['answers']`. `image_root` is
  the dataset folder holding `train_images/` (train and val images) and `test_images/`: the image is
  `{image_root}/train_images/{image_id}.jpg` (`test_images/` for `set_name` test). Without `image_root` the image
  is the item's `flickr_original_url` (http(s) only). Split filter on `set_name`.
- DocVQA: `{dataset_split, …, data: [{questionId, question, image, docId, answers, data_split, …}]}`. The target is
  the first answer, all are in `meta['answers']`. `image_root` is the split folder (`image` is relative to it,
  e.g. `documents/xnbl0037_1.png`); by default the folder of the JSON file. Split filter on `data_split`.
- ChartQA: `{split}_human.json` / `{split}_augmented.json`, lists of `{imgname, query, label}`. `image_root` is the
  split folder holding `png/`; by default the folder of the JSON file. The split is the file name's prefix (or
  its folder's name); `meta['subset']` is `human` or `augmented`.

Other item fields go to `meta`; the dataset's ids go to `ids`. A local image must stay inside its root folder once
resolved (`../` in an id or name, or a symlink out, is a bad row at build time unless `allow_outside_root`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

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
    image_path,
    normalise_split,
    qa_conversation,
    read_rows,
)
from shards.readers.files import folder_of
from shards.readers.jsonstream import json_items
from shards.record import BadRow, Record

SPLITS = ("train", "val", "test")
CHARTQA_NAME = re.compile(r"^(?P<split>[a-z]+)_(?P<subset>human|augmented)\.json", re.IGNORECASE)


def most_common(answers: list[str]) -> str:
    """The answer given most often; among equally frequent ones, the first seen."""
    counts = Counter(answers)
    top = max(counts.values())
    return next(a for a in answers if counts[a] == top)


def _rest(item: dict[str, Any], used: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in used}


def _ids(item: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: item[k] for k in keys if item.get(k) is not None}


def _data_items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    return json_items(path, "data")


def _textvqa_convert(item: Any, path: str, spec: SourceSpec) -> Sample:
    question = get_text(item, "question")
    answers = [a.strip() for a in get_strings(item, "answers")]
    image_id = get_text(item, "image_id")
    if spec.image_root is None:
        image = get_url(item, "flickr_original_url")
    else:
        folder = "test_images" if normalise_split(item.get("set_name", "")) == "test" else "train_images"
        image = join(spec.image_root, folder, f"{image_id}.jpg")
    ids = _ids(item, ("question_id", "image_id"))
    meta = {"answers": answers, **_rest(item, ("question", "answers", "question_id", "image_id"))}
    return Sample(qa_conversation([(question, most_common(answers))]), image, ids, meta, spec.image_root)


def _docvqa_convert(item: Any, path: str, spec: SourceSpec) -> Sample:
    question = get_text(item, "question")
    answers = [a.strip() for a in get_strings(item, "answers")]
    image, root = image_path(get_text(item, "image"), spec.image_root, path)
    meta = {"answers": answers, **_rest(item, ("question", "answers", "image", "questionId", "docId"))}
    return Sample(qa_conversation([(question, answers[0])]), image, _ids(item, ("questionId", "docId")), meta, root)


def _chartqa_name(path: str) -> tuple[str | None, str | None]:
    m = CHARTQA_NAME.match(path.rsplit("/", 1)[-1])
    if m:
        return m["split"].lower(), m["subset"].lower()
    return None, None


def _chartqa_split(item: Any, path: str) -> str:
    split = _chartqa_name(path)[0]
    if split is None:
        split = os.path.basename(folder_of(path))
        if normalise_split(split) not in SPLITS:
            raise ValueError(f"{path}: cannot tell the ChartQA split from the file name or its folder's name")
    return split


def _chartqa_convert(item: Any, path: str, spec: SourceSpec) -> Sample:
    query = get_text(item, "query")
    label = get_field(item, "label", (str, int, float))
    answer = str(label).strip()
    if not answer:
        raise RowError("empty 'label'")
    imgname = get_text(item, "imgname")
    root = spec.image_root if spec.image_root is not None else folder_of(path)
    image = join(root, "png", imgname)
    subset = _chartqa_name(path)[1]
    meta = {**({"subset": subset} if subset else {}), **_rest(item, ("query", "label", "imgname"))}
    return Sample(qa_conversation([(query, answer)]), image, {"imgname": imgname}, meta, root)


TEXTVQA = Family(_data_items, _textvqa_convert, split_of=lambda item, path: get_field(item, "set_name"))
DOCVQA = Family(_data_items, _docvqa_convert, split_of=lambda item, path: get_field(item, "data_split"))
CHARTQA = Family(lambda path, spec: json_items(path), _chartqa_convert, split_of=_chartqa_split)


def read_textvqa(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a textvqa-json source."""
    return read_rows(spec, TEXTVQA)


def read_docvqa(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a docvqa-json source."""
    return read_rows(spec, DOCVQA)


def read_chartqa(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a chartqa-json source."""
    return read_rows(spec, CHARTQA)
