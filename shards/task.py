"""One shard of one source, end to end: fetch images, decode / filter / resize, write the shard and its side files.

A pure function of its inputs (the rows of the shard and the options), so a retried or resumed shard is
byte-identical to the first attempt. The Ray job in `shards.build` runs it as a task; tests call it directly.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from shards.boxes import BoxLeftCrop, place_boxes
from shards.download import Downloader, Fetched, Item
from shards.exclude import Exclusion
from shards.images import ImageError, process_image
from shards.local import LocalImage
from shards.malloc import reuse_freed_memory
from shards.options import ShardOptions
from shards.record import BadRow, Record, sample_key
from shards.resize import resize_mode
from shards.status import StatusRow
from shards.writer import Sample, ShardWriter

# Image threads per shard task. A task holds one CPU of the cluster; a second thread keeps that CPU busy while the
# first waits (a download, the GIL held by Python-level work, the last images of a shard) and lets a task use a core
# a finished task left idle. More would only contend: measured in bench/shards (docs/benchmarks.md).
IMAGE_THREADS = 2
IMAGE_BACKLOG = 4 * IMAGE_THREADS


def process_shard(
    items: list[Record | BadRow],
    opts: ShardOptions,
    out_dir: str,
    shard: int,
    made_from: dict[str, Any] | None = None,
    exclude: Exclusion | None = None,
) -> dict[str, Any]:
    """Write shard `shard` of the source folder `out_dir` from its input rows; return the shard's stats.

    `made_from` (see `shards.resume`) is recorded in the stats, so a rerun can tell whether the shard is current.
    `exclude`: image files not to store (status `excluded_benchmark`), compared before any decode.
    """
    reuse_freed_memory()  # once per process: image buffers are reused, not mapped and faulted in again
    t0 = time.perf_counter()
    samples: list[Sample] = []
    statuses: list[StatusRow] = []
    with_image: dict[int, Record] = {}
    embedded: list[tuple[Record, list[Fetched]]] = []
    for item in items:
        key = sample_key(item.row)
        if isinstance(item, BadRow):
            statuses.append(StatusRow(key=key, row=item.row, status="failed_to_read", error_message=str(item)))
        elif item.image is None:
            samples.append(Sample(key=key, record=item.to_json(), caption=item.caption))
            statuses.append(StatusRow(key=key, row=item.row, status="success"))
        elif item.image_bytes is not None:  # embedded in the source file: straight to the image stage
            data = [item.image_bytes, *item.extra_image_bytes]
            got = [Fetched(True, d, None, None, name, 0, len(d)) for d, name in zip(data, item.images, strict=True)]
            embedded.append((item, got))
        else:
            with_image[item.row] = item

    def keep(stored: StatusRow | tuple[Sample, StatusRow]) -> None:
        if isinstance(stored, StatusRow):
            statuses.append(stored)
        else:
            samples.append(stored[0])
            statuses.append(stored[1])

    t1 = time.perf_counter()
    fetch_wait = 0.0  # time this thread had no fetched image to hand to the image threads
    with Downloader(opts.download) as dl, _ImageStage(opts, exclude, keep) as images:
        for rec, got in embedded:
            images.submit(rec, got)
        # One download job per image: a multi-image sample goes to the image threads once all its images arrived.
        jobs = [(row, k) for row, rec in with_image.items() for k in range(len(rec.images))]
        arrived: dict[int, dict[int, Fetched]] = {}
        fetched = dl.fetch_many((j, image_item(with_image[row], k)) for j, (row, k) in enumerate(jobs))
        while True:
            started = time.perf_counter()
            job_got = next(fetched, None)
            fetch_wait += time.perf_counter() - started
            if job_got is None:
                break
            row, k = jobs[job_got[0]]
            parts = arrived.setdefault(row, {})
            parts[k] = job_got[1]
            if len(parts) == len(with_image[row].images):
                del arrived[row]
                images.submit(with_image[row], [parts[i] for i in range(len(parts))])
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
        timings = {"read": t1 - t0, "fetch_wait": fetch_wait, "image": t2 - t1 - fetch_wait, "write": write_s}
        return writer.finish(timings, made_from)


class _ImageStage:
    """Decode / resize / encode on `IMAGE_THREADS` threads while the caller keeps fetching; results in input order.

    Pillow's decoder and libvips release the GIL, so the threads run in parallel with each other and with the
    downloads. At most `IMAGE_BACKLOG` images wait, so fetched bytes never pile up in memory; `keep` receives every
    result on the calling thread, in submission order (the shard is sorted by key afterwards anyway).
    """

    def __init__(
        self,
        opts: ShardOptions,
        exclude: Exclusion | None,
        keep: Callable[[StatusRow | tuple[Sample, StatusRow]], None],
    ) -> None:
        self._opts, self._exclude, self._keep = opts, exclude, keep
        self._pool = ThreadPoolExecutor(IMAGE_THREADS, thread_name_prefix="tinymix-image")
        self._pending: deque[Future[StatusRow | tuple[Sample, StatusRow]]] = deque()

    def submit(self, rec: Record, got: list[Fetched]) -> None:
        while len(self._pending) >= IMAGE_BACKLOG:
            self._keep(self._pending.popleft().result())
        self._pending.append(self._pool.submit(_store, rec, got, self._opts, self._exclude))

    def __enter__(self) -> _ImageStage:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            while self._pending and exc_type is None:
                self._keep(self._pending.popleft().result())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def image_item(rec: Record, k: int = 0) -> Item:
    """What the downloader gets for a record's image `k`: its URL (fetched only if http(s)), or a `LocalImage`.

    Only a reader decides that an image is a file (by setting `image_root`); a value from a URL column stays a URL,
    so a local path, `file://` or `s3://` there is refused rather than read.
    """
    image = rec.images[k]
    if rec.image_root is None:
        return image
    return LocalImage(image, None if rec.allow_outside_root else rec.image_root)


def _store(
    rec: Record, got: list[Fetched], opts: ShardOptions, exclude: Exclusion | None = None
) -> StatusRow | tuple[Sample, StatusRow]:
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
        copy_of = exclude.match(fetched.data or b"") if exclude is not None else None
        if copy_of is not None:
            return StatusRow(
                key=key,
                row=rec.row,
                status="excluded_benchmark",
                error_message=which(k, f"same file as benchmark image {copy_of}"),
                url=url,
                sha256=hashlib.sha256(fetched.data or b"").hexdigest(),
            )
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
