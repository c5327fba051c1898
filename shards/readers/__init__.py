"""Source readers: one per dataset family, each turning a source's native files into canonical records, streaming.

`READERS` maps a source `kind` to its reader; `get_reader` rejects unknown kinds. Every reader takes a `SourceSpec`
and yields, for every input row of the source, exactly one `Record` or `BadRow`, numbered from 0 across the
source's files in path order. Rows outside `options.split` are not input rows (skipped, unnumbered);
`options.max_samples` stops after that many input rows. A bad row never raises; a missing file or a file that is
unreadable as a whole raises `FileNotFoundError` / `ValueError` naming it, and a JSON file that breaks off part-way
yields its rows so far, then one `BadRow` for the rest.

What `image_root` means, per kind (each module's docstring has the details):

| kind | image | `image_root` | without it |
|---|---|---|---|
| laion-parquet, cc3m-tsv, cc12m-tsv, sbu-json | the URL | unused | — |
| llava-json | `{image_root}/{image}` | LLaVA's `--image_folder` (holds `coco/`, `gqa/`, …) | the JSON's folder |
| textvqa-json | `{image_root}/train_images/{image_id}.jpg` (test: `test_images/`) | the dataset folder | Flickr URL |
| docvqa-json | `{image_root}/{image}` | the split folder | the JSON's folder |
| ocrvqa-json | `{image_root}/{key}{URL's extension}` | the downloaded `images/` folder | `imageURL` |
| chartqa-json | `{image_root}/png/{imgname}` | the split folder | the JSON's folder |
| hf-parquet | embedded `{bytes, path}` structs (nothing fetched or read) | unused | — |
| sharegpt-json, alpaca-json, unnatural-jsonl | none (text-only) | unused | — |
| vqav2-json, okvqa-json | `{image_root}/COCO_{subtype}_{image_id:012d}.jpg` | COCO `train2014/` | the JSON's folder |
| aokvqa-json | `{image_root}/{image_id:012d}.jpg` | the COCO 2017 image folder | the JSON's folder |
| gqa-json | `{image_root}/{imageId}.jpg` | GQA's `images/` | the JSON's folder |
| coco-captions-json | `{image_root}/{file_name}` | `train2017/` (or val) | the JSON's folder |
| textcaps-json | `{image_root}/train_images/{image_id}.jpg` | TextVQA's dataset folder | Flickr URL |
| ccsbu-align-json | `{image_root}/image/{image_id}.jpg` | the `cc_sbu_align/` folder | the JSON's folder |
| refcoco-pickle | `{image_root}/{file_name from instances.json}` | COCO `train2014/` | the pickle's folder |
| flickr30k-entities | `{image_root}/{image id}.jpg` | `flickr30k-images/` | the folder holding `Sentences/` |
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from shards.readers.captionnative import read_ccsbu_align, read_coco_captions, read_textcaps
from shards.readers.common import SourceSpec
from shards.readers.grounding import read_flickr30k, read_refcoco
from shards.readers.hfparquet import read_hf_parquet
from shards.readers.laion import count_laion, read_laion
from shards.readers.llava import read_llava
from shards.readers.ocrvqa import read_ocrvqa
from shards.readers.sbu import read_sbu
from shards.readers.textchat import read_alpaca, read_sharegpt, read_unnatural
from shards.readers.tsv import read_cc3m, read_cc12m
from shards.readers.vqa import read_chartqa, read_docvqa, read_textvqa
from shards.readers.vqanative import read_aokvqa, read_gqa, read_vqav2
from shards.record import BadRow, Record

ReaderFn = Callable[[SourceSpec], Iterator[Record | BadRow]]

READERS: dict[str, ReaderFn] = {
    "laion-parquet": read_laion,
    "cc3m-tsv": read_cc3m,
    "cc12m-tsv": read_cc12m,
    "sbu-json": read_sbu,
    "llava-json": read_llava,
    "textvqa-json": read_textvqa,
    "docvqa-json": read_docvqa,
    "ocrvqa-json": read_ocrvqa,
    "chartqa-json": read_chartqa,
    "hf-parquet": read_hf_parquet,
    "sharegpt-json": read_sharegpt,
    "alpaca-json": read_alpaca,
    "unnatural-jsonl": read_unnatural,
    "vqav2-json": read_vqav2,
    "okvqa-json": read_vqav2,
    "aokvqa-json": read_aokvqa,
    "gqa-json": read_gqa,
    "coco-captions-json": read_coco_captions,
    "textcaps-json": read_textcaps,
    "ccsbu-align-json": read_ccsbu_align,
    "refcoco-pickle": read_refcoco,
    "flickr30k-entities": read_flickr30k,
}

# Kinds whose row count is known without reading the rows (from file footers).
COUNTERS: dict[str, Callable[[SourceSpec], int]] = {"laion-parquet": count_laion, "hf-parquet": count_laion}

__all__ = ["READERS", "ReaderFn", "SourceSpec", "count_rows", "get_reader"]


def get_reader(kind: str) -> ReaderFn:
    """The reader of a source kind; a `ValueError` naming the known kinds for any other."""
    try:
        return READERS[kind]
    except KeyError:
        raise ValueError(f"unknown source kind {kind!r}; known kinds: {', '.join(READERS)}") from None


def count_rows(spec: SourceSpec) -> int | None:
    """The number of input rows of a source when it is cheap to know (Parquet footers), else None."""
    get_reader(spec.kind)
    counter = COUNTERS.get(spec.kind)
    return None if counter is None else counter(spec)
