"""A documented LLaVA-mix-like token-length distribution, shared by `bench/scale` and `bench/mixer`.

It mimics LLaVA-1.5's `llava_v1_5_mix665k` grouped into six sources, with the shares of the paper's Table 7
(LLaVA-Instruct 158k, ShareGPT 40k, VQAv2 + GQA + OK-VQA + A-OKVQA 230k, OCR-VQA 80k, TextCaps 22k,
RefCOCO + VG 134k). A sample's length is its text tokens plus `IMAGE_TOKENS` (576, CLIP-L/336) per image;
ShareGPT is text-only. Text lengths are log-normal with the stated median, truncated to the stated range
(out-of-range draws are redrawn):

| source          | samples | image | text tokens (median, range) | what it stands for                          |
|-----------------|---------|-------|-----------------------------|---------------------------------------------|
| llava_instruct  | 158k    | 1     | 320, 100-1500               | conversations, detailed descriptions, reasoning |
| sharegpt        | 40k     | 0     | 700, 100-3000               | text-only chat (the only source longer than 2076) |
| vqa             | 230k    | 1     | 110, 20-400                 | short QA turns merged per image              |
| ocr_vqa         | 80k     | 1     | 120, 40-300                 | book-cover QA                                |
| textcaps        | 22k     | 1     | 35, 20-60                   | one caption                                  |
| grounding       | 134k    | 1     | 150, 40-600                 | region captions / referring boxes            |

Turn ends (where a long sample may be cut) are drawn as a sample's text split into turns of 30-400 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_TOKENS = 576


@dataclass(frozen=True)
class SourceLaw:
    """How one source's lengths are drawn: samples in the mix, images per sample, log-normal text length."""

    name: str
    samples: int
    images: int
    median: float
    lo: int
    hi: int
    sigma: float = 0.7


LLAVA_MIX: tuple[SourceLaw, ...] = (
    SourceLaw("llava_instruct", 158_000, 1, 320, 100, 1500),
    SourceLaw("sharegpt", 40_000, 0, 700, 100, 3000, sigma=0.8),
    SourceLaw("vqa", 230_000, 1, 110, 20, 400),
    SourceLaw("ocr_vqa", 80_000, 1, 120, 40, 300, sigma=0.5),
    SourceLaw("textcaps", 22_000, 1, 35, 20, 60, sigma=0.3),
    SourceLaw("grounding", 134_000, 1, 150, 40, 600),
)


def sample_fractions() -> np.ndarray:
    """Each source's share of the mix by samples (sums to 1), in `LLAVA_MIX` order."""
    n = np.array([law.samples for law in LLAVA_MIX], dtype=np.float64)
    return n / n.sum()


def draw(law: SourceLaw, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw `n` samples of one source: (lengths int32 [n] including image tokens, images int8 [n])."""
    text = np.rint(np.exp(rng.normal(np.log(law.median), law.sigma, size=n)))
    bad = (text < law.lo) | (text > law.hi)
    while bad.any():  # redraw out-of-range values (a truncated log-normal; clipping would pile mass at the bounds)
        text[bad] = np.rint(np.exp(rng.normal(np.log(law.median), law.sigma, size=int(bad.sum()))))
        bad = (text < law.lo) | (text > law.hi)
    text = text.astype(np.int32)
    lengths = text + np.int32(law.images * IMAGE_TOKENS)
    return lengths.astype(np.int32), np.full(n, law.images, dtype=np.int8)


def draw_turn_ends(lengths: np.ndarray, images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CSR turn ends (offsets int64 [n+1], values int32) for samples: after the image, every 30-400 text tokens.

    The last turn end is the sample's full length, and none falls inside the leading image span.
    """
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    values: list[np.ndarray] = []
    for i, (length, img) in enumerate(zip(lengths.tolist(), images.tolist(), strict=True)):
        start = int(img) * IMAGE_TOKENS
        steps = rng.integers(30, 401, size=max(1, (length - start) // 30 + 1))
        ends = start + np.cumsum(steps)
        ends = np.append(ends[ends < length], length).astype(np.int32)
        values.append(ends)
        offsets[i + 1] = offsets[i] + len(ends)
    return offsets, np.concatenate(values) if values else np.zeros(0, dtype=np.int32)
