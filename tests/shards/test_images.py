"""Image decode / filter / resize / encode: exact sizes per mode, colours, rejections, draft error, determinism."""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin
from PIL.PngImagePlugin import PngImageFile

from shards.images import DRAFT_GAP, ImageError, ProcessedImage, draft_request, process_image, to_rgb
from shards.options import ImageOptions
from shards.resize import RESIZE_MODES, apply_plan, resize_mode, scale_side

BIG = 10**9


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@functools.cache
def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """A natural-ish picture: 1/f amplitude spectrum per channel (photos fall off roughly like 1/f)."""
    rng = np.random.default_rng(seed)
    f = np.sqrt(np.fft.rfftfreq(width)[None, :] ** 2 + np.fft.fftfreq(height)[:, None] ** 2)
    f[0, 0] = 1.0
    chans = []
    for _ in range(3):
        spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f
        spec[0, 0] = 0
        chans.append(np.fft.irfft2(spec, s=(height, width)))
    x = np.stack(chans, -1)
    x = (x - x.mean()) / x.std()
    return Image.fromarray(np.clip(128 + 40 * x, 0, 255).astype(np.uint8))


def opts(**kw) -> ImageOptions:
    return ImageOptions(**{"encode_format": "png", **kw})


# --- resize modes: exact sizes --------------------------------------------------------------------------------------

# (source size, only_if_bigger) -> expected output size per mode, at size 224; worked out by hand from img2dataset's
# rules (round(side * 224 / reference side), centred crop / white pad).
SIZE_CASES = {
    "landscape": ((1000, 600), False, {"center_crop": (224, 224), "keep_ratio": (373, 224),
                                       "keep_ratio_largest": (224, 134), "border": (224, 224), "no": (1000, 600)}),
    "portrait": ((600, 1000), False, {"center_crop": (224, 224), "keep_ratio": (224, 373),
                                      "keep_ratio_largest": (134, 224), "border": (224, 224), "no": (600, 1000)}),
    "square": ((500, 500), False, {"center_crop": (224, 224), "keep_ratio": (224, 224),
                                   "keep_ratio_largest": (224, 224), "border": (224, 224), "no": (500, 500)}),
    "landscape_oib": ((1000, 600), True, {"center_crop": (224, 224), "keep_ratio": (373, 224),
                                          "keep_ratio_largest": (224, 134), "border": (224, 224), "no": (1000, 600)}),
    "small_upscaled": ((100, 60), False, {"center_crop": (224, 224), "keep_ratio": (373, 224),
                                          "keep_ratio_largest": (224, 134), "border": (224, 224), "no": (100, 60)}),
    "small_oib": ((100, 60), True, {"center_crop": (100, 60), "keep_ratio": (100, 60),
                                    "keep_ratio_largest": (100, 60), "border": (100, 60), "no": (100, 60)}),
    # shorter side fits, longer does not: img2dataset neither crops (center_crop) nor scales by the short side
    "between_oib": ((300, 200), True, {"center_crop": (300, 200), "keep_ratio": (300, 200),
                                       "keep_ratio_largest": (224, 149), "border": (224, 224), "no": (300, 200)}),
    "exact_size_oib": ((224, 224), True, {"center_crop": (224, 224), "keep_ratio": (224, 224),
                                          "keep_ratio_largest": (224, 224), "border": (224, 224), "no": (224, 224)}),
}  # fmt: skip


@pytest.mark.parametrize("mode", sorted(RESIZE_MODES))
@pytest.mark.parametrize("case", sorted(SIZE_CASES))
def test_output_size_per_mode(case: str, mode: str) -> None:
    (w, h), only_if_bigger, expected = SIZE_CASES[case]
    plan = RESIZE_MODES[mode].plan(w, h, 224, only_if_bigger)
    assert plan.final == expected[mode]
    src = encode(Image.new("RGB", (w, h), (90, 120, 150)), "JPEG")
    out = process_image(src, ImageOptions(resize_mode=mode, resize_only_if_bigger=only_if_bigger), BIG)
    assert (out.width, out.height) == expected[mode]
    assert decode(out.data).size == expected[mode]
    assert (out.orig_width, out.orig_height) == (w, h)


