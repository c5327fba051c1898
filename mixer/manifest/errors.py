"""Turn pydantic validation errors into one line per problem: `file:line: field.path: what is wrong`."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from inspect import isclass
from typing import Any

from pydantic import BaseModel, ValidationError

from mixer.manifest.yaml_lines import Path_, format_path, line_of


class ManifestError(ValueError):
    """A manifest with problems; `problems` holds one printable line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def problem(
    file: str, lines: dict[Path_, int], path: Path_, message: str, given: Mapping[Path_, str] | None = None
) -> str:
    """`file:line: field.path: message`; `given` maps paths set on the command line to their option (`--set …`).

    A problem at or under such a path names the option instead of a line; one above it names both.
    """
    flags = given or {}
    own = [flag for p, flag in flags.items() if path[: len(p)] == p]
    if own:
        where = own[-1]  # the last override of a path is the one in force
    else:
        line = line_of(lines, path)
        where = f"{file}:{line}" if line else file
        under = [flag for p, flag in flags.items() if path and p[: len(path)] == path]
        if under:
            where += f" (with {', '.join(under)})"
    return f"{where}: {format_path(path) or '(top level)'}: {message}"


def pydantic_problems(
    err: ValidationError,
    root: type[BaseModel],
    file: str,
    lines: dict[Path_, int],
    given: Mapping[Path_, str] | None = None,
) -> list[str]:
    out = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        out.append(problem(file, lines, loc, _message(e, root, loc), given))
    return out


def _message(e: dict[str, Any], root: type[BaseModel], loc: Path_) -> str:
    kind = e["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = model_at(root, loc[:-1])
        known = list(model.model_fields) if model else []
        hint = difflib.get_close_matches(key, known, n=1)
        tail = f" (did you mean {hint[0]!r}?)" if hint else (f"; known: {', '.join(known)}" if known else "")
        return f"unknown key {key!r}{tail}"
    if kind == "missing":
        return "required field is missing"
    msg = str(e["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind not in ("value_error", "assertion_error") and "input" in e and not isinstance(e["input"], dict | list):
        msg += f" (got {e['input']!r})"
    return msg


def _strip_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        models = [a for a in args if isclass(a) and issubclass(a, BaseModel)]
        return (models or args)[0]
    return ann


def model_at(root: type[BaseModel], loc: Path_) -> type[BaseModel] | None:
    """The pydantic model class that a location in the manifest points into, if any."""
    ann: Any = root
    for part in loc:
        ann = _strip_optional(ann)
        if isclass(ann) and issubclass(ann, BaseModel):
            field = ann.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            ann = field.annotation
        elif typing.get_origin(ann) in (list, tuple):
            ann = typing.get_args(ann)[0]
        elif typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[1]
        else:
            return None
    ann = _strip_optional(ann)
    return ann if isclass(ann) and issubclass(ann, BaseModel) else None
