"""The canonical record every reader yields, and the bad-row report a reader yields instead when a row is unusable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("user", "assistant")


@dataclass
class Record:
    """One input row turned into a training sample.

    `row` is the 0-based position of the row in the source's input (all files, in read order); the builder derives
    the sample key from it, so keys are stable across runs. `conversation` is a list of `{"role", "content"}` turns
    with `IMAGE_PLACEHOLDER` where the image belongs. `image` is an http(s) URL, a local path already joined to the
    source's image root, or None for a text-only sample.

    `image_root` says which: None for a URL (only http(s) is fetched), else the folder the path must resolve inside
    when read; `allow_outside_root` lifts that confinement (the source's `allow_outside_root`). Both are build
    bookkeeping, like `row` and `file`, and are not stored.

    `image_bytes` holds an image embedded in the source file itself (🤗 Parquet's `{bytes, path}` structs): it goes
    straight to the image stage, nothing is fetched or read, and `image` is then only a label (the struct's `path`).
    Bookkeeping too: the stored image is the processed one.
    """

    row: int
    source: str
    task: str
    conversation: list[dict[str, str]]
    image: str | None = None
    ids: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    file: str = ""
    image_root: str | None = None
    allow_outside_root: bool = False
    image_bytes: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as stored in `KEY.json` (without `row`/`file`, which are build bookkeeping)."""
        d = asdict(self)
        for bookkeeping in ("row", "file", "image_root", "allow_outside_root", "image_bytes"):
            d.pop(bookkeeping)
        return d

    @property
    def caption(self) -> str | None:
        """The assistant text of a single-turn caption sample, else None (used for `KEY.txt`)."""
        if self.task != "caption" or len(self.conversation) != 2:
            return None
        return self.conversation[1]["content"]


@dataclass
class BadRow:
    """An input row a reader could not turn into a record: counted and reported, never fatal."""

    row: int
    source: str
    file: str
    line: int | None
    error: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.error}"


def sample_key(row: int) -> str:
    """The WebDataset key of the sample made from input row `row` (zero-padded, no dots, sorts in input order)."""
    return f"{row:010d}"
