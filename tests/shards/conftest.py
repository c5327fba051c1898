"""Shared fixtures for the shards tests: small JPEGs."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image


def jpeg(seed: int, w: int = 160, h: int = 120) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(6):
        x, y = rng.randrange(w), rng.randrange(h)
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, min(w, x + 30), min(h, y + 30)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {f"img{i}.jpg": jpeg(i, 160 + 8 * i, 120 + 4 * i) for i in range(24)}
