"""Safe YAML loading that remembers the line of every key and rejects duplicate keys.

PyYAML's safe loader silently keeps the last of two equal keys (two sources with one name would vanish into one)
and reads `1e-3` as a string; both are fixed here.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-3, 5e9), as users write them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class YamlProblem(ValueError):
    """The text is not a usable YAML mapping; the message names the file and line."""


def load_yaml(text: str, file: str) -> tuple[dict[str, Any], dict[Path_, int], list[str]]:
    """Parse `text`; return (data, line of each key path, duplicate-key problems)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise YamlProblem(f"{file}: the file is empty")
        if not isinstance(node, yaml.MappingNode):
            raise YamlProblem(f"{file}:{node.start_mark.line + 1}: the top level must be a mapping of sections")
        lines: dict[Path_, int] = {}
        dups: list[str] = []
        _walk(node, (), lines, dups, file)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise YamlProblem(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise YamlProblem(f"{file}: YAML error: {e}") from None
    finally:
        loader.dispose()
    return data, lines, dups


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], dups: list[str], file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            key = k.value
            line = k.start_mark.line + 1
            if key in seen:
                dups.append(f"{file}:{line}: {format_path(path + (key,))}: duplicate key (first at line {seen[key]})")
            seen[key] = line
            lines[path + (key,)] = line
            _walk(v, path + (key,), lines, dups, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines[path + (i,)] = v.start_mark.line + 1
            _walk(v, path + (i,), lines, dups, file)


def format_path(path: Path_) -> str:
    """('stages', 2, 'mixture', 'ocr') → 'stages[2].mixture.ocr'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(lines: dict[Path_, int], path: Path_) -> int | None:
    """The line of the longest prefix of `path` that has one."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None
