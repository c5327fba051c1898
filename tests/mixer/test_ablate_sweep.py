import functools
import json
import os
import uuid
from pathlib import Path

import pytest

from mixer.ablate import Variant, VariantResult, grid_variants, load_result, run_sweep


def counting_runner(variant: Variant, calls: str) -> VariantResult:
    """A test stand-in for a proxy run: logs each call as a file, fails on request, derives losses from the shares."""
    Path(calls, f"{variant.name}.{uuid.uuid4().hex}").touch()
    if variant.name.startswith("fail"):
        raise RuntimeError(f"deliberate failure of {variant.name}\nsecond line")
    loss = {k: 3.0 - v for k, v in variant.mixture.items()}
    return VariantResult(variant.name, dict(variant.mixture), "ok", eval_loss=loss, tokens_seen=100, wall_time_s=0.5)


def wrong_name_runner(variant: Variant) -> VariantResult:
    return VariantResult("someone-else", dict(variant.mixture), "ok")


def calls_by_variant(calls: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in calls.iterdir():
        name = p.name.rsplit(".", 1)[0]
        out[name] = out.get(name, 0) + 1
    return out


VARIANTS = [*grid_variants({"a": 2, "b": 1}, "a", [0.2, 0.4]), Variant("fail-me", {"a": 0.5, "b": 0.5})]


@pytest.mark.parametrize("parallel", [1, 2])
def test_rerun_skips_finished_variants_and_a_failure_does_not_stop_the_sweep(tmp_path, parallel):
    calls, out = tmp_path / "calls", tmp_path / "sweep"
    calls.mkdir()
    runner = functools.partial(counting_runner, calls=str(calls))

    first = run_sweep("t", VARIANTS, runner, out, parallel=parallel)
    assert [r.name for r in first] == ["declared", "a-0.2", "a-0.4", "fail-me"]
    assert [r.status for r in first] == ["ok", "ok", "ok", "failed"]
    assert first[1].eval_loss == pytest.approx({"a": 2.8, "b": 2.2})
    assert first[3].error == "RuntimeError: deliberate failure of fail-me second line"
    assert "deliberate failure" in (out / "variants" / "fail-me" / "error.txt").read_text()
    assert calls_by_variant(calls) == {"declared": 1, "a-0.2": 1, "a-0.4": 1, "fail-me": 1}
    for r in first:
        saved = json.loads((out / "variants" / r.name / "result.json").read_text())
        assert VariantResult.from_dict(saved) == r
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    second = run_sweep("t", VARIANTS, runner, out, parallel=parallel)
    # finished variants are not run again; the failed one is retried (and fails again)
    assert calls_by_variant(calls) == {"declared": 1, "a-0.2": 1, "a-0.4": 1, "fail-me": 2}
    assert second[:3] == first[:3]
    assert second[3].status == "failed"


def test_a_variant_whose_mixture_changed_runs_again(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    runner = functools.partial(counting_runner, calls=str(calls))
    run_sweep("t", [Variant("declared", {"a": 0.5, "b": 0.5})], runner, tmp_path / "s")
    again = run_sweep("t", [Variant("declared", {"a": 0.6, "b": 0.4})], runner, tmp_path / "s")
    assert calls_by_variant(calls) == {"declared": 2}
    assert again[0].mixture == {"a": 0.6, "b": 0.4}
    assert load_result(tmp_path / "s", "declared") == again[0]


def test_a_runner_that_answers_for_another_variant_is_recorded_as_failed(tmp_path):
    [r] = run_sweep("t", [Variant("declared", {"a": 1.0})], wrong_name_runner, tmp_path)
    assert r.status == "failed" and "returned a result for 'someone-else'" in r.error


def test_an_unreadable_result_is_run_again(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    path = tmp_path / "s" / "variants" / "declared" / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    run_sweep(
        "t", [Variant("declared", {"a": 1.0})], functools.partial(counting_runner, calls=str(calls)), path.parents[2]
    )
    assert calls_by_variant(calls) == {"declared": 1}
    assert load_result(path.parents[2], "declared").status == "ok"


@pytest.mark.parametrize(
    ("variants", "parallel", "message"),
    [
        ([Variant("../up", {"a": 1.0})], 1, "folder-safe"),
        ([Variant("x", {"a": 1.0}), Variant("x", {"a": 1.0})], 1, "repeat"),
        ([Variant("x", {"a": 1.0})], 0, "parallel must be >= 1"),
    ],
)
def test_bad_sweep_input_is_refused_before_anything_runs(tmp_path, variants, parallel, message):
    with pytest.raises(ValueError, match=message):
        run_sweep("t", variants, wrong_name_runner, tmp_path / "s", parallel=parallel)
    assert not os.path.exists(tmp_path / "s")


def test_a_result_with_an_unknown_status_is_refused():
    with pytest.raises(ValueError, match="variant v: status must be one of"):
        VariantResult("v", {"a": 1.0}, "done")


def dying_runner(variant: Variant, calls: str) -> VariantResult:
    if variant.name == "dies":
        os._exit(3)  # a proxy run killed from outside (out of memory): no exception, the process is gone
    return counting_runner(variant, calls)


def test_a_worker_process_that_dies_is_recorded_as_failed_and_the_rerun_completes(tmp_path):
    calls, out = tmp_path / "calls", tmp_path / "sweep"
    calls.mkdir()
    variants = [Variant("dies", {"a": 1.0}), Variant("lives", {"a": 1.0})]
    first = run_sweep("t", variants, functools.partial(dying_runner, calls=str(calls)), out, parallel=2)
    assert first[0].status == "failed" and first[0].error.startswith("worker process: BrokenProcessPool")
    assert load_result(out, "dies") == first[0]
    # "lives" may have finished before the pool broke, or been cut off with it; either way the rerun completes it
    second = run_sweep("t", variants, functools.partial(counting_runner, calls=str(calls)), out, parallel=2)
    assert [r.status for r in second] == ["ok", "ok"]
    if first[1].status == "ok":
        assert second[1] == first[1] and calls_by_variant(calls)["lives"] == 1


def test_a_parallel_sweep_refuses_a_runner_that_cannot_reach_worker_processes(tmp_path):
    with pytest.raises(TypeError, match="does not pickle"):
        run_sweep("t", [Variant("x", {"a": 1.0})], lambda v: wrong_name_runner(v), tmp_path, parallel=2)


def test_a_success_after_a_failure_removes_the_old_traceback(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    run_sweep("t", [Variant("x", {"a": 1.0})], wrong_name_runner, tmp_path / "s")
    assert (tmp_path / "s" / "variants" / "x" / "error.txt").exists()
    [r] = run_sweep(
        "t", [Variant("x", {"a": 1.0})], functools.partial(counting_runner, calls=str(calls)), tmp_path / "s"
    )
    assert r.status == "ok" and not (tmp_path / "s" / "variants" / "x" / "error.txt").exists()


def test_the_sweep_reports_progress_with_an_eta_over_its_variants(tmp_path, capfd):
    calls = tmp_path / "calls"
    calls.mkdir()
    runner = functools.partial(counting_runner, calls=str(calls))
    run_sweep("t", VARIANTS[:3], runner, tmp_path / "sweep")
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ablate t:")]
    assert lines and lines[-1].startswith("ablate t: 3/3 (100%)") and "eta 00:00" in lines[-1], lines
    run_sweep("t", VARIANTS[:3], runner, tmp_path / "sweep")  # nothing left to run: no bar
    assert "ablate t:" not in capfd.readouterr().err