def test_mode_callables_follow_the_contract() -> None:
    img = Image.new("RGB", (1000, 600), "red")
    assert RESIZE_MODES["center_crop"](img, 224, False).size == (224, 224)
    assert RESIZE_MODES["keep_ratio"](img, 224, False).size == (373, 224)
    assert RESIZE_MODES["border"](Image.new("RGB", (100, 60)), 224, True).size == (100, 60)


def test_unknown_mode_is_rejected_by_the_table() -> None:
    with pytest.raises(ValueError, match=r"unknown resize_mode 'stretch'.*center_crop"):
        resize_mode("stretch")


def test_scaling_rounds_half_to_even_like_albumentations() -> None:
    assert scale_side(6, 4, 3, min) == (4, 3)  # 4.5 -> 4
    assert scale_side(10, 4, 3, min) == (8, 3)  # 7.5 -> 8
    assert scale_side(5000, 1, 224, max) == (224, 1)  # never below one pixel


def test_crop_and_pad_are_centred() -> None:
    plan = RESIZE_MODES["center_crop"].plan(1000, 600, 224, False)
    assert plan.scaled == (373, 224) and plan.crop == (74, 0, 298, 224)
    plan = RESIZE_MODES["border"].plan(1000, 600, 224, False)
    assert plan.scaled == (224, 134) and plan.offset == (0, 45)
    out = decode(
        process_image(encode(Image.new("RGB", (1000, 600), (200, 10, 10))), opts(resize_mode="border"), BIG).data
    )
    column = [out.getpixel((100, y)) for y in (0, 44, 45, 178, 179, 223)]
    assert column == [(255, 255, 255)] * 2 + [(200, 10, 10)] * 2 + [(255, 255, 255)] * 2


def test_center_crop_keeps_the_middle() -> None:
    img = Image.new("RGB", (900, 300), "red")
    img.paste((0, 0, 255), (300, 0, 600, 300))  # blue middle third: exactly the crop (LANCZOS rings at its edges)
    out = decode(process_image(encode(img), opts(resize_mode="center_crop"), BIG).data)
    assert out.size == (224, 224) and {out.getpixel((x, 112)) for x in (8, 112, 215)} == {(0, 0, 255)}


@pytest.mark.parametrize("mode", sorted(RESIZE_MODES))
def test_pixels_equal_the_table_applied_to_a_plain_decode(mode: str) -> None:
    src = noise(640, 400, seed=3)
    out = process_image(encode(src), opts(resize_mode=mode, size=128), BIG)
    expected = RESIZE_MODES[mode](src, 128, False)
    assert np.array_equal(np.asarray(decode(out.data)), np.asarray(expected))


# --- colour handling ------------------------------------------------------------------------------------------------


def test_alpha_is_composited_on_white() -> None:
    img = Image.new("RGBA", (40, 30), (255, 0, 0, 128))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 255, 255))
    out = decode(process_image(encode(img), opts(resize_mode="no"), BIG).data)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)
    assert out.getpixel((5, 5)) == (255, 127, 127)  # img2dataset: a/255*c + 255 - a


def test_palette_transparency_and_la_become_white() -> None:
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 0)
    out = decode(process_image(encode(pal, transparency=0), opts(resize_mode="no"), BIG).data)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((3, 3)) == (10, 200, 30)
    la = Image.new("LA", (8, 8), (50, 0))
    assert decode(process_image(encode(la), opts(resize_mode="no"), BIG).data).getpixel((2, 2)) == (255, 255, 255)


def palette_image() -> Image.Image:
    img = Image.new("P", (16, 16), 1)
    img.putpalette([0, 0, 0, 30, 60, 90] + [0] * 762)
    return img


