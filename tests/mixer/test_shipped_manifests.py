"""Every shipped manifest validates; the schema's name tables agree with the implementations they name."""

from __future__ import annotations

import glob
import os
import typing
from pathlib import Path

import pytest
from test_manifest_hardening import fake_hub_cache
from typer.testing import CliRunner

from mixer.cli import app
from mixer.manifest import TEMPLATES, load_manifest
from mixer.manifest.sources import DEFAULT_TASK, ReaderKind

MANIFESTS = sorted(Path(__file__).parents[2].joinpath("manifests").glob("*.yaml"))


def test_there_are_shipped_manifests() -> None:
    names = {p.stem for p in MANIFESTS}
    assert {"demo", "tinygpt-v", "tinyllava-base", "tinyllava-share"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_shipped_manifest_schema(path: Path) -> None:
    m = load_manifest(path, check_paths=False)
    for stage in m.stages:
        assert stage.seq_len > m.model.image_tokens_for(stage.image_size)


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.stem != "demo"], ids=lambda p: p.stem)
def test_real_data_manifest_validates_with_its_files_in_place(path: Path, tmp_path: Path, monkeypatch) -> None:
    """Lay out the files a real-data manifest names (empty: validate checks presence) under a data root, and its
    tokenizer in a 🤗 cache; then the full check, paths included, passes — and names each missing file when absent."""
    m = load_manifest(path, check_paths=False, data_root=str(tmp_path))
    fake_hub_cache(tmp_path / "hf", [m.model.tokenizer_path()], monkeypatch)
    with pytest.raises(Exception, match="no file matches"):
        load_manifest(path, data_root=str(tmp_path))
    for src in m.sources.values():
        for pattern in src.paths:
            Path(pattern.replace("*", "part-00000")).parent.mkdir(parents=True, exist_ok=True)
            Path(pattern.replace("*", "part-00000")).touch()
            assert glob.glob(pattern)
        if src.image_root:
            os.makedirs(src.image_root, exist_ok=True)
    result = CliRunner().invoke(app, ["validate", str(path), "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"manifest {m.name}:" in result.output


def test_schema_tables_match_implementations() -> None:
    from mixer.templates import TEMPLATES as IMPLEMENTED
    from shards.readers import READERS

    assert set(typing.get_args(ReaderKind)) == set(READERS) == set(DEFAULT_TASK)
    assert set(TEMPLATES) == set(IMPLEMENTED)


def test_manifest_reference_is_current() -> None:
    from mixer.manifest.reference import manifest_reference

    doc = Path(__file__).parents[2] / "docs/manifest.md"
    stale = "docs/manifest.md is stale: run `mixer schema > docs/manifest.md`"
    assert doc.read_text() == manifest_reference() + "\n", stale
