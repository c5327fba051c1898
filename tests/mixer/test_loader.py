"""StageLoader: batches equal an independent reading of the plan; layout across world sizes; exact resume; skips."""

from __future__ import annotations

import json
import logging
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from test_loader_fixtures import (
    STAGE,
    assert_batches_equal,
    assert_resumes_mid_step,
    labelled,
    plan_sequences,
    reference_batches,
)
from test_loader_fixtures import (
    stage_loader as loader,
)

from mixer.batch import normalize_pixels
from mixer.contract import StageContract
from mixer.loader import Layout, StageLoader
from mixer.loader.images import CLIP_MEAN_STD, SIGLIP_MEAN_STD
from mixer.manifest import load_manifest
from mixer.plan import plan_stage
from mixer.planning import stage_inputs, stage_spec


@pytest.fixture(scope="module")
def reference(out, tiny_tokenizer):
    return reference_batches(out, tiny_tokenizer)


# ---- layout


def test_layout_formula_and_world_size_invariance():
    one = Layout(global_batch=8, micro_batch=2, world_size=1)
    assert one.grad_accum == 4
    assert [one.first_sequence(m) for m in range(6)] == [0, 2, 4, 6, 8, 10]
    two = [Layout(8, 2, 2, r) for r in range(2)]
    assert two[0].grad_accum == 2
    assert [two[1].first_sequence(m) for m in range(4)] == [2, 6, 10, 14]
    four = [Layout(8, 1, 4, r) for r in range(4)]
    for step in range(3):
        for layouts in ([one], two, four):
            a = layouts[0].grad_accum
            covered = sorted(
                lay.first_sequence(step * a + i) + j
                for lay in layouts
                for i in range(a)
                for j in range(lay.micro_batch)
            )
            assert covered == list(range(step * 8, step * 8 + 8))


@pytest.mark.parametrize(
    "g,m,w,message",
    [(4, 2, 3, "global_batch 4 is not a multiple of micro_batch 2 × world_size 3 = 6"), (4, 0, 1, "must all be")],
)
def test_layout_rejects_a_split_with_no_whole_accumulation(g, m, w, message):
    with pytest.raises(ValueError, match=message):
        Layout(g, m, w)


def test_steps_grad_accum_and_errors(out, tok):
    ld = loader(out, tok)
    assert (ld.steps, ld.grad_accum) == (8, 2)  # 32 sequences, global batch 4, micro batch 2
    assert loader(out, tok, world_size=2, rank=1).grad_accum == 1
    with pytest.raises(ValueError, match="global_batch 4 is not a multiple of micro_batch 2 × world_size 4 = 8"):
        loader(out, tok, world_size=4)
    with pytest.raises(FileNotFoundError, match="stages/nope/stage.json: no such stage plan"):
        StageLoader(str(out), "nope", tokenizer=tok)
    with pytest.raises(ValueError, match="start_step 9 outside 0..8"):
        loader(out, tok, start_step=9)


# ---- batches


def test_batches_equal_the_reference_and_count_themselves(out, tok, reference):
    ld = loader(out, tok)
    got = list(ld)
    assert_batches_equal(got, reference)
    assert list(ld) == []  # the stage is over
    stats = ld.stats
    assert stats["batches"] == 16 and stats["sequences"] == 32 and stats["skipped"] == {}
    assert stats["samples"] == sum(len(s) for s in plan_sequences(out))
    assert stats["images"] == sum(b["pixel_values"].shape[0] for b in got) > 0
    assert stats["tokens"] == sum(int((b["segment_ids"] > 0).sum()) for b in got)
    assert stats["batches_per_s"] > 0 and stats["wait_s"] >= 0
    assert sum(labelled(b) for b in got) > 0


