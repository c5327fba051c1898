"""refcoco-pickle and flickr30k-entities: the grounding sets of MiniGPT-v2 / TinyGPT-V's stage 4 → box records.

Boxes are kept in source pixels in `meta['boxes']` with `<box:i>` marks in the text; the build carries them through
the resize and writes MiniGPT-v2's `{<x1><y1><x2><y2>}` (0–100 grid of the stored image) then (`shards.boxes`).
The user turns are MiniGPT-v2's instructions without their task tag: the template puts `[refer]`, `[identify]` or
`[grounding]` in front from the record's task.

- RefCOCO / RefCOCO+ / RefCOCOg, the released layout: `paths` name `refs(unc).p` (`refs(umd).p`, `refs(google).p`),
  and `instances.json` beside it gives boxes (`bbox: [x, y, w, h]`) and image file names. The pickle is read by
  `safepickle` (plain containers and numbers only; a pickle naming any class is refused, never run). One input row
  per referring expression (`refs[i] sentence j`), split filter on the ref's `split` (`train`, `val`, `testA`, …).
  With task `refer` (default): "give me the location of {sentence}" → the box. With task `identify`: "what object
  is in this location {box}" → the sentence. Either way the box is required: a crop that loses it drops the sample.
  The image is `{image_root}/{file_name}` (`image_root`: COCO's `train2014/`).
- Flickr30k Entities: `paths` name `Sentences/*.txt`; each line is one input row (`line N`), its boxes from
  `Annotations/{image id}.xml` beside `Sentences/`. Phrases are written `[/EN#18/people A child]`; one with boxes
  becomes `<p>A child</p> {box}` (several boxes of one phrase joined by `<delim>`), one without (`nobndbox`, scene)
  stays plain text. Task `grounding`: "please describe this image in details" → the annotated sentence; a line with
  no boxed phrase is a bad row. The XML is parsed by `xml.etree` (expat ≥ 2.4 bounds entity expansion) after
  refusing any `<!DOCTYPE` or `<!ENTITY` outright, which the released files never have. The image is
  `{image_root}/{image id}.jpg` (`image_root`: `flickr30k-images/`; by default the folder holding `Sentences/`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from shards.fs import join
from shards.readers.common import Family, Raw, RowError, Sample, SourceSpec, get_field, get_text, read_rows
from shards.readers.files import folder_of, open_binary, text_lines
from shards.readers.jsonstream import json_items
from shards.readers.safepickle import load_plain
from shards.record import IMAGE_PLACEHOLDER, BadRow, Record

REFER_PROMPT = "give me the location of {}"
IDENTIFY_PROMPT = "what object is in this location {}"
GROUNDING_PROMPT = "please describe this image in details"
ENTITY = re.compile(r"\[/EN#(\d+)/(\S+) ([^\]]*)\]")
MAX_XML_BYTES = 1 << 20


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"}, {"role": "assistant", "content": answer}]


# RefCOCO


def _instances(path: str) -> tuple[dict[Any, list[float]], dict[Any, str]]:
    boxes: dict[Any, list[float]] = {}
    files: dict[Any, str] = {}
    for container, out, key in (("annotations", boxes, "bbox"), ("images", files, "file_name")):
        for raw in json_items(path, container):
            if raw.error is not None:
                raise ValueError(f"{path}: {raw.where}: {raw.error}")
            if isinstance(raw.value, dict) and raw.value.get(key) is not None:
                out[raw.value.get("id")] = raw.value[key]
    return boxes, files


def _refcoco_items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    if spec.task not in ("refer", "identify"):
        raise ValueError(f"source {spec.name!r}: refcoco-pickle makes refer or identify samples, not {spec.task!r}")
    with open_binary(path) as f:
        refs = load_plain(f.read(), path)
    if not isinstance(refs, list):
        raise ValueError(f"{path}: expected a list of refs, found {type(refs).__name__}")
    boxes, files = _instances(join(folder_of(path), "instances.json"))
    for i, ref in enumerate(refs):
        sentences = ref.get("sentences") if isinstance(ref, dict) else None
        if not isinstance(sentences, list) or not sentences:
            yield Raw(None, None, f"refs[{i}]", "no 'sentences' list")
            continue
        context = {"box": boxes.get(ref.get("ann_id")), "file": files.get(ref.get("image_id"))}
        for j, sentence in enumerate(sentences):
            yield Raw({"ref": ref, "sentence": sentence, **context}, None, f"refs[{i}] sentence {j}")


def _box(bbox: Any) -> list[float]:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise RowError(f"bbox is {bbox!r}, expected [x, y, w, h]")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise RowError(f"bbox {bbox!r} is empty")
    return [x, y, x + w, y + h]


def _refcoco_convert(value: Any, path: str, spec: SourceSpec) -> Sample:
    ref = value["ref"]
    sentence = get_text(value["sentence"], "sent")
    if value["file"] is None:
        raise RowError(f"image_id {ref.get('image_id')!r} is not in instances.json")
    if value["box"] is None:
        raise RowError(f"ann_id {ref.get('ann_id')!r} is not in instances.json")
    box = _box(value["box"])
    if spec.task == "identify":
        conversation = _turns(IDENTIFY_PROMPT.format("<box:0>"), sentence)
    else:
        conversation = _turns(REFER_PROMPT.format(sentence), "<box:0>")
    root = spec.image_root if spec.image_root is not None else folder_of(path)
    ids = {k: ref.get(k) for k in ("ref_id", "ann_id", "image_id")} | {"sent_id": value["sentence"].get("sent_id")}
    meta = {"boxes": [box], "box_required": [0], "category_id": ref.get("category_id"), "split": ref.get("split")}
    return Sample(conversation, join(root, value["file"]), ids, meta, root)


# Flickr30k Entities


def entity_boxes(xml: bytes, where: str) -> tuple[dict[str, list[list[float]]], tuple[int, int]]:
    """Entity id → its boxes (`[x1, y1, x2, y2]`), and the image size, from one Flickr30k Entities annotation."""
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise RowError(f"{where}: has a DTD or entity declarations; refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise RowError(f"{where}: not XML: {e}") from None
    size = (int(root.findtext("size/width") or 0), int(root.findtext("size/height") or 0))
    out: dict[str, list[list[float]]] = {}
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        coords = [float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")]
        for name in obj.findall("name"):
            out.setdefault((name.text or "").strip(), []).append(coords)
    return out, size


def _flickr_items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    image_id = path.rsplit("/", 1)[-1].removesuffix(".txt")
    dataset = folder_of(folder_of(path))
    xml_path = join(dataset, "Annotations", f"{image_id}.xml")
    try:
        with open_binary(xml_path) as f:
            xml: bytes | str = f.read(MAX_XML_BYTES + 1)
    except (FileNotFoundError, ValueError) as e:
        xml = str(e)
    for number, line in text_lines(path):
        if line.strip():
            yield Raw({"image_id": image_id, "line": line, "xml": xml, "xml_path": xml_path}, number, "")


def _flickr_convert(value: Any, path: str, spec: SourceSpec) -> Sample:
    if isinstance(value["xml"], str):
        raise RowError(value["xml"])
    if len(value["xml"]) > MAX_XML_BYTES:
        raise RowError(f"{value['xml_path']}: larger than {MAX_XML_BYTES} bytes")
    boxes_of, _ = entity_boxes(value["xml"], value["xml_path"])
    try:
        line = value["line"].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise RowError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    boxes: list[list[float]] = []
    phrases: list[dict[str, Any]] = []

    def mark(m: re.Match[str]) -> str:
        entity, types, phrase = m.group(1), m.group(2), m.group(3)
        found = boxes_of.get(entity, [])
        ids = list(range(len(boxes), len(boxes) + len(found)))
        boxes.extend(found)
        phrases.append({"entity": entity, "types": types.split("/"), "phrase": phrase, "boxes": ids})
        return f"<p>{phrase}</p> <box:{','.join(map(str, ids))}>" if ids else phrase

    sentence = ENTITY.sub(mark, line)
    for box in boxes:
        if not all(v == v for v in box) or box[2] <= box[0] or box[3] <= box[1]:  # v != v: NaN, a missing corner
            raise RowError(f"{value['xml_path']}: bad bndbox {box}")
    if not boxes:
        raise RowError("no phrase with a box")
    root = spec.image_root if spec.image_root is not None else folder_of(folder_of(path))
    image = join(root, f"{value['image_id']}.jpg")
    meta = {"boxes": boxes, "box_required": [], "phrases": phrases}
    return Sample(_turns(GROUNDING_PROMPT, sentence), image, {"image_id": value["image_id"]}, meta, root)


REFCOCO = Family(_refcoco_items, _refcoco_convert, split_of=lambda value, path: get_field(value["ref"], "split", str))
FLICKR30K = Family(_flickr_items, _flickr_convert)


def read_refcoco(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a refcoco-pickle source."""
    return read_rows(spec, REFCOCO)


def read_flickr30k(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a flickr30k-entities source."""
    return read_rows(spec, FLICKR30K)
