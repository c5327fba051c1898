"""One PNG per stage from `inspect_build`'s dict, drawn with matplotlib's Agg backend.

Left: declared vs realised shares as grouped bars. Right: each source's length distribution as a step histogram,
with the stage's seq_len marked.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on build machines, and no GUI toolkit import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mixer.inspect import InspectError  # noqa: E402
from shards import fs  # noqa: E402

PLOT_NAME = "inspect.png"


def stage_figure(name: str, st: dict[str, Any]) -> plt.Figure:
    """The stage's figure: shares on the left, length histograms on the right."""
    sources = list(st["sources"])
    fig, (bars, hist) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, layout="constrained")
    x = np.arange(len(sources))
    series = [
        (f"declared (by {st['spec']['weight_by']})", [st["sources"][s]["declared_share"] for s in sources]),
        ("realised tokens", [st["sources"][s]["realised_share"]["tokens"] for s in sources]),
        ("realised samples", [st["sources"][s]["realised_share"]["samples"] for s in sources]),
    ]
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series):
        bars.bar(x + (i - (len(series) - 1) / 2) * width, 100 * np.asarray(values), width, label=label)
    bars.set_xticks(x, sources, rotation=30, ha="right")
    bars.set_ylabel("share (%)")
    bars.set_title(f"stage {name}: mixture")
    bars.legend(fontsize="small")

    for source, s in st["lengths"].items():
        h = s["histogram"]
        hist.stairs(h["counts"], h["edges"], label=f"{source} (n={s['tokenised']:,})", linewidth=1.5)
    hist.axvline(st["spec"]["seq_len"], color="black", linestyle="--", linewidth=1, label="seq_len")
    hist.set_xlabel("tokens per sample (text + image)")
    hist.set_ylabel("samples")
    hist.set_title(f"stage {name}: length distribution")
    hist.legend(fontsize="small")
    return fig


def write_plots(report: dict[str, Any]) -> dict[str, str]:
    """Write `<stage dir>/inspect.png` for every stage of the report; return stage name -> PNG path."""
    paths = {}
    for name, st in report["stages"].items():
        path = fs.join(st["dir"], PLOT_NAME)
        fig = stage_figure(name, st)
        png = io.BytesIO()
        try:
            fig.savefig(png, format="png")
            fs.put_bytes(path, png.getvalue())
        except OSError as e:
            raise InspectError(f"{path}: cannot write the plot: {e}") from None
        finally:
            plt.close(fig)
        paths[name] = path
    return paths
