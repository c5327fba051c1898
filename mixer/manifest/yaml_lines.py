"""Safe YAML loading that remembers the line of every key and rejects duplicate keys and alias bombs.

PyYAML's safe loader silently keeps the last of two equal keys (two sources with one name would vanish into one)
and reads `1e-3` as a string; both are fixed here. Aliases are allowed (`*defaults` for a repeated optimizer block)
but bounded: a document whose aliases expand past `MAX_NODES` nodes ("billion laughs") or refer to themselves (a
cycle) is refused in milliseconds, before anything expands it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

# A real manifest has a few hundred nodes; an alias expansion past this is an attack or a mistake, never a manifest.
MAX_NODES = 50_000
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


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
        _walk(node, (), lines, dups, _Budget(file))
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else file
        raise YamlProblem(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise YamlProblem(f"{file}: YAML error: {e}") from None
    except RecursionError:
        raise YamlProblem(f"{file}: YAML nested too deeply") from None
    finally:
        loader.dispose()
    return data, lines, dups


class _Budget:
    """The file being walked, the nodes visited so far and the collections open on the current path."""

    def __init__(self, file: str) -> None:
        self.file, self.visited, self.open = file, 0, set[int]()

    def enter(self, node: yaml.Node, path: Path_) -> None:
        self.visited += 1
        where = f"{self.file}:{node.start_mark.line + 1}: {format_path(path) or '(top level)'}"
        if id(node) in self.open:
            raise YamlProblem(f"{where}: YAML alias refers to a node that contains it (an alias cycle)")
        if self.visited > MAX_NODES:
            raise YamlProblem(f"{where}: YAML aliases expand past {MAX_NODES:,} nodes; refusing (an alias bomb?)")


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], dups: list[str], budget: _Budget) -> None:
    budget.enter(node, path)
    if not isinstance(node, yaml.MappingNode | yaml.SequenceNode):
        return
    budget.open.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            key = k.value
            line = k.start_mark.line + 1
            if key in seen:
                dups.append(
                    f"{budget.file}:{line}: {format_path(path + (key,))}: duplicate key (first at line {seen[key]})"
                )
            seen[key] = line
            lines[path + (key,)] = line
            _walk(v, path + (key,), lines, dups, budget)
    else:
        for i, v in enumerate(node.value):
            lines[path + (i,)] = v.start_mark.line + 1
            _walk(v, path + (i,), lines, dups, budget)
    budget.open.discard(id(node))


def format_path(path: Path_) -> str:
    """('stages', 2, 'mixture', 'ocr') → 'stages[2].mixture.ocr'.

    A key that is not a plain name is quoted: ('sources', '../x') → "sources['../x']".
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.match(str(part)):
            out += f"[{str(part)!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def line_of(lines: dict[Path_, int], path: Path_) -> int | None:
    """The line of the longest prefix of `path` that has one."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None
