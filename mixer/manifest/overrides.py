"""Dotted overrides from the command line (`--set stages.multitask.size.steps=20`), applied to the loaded YAML.

An override is `PATH=VALUE`. PATH is dotted keys from the top of the manifest; inside a list a part is an index
(`stages.0`) or the `name` of an item (`stages.multitask`); missing mappings on the way are created. VALUE is read
as YAML (`20`, `1e-4`, `true`, `null`, `[a, b]`, `{steps: 20}`; an empty VALUE is null). Overrides apply in order
after `extends:` is merged and before validation, so an overridden value is checked like one in the file, and a
problem with it names the override instead of a line of the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from mixer.manifest.errors import ManifestError
from mixer.manifest.yaml_lines import Path_, format_path, parse_value

EXAMPLE = "stages.multitask.size.steps=20"


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[Path_, str]:
    """Apply each `PATH=VALUE` to `data` in place; return the path each one set → how to name it (`--set …`)."""
    applied: dict[Path_, str] = {}
    for raw in overrides:
        flag = f"--set {raw}"
        key, sep, text = raw.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ManifestError([f"{flag}: expected PATH=VALUE with a dotted PATH, e.g. {EXAMPLE}"])
        try:
            value = parse_value(text)
        except yaml.YAMLError as e:
            raise ManifestError([f"{flag}: VALUE is not YAML: {str(e).splitlines()[0]}"]) from None
        applied[_set(data, parts, value, flag)] = flag
    return applied


def _set(data: dict[str, Any], parts: list[str], value: Any, flag: str) -> Path_:
    """Set `value` at `parts`; return the path the override owns: the first mapping it had to create, or the leaf."""
    node: Any = data
    path: list[str | int] = []
    created: Path_ | None = None
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            index = _index(node, part, path, flag)
            path.append(index)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            path.append(part)
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                    created = created or tuple(path)
                node = node[part]
        else:
            where = format_path(tuple(path))
            raise ManifestError([f"{flag}: {where} is {node!r}, not a mapping or list to set {part!r} in"])
    return created or tuple(path)


def _index(items: list[Any], part: str, path: list[str | int], flag: str) -> int:
    """The list position `part` names: an index, or the item whose `name` it is."""
    where = format_path(tuple(path))
    if part.isdigit():
        if int(part) < len(items):
            return int(part)
        raise ManifestError([f"{flag}: {where} has {len(items)} items, no index {part}"])
    names = [item.get("name") for item in items if isinstance(item, dict)]
    if part in names:
        return names.index(part)
    known = ", ".join(str(n) for n in names if n is not None) or "none"
    raise ManifestError([f"{flag}: {where} has no item named {part!r} (names: {known})"])
