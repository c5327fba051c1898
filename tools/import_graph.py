"""The import graph of tinymix's packages, read with `ast`; exit 1 if a dependency runs backwards.

Dependencies point one way: `train` → `mixer` → `shards`. This prints, per package, the packages its modules import
(every `import` and `from … import`, at module level or inside functions, `TYPE_CHECKING` blocks included) and then
every forbidden edge with its file and line: `mixer` importing `train`, `shards` importing `mixer` or `train`, and any
use of `subprocess` / `sys.executable` / `os.exec*` in `mixer` whose call names `train` (a process started backwards).

    python tools/import_graph.py [ROOT]      # ROOT: the repository (default: this file's parent's parent)
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGES = ("shards", "mixer", "train")
FORBIDDEN = {"mixer": {"train"}, "shards": {"mixer", "train"}}  # package -> packages it must never import
SPAWNERS = ("subprocess", "sys.executable", "os.exec", "os.spawn", "os.system", "os.popen")


def _name(node: ast.AST) -> str:
    """`a.b.c` of an attribute / name chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(imported top-level package, line) of every import statement in a module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def _mentions_train(text: str) -> bool:
    return text == "train" or text.startswith("train.") or text.startswith("train ")


def backward_spawns(tree: ast.AST) -> list[int]:
    """Lines where a function (or the module body) that starts a process (`SPAWNERS`) names `train` in a string.

    Per scope, not per call: `cmd = [sys.executable, "-m", "train.cli"]; subprocess.run(cmd)` is caught too.
    """
    lines = []
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]
    for scope in scopes:
        nodes = list(ast.walk(scope))
        spawns = [n.lineno for n in nodes if isinstance(n, (ast.Attribute, ast.Name)) and _spawner(_name(n))]
        names_train = any(
            isinstance(n, ast.Constant) and isinstance(n.value, str) and _mentions_train(n.value) for n in nodes
        )
        if spawns and names_train:
            lines.append(min(spawns))
    return sorted(set(lines))


def _spawner(name: str) -> bool:
    return any(
        name == s or name.startswith(s + ".") or (s.endswith(("exec", "spawn")) and name.startswith(s))
        for s in SPAWNERS
    )


def graph(root: Path) -> tuple[dict[str, dict[str, int]], list[str]]:
    """({package: {imported package: import count}}, problems as `file:line: what`)."""
    edges: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            rel = path.relative_to(root)
            for target, line in imports(tree):
                if target in PACKAGES and target != package:
                    edges[package][target] += 1
                    if target in FORBIDDEN.get(package, ()):
                        problems.append(f"{rel}:{line}: {package} imports {target}")
            if package == "mixer":
                problems += [f"{rel}:{line}: mixer starts a train process" for line in backward_spawns(tree)]
    return {p: dict(edges[p]) for p in PACKAGES}, problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    edges, problems = graph(root)
    for package in PACKAGES:
        out = ", ".join(f"{t} ({n} imports)" for t, n in sorted(edges[package].items())) or "nothing"
        print(f"{package} -> {out}")
    for p in problems:
        print(f"FORBIDDEN {p}")
    print("ok: train -> mixer -> shards, nothing back" if not problems else f"{len(problems)} forbidden edges")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
