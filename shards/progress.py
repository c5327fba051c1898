"""Progress with an ETA for long commands: a tqdm bar on a terminal, a plain line every `log_every` seconds in a log.

tqdm's own bar redraws one line with carriage returns, which a log file (a cluster job's stdout, CI) keeps as one
ever-growing line; off a TTY `progress` prints whole lines instead — done/total, percent, elapsed, the ETA and the
rate — at most every `log_every` seconds, and once at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LOG_EVERY_S = 30.0
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) elapsed {elapsed} eta {remaining}, {rate_fmt}{postfix}"
LOG_FORMAT_OPEN = "{desc}: {n_fmt} elapsed {elapsed}, {rate_fmt}{postfix}"  # no total: no ETA to give


class LogLines(tqdm):
    """A tqdm that writes one newline-terminated status line per refresh (refreshes are `mininterval` apart)."""

    _last_n: float | None = None  # the count of the last line written: a line per new count, never a repeat

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "" or self.n == self._last_n:
            return False  # tqdm clearing its line, or nothing new to say
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


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    file: IO[str] | None = None,
    log_every: float = LOG_EVERY_S,
    **kwargs: Any,
) -> tqdm:
    """A bar with an ETA (`elapsed<remaining`) on a terminal, else periodic log lines; use as tqdm."""
    file = file if file is not None else sys.stderr
    if _is_tty(file):
        return tqdm(
            iterable, total=total, desc=desc, unit=unit, disable=disable, file=file, dynamic_ncols=True, **kwargs
        )
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    fmt = LOG_FORMAT if total is not None else LOG_FORMAT_OPEN
    return LogLines(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        file=file,
        mininterval=log_every,
        maxinterval=max(log_every, 1.0),
        bar_format=fmt,
        **kwargs,
    )
