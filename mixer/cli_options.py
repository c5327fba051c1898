"""The options every command that reads a manifest shares, so they mean the same in `mixer` and in `train`.

`--data-root`, `--out` and `--set` change the manifest as it is loaded (`load_manifest(data_root=, output=,
overrides=)`); `--ray-address` names the Ray cluster of the commands that start Ray work.
"""

from __future__ import annotations

from typing import Annotated

import typer

DataRoot = Annotated[
    str | None,
    typer.Option(
        "--data-root", help="Folder the sources' relative paths resolve against (default: the manifest's data_root)."
    ),
]
Out = Annotated[
    str | None,
    typer.Option("--out", help="The build folder or fsspec URL (default: the manifest's output)."),
]
RayAddress = Annotated[
    str | None,
    typer.Option("--ray-address", help="An existing Ray cluster (default: a local one on 127.0.0.1)."),
]
Ablation = Annotated[
    str | None, typer.Option("--ablation", help="The sweep to run (default: every sweep in the manifest).")
]
Parallel = Annotated[
    int, typer.Option("--parallel", help="Variants trained at once (each a single-process proxy run).")
]
Set = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a manifest field before validation: dotted PATH=VALUE, VALUE in YAML, repeatable "
        "(e.g. stages.multitask.size.steps=20; list items by index or name).",
    ),
]


def set_args(overrides: list[str] | None) -> list[str]:
    """`--set` options as command-line arguments again, for a command that starts another (`train launch` → ranks)."""
    return [arg for value in overrides or [] for arg in ("--set", value)]
