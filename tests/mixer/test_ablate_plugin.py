"""`mixer ablate` reaches the proxy trainer only through the `tinymix.ablate` entry point (no import of `train`, no
subprocess): a registered runner is called with the sweep and its lines printed; with none, one line and exit 2."""

from __future__ import annotations

import copy
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import yaml
from test_manifest import BASE
from typer.testing import CliRunner

import mixer.ablate.run as run_module
from mixer.ablate import VariantResult
from mixer.cli import app

CALLS: list[tuple] = []


def fake_sweep(
    manifest: Path, m, name: str, parallel: int, ray_address: str | None, fit_on: str, load: dict | None = None
) -> dict:
    """A sweep runner as a trainer registers it (here one that records its call)."""
    CALLS.append((Path(manifest).name, name, parallel, ray_address, fit_on, load))
    ok = VariantResult("declared", {"caps": 0.5, "chat": 0.5}, "ok", eval_loss={"caps": 1.25, "chat": 2.5})
    bad = VariantResult.failed(ok, "RuntimeError: boom")  # a Variant-like: name and mixture
    return {"paths": {"markdown": "OUT/ablations/sweep/report.md"}, "results": [ok, bad]}


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(BASE), sort_keys=False))
    return path


def entry(value: str) -> EntryPoint:
    return EntryPoint(name="fake", value=value, group=run_module.ENTRY_POINT_GROUP)


def test_a_registered_runner_runs_the_sweep(manifest, monkeypatch):
    monkeypatch.setattr(run_module, "entry_points", lambda group: [entry("test_ablate_plugin:fake_sweep")])
    CALLS.clear()
    args = ["ablate", str(manifest), "--parallel", "2", "--set", "seed=3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # the runner gets what it needs to load the manifest in a spawned proxy as the command did
    assert CALLS == [("m.yaml", "sweep", 2, None, "loss", {"data_root": None, "output": None, "overrides": ["seed=3"]})]
    assert result.stdout.splitlines() == [
        "sweep: 1/2 variants ok; report OUT/ablations/sweep/report.md",
        "  declared         ok     caps 1.250, chat 2.500",
        "  declared         failed RuntimeError: boom",
    ]


def test_without_a_runner_mixer_ablate_says_where_the_sweep_lives(manifest, monkeypatch):
    monkeypatch.setattr(run_module, "entry_points", lambda group: [])
    result = CliRunner().invoke(app, ["ablate", str(manifest)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "mixer ablate: no proxy trainer is installed (entry point group tinymix.ablate); run `train ablate`"
    )


def test_the_shipped_plugin_point_is_declared_in_pyproject():
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '[project.entry-points."tinymix.ablate"]\ntrain = "train.ablate:ablate"' in text
