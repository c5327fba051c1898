"""One-line errors for the `mixer` and `train` commands: a user's mistake exits 2 with one line per problem.

Every command of an app built with `cls=OneLineErrors` gets this, including commands added later: a malformed
manifest prints its `file:line: field.path: message` lines, a missing build, export or input prints the missing path.
Other exceptions are bugs in tinymix and keep their traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from mixer.manifest import ManifestError


def fail(lines: Iterable[str]) -> NoReturn:
    """Print each line on stderr and exit with code 2 (bad input)."""
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(2)


def os_error_line(e: OSError) -> str:
    """`PATH: what is wrong` for a file that is missing or unreadable; the first line of the message otherwise."""
    if e.filename:
        return f"{e.filename}: {e.strerror or type(e).__name__}"
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if isinstance(e, FileNotFoundError) and " " not in first:  # raised with just the path
        return f"{first}: no such file or directory"
    return first


class OneLineErrors(TyperGroup):
    """A Typer group whose commands report manifest problems and missing files as lines, exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ManifestError as e:
            fail(e.problems)
        except OSError as e:
            fail([os_error_line(e)])
