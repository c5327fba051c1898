"""The demo manifest's four stage plans, planned from fixed synthetic length indexes, pinned by digest.

A refactor of the planner or of the mixer→train seam must keep these bytes identical; a commit that changes plans on
purpose updates the digests here and says why in its message.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mixer.manifest import load_manifest
from mixer.plan import SourceInput, plan_stage
from mixer.planning import UsableLengths, stage_spec

ROOT = Path(__file__).resolve().parents[2]

# sha256 over (relative path, file sha256) of every file of each stage's plan folder
PINNED = {
    "warmup": "cc54de27807c14ca1aa0fdf3c4f038c98380dab88d9346d3c7e24b238e2f51f2",
    "pretrain": "cf7eb48de058adadd4d64204260854dce097b52698f85bc09443864c44c7fe22",
    "instruction": "878a46b0839f5a7148356b4285425310c0669b11c4041d25984c66d99b7b1753",
    "multitask": "b88b11844851d0be7bd80cf48caa078c077f71080ca2ae7b2d31699e4419d19b",
}


def _source(name: str, weight: float, seq_len: int, n: int) -> SourceInput:
    """A source of `n` samples whose lengths, cut points and image counts derive from its name only."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little"))
    lengths = rng.integers(20, int(seq_len * 1.3), size=n).astype(np.int32)
    lengths[rng.random(n) < 0.02] = 0  # failed tokenisations read as unusable
    turns = rng.integers(1, 4, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(turns)
    values = np.concatenate(
        [
            np.sort(rng.integers(1, max(2, int(length)), size=k)).astype(np.int32)
            for length, k in zip(lengths, turns, strict=True)
        ]
    )
    images = np.ones(n, dtype=np.int8)
    return SourceInput(name, weight, UsableLengths(lengths), (offsets, values), images, None)  # type: ignore[arg-type]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.mark.parametrize("stage_name", list(PINNED))
def test_demo_stage_plans_are_pinned(stage_name: str, tmp_path: Path) -> None:
    m = load_manifest(ROOT / "manifests" / "demo.yaml", check_paths=False)
    stage = next(s for s in m.stages if s.name == stage_name)
    sizes = {"llava": 399, "textvqa": 150, "ocrvqa": 120, "docvqa": 60, "chartqa": 90}
    inputs = [_source(name, weight, stage.seq_len, sizes.get(name, 300)) for name, weight in stage.mixture.items()]
    spec = stage_spec(m, stage, inputs)
    plan_stage(inputs, spec, tmp_path / "plan")
    assert _digest(tmp_path / "plan") == PINNED[stage_name]
