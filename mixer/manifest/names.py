"""Names that become folder names (sources, stages, ablations, the project): plain identifiers, never paths.

A source called `../../x` would write its shards outside the output folder and a stage called `..` its plan into the
output root, so a name is letters, digits, `_`, `.` and `-`, starting with a letter, digit or `_`.
"""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def identifier_problem(name: object, what: str) -> str | None:
    """Why `name` cannot name a `what` (it becomes a folder name), or None when it can."""
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        return (
            f"{what} name {name!r} is not an identifier (letters, digits, _ . -, not starting with . or -, at most "
            "128 characters): it becomes a folder name"
        )
    return None


def check_identifier(name: str, what: str) -> str:
    """`name` unchanged, or a ValueError saying why it cannot be used (for pydantic field validators)."""
    problem = identifier_problem(name, what)
    if problem:
        raise ValueError(problem)
    return name
