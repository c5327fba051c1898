"""One shard of one source, end to end: fetch images, decode / filter / resize, write the shard and its side files.

A pure function of its inputs (the rows of the shard and the options), so a retried or resumed shard is
byte-identical to the first attempt. The Ray job in `shards.build` runs it as a task; tests call it directly.
"""

from __future__ import annotations

import time
from typing import Any

from shards.boxes import BoxLeftCrop, place_boxes
from shards.download import Downloader, Fetched, Item
from shards.images import ImageError, process_image
from shards.local import LocalImage
from shards.options import ShardOptions
from shards.record import BadRow, Record, sample_key
from shards.resize import resize_mode
from shards.status import StatusRow
from shards.writer import Sample, ShardWriter


def process_shard(
    items: list[Record | BadRow], opts: ShardOptions, out_dir: str, shard: int, made_from: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write shard `shard` of the source folder `out_dir` from its input rows; return the shard's stats.

    `made_from` (see `shards.resume`) is recorded in the stats, so a rerun can tell whether the shard is current.
    """
    t0 = time.perf_counter()
    samples: list[Sample] = []
    statuses: list[StatusRow] = []
    with_image: dict[int, Record] = {}
    for item in items:
        key = sample_key(item.row)
        if isinstance(item, BadRow):
            statuses.append(StatusRow(key=key, row=item.row, status="failed_to_read", error_message=str(item)))
        elif item.image is None:
            samples.append(Sample(key=key, record=item.to_json(), caption=item.caption))
            statuses.append(StatusRow(key=key, row=item.row, status="success"))
        elif item.image_bytes is not None:  # embedded in the source file: straight to the image stage
            embedded = Fetched(True, item.image_bytes, None, None, item.image, 0, len(item.image_bytes))
            stored = _store(item, embedded, opts)
            statuses.append(stored if isinstance(stored, StatusRow) else stored[1])
            samples.extend([] if isinstance(stored, StatusRow) else [stored[0]])
        else:
            with_image[item.row] = item

    t1 = time.perf_counter()
    image_s = 0.0  # decode / resize / encode on this thread while the downloader's threads keep fetching
    with Downloader(opts.download) as dl:
        for row, got in dl.fetch_many((r, image_item(rec)) for r, rec in with_image.items()):
            started = time.perf_counter()
            samples_or_status = _store(with_image[row], got, opts)
            image_s += time.perf_counter() - started
            if isinstance(samples_or_status, StatusRow):
                statuses.append(samples_or_status)
            else:
                samples.append(samples_or_status[0])
                statuses.append(samples_or_status[1])
    t2 = time.perf_counter()

    samples.sort(key=lambda s: s.key)
    statuses.sort(key=lambda s: s.row)
    with ShardWriter(out_dir, shard, opts.format) as writer:
        for s in samples:
            writer.add(s)
        for st in statuses:
            writer.add_status(st)
        # Disjoint stages of the task's wall time: `fetch_wait` is time this thread had no fetched image to work on,
        # `write` the samples into the tar (the index, status and stats files written by `finish` are not counted).
        write_s = time.perf_counter() - t2
        timings = {"read": t1 - t0, "fetch_wait": t2 - t1 - image_s, "image": image_s, "write": write_s}
        return writer.finish(timings, made_from)


def image_item(rec: Record) -> Item:
    """What the downloader gets for a record's image: its URL (fetched only if http(s)), or a `LocalImage`.

    Only a reader decides that an image is a file (by setting `image_root`); a value from a URL column stays a URL,
    so a local path, `file://` or `s3://` there is refused rather than read.
    """
    assert rec.image is not None
    if rec.image_root is None:
        return rec.image
    return LocalImage(rec.image, None if rec.allow_outside_root else rec.image_root)


def _store(rec: Record, got: Fetched, opts: ShardOptions) -> StatusRow | tuple[Sample, StatusRow]:
    """A fetched image → a stored sample and its success row, or the row of its failure."""
    key = sample_key(rec.row)
    if not got.ok:
        fetched_url = rec.image_root is None and rec.image.lower().startswith(("http://", "https://"))
        status = "failed_to_download" if fetched_url else "failed_to_read"
        return StatusRow(key=key, row=rec.row, status=status, error_message=got.error, url=rec.image)
    try:
        img = process_image(got.data or b"", opts.image, opts.download.max_pixels)
    except ImageError as e:
        return StatusRow(key=key, row=rec.row, status="failed_to_process", error_message=str(e), url=rec.image)
    sizes = {"width": img.width, "height": img.height, "orig_width": img.orig_width, "orig_height": img.orig_height}
    record = rec.to_json()
    if "boxes" in rec.meta:  # grounding: the boxes follow the pixels, and their text is written now
        plan = resize_mode(opts.image.resize_mode).plan(
            img.orig_width, img.orig_height, opts.image.size, opts.image.resize_only_if_bigger
        )
        assert plan.final == (img.width, img.height), "the box plan differs from the image's"
        try:
            record = place_boxes(record, plan)
        except BoxLeftCrop as e:
            return StatusRow(key=key, row=rec.row, status="failed_to_process", error_message=str(e), url=rec.image)
    sample = Sample(
        key=key,
        record=record | sizes | {"sha256": img.sha256},
        image=img.data,
        image_ext=img.ext,
        caption=rec.caption,
    )
    status = StatusRow(
        key=key, row=rec.row, status="success", url=rec.image, nbytes=len(img.data), sha256=img.sha256, **sizes
    )
    return sample, status
