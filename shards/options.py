"""Typed options for reading sources and writing shards; the manifest's `sources.*.options` and `shards:` sections.

They live here rather than in `mixer` because `shards` must not import `mixer`; the manifest schema embeds them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shards.policy import parse_allowed

ResizeMode = Literal["center_crop", "keep_ratio", "keep_ratio_largest", "border", "no"]
EncodeFormat = Literal["jpg", "png", "webp"]
ShardFormat = Literal["webdataset", "parquet"]
# JPEG draft decoding keeps the decoded image at least this many times the resized size at the 1/2 DCT scale (the 1/4
# and 1/8 scales always keep 2: shards.images.COARSE_DRAFT_GAP). 1.5 is the lowest gap whose stored images stay at
# least as close to a full-decode LANCZOS reference as img2dataset's (cv2 INTER_AREA from a full decode) on every
# test set of bench.shards.pipelines (mean absolute difference, q95 stored): bench corpus 320-1024 px 2.272 vs 2.350
# (2,000 images), 500-1400 px 2.475 vs 2.493, 1000-2600 px 2.603 vs 2.603 (150 each); 1.25 fails on 500-1400 px
# (2.526). The image work costs 1.16x less CPU than with 2 on the bench corpus (docs/benchmarks.md).
DEFAULT_DRAFT_GAP = 1.5


class Strict(BaseModel):
    """Base for every manifest section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ReaderOptions(Strict):
    """Per-source reader options; every field is optional and has the dataset's usual default."""

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename native columns, e.g. {url: URL, caption: TEXT} for laion-parquet.",
    )
    split: list[str] | None = Field(
        None, description="Keep only rows of these splits (ocrvqa-json: 1 train, 2 val, 3 test; or split names)."
    )
    max_samples: int | None = Field(None, gt=0, description="Read at most this many rows (after the split filter).")
    max_images: int | None = Field(
        None,
        gt=0,
        le=127,
        description="Drop samples with more images than this (a bad row, counted in the build's status counts).",
    )
    captions_path: str | None = Field(
        None, description="sbu-json legacy layout: the caption text file, line-aligned with the URL file in `paths`."
    )
    answers: Literal["most_common", "all", "multiple_choice"] | None = Field(
        None,
        description="vqav2-json, okvqa-json, aokvqa-json: the target. most_common (default): the annotators' most "
        "common answer; all: one input row per distinct answer; multiple_choice (aokvqa-json): the lettered choices.",
    )


class ImageOptions(Strict):
    """How images are decoded, filtered, resized and re-encoded before they are stored."""

    size: int = Field(224, gt=0, description="Target side in pixels.")
    resize_mode: ResizeMode = Field(
        "center_crop",
        description="center_crop: shorter side to size then crop; keep_ratio: shorter side to size; "
        "keep_ratio_largest: longer side to size; border: longer side to size, pad to a square; no: keep as is.",
    )
    resize_only_if_bigger: bool = Field(False, description="Never upscale: leave images smaller than size alone.")
    encode_format: EncodeFormat = Field("jpg", description="Format images are stored in.")
    encode_quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality.")
    min_image_size: int = Field(0, ge=0, description="Reject images whose shorter side is below this (status: failed).")
    max_aspect_ratio: float | None = Field(None, gt=1, description="Reject images whose long/short side exceeds this.")
    draft_decode: bool = Field(True, description="Let libjpeg decode JPEGs at a reduced DCT scale when downsizing.")
    draft_gap: float = Field(
        DEFAULT_DRAFT_GAP,
        ge=1.0,
        le=8.0,
        description="With draft_decode: a JPEG is decoded at 1/2 scale when that is still at least this many times "
        "the resized size (1/4 and 1/8 need 2 or this, whichever is larger); lanczos3 does the rest. Lower is "
        "faster and softer: 1.5 keeps the stored images as close to a full-decode LANCZOS resize as img2dataset's; "
        "2 is closer and slower; 1 is fastest.",
    )


class DownloadOptions(Strict):
    """How URL images are fetched."""

    connect_timeout: float = Field(5.0, gt=0, description="Seconds to establish a connection.")
    read_timeout: float = Field(10.0, gt=0, description="Seconds without data before a read fails.")
    retries: int = Field(2, ge=0, description="Extra attempts on 5xx, 429 and timeouts (never on other 4xx).")
    backoff: float = Field(0.5, ge=0, description="Base seconds of the exponential back-off (with jitter).")
    threads: int = Field(32, gt=0, description="Requests in flight per shard task.")
    per_host: int = Field(8, gt=0, description="Requests in flight to one host per shard task.")
    max_redirects: int = Field(5, ge=0, description="Redirects followed before giving up.")
    user_agent_token: str | None = Field(None, description="Added to the User-Agent so site owners can identify you.")
    respect_robots: bool = Field(
        True, description="Skip images whose X-Robots-Tag says noai, noimageai, noindex or noimageindex."
    )
    max_bytes: int = Field(20_000_000, gt=0, description="Largest response body accepted.")
    max_pixels: int = Field(89_478_485, gt=0, description="Largest width*height decoded (decompression-bomb guard).")
    allow_private: bool = Field(
        False,
        description="Let URLs reach loopback, private, link-local and other non-public addresses (refused by "
        "default: a URL list must not reach your LAN or a cloud metadata service). The demo serves on 127.0.0.1.",
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Host names, IP addresses or networks (10.1.0.0/16) that URLs may reach even when not public; "
        "a listed name is trusted whatever it resolves to.",
    )

    @field_validator("allow_hosts")
    @classmethod
    def _hosts_parse(cls, v: list[str]) -> list[str]:
        parse_allowed(v)
        return v


class ShardOptions(Strict):
    """The manifest's `shards:` section: output format and image handling for every source."""

    format: ShardFormat = Field("webdataset", description="webdataset (tar) or parquet.")
    samples_per_shard: int = Field(1000, gt=0, description="Input rows per shard (failures included).")
    image: ImageOptions = Field(default_factory=ImageOptions)
    download: DownloadOptions = Field(default_factory=DownloadOptions)
