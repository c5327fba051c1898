"""The manifest reference in Markdown, generated from the schema's field help (`mixer schema`, docs/manifest.md)."""

from __future__ import annotations

import types
import typing
from inspect import isclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mixer.manifest.schema import Manifest


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(ann))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(ann))}]"
    return "null" if ann is type(None) else getattr(ann, "__name__", str(ann))


def _models_in(ann: Any) -> list[type[BaseModel]]:
    if isclass(ann) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in typing.get_args(ann) for m in _models_in(a)]


def _section(model: type[BaseModel], path: str, out: list[str], seen: set[str]) -> None:
    if path in seen:
        return
    seen.add(path)
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    out += [f"### `{path}`", "", doc, "", "| field | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for name, f in model.model_fields.items():
        if f.is_required():
            default = "required"
        elif f.default_factory is not None:
            default = "…"
        else:
            default = "" if f.default is PydanticUndefined else repr(f.default)
        subs = _models_in(f.annotation)
        help_ = f.description or (subs[0].__doc__ or "").strip().split("\n")[0] if subs else f.description or ""
        help_ = help_.replace("|", "\\|")
        out.append(f"| `{name}` | {_type_name(f.annotation)} | {default} | {help_} |")
        for sub in subs:
            origin = typing.get_origin(f.annotation)
            suffix = ".<name>" if origin is dict else ("[]" if origin is list else "")
            nested.append((sub, f"{path}.{name}{suffix}" if path else f"{name}{suffix}"))
    out.append("")
    for sub, sub_path in nested:
        _section(sub, sub_path, out, seen)


def manifest_reference() -> str:
    out = [
        "# Manifest reference",
        "",
        "Generated from the schema by `mixer schema`; every field, its type, default "
        "and meaning. Relative paths resolve against the manifest's folder (source paths against `data_root`).",
        "",
        "## Command-line options that change the manifest",
        "",
        "Every command that reads a manifest (`mixer validate`, `mixer build`, `train launch`; `train estimate` takes "
        "`--set` only) applies these as it loads it, so they mean the same everywhere and are checked like the file:",
        "",
        "| option | what it does |",
        "|---|---|",
        "| `--data-root DIR` | replaces `data_root` (relative to the current folder) |",
        "| `--out DIR_OR_URL` | replaces `output`, the build folder (relative to the current folder, or a URL) |",
        "| `--set PATH=VALUE` | sets one field before validation; repeatable, applied in order (the last one stands) |",
        "| `--ray-address ADDR` | not a field: the Ray cluster of the commands that start Ray work (`mixer build`, "
        "`mixer ablate`, `mixer demo`) |",
        "",
        "`--set` PATH is dotted keys from the top; inside a list a part is an index or an item's `name` "
        "(`stages.multitask.size.steps=20`, `stages.0.seq_len=4096`, `sources.laion.options.max_samples=1000`); "
        "mappings missing on the way are created. VALUE is YAML (`20`, `1e-4`, `true`, `[connector, lora]`, "
        "`{steps: 20}`; empty is null). A problem with an overridden value names the option instead of a line "
        "(`--set stages.multitask.size.steps=-1: stages[3].size.steps: Input should be greater than 0`) and exits 2.",
        "",
    ]
    _section(Manifest, "", out, set())
    return "\n".join(out).replace("### ``", "### (top level)")