def test_normalisation_follows_the_stage_tower_unless_overridden(out, tok, reference, tmp_path):
    ld = loader(out, tok)  # stage.json names siglip_vision_model
    assert ld.spec.mean_std == SIGLIP_MEAN_STD
    clip = loader(out, tok, image_mean_std=[list(CLIP_MEAN_STD[0]), list(CLIP_MEAN_STD[1])])
    assert clip.spec.mean_std == CLIP_MEAN_STD
    first = next(iter(clip))
    assert torch.equal(first["pixel_values"], reference[0]["pixel_values"])  # the same bytes, another normalisation
    assert torch.equal(first["pixel_norm"], torch.tensor(CLIP_MEAN_STD))
    assert torch.equal(reference[0]["pixel_norm"], torch.tensor(SIGLIP_MEAN_STD))
    normalised = normalize_pixels(first)["pixel_values"]
    assert not torch.equal(normalised, normalize_pixels(reference[0])["pixel_values"])
    with pytest.raises(ValueError, match="image_mean_std"):
        loader(out, tok, image_mean_std=(0.5, 0.5))

    shutil.copytree(out / "stages", tmp_path / "stages")
    meta = json.loads((tmp_path / "stages" / STAGE / "stage.json").read_text())
    meta.pop("mean")  # a stage.json is read through its contract: every field is there, once
    (tmp_path / "stages" / STAGE / "stage.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"stages/s1/stage.json: mean: Field required \(rerun `mixer build`"):
        loader(tmp_path, tok)
    meta.update(mean=[0.5, 0.5, 0.5], std=[0.5, 0.0, 0.5])
    (tmp_path / "stages" / STAGE / "stage.json").write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match=r"stage.json: \(top level\): Value error, std \(0.5, 0.0, 0.5\): must be positive"
    ):
        loader(tmp_path, tok)


def test_two_workers_give_the_same_batches_in_order(out, tok, reference):
    ld = loader(out, tok, num_workers=2, prefetch_factor=2)
    assert_batches_equal(list(ld), reference)


def test_world_size_two_reads_the_same_global_batches(out, tok, tiny_tokenizer, reference):
    ranks = [list(loader(out, tok, world_size=2, rank=r)) for r in range(2)]
    assert_batches_equal(ranks[1], reference_batches(out, tiny_tokenizer, rank=1, world=2))
    # with G=4, M=2: W=1 takes micro batches a=0,1 of a step; W=2 gives a=0 to rank 0 and a=1 to rank 1
    interleaved = [b for pair in zip(ranks[0], ranks[1], strict=True) for b in pair]
    assert_batches_equal(interleaved, reference)


# ---- resume


def test_resume_mid_step_is_exact(out, tok, reference):
    assert_resumes_mid_step(out, tok, reference)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_on_another_world_size_at_a_step_boundary(out, tok, reference, workers):
    one = loader(out, tok)
    it = iter(one)
    for _ in range(6):
        next(it)
    state = one.state_dict()
    assert (state["step"], state["micro"]) == (3, 0)
    rest = []
    for r in range(2):
        ld = loader(out, tok, world_size=2, rank=r, num_workers=workers)
        ld.load_state_dict(state)
        rest.append(list(ld))
    assert_batches_equal([b for pair in zip(*rest, strict=True) for b in pair], reference[6:])
    # and back: a rank of the W=2 run resumes on one rank
    two = loader(out, tok, world_size=2, rank=0)
    two.load_state_dict(state)
    it = iter(two)
    next(it)
    back = loader(out, tok, num_workers=workers)
    back.load_state_dict(two.state_dict())
    assert_batches_equal(list(back), reference[8:])


def test_start_step_and_bad_states(out, tok, reference):
    assert_batches_equal(list(loader(out, tok, start_step=7)), reference[14:])
    two = loader(out, tok, world_size=2)
    with pytest.raises(ValueError, match="mid-step for world_size 1 × micro_batch 2"):
        two.load_state_dict({"step": 1, "micro": 1, "world_size": 1, "micro_batch": 2, "global_batch": 4})
    with pytest.raises(ValueError, match="global_batch 8 differs"):
        two.load_state_dict({"step": 1, "micro": 0, "global_batch": 8})
    with pytest.raises(ValueError, match="step 9 micro 0 outside"):
        two.load_state_dict({"step": 9, "micro": 0})


def test_opens_a_plan_late_without_reading_the_chunks_before_it(out, tok, reference, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    m = load_manifest(out.parent / "manifest.yaml")
    lengths = StageContract.read(str(out), STAGE).lengths
    inputs = stage_inputs(m, m.stages[0], lengths)
    chunks = copy / "stages" / STAGE / "plan" / "chunks"
    plan_stage(inputs, stage_spec(m, m.stages[0], inputs), chunks.parent, windows_per_chunk=1)  # same plan, 4 chunks
    assert sorted(p.name for p in chunks.glob("*.segments.npy")) == [f"0000{i}.segments.npy" for i in range(4)]
    for i in range(3):  # step 7 reads sequences 28-31: window 3, the last chunk
        (chunks / f"0000{i}.segments.npy").unlink()
        (chunks / f"0000{i}.sequences.npy").unlink()
    assert_batches_equal(list(loader(copy, tok, start_step=7, num_workers=2)), reference[14:])


# ---- corrupt and missing samples


def test_corrupt_and_missing_samples_are_skipped_counted_and_logged_once(out, tok, tmp_path, caplog):
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    # the plan names its shards relative to its folder, so the copied build reads its own (damaged) shards
    assert StageContract.read(str(copy), STAGE).shards == {n: str(copy / "sources" / n) for n in ("vqa", "chat")}
    seqs = plan_sequences(out)
    index = {name: pq.read_table(copy / "sources" / name / "index.parquet").to_pylist() for name in ("vqa", "chat")}
    names = ("vqa", "chat")
    # corrupt the image of the first planned vqa sample that has one, in place inside the tar
    victim = next(
        index["vqa"][s["sample"]]
        for seq in seqs
        for s in seq
        if s["source"] == 0 and index["vqa"][s["sample"]]["image_offset"] >= 0
    )
    with open(copy / "sources" / "vqa" / f"{victim['shard']:05d}.tar", "r+b") as f:
        f.seek(victim["image_offset"])
        f.write(b"\xff" * victim["image_size"])
    (copy / "sources" / "chat" / "00001.tar").unlink()

    # a text-only sample of the missing shard is still served: its tokens are stored in the length index
    lost = {f"vqa/{victim['key']}"} | {
        f"chat/{r['key']}" for r in index["chat"] if r["shard"] == 1 and r["image_offset"] >= 0
    }
    planned = [[f"{names[s['source']]}/{index[names[s['source']]][s['sample']]['key']}" for s in seq] for seq in seqs]
    expected_skips = [k for seq in planned for k in seq if k in lost]
    assert len(expected_skips) >= 2

    with caplog.at_level(logging.WARNING, logger="mixer.loader.dataset"):
        ld = loader(copy, tok, num_workers=2)
        got = list(ld)
    stats = ld.stats
    assert stats["skipped_total"] == len(expected_skips)
    assert set(stats["skipped"]) == set(expected_skips)
    assert stats["skipped"][f"vqa/{victim['key']}"].startswith("ChecksumMismatch")  # checked before decoding
    assert all(r.startswith("FileNotFoundError") for k, r in stats["skipped"].items() if k.startswith("chat/"))
    logged = [r.getMessage() for r in caplog.records if "skipped sample" in r.getMessage()]
    assert sorted(m.split("skipped sample ")[1].split(":")[0] for m in logged) == sorted(set(expected_skips))

    # every other segment is still there, in order: rows keep the surviving segments of their sequence
    assert len(got) == 16
    for i, b in enumerate(got):
        for row in range(2):
            kept = [k for k in planned[(i // 2) * 4 + (i % 2) * 2 + row] if k not in lost]
            assert int(b["segment_ids"][row].max()) == len(kept)
    assert stats["samples"] == sum(len(s) for s in seqs) - len(expected_skips)


def test_iterating_leaves_the_global_rng_alone(out, tok, reference):
    """The DataLoader seeds its workers from its own generator: a resumed run's restored RNG stays where it was."""
    import random

    import numpy as np

    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    batches = list(loader(out, tok))
    assert torch.equal(torch.get_rng_state(), before[0])
    assert random.getstate() == before[1] and np.array_equal(np.random.get_state()[1], before[2])
    assert_batches_equal(batches, reference)
