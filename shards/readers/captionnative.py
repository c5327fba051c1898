"""coco-captions-json, textcaps-json, ccsbu-align-json: caption sets with local images → one record per caption.

- COCO Captions (`annotations/captions_{train,val}2017.json`, 2014 alike): `{images: [{id, file_name, …}],
  annotations: [{id, image_id, caption}]}`. One input row per annotation (five or so per image); the image is
  `{image_root}/{file_name}` (`image_root`: the `train2017/` folder). The file is read twice, streaming: the
  `images` list first (id → file name, held in memory), then the annotations.
- TextCaps (`TextCaps_0.1_{train,val}.json`): `{data: [{image_id, caption_id, caption_str, reference_strs,
  set_name, image_path, flickr_original_url, …}]}`, one row per caption. Its images are TextVQA's: with
  `image_root` (the folder holding `train_images/`) the image is `{image_root}/train_images/{image_id}.jpg`, else
  the `flickr_original_url` (http(s) only). The test split has no `caption_str`: its rows are bad rows. Split filter
  on `set_name`.
- MiniGPT-4's `cc_sbu_align` (TinyGPT-V's stage 3): `filter_cap.json` = `{annotations: [{image_id, caption}]}`,
  images `{image_root}/image/{image_id}.jpg` (`image_root`: the `cc_sbu_align/` folder; by default the JSON's).
  The user turn is MiniGPT-4's first stage-2 instruction, `Describe this image in detail.` (MiniGPT-4 draws one
  of four at random each step; a fixed one keeps shards reproducible).

COCO and TextCaps records are captions (user turn: the image alone). Without `image_root`, COCO and cc_sbu_align
look in the folder of the JSON file; a local image must stay inside its root once resolved.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shards.fs import join
from shards.readers.common import (
    Family,
    Raw,
    RowError,
    Sample,
    SourceSpec,
    caption_sample,
    get_field,
    get_text,
    get_url,
    read_rows,
)
from shards.readers.files import folder_of
from shards.readers.jsonstream import json_items
from shards.record import IMAGE_PLACEHOLDER, BadRow, Record

DETAIL_PROMPT = "Describe this image in detail."


def _root(spec: SourceSpec, path: str) -> str:
    return spec.image_root if spec.image_root is not None else folder_of(path)


def _coco_items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    files: dict[Any, str] = {}
    for raw in json_items(path, "images"):
        if raw.error is not None:
            raise ValueError(f"{path}: {raw.where}: {raw.error}")
        if isinstance(raw.value, dict) and isinstance(raw.value.get("file_name"), str):
            files[raw.value.get("id")] = raw.value["file_name"]
    for raw in json_items(path, "annotations"):
        image_id = raw.value.get("image_id") if isinstance(raw.value, dict) else None
        yield raw._replace(value=(raw.value, files.get(image_id)))


def _coco_convert(value: Any, path: str, spec: SourceSpec) -> Sample:
    item, file_name = value
    caption = get_text(item, "caption")
    image_id = get_field(item, "image_id", int)
    if file_name is None:
        raise RowError(f"image_id {image_id} is not in the file's 'images' list")
    root = _root(spec, path)
    conversation = [{"role": "user", "content": IMAGE_PLACEHOLDER}, {"role": "assistant", "content": caption}]
    return Sample(conversation, join(root, file_name), {"id": item.get("id"), "image_id": image_id}, {}, root)


def _textcaps_convert(item: Any, path: str, spec: SourceSpec) -> Sample:
    caption = get_text(item, "caption_str")
    image_id = get_text(item, "image_id")
    ids = {"caption_id": item.get("caption_id"), "image_id": image_id}
    meta = {k: item[k] for k in ("reference_strs", "set_name", "image_classes") if k in item}
    if spec.image_root is None:
        return caption_sample(get_url(item, "flickr_original_url"), caption, ids, meta)
    conversation = [{"role": "user", "content": IMAGE_PLACEHOLDER}, {"role": "assistant", "content": caption}]
    image = join(spec.image_root, "train_images", f"{image_id}.jpg")
    return Sample(conversation, image, ids, meta, spec.image_root)


def _ccsbu_convert(item: Any, path: str, spec: SourceSpec) -> Sample:
    caption = get_text(item, "caption")
    image_id = get_field(item, "image_id", (str, int))
    name = str(image_id).strip()
    if not name:
        raise RowError("empty 'image_id'")
    root = _root(spec, path)
    conversation = [
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{DETAIL_PROMPT}"},
        {"role": "assistant", "content": caption},
    ]
    return Sample(conversation, join(root, "image", f"{name}.jpg"), {"image_id": image_id}, {}, root)


COCO = Family(_coco_items, _coco_convert)
TEXTCAPS = Family(
    lambda path, spec: json_items(path, "data"), _textcaps_convert, split_of=lambda i, p: get_field(i, "set_name")
)
CCSBU = Family(lambda path, spec: json_items(path, "annotations"), _ccsbu_convert)


def read_coco_captions(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a coco-captions-json source."""
    return read_rows(spec, COCO)


def read_textcaps(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a textcaps-json source."""
    return read_rows(spec, TEXTCAPS)


def read_ccsbu_align(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a ccsbu-align-json source."""
    return read_rows(spec, CCSBU)
