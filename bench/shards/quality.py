"""`python -m bench.shards.quality`: each tool's stored images against a full-resolution LANCZOS reference.

After `bench.shards.run`: for the first `--n` corpus images, the mean absolute pixel difference (0-255) between
the JPEG each tool stored (tinymix in `WORK/out-tinymix`, img2dataset in `WORK/out-img2dataset`) and the same
center_crop computed by Pillow from a full decode with LANCZOS, not re-encoded. Both tools store JPEG q95, so the
encoder's own loss is in both figures alike. Writes `WORK/quality.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.shards.corpus import image_name
from shards.resize import RESAMPLE, RESIZE_MODES


def stored_images(folder: Path, n: int) -> dict[int, bytes]:
    """Corpus index -> stored JPEG bytes, for indexes below `n`, from every tar under `folder`."""
    found: dict[int, bytes] = {}
    for tar in sorted(folder.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name, member in members.items():
                if not name.endswith(".json"):
                    continue
                meta = json.loads(tf.extractfile(member).read())  # type: ignore[union-attr]
                url = meta.get("url") or meta.get("image")
                index = int(str(url).rsplit("/", 1)[1].split(".")[0])
                jpg = members.get(name[: -len("json")] + "jpg")
                if index < n and jpg is not None:
                    found[index] = tf.extractfile(jpg).read()  # type: ignore[union-attr]
    return found


def reference(path: Path, size: int) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    plan = RESIZE_MODES["center_crop"].plan(img.width, img.height, size, False)
    out = img.resize(plan.scaled, RESAMPLE).crop(plan.crop)
    return np.asarray(out, dtype=np.int16)


def main(argv: list[str] | None = None) -> dict[str, float | int | None]:
    p = argparse.ArgumentParser(prog="python -m bench.shards.quality", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="Images compared (the first n of the corpus).")
    p.add_argument("--size", type=int, default=224, help="Target side (center_crop), as in the run.")
    p.add_argument("--work", type=Path, default=Path("bench/_work/shards"), help="The work folder of bench.shards.run.")
    args = p.parse_args(argv)
    work = args.work.resolve()
    refs = {i: reference(work / "www" / "images" / image_name(i), args.size) for i in range(args.n)}
    result: dict[str, float | int | None] = {"n": args.n}
    for tool, folder in (("tinymix", "out-tinymix"), ("img2dataset", "out-img2dataset")):
        stored = stored_images(work / folder, args.n)
        diffs = [
            float(np.abs(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16) - refs[i]).mean())
            for i, data in stored.items()
        ]
        result[f"{tool}_images"] = len(diffs)
        result[f"{tool}_mean_abs_diff"] = round(float(np.mean(diffs)), 3) if diffs else None
        mad = result[f"{tool}_mean_abs_diff"]
        print(f"{tool:12} {len(diffs):5} images  mean abs diff vs full LANCZOS reference: {mad}")
    (work / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