@pytest.mark.parametrize(
    ("img", "fmt", "expected", "tolerance"),
    [
        (Image.new("L", (16, 16), 100), "PNG", (100, 100, 100), 0),
        (palette_image(), "PNG", (30, 60, 90), 0),
        (Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", (0, 255, 255), 3),  # cyan
        (Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "TIFF", (255, 255, 255), 0),
        (Image.fromarray(np.full((16, 16), 0x8040, np.uint16)), "PNG", (0x80, 0x80, 0x80), 0),  # 16-bit grey
    ],
    ids=["L", "P", "CMYK-jpeg", "CMYK-tiff", "I16"],
)
def test_non_rgb_inputs_become_rgb(img: Image.Image, fmt: str, expected: tuple, tolerance: int) -> None:
    data = encode(img, fmt)
    assert decode(data).mode == img.mode  # the file really holds that mode
    out = decode(process_image(data, opts(resize_mode="no"), BIG).data)
    assert out.mode == "RGB" and out.size == img.size
    assert np.abs(np.array(out.getpixel((8, 8))) - np.array(expected)).max() <= tolerance


def test_to_rgb_keeps_rgb_untouched() -> None:
    img = noise(20, 10)
    assert to_rgb(img) is img


def test_exif_orientation_is_applied_before_resizing() -> None:
    img = Image.new("RGB", (300, 200), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 150, 200))  # red left half
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left half ends up on top
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    out = process_image(data, opts(resize_mode="keep_ratio", size=100), BIG)
    assert (out.orig_width, out.orig_height) == (200, 300)
    assert (out.width, out.height) == (100, 150)
    shown = decode(out.data)
    assert shown.getpixel((50, 10))[0] > 200 and shown.getpixel((50, 140))[2] > 200


# --- rejections -----------------------------------------------------------------------------------------------------


def reason(data: bytes, options: ImageOptions | None = None, max_pixels: int = BIG) -> str:
    with pytest.raises(ImageError) as err:
        process_image(data, options or opts(), max_pixels)
    assert isinstance(err.value, ValueError) and str(err.value) == err.value.reason
    return err.value.reason


def test_non_images_are_named() -> None:
    assert reason(b"") == "not an image: empty"
    assert reason(b"\n<!DOCTYPE html><html><body>404 Not Found</body></html>") == "not an image: html or xml"
    assert reason(bytes(range(256)) * 4) == "not an image"


