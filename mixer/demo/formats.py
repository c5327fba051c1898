"""Writers of the real datasets' native file layouts, byte-for-byte reproducible: pinned encoders, no timestamps.

Each writer takes plain rows and owns only the envelope and the file syntax of one family: column names and types,
the TSV column order, the top-level keys of the JSON files. What goes into the rows is decided in `corpus`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

# LAION-400M's column order, plus LAION-2B's `punsafe`; the reader keeps everything but URL/TEXT as metadata.
LAION_SCHEMA = pa.schema(
    [
        ("SAMPLE_ID", pa.int64()),
        ("URL", pa.string()),
        ("TEXT", pa.string()),
        ("HEIGHT", pa.int64()),
        ("WIDTH", pa.int64()),
        ("LICENSE", pa.string()),
        ("NSFW", pa.string()),
        ("similarity", pa.float64()),
        ("punsafe", pa.float64()),
    ]
)


def encode_image(img: Image.Image, suffix: str) -> bytes:
    """The image encoded for a file name ending in `suffix`, with every encoder setting pinned."""
    buf = io.BytesIO()
    if suffix in (".jpg", ".jpeg"):
        img.convert("RGB").save(buf, "JPEG", quality=90, subsampling=0, optimize=False, progressive=False)
    elif suffix == ".png":
        img.save(buf, "PNG", compress_level=6, optimize=False)
    else:
        raise ValueError(f"demo images are .jpg or .png, not {suffix!r}")
    return buf.getvalue()


def write_json(path: Path, obj: Any) -> None:
    """JSON as the real files ship it: compact, UTF-8, keys in insertion order (never sorted), no trailing newline."""
    path.write_text(json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")), encoding="utf-8")


def _tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    for row in rows:
        assert not any(c in field for field in row for c in "\t\r\n"), f"demo TSV field holds a separator: {row}"
    path.write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")


def write_laion_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    """A LAION-style Parquet file: upper-case `URL`, `TEXT` and the extra columns of `LAION_SCHEMA`."""
    table = pa.Table.from_pylist(rows, schema=LAION_SCHEMA)
    pq.write_table(table, path, compression="snappy", version="2.6", use_dictionary=True, write_statistics=True)


def write_cc3m_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    """CC3M's headerless `caption\\turl` TSV."""
    _tsv(path, rows)


def write_cc12m_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    """CC12M's headerless `url\\tcaption` TSV (the reverse of CC3M's column order)."""
    _tsv(path, rows)


def write_sbu_json(path: Path, urls: list[str], user_ids: list[str], captions: list[str]) -> None:
    """SBU's `sbu-captions-all.json`: one dict of three parallel lists."""
    assert len(urls) == len(user_ids) == len(captions)
    write_json(path, {"image_urls": urls, "user_ids": user_ids, "captions": captions})


def write_llava_json(path: Path, rows: list[dict[str, Any]]) -> None:
    """A LLaVA / ShareGPT4V list of `{id, image?, conversations}` rows."""
    write_json(path, rows)


def write_textvqa_json(path: Path, split: str, rows: list[dict[str, Any]]) -> None:
    """TextVQA 0.5.1's envelope around its `data` rows."""
    write_json(path, {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": rows})


def write_docvqa_json(path: Path, split: str, rows: list[dict[str, Any]]) -> None:
    """DocVQA 1.0's envelope around its `data` rows."""
    write_json(path, {"dataset_name": "docvqa", "dataset_split": split, "dataset_version": "1.0", "data": rows})


def write_ocrvqa_json(path: Path, books: dict[str, dict[str, Any]]) -> None:
    """OCR-VQA's `dataset.json`: a dict keyed by image id."""
    write_json(path, books)


def write_chartqa_json(path: Path, rows: list[dict[str, str]]) -> None:
    """One ChartQA question file (`{split}_human.json` or `{split}_augmented.json`): `[{imgname, query, label}]`."""
    write_json(path, rows)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSON lines (POPE's `coco_pope_*.json` are JSON lines despite the name): one compact object per line."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


_VQA_INFO = {"description": "tinymix demo benchmark in the layout of VQA v2.0", "version": "2.0", "year": 2017}
_VQA_LICENSE = {
    "name": "Creative Commons Attribution 4.0 International License",
    "url": "http://creativecommons.org/licenses/by/4.0/",
}


def write_vqav2_questions(path: Path, split: str, questions: list[dict[str, Any]]) -> None:
    """VQAv2's `v2_OpenEnded_mscoco_{split}_questions.json`.

    `{info, task_type, data_type, license, data_subtype, questions: [{image_id, question, question_id}]}`.
    """
    doc = {"info": _VQA_INFO, "task_type": "Open-Ended", "data_type": "mscoco", "license": _VQA_LICENSE}
    write_json(path, {**doc, "data_subtype": split, "questions": questions})


def write_vqav2_annotations(path: Path, split: str, annotations: list[dict[str, Any]]) -> None:
    """VQAv2's `v2_mscoco_{split}_annotations.json`.

    `{info, license, data_subtype, annotations, data_type}`, each annotation with its ten `answers`.
    """
    doc = {"info": _VQA_INFO, "license": _VQA_LICENSE, "data_subtype": split, "annotations": annotations}
    write_json(path, {**doc, "data_type": "mscoco"})
