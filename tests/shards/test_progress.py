"""`progress`: off a terminal, whole status lines with the ETA; on one, tqdm's bar with `elapsed<remaining`."""

from __future__ import annotations

import io
import re

from shards.progress import LogLines, progress

LINE = re.compile(r"^lengths: (\d+)/5 \((\d+)%\) elapsed \d\d:\d\d eta (\d\d:\d\d|\?), .+$")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_whole_line_per_refresh_with_the_eta():
    out = io.StringIO()
    with progress(total=5, desc="lengths", unit=" shards", file=out, log_every=0) as bar:
        assert isinstance(bar, LogLines)
        for _ in range(5):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches][-1] == 5 and matches[-1].group(2) == "100"
    assert matches[-1].group(3) == "00:00"  # the ETA of a finished task
    assert sorted(int(m.group(1)) for m in matches) == [int(m.group(1)) for m in matches]  # never goes back


def test_refreshes_are_rate_limited_in_a_log():
    out = io.StringIO()
    for _ in progress(range(1000), desc="lengths", file=out, log_every=3600):
        pass
    assert len(out.getvalue().splitlines()) == 2  # the first line and the final one, nothing in between


def test_unknown_total_has_no_eta_and_a_terminal_gets_the_tqdm_bar():
    out = io.StringIO()
    with progress(desc="shards", unit=" rows", file=out, log_every=0) as bar:
        bar.update(7)
    assert out.getvalue().splitlines()[-1].startswith("shards: 7 elapsed ")
    tty = Tty()
    with progress(total=4, desc="train", file=tty) as bar:
        bar.update(2)
    assert not isinstance(bar, LogLines)
    assert re.search(r"2/4 \[\d\d:\d\d<\d\d:\d\d", tty.getvalue())  # tqdm's elapsed<remaining


def test_a_total_learnt_on_the_way_turns_the_log_lines_into_eta_lines():
    out = io.StringIO()
    with progress(desc="shards", unit=" rows", file=out, log_every=0) as bar:
        bar.update(2)
        bar.total = 5  # what `mixer build`'s counting thread does once it has read every source
        bar.update(3)
    lines = out.getvalue().splitlines()
    assert [line.split(" elapsed")[0] for line in lines[:2]] == ["shards: 0", "shards: 2"]  # no total: no ETA
    rest = lines[2:]
    assert rest and all(" eta " in line for line in rest)
    assert re.match(r"^shards: 5/5 \(100%\) elapsed \d\d:\d\d eta 00:00, ", rest[-1]), rest