def test_truncated_and_corrupt_images_are_named() -> None:
    jpeg = encode(noise(300, 200), "JPEG", quality=90)
    assert reason(jpeg[: len(jpeg) // 2]).startswith("corrupt image: image file is truncated")
    assert reason(jpeg[:400]).startswith("corrupt image: ")
    png = encode(noise(300, 200))
    assert reason(png[: len(png) // 2]).startswith("corrupt image: ")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside IHDR's CRC
    assert reason(bytes(bad_crc)) == "corrupt image: unreadable PNG header"
    assert reason(b"\xff\xd8\xff\xe0" + bytes(12)) == "corrupt image: unreadable JPEG header"


@pytest.mark.parametrize(
    "fmt, kw",
    [("JPEG", {"quality": 95}), ("JPEG", {"quality": 95, "progressive": True}), ("PNG", {}), ("WEBP", {"quality": 90})],
)
def test_files_larger_than_pillows_read_block_decode_to_the_same_pixels(fmt: str, kw: dict) -> None:
    """`_open` hands the decoder the whole file at once; the pixels must be those of Pillow's 64 kB block reads."""
    from shards.images import _open

    data = encode(noise(900, 700, seed=3), fmt, **kw)
    assert len(data) > 2 * ImageFile.MAXBLOCK
    img = _open(data, BIG)
    img.load()
    assert img.tobytes() == decode(data).tobytes()
    assert reason(data[: len(data) * 3 // 4]).startswith("corrupt image: ")


def png_header_only(width: int, height: int, rows: int = 16) -> bytes:
    """A greyscale PNG whose IHDR claims width x height, with a few zero rows of data: a bomb in a few hundred bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(rows * (width + 1)), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(PngImageFile, "load", refuse)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", refuse)


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bombs_are_rejected_from_the_header() -> None:
    bomb = png_header_only(40000, 40000)
    assert len(bomb) < 2000
    # Above 2 * PIL.Image.MAX_IMAGE_PIXELS Pillow's own guard refuses to open it; we report it the same way.
    assert reason(bomb, max_pixels=89_478_485) == "too many pixels: 1600000000 > 89478485"
    # Below Pillow's hard limit, ours is the only line.
    assert reason(png_header_only(12000, 12000), max_pixels=89_478_485) == "too many pixels: 12000 x 12000 > 89478485"
    assert reason(encode(noise(200, 120), "JPEG"), max_pixels=10_000) == "too many pixels: 200 x 120 > 10000"


@pytest.mark.usefixtures("no_pixel_decoding")
def test_size_and_aspect_filters_run_before_decoding() -> None:
    assert reason(encode(noise(100, 60)), opts(min_image_size=64)) == "too small: 100x60 < 64"
    assert reason(encode(noise(60, 300)), opts(max_aspect_ratio=2.0)) == "aspect ratio 5.00 > 2"


def test_filters_accept_the_boundary() -> None:
    assert process_image(encode(noise(100, 64)), opts(min_image_size=64), BIG).orig_height == 64
    assert process_image(encode(noise(200, 100)), opts(max_aspect_ratio=2.0), BIG).orig_width == 200


# --- JPEG draft decoding --------------------------------------------------------------------------------------------


def test_draft_request_keeps_twice_the_resampled_size() -> None:
    for w, h in [(1800, 1350), (4000, 3000), (1000, 4000), (3001, 2001)]:
        plan = RESIZE_MODES["center_crop"].plan(w, h, 224, False)
        request = draft_request(plan, gap=2.0)
        assert request is not None
        img = Image.open(io.BytesIO(encode(Image.new("RGB", (w, h)), "JPEG")))
        img.draft("RGB", request)
        assert img.size[0] >= DRAFT_GAP * plan.scaled[0] and img.size[1] >= DRAFT_GAP * plan.scaled[1]
        assert img.size[0] < w  # a DCT scale did apply
    assert draft_request(RESIZE_MODES["center_crop"].plan(1024, 768, 224, False), gap=2.0) is None  # < 4x: no scale
    assert draft_request(RESIZE_MODES["no"].plan(4000, 3000, 224, False)) is None
    # The request is the 1/2-scale size itself, in the file's stored orientation (1800 x 1350).
    assert draft_request(RESIZE_MODES["keep_ratio"].plan(1350, 1800, 224, False), True, gap=2.0) == (900, 675)


@pytest.mark.parametrize("orientation", [1, 6])
def test_draft_decode_is_close_to_a_full_decode(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(noise(1800, 1350, seed=7), "JPEG", quality=95, exif=exif.tobytes())
    drafted = process_image(data, opts(draft_decode=True), BIG)
    full = process_image(data, opts(draft_decode=False), BIG)
    assert drafted.data != full.data  # the draft path really ran
    a, b = (np.asarray(decode(x.data), dtype=float) for x in (drafted, full))
    assert a.shape == b.shape == (224, 224, 3)
    assert np.abs(a - b).mean() < 1.0  # measured about 0.6; an undrafted-size gap of 1 gives 1.5-4.4


# --- encoding, determinism, hashes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_each_format_round_trips(fmt: str, pil_format: str) -> None:
    src = encode(noise(500, 300, seed=1), "JPEG", quality=95)
    out = process_image(src, ImageOptions(encode_format=fmt, resize_mode="keep_ratio", size=96), BIG)
    assert isinstance(out, ProcessedImage) and out.ext == fmt
    img = decode(out.data)
    assert img.format == pil_format and img.mode == "RGB" and img.size == (out.width, out.height) == (160, 96)
    first = process_image(src, ImageOptions(encode_format=fmt, resize_mode="keep_ratio", size=96), BIG)
    assert first.data == out.data  # byte-identical on a rerun


def test_jpeg_settings_are_pinned_and_metadata_dropped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    src = noise(400, 300, seed=2)
    data = encode(src, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=b"\0" * 128)
    out = process_image(data, ImageOptions(size=128), BIG)
    img = decode(out.data)
    assert JpegImagePlugin.get_sampling(img) == 2  # 4:2:0
    assert "exif" not in img.info and "icc_profile" not in img.info and len(img.getexif()) == 0
    low = process_image(data, ImageOptions(size=128, encode_quality=30), BIG)
    assert len(low.data) < len(out.data)


def test_sha256_is_of_the_original_bytes() -> None:
    data = encode(noise(300, 200))
    out = process_image(data, ImageOptions(), BIG)
    assert out.sha256 == hashlib.sha256(data).hexdigest() != hashlib.sha256(out.data).hexdigest()


def test_same_input_gives_same_bytes_across_modes() -> None:
    data = encode(noise(700, 500, seed=5), "JPEG", quality=92)
    for mode in RESIZE_MODES:
        runs = {process_image(data, ImageOptions(resize_mode=mode), BIG).data for _ in range(3)}
        assert len(runs) == 1


def test_apply_plan_accepts_a_smaller_drafted_image() -> None:
    plan = RESIZE_MODES["keep_ratio"].plan(1000, 600, 224, False)
    assert apply_plan(Image.new("RGB", (500, 300)), plan).size == (373, 224)
