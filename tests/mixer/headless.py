"""Render a local HTML file in headless Chromium (Debian's `chromium`): its screenshot and its DOM after load.

`make test` installs chromium when it is missing; without it the browser tests fail with a message saying so (a
skip would hide a report nobody has seen render).
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,2000",
]


def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium not found: install Debian's `chromium` package (`make test` does: apt-get install chromium)"
        )
    return exe


def render(page: Path, tmp: Path) -> tuple[np.ndarray, str]:
    """(screenshot as an RGB array, the DOM text after load) of `page` in headless Chromium."""
    exe, png = chromium(), tmp / "shot.png"
    base = [exe, *FLAGS, f"--user-data-dir={tmp / 'profile'}"]
    url = page.resolve().as_uri()
    shot = subprocess.run([*base, f"--screenshot={png}", url], capture_output=True, text=True, timeout=180)
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB")), dom.stdout


class Tables(HTMLParser):
    """The DOM's tables as lists of rows of cell texts, and its images' sources."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables_of(dom: str) -> Tables:
    t = Tables()
    t.feed(dom)
    return t


def assert_not_blank(shot: np.ndarray) -> None:
    """A rendered page, not a white or single-colour one: pixel variance and several colours (plots, text)."""
    grey = shot.astype(np.float64).mean(axis=2)
    assert grey.std() > 5.0, f"screenshot looks blank (pixel std {grey.std():.2f})"
    colours = len(np.unique(shot.reshape(-1, 3), axis=0))
    assert colours > 20, f"screenshot has {colours} colours only"
