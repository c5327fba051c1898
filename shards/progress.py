"""Progress with an ETA for long commands: a tqdm bar on a terminal, a plain line every `log_every` seconds in a log.

tqdm's own bar redraws one line with carriage returns, which a log file (a cluster job's stdout, CI) keeps as one
ever-growing line; off a TTY `progress` prints whole lines instead — done/total, percent, elapsed, the ETA and the
rate — at most every `log_every` seconds (default 30, or `$TINYMIX_PROGRESS_EVERY`), and once at the end.

A caller may add its own fields to the line (`fields`: a function called at each refresh, whose keys the formats
name), as `train launch` does with the whole run's ETA (train.progress).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from typing import IO, Any

from tqdm import tqdm

LOG_EVERY_S = 30.0
LOG_EVERY_ENV = "TINYMIX_PROGRESS_EVERY"  # seconds between log lines, for every command (0: a line per update)
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) elapsed {elapsed} eta {remaining}, {rate_fmt}{postfix}"
LOG_FORMAT_OPEN = "{desc}: {n_fmt} elapsed {elapsed}, {rate_fmt}{postfix}"  # no total: no ETA to give


Fields = Callable[[], dict[str, Any]]


class Bar(tqdm):
    """A tqdm whose formats may name extra fields, computed by `fields()` at each refresh."""

    def __init__(self, *args: Any, fields: Fields | None = None, **kwargs: Any) -> None:
        self.fields = fields  # before tqdm's constructor: it draws the first refresh
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        if self.fields is not None:  # also while closing, when tqdm has set `disable`
            d.update(self.fields())
        return d


class LogLines(Bar):
    """A tqdm that writes one newline-terminated status line per refresh (refreshes are `mininterval` apart)."""

    _last_n: float | None = None  # the count of the last line written: a line per new count, never a repeat

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "" or self.n == self._last_n:
            return False  # tqdm clearing its line, or nothing new to say
        if self.total and self.bar_format == LOG_FORMAT_OPEN:
            self.bar_format = LOG_FORMAT  # a total learnt on the way (`mixer build` counts its rows): now an ETA
        self.fp.write((msg or self.format_meter(**self.format_dict)).rstrip() + "\n")
        self.fp.flush()
        self._last_n = self.n
        return True

    def close(self) -> None:
        if not self.disable:
            self.display()  # the final count, whatever the rate limit held back
        self.leave = False  # tqdm's leave path would repeat the line and add a blank one
        super().close()


def _is_tty(file: IO[str]) -> bool:
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty())


def log_every_s() -> float:
    """Seconds between two log lines: `$TINYMIX_PROGRESS_EVERY` when set, else `LOG_EVERY_S`."""
    value = os.environ.get(LOG_EVERY_ENV, "")
    try:
        return max(0.0, float(value)) if value else LOG_EVERY_S
    except ValueError:
        raise ValueError(f"${LOG_EVERY_ENV}: expected seconds, got {value!r}") from None


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    file: IO[str] | None = None,
    log_every: float | None = None,
    fields: Fields | None = None,
    bar_format: str | None = None,
    log_format: str | None = None,
    **kwargs: Any,
) -> tqdm:
    """A bar with an ETA (`elapsed<remaining`) on a terminal, else periodic log lines; use as tqdm.

    `bar_format` (terminal) and `log_format` (log) replace the default formats; they may name `fields()`' keys.
    """
    file = file if file is not None else sys.stderr
    common = {"desc": desc, "unit": unit, "disable": disable, "file": file, "fields": fields, **kwargs}
    if _is_tty(file):
        return Bar(iterable, total=total, dynamic_ncols=True, bar_format=bar_format, **common)
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    fmt = log_format or (LOG_FORMAT if total is not None else LOG_FORMAT_OPEN)
    log_every = log_every_s() if log_every is None else log_every
    return LogLines(
        iterable, total=total, mininterval=log_every, maxinterval=max(log_every, 1.0), bar_format=fmt, **common
    )
