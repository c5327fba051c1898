"""The canonical record every reader yields, and the bad-row report a reader yields instead when a row is unusable."""

from __future__ import annotations

from dataclasses import dataclass, field
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

    A multi-image sample has N > 1 images and N placeholders, the k-th placeholder standing for the k-th image:
    `image` is the first, `extra_images` the others (same kind: URLs, or paths under `image_root`), and
    `extra_image_bytes` their embedded bytes when `image_bytes` is set. The stored record lists them all in `images`.
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
    extra_images: list[str] = field(default_factory=list)
    extra_image_bytes: list[bytes] = field(default_factory=list)

    @property
    def images(self) -> list[str]:
        """Every image of the sample in placeholder order (empty for a text-only sample)."""
        return [] if self.image is None else [self.image, *self.extra_images]

    def to_json(self) -> dict[str, Any]:
        """The record as stored in `KEY.json` (without `row`/`file`, which are build bookkeeping).

        New containers down to the turns; values inside `ids` and `meta` are shared, not deep-copied (asdict's
        recursive copy was a tenth of a shard task's Python time): the dict is serialised, never edited in place.
        """
        d = {
            "source": self.source,
            "task": self.task,
            "conversation": [dict(turn) for turn in self.conversation],
            "image": self.image,
            "ids": dict(self.ids),
            "meta": dict(self.meta),
        }
        if self.extra_images:  # single-image records stay as they were stored before multi-image samples existed
            d["images"] = [self.image, *self.extra_images]
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
