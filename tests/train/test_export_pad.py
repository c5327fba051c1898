"""An export of a `pad` stage carries the padding in its 🤗 image processor: the processor's pixels equal the
loader's (`mixer.loader.images.preprocess(mode="pad")`), and a `crop` export's processor crops as the loader does."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mixer.loader.images import preprocess
from train.model.export import image_processor

NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _picture(w: int, h: int) -> bytes:
    rng = np.random.default_rng(w * 7 + h)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize(("w", "h"), [(40, 24), (24, 40), (32, 32)])
def test_export_processor_fits_images_as_the_loader_did(mode, w, h):
    data = _picture(w, h)
    proc = image_processor(None, 32, NORM[0], NORM[1], pad=mode == "pad")  # type: ignore[arg-type]
    got = proc(images=Image.open(io.BytesIO(data)).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    want = preprocess(data, 32, NORM, mode)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if w != h:  # the two modes really differ on a non-square image
        other = preprocess(data, 32, NORM, "crop" if mode == "pad" else "pad")
        assert (got - other).abs().max() > 0.1
