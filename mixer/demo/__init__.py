"""The demo corpus: synthetic, learnable images and text written in the native layouts of the real VLM datasets.

`write_demo_corpus` is the entry point (`mixer demo-data DIR`); `scenes` draws the content, `formats` writes the files.
"""

from __future__ import annotations

from mixer.demo.corpus import COUNTS, EVAL_COUNTS, write_demo_corpus

__all__ = ["COUNTS", "EVAL_COUNTS", "write_demo_corpus"]
