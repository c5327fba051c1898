"""cc3m-tsv and cc12m-tsv: Conceptual Captions' headerless TSVs → captions, read line by line in batches.

CC3M lines are `caption\\turl`, CC12M lines `url\\tcaption`. No quoting (captions contain quotes freely), so a
line is split on tabs only and must have exactly two fields; a blank or non-UTF-8 line is a bad row. Images are
the URLs; `image_root` is not used.
"""

from __future__ import annotations

from collections.abc import Iterator

from shards.readers.common import Family, Raw, RowError, Sample, SourceSpec, caption_sample, decode_utf8, read_rows
from shards.readers.files import text_lines
from shards.record import BadRow, Record


def _items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    for number, line in text_lines(path):
        yield Raw(line, number, "")


def _converter(order: tuple[str, str]):
    layout = "\\t".join(order)

    def convert(line: bytes, path: str, spec: SourceSpec) -> Sample:
        fields = decode_utf8(line, "line").split("\t")
        if len(fields) != 2:
            raise RowError(f"expected 2 tab-separated fields ({layout}), found {len(fields)}")
        row = dict(zip(order, fields, strict=True))
        return caption_sample(row["url"], row["caption"])

    return convert


CC3M = Family(_items, _converter(("caption", "url")))
CC12M = Family(_items, _converter(("url", "caption")))


def read_cc3m(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a cc3m-tsv source (`caption\\turl`)."""
    return read_rows(spec, CC3M)


def read_cc12m(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a cc12m-tsv source (`url\\tcaption`)."""
    return read_rows(spec, CC12M)
