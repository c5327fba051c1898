"""A `packing: budget` stage from manifest to loader: each micro batch is one planned bin, served as one row
`[1, micro_batch × seq_len]` with `cu_seqlens`; an independent reading of the plan, other world sizes and a resume
mid-step give the same micro batches."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_loader_fixtures import (
    IMAGE_SIZE,
    SEQ_LEN,
    STAGE,
    assert_batches_equal,
    assert_resumes_mid_step,
    built_stage,
    reference_segment,
    stored_samples,
)
from test_loader_fixtures import (
    stage_loader as loader,
)

from mixer.contract import StageContract
from mixer.loader.images import mean_std
from mixer.loader.pack import pack_budget
from mixer.manifest import load_manifest
from mixer.plan import PlanReader
from mixer.planning import plan_one

MICRO = 2  # the fixture manifest's micro_batch (global_batch 4)


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_tokenizer):
    rows = built_stage(tmp_path_factory, tiny_tokenizer)
    base = tmp_path_factory.mktemp("budget")
    shutil.copytree(rows, base / "out")
    text = (rows.parent / "manifest.yaml").read_text()
    text = text.replace(f"output: {rows}", f"output: {base / 'out'}")
    text = text.replace("    micro_batch: 2\n", "    micro_batch: 2\n    packing: budget\n")
    (base / "manifest.yaml").write_text(text)
    lengths = StageContract.read(str(base / "out"), STAGE).lengths  # the copy's own: locations are relative
    plan_one(load_manifest(base / "manifest.yaml"), 0, str(base / "out"), lengths)
    return base / "out"


@pytest.fixture(scope="module")
def reference(out, tok):
    """Every planned bin in order, read the long way and packed as one budget row."""
    sources = [stored_samples(out, name) for name in ("vqa", "chat")]
    batches = []
    for seq in PlanReader(out / "stages" / STAGE / "plan").sequences(0):
        done = [reference_segment(seg, sources, tok) for seg in seq]
        pixels = [p for _, ps in done for p in ps]
        stacked = torch.stack(pixels) if pixels else torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        segs = [s for s, _ in done]
        batches.append(pack_budget(segs, SEQ_LEN, MICRO, tok.pad_token_id, stacked, mean_std("siglip_vision_model")))
    return batches


def test_budget_stage_plans_bins_of_the_micro_batch_budget(out, tmp_path_factory, tiny_tokenizer):
    meta = json.loads((out / "stages" / STAGE / "stage.json").read_text())
    summary = json.loads((out / "stages" / STAGE / "plan" / "summary.json").read_text())
    by_rows = built_stage(tmp_path_factory, tiny_tokenizer) / "stages" / STAGE / "plan" / "summary.json"
    rows = json.loads(by_rows.read_text())
    assert meta["num_sequences"] == 8 * 4 // MICRO  # 8 steps of 2 bins (the plan's spec says what a bin is)
    assert summary["spec"]["bin_rows"] == MICRO and summary["spec"]["window"] == 8 // MICRO
    assert summary["packing_efficiency"] >= rows["packing_efficiency"]
    for seq in PlanReader(out / "stages" / STAGE / "plan").sequences(0):
        assert int(seq["tokens"].max()) <= SEQ_LEN and int(seq["tokens"].sum()) <= MICRO * SEQ_LEN


def test_budget_micro_batches_are_one_flat_row_equal_to_the_plan(out, tok, reference):
    ld = loader(out, tok)
    assert (ld.steps, ld.grad_accum) == (8, 2)
    got = list(ld)
    assert_batches_equal(got, reference)
    assert all(b["input_ids"].shape == (1, MICRO * SEQ_LEN) for b in got)
    # somewhere a sample straddles the end of the first seq_len: the budget is one row, not micro_batch rows
    straddles = [int(b["segment_ids"][0, SEQ_LEN - 1]) == int(b["segment_ids"][0, SEQ_LEN]) > 0 for b in got]
    assert any(straddles)


def test_budget_world_size_two_and_resume_read_the_same_micro_batches(out, tok, reference):
    ranks = [list(loader(out, tok, world_size=2, rank=r)) for r in range(2)]
    assert_batches_equal([b for pair in zip(*ranks, strict=True) for b in pair], reference)
    assert_resumes_mid_step(out, tok, reference)


def test_a_stage_json_whose_micro_batch_differs_from_the_bins_is_refused(out, tok, tmp_path):
    shutil.copytree(out, tmp_path / "out")
    path = tmp_path / "out" / "stages" / STAGE / "stage.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(meta | {"micro_batch": 4, "global_batch": 8}))
    with pytest.raises(ValueError, match=r"bin_rows 2: must be 1 or micro_batch \(4\)"):
        loader(tmp_path / "out", tok)
    steps = meta["num_sequences"] // meta["global_batch"]  # a contract of rows over a plan of budget bins
    rows = meta | {
        "bin_rows": 1,
        "steps": steps,
        "leftover_sequences": meta["num_sequences"] - steps * meta["global_batch"],
    }
    path.write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="bins of 2 rows, stage.json says 1"):
        loader(tmp_path / "out", tok)
