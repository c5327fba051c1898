"""`mixer ablate` and `train ablate`: which sweeps to run, the runner that trains their proxies, the summary lines.

The proxy runs belong to the trainer, so the sweep itself is `train.ablate.ablate`. `mixer` reaches it only through
a plugin point, the entry point group `tinymix.ablate` (tinymix's own `pyproject.toml` registers `train`): no import
of `train` and no subprocess into it. Another trainer can register its own runner under this group with the same
signature: `ablate(manifest_path, manifest, name, parallel, ray_address, fit_on, load={...}) -> {"paths", "results"}`,
where `load` holds the `load_manifest` keywords (`data_root`, `output`, `overrides`) that made `manifest`, so a
spawned proxy loads the manifest exactly as the command did.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from mixer.manifest import Manifest

ENTRY_POINT_GROUP = "tinymix.ablate"
SweepRunner = Callable[..., dict[str, Any]]


def find_runner() -> SweepRunner | None:
    """The sweep runner a trainer registered under `tinymix.ablate` (the first by name), or None."""
    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    return found[0].load() if found else None


def sweep_names(m: Manifest, ablation: str | None) -> list[str]:
    """The sweeps to run: `ablation`, or every declared one; ValueError naming an unknown one or none declared."""
    names = [ablation] if ablation else list(m.ablations)
    unknown = [n for n in names if n not in m.ablations]
    if unknown:
        raise ValueError(f"--ablation: no sweep named {unknown[0]!r}; declared: {', '.join(m.ablations) or 'none'}")
    if not names:
        raise ValueError("declares no ablations")
    return names


def run_ablations(
    runner: SweepRunner,
    manifest: Path,
    m: Manifest,
    names: list[str],
    parallel: int = 1,
    ray_address: str | None = None,
    fit_on: str = "loss",
    load: dict[str, Any] | None = None,
) -> list[str]:
    """Run each sweep with `runner`; the lines the CLI prints (per sweep: variants ok, report; per variant a line)."""
    lines = []
    for name in names:
        done = runner(manifest, m, name, parallel, ray_address, fit_on, load=load or {})
        ok = sum(r.status == "ok" for r in done["results"])
        lines.append(f"{name}: {ok}/{len(done['results'])} variants ok; report {done['paths']['markdown']}")
        for r in done["results"]:
            detail = ", ".join(f"{s} {v:.3f}" for s, v in r.eval_loss.items()) if r.status == "ok" else r.error
            lines.append(f"  {r.name:<16} {r.status:<6} {(detail or '').splitlines()[0] if detail else ''}")
    return lines


def ablate_command(
    runner: SweepRunner,
    manifest: Path,
    ablation: str | None,
    parallel: int,
    load: dict[str, Any],
    ray_address: str | None = None,
    fit_on: str = "loss",
) -> list[str]:
    """What `mixer ablate` and `train ablate` do: load the manifest, pick the sweeps, run them; the lines to print.

    `load`: the command's `--data-root`, `--out` and `--set`. Bad input is one line and exit 2.
    """
    from mixer.cli_errors import fail
    from mixer.manifest import load_manifest

    m = load_manifest(manifest, check_paths=False, **load)
    try:
        names = sweep_names(m, ablation)
    except ValueError as e:
        fail([str(e) if str(e).startswith("--") else f"{manifest}: {e}"])
    try:
        return run_ablations(runner, manifest, m, names, parallel, ray_address, fit_on, load)
    except ValueError as e:
        fail([f"ablate: {e}"])
