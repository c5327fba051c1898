"""Names in a manifest: folder names (sources, stages, ablations, the project) and choices from a table.

Source kinds, templates and trainable modules are checked against the one table that implements them.

A source called `../../x` would write its shards outside the output folder and a stage called `..` its plan into the
output root, so a name is letters, digits, `_`, `.` and `-`, starting with a letter, digit or `_`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

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


def check_choice(value: str, table: Iterable[str], what: str) -> str:
    """`value` unchanged when `table` has it, else a ValueError naming the closest choice and listing them all.

    `table` is read at validation time, so a line added to it is a valid choice.
    """
    known = list(table)
    if value in known:
        return value
    close = difflib.get_close_matches(value, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown {what} {value!r}{hint}; known: {', '.join(known)}")
