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

    def keep(stored: StatusRow | tuple[Sample, StatusRow]) -> None:
        if isinstance(stored, StatusRow):
            statuses.append(stored)
        else:
            samples.append(stored[0])
            statuses.append(stored[1])

    for item in items:
        key = sample_key(item.row)
        if isinstance(item, BadRow):
            statuses.append(StatusRow(key=key, row=item.row, status="failed_to_read", error_message=str(item)))
        elif item.image is None:
            samples.append(Sample(key=key, record=item.to_json(), caption=item.caption))
            statuses.append(StatusRow(key=key, row=item.row, status="success"))
        elif item.image_bytes is not None:  # embedded in the source file: straight to the image stage
            embedded = [item.image_bytes, *item.extra_image_bytes]
            got = [Fetched(True, b, None, None, lb, 0, len(b)) for b, lb in zip(embedded, item.images, strict=True)]
            keep(_store(item, got, opts))
        else:
            with_image[item.row] = item

    t1 = time.perf_counter()
    image_s = 0.0  # decode / resize / encode on this thread while the downloader's threads keep fetching
    # One download job per image: a multi-image sample is stored once all of its images have arrived.
    jobs = [(row, k) for row, rec in with_image.items() for k in range(len(rec.images))]
    arrived: dict[int, dict[int, Fetched]] = {}
    with Downloader(opts.download) as dl:
        for job, got in dl.fetch_many((j, image_item(with_image[row], k)) for j, (row, k) in enumerate(jobs)):
            row, k = jobs[job]
            parts = arrived.setdefault(row, {})
            parts[k] = got
            if len(parts) < len(with_image[row].images):
                continue
            del arrived[row]
            started = time.perf_counter()
            keep(_store(with_image[row], [parts[i] for i in range(len(parts))], opts))
            image_s += time.perf_counter() - started
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


def image_item(rec: Record, k: int = 0) -> Item:
    """What the downloader gets for a record's image `k`: its URL (fetched only if http(s)), or a `LocalImage`.

    Only a reader decides that an image is a file (by setting `image_root`); a value from a URL column stays a URL,
    so a local path, `file://` or `s3://` there is refused rather than read.
    """
    image = rec.images[k]
    if rec.image_root is None:
        return image
    return LocalImage(image, None if rec.allow_outside_root else rec.image_root)


def _store(rec: Record, got: list[Fetched], opts: ShardOptions) -> StatusRow | tuple[Sample, StatusRow]:
    """A record's fetched images → a stored sample and its success row, or the row of its first failure.

    A multi-image sample is stored whole or not at all; its failure message names the image (`image 2: http 404`).
    """
    key = sample_key(rec.row)
    urls = rec.images
    many = len(urls) > 1

    def which(k: int, message: str | None) -> str | None:
        return f"image {k}: {message}" if many else message

    imgs = []
    for k, (url, fetched) in enumerate(zip(urls, got, strict=True)):
        if not fetched.ok:
            fetched_url = rec.image_root is None and url.lower().startswith(("http://", "https://"))
            status = "failed_to_download" if fetched_url else "failed_to_read"
            return StatusRow(key=key, row=rec.row, status=status, error_message=which(k, fetched.error), url=url)
        try:
            imgs.append(process_image(fetched.data or b"", opts.image, opts.download.max_pixels))
        except ImageError as e:
            return StatusRow(key=key, row=rec.row, status="failed_to_process", error_message=which(k, str(e)), url=url)
    img = imgs[0]
    sizes = {"width": img.width, "height": img.height, "orig_width": img.orig_width, "orig_height": img.orig_height}
    record = rec.to_json()
    if "boxes" in rec.meta:  # grounding: the boxes follow the pixels, and their text is written now
        if many:
            return StatusRow(key=key, row=rec.row, status="failed_to_process", error_message="boxes on several images")
        plan = resize_mode(opts.image.resize_mode).plan(
            img.orig_width, img.orig_height, opts.image.size, opts.image.resize_only_if_bigger
        )
        assert plan.final == (img.width, img.height), "the box plan differs from the image's"
        try:
            record = place_boxes(record, plan)
        except BoxLeftCrop as e:
            return StatusRow(key=key, row=rec.row, status="failed_to_process", error_message=str(e), url=rec.image)
    if many:  # the top-level sizes and sha256 are the first image's; every image's are listed
        record["image_info"] = [
            {
                "width": i.width,
                "height": i.height,
                "orig_width": i.orig_width,
                "orig_height": i.orig_height,
                "sha256": i.sha256,
            }
            for i in imgs
        ]
    sample = Sample(
        key=key,
        record=record | sizes | {"sha256": img.sha256},
        image=img.data,
        image_ext=img.ext,
        caption=rec.caption,
        extra_images=[i.data for i in imgs[1:]],
    )
    nbytes = sum(len(i.data) for i in imgs)
    status = StatusRow(key=key, row=rec.row, status="success", url=rec.image, nbytes=nbytes, sha256=img.sha256, **sizes)
    return sample, status
