"""The stage contract: what planning writes, the loader and the trainer read; one step count; the one planning
entry point with `mixture=` / `exclude=` / `folder=` (an ablation proxy's plan, reading the build's shards)."""

from __future__ import annotations

import json

import pytest
from test_loader_fixtures import STAGE, plan_sequences

from mixer.contract import StageContract, steps_of
from mixer.inspect import inspect_build
from mixer.lengths import read_lengths
from mixer.loader import StageLoader
from mixer.loader.images import SIGLIP_MEAN_STD
from mixer.manifest import load_manifest
from mixer.plan import PlanReader
from mixer.planning import held_out_rows, plan_line, plan_stage_at
from mixer.summary import manifest_summary


@pytest.mark.parametrize(("n", "g", "want"), [(32, 4, (8, 0)), (33, 4, (8, 1)), (3, 4, (0, 3)), (7, 1, (7, 0))])
def test_steps_are_whole_global_batches_and_the_rest_is_leftover(n, g, want):
    assert steps_of(n, g) == want


def test_the_contract_of_a_planned_stage(out):
    c = StageContract.read(str(out), STAGE)
    plan = PlanReader(out / "stages" / STAGE / "plan")
    assert c.sources == ("vqa", "chat") and c.shards == {s: str(out / "sources" / s) for s in c.sources}
    assert (c.num_sequences, c.global_batch, c.micro_batch, c.steps, c.leftover_sequences) == (len(plan), 4, 2, 8, 0)
    assert (c.mean, c.std) == SIGLIP_MEAN_STD  # the tower's, fixed once at planning
    assert (c.seq_len, c.window, c.image_size, c.image_tokens, c.template) == (96, 8, 32, 8, "tinygptv")


def test_validate_inspect_and_the_loader_print_the_same_steps(out, tok):
    m = load_manifest(out.parent / "manifest.yaml")
    assert f"1. {STAGE}: 8 steps of 4 seq x 96 tok" in manifest_summary(m)
    report = inspect_build(str(out))["stages"][STAGE]
    assert (report["steps"], report["leftover_sequences"]) == (8, 0)
    assert StageLoader(str(out), STAGE, tokenizer=tok, num_workers=0).steps == 8


def test_a_contract_that_does_not_add_up_is_refused_naming_the_file(out, tmp_path):
    meta = json.loads((out / "stages" / STAGE / "stage.json").read_text())
    (tmp_path / "stages" / STAGE).mkdir(parents=True)
    path = tmp_path / "stages" / STAGE / "stage.json"
    path.write_text(json.dumps({**meta, "steps": 9}))
    with pytest.raises(
        ValueError, match=r"stage.json: \(top level\): Value error, steps 9 and leftover_sequences 0 do"
    ):
        StageContract.read(str(tmp_path), STAGE)
    path.write_text(json.dumps({**meta, "shards": {"vqa": "x"}}))
    with pytest.raises(ValueError, match="shards and lengths must name exactly the stage's sources"):
        StageContract.read(str(tmp_path), STAGE)


def test_one_entry_point_plans_a_proxy_elsewhere_with_rows_excluded_and_leftovers(out, tok, tmp_path):
    m = load_manifest(out.parent / "manifest.yaml")
    urls = StageContract.read(str(out), STAGE).lengths
    sizes = {s: len(read_lengths(u)[0]) for s, u in urls.items()}
    exclude = {s: held_out_rows(n, 5) for s, n in sizes.items()}
    assert exclude == {"vqa": range(44, 48), "chat": range(22, 24)}  # min(5, n // 10) rows at the end
    stage = m.stages[0].model_copy(update={"size": m.stages[0].size.model_copy(update={"steps": None, "tokens": 1500})})
    folder = tmp_path / "variant" / "stages" / "proxy"
    summary, contract = plan_stage_at(
        m, stage, str(out), urls, folder=str(folder), mixture={"vqa": 1, "chat": 3}, exclude=exclude, seed=7
    )
    assert contract.sources == ("vqa", "chat") and contract.shards == {s: str(out / "sources" / s) for s in sizes}
    assert (folder / "stage.json").exists() and not (tmp_path / "variant" / "sources").exists()  # no symlink
    placed = [
        (int(s["source"]), int(s["sample"])) for seq in plan_sequences(folder.parent.parent, "proxy") for s in seq
    ]
    assert placed and not [p for p in placed if p[1] in exclude[contract.sources[p[0]]]]
    n = summary.num_sequences
    assert (contract.steps, contract.leftover_sequences) == (n // 4, n % 4)
    assert n % 4, n  # this size leaves a partial global batch: the case the contract reports
    assert plan_line("proxy", summary, contract.sequences_per_step).startswith(
        f"stage proxy: {n} sequences, {n // 4} steps ({n % 4} leftover sequences dropped), packing "
    )  # what `mixer build` prints
    loader = StageLoader(str(tmp_path / "variant"), "proxy", tokenizer=tok, num_workers=0)
    batches = list(loader)
    assert len(batches) == contract.steps * loader.grad_accum  # the leftover sequences are never served
    assert loader.stats["skipped_total"] == 0 and loader.stats["sequences"] == contract.steps * 4
