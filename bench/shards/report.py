"""Turn the benchmark's raw runs into its summary (medians over repeats) and the printed table; pure functions."""

from __future__ import annotations

import statistics
from typing import Any

TARGET_RATIO = 1.3
PEER = "img2dataset"
OURS = "tinymix"
CEILING = "ceiling"
WHAT_IF = "tinymix what-if "  # prefix of the run keys of patched tinymix variants (bench.shards.whatif)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def tools(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The rows that produce shards, in table order: img2dataset, tinymix, then tinymix's variants."""
    variants = [k for k in runs if k.startswith(OURS) and k != OURS]
    return [t for t in (PEER, OURS, *variants) if runs.get(t)]


def summarise(runs: dict[str, list[dict[str, Any]]], cores: int, processes: int) -> dict[str, Any]:
    """Per tool, medians over the repeats of three rates, each also as a ratio to img2dataset's.

    - `samples_per_s`: successes / wall. tinymix's wall excludes the Ray start-up; `with_startup` includes it.
    - `in_shard_samples_per_s`: successes / (the tool's own per-shard durations summed / `processes`): the steady
      state inside the shard workers, without either tool's fixed start-up and tear-down.
    - `samples_per_cpu_s`: successes / CPU seconds of all the tool's processes, which the others' load barely moves.

    `round_ratios` are each round's samples/s ratio against img2dataset's run of the same round.

    The ceiling is one core's images/s (and images per CPU-second) times `cores`.
    """
    per_tool: dict[str, dict[str, float | None]] = {}
    for tool in tools(runs):
        rs = runs[tool]
        per_tool[tool] = {
            "samples_per_s": _median([r["successes"] / r["wall_s"] for r in rs]),
            "in_shard_samples_per_s": _median([_div(r["successes"] * processes, r.get("shard_s_sum")) for r in rs]),
            "samples_per_cpu_s": _median([_div(r["successes"], r.get("cpu_s")) for r in rs]),
            "ray_startup_s": _median([r.get("ray_startup_s") for r in rs]),
            "samples_per_cpu_s_with_startup": _median(
                [_div(r["successes"], r.get("cpu_with_startup_s")) if "ray_startup_s" in r else None for r in rs]
            ),
            "samples_per_s_with_startup": _median(
                [r["successes"] / (r["wall_s"] + r["ray_startup_s"]) if "ray_startup_s" in r else None for r in rs]
            ),
        }
    peer = per_tool.get(PEER, {})
    peer_rounds = [r["successes"] / r["wall_s"] for r in runs.get(PEER, [])]
    for tool, row in per_tool.items():
        # the same round's img2dataset run as the reference: the load drifts less within a round than across
        row["round_ratios"] = [
            round(r["successes"] / r["wall_s"] / p, 3) for r, p in zip(runs[tool], peer_rounds, strict=False)
        ]
        row["ratio"] = _div(row["samples_per_s"], peer.get("samples_per_s"))
        row["ratio_with_startup"] = _div(row["samples_per_s_with_startup"], peer.get("samples_per_s"))
        row["cpu_ratio_with_startup"] = _div(row["samples_per_cpu_s_with_startup"], peer.get("samples_per_cpu_s"))
        row["in_shard_ratio"] = _div(row["in_shard_samples_per_s"], peer.get("in_shard_samples_per_s"))
        row["cpu_ratio"] = _div(row["samples_per_cpu_s"], peer.get("samples_per_cpu_s"))
    ceiling = runs.get(CEILING, [])
    one_core = _median([r["images_per_s_1core"] for r in ceiling])
    per_cpu_s = _median([r["images"] / r["cpu_s"] for r in ceiling])
    ours = per_tool.get(OURS, {})
    return {
        "tools": per_tool,
        "ceiling_images_per_s": None if one_core is None else one_core * cores,
        "ceiling_images_per_cpu_s": per_cpu_s,
        "tinymix_share_of_ceiling": _div(ours.get("samples_per_s"), None if one_core is None else one_core * cores),
        "tinymix_cpu_share_of_ceiling": _div(ours.get("samples_per_cpu_s"), per_cpu_s),
        "ratio": ours.get("ratio"),
        "target_ratio": TARGET_RATIO,
        "cores": cores,
    }


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def format_table(summary: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> str:
    """The table printed at the end of a run."""
    head = ("", "samples/s", "x img2ds", "in-shard/s", "x img2ds", "per CPU-s", "x img2ds", "ok/input")
    rows = []
    for tool, t in summary["tools"].items():
        rs = runs[tool]
        names = {PEER: "img2dataset (whole command)", OURS: "tinymix (build, Ray up)"}
        name = names.get(tool, f"{tool} (patched)" if tool.startswith(WHAT_IF) else tool)
        ok = f"{min(r['successes'] for r in rs)}/{rs[0]['input']}"  # the worst repeat
        rows.append(
            (name, _num(t["samples_per_s"], ".1f"), _num(t["ratio"], ".2f"))
            + (_num(t["in_shard_samples_per_s"], ".1f"), _num(t["in_shard_ratio"], ".2f"))
            + (_num(t["samples_per_cpu_s"], ".1f"), _num(t["cpu_ratio"], ".2f"), ok)
        )
        if tool == OURS:
            startup = f"tinymix incl. Ray start-up ({_num(t['ray_startup_s'], '.1f')} s)"
            rows.append(
                (startup, _num(t["samples_per_s_with_startup"], ".1f"), _num(t["ratio_with_startup"], ".2f"), "", "")
                + (_num(t["samples_per_cpu_s_with_startup"], ".1f"), _num(t["cpu_ratio_with_startup"], ".2f"))
            )
    cores = summary["cores"]
    ceiling = (
        _num(summary["ceiling_images_per_s"], ".1f"),
        "",
        "",
        "",
        _num(summary["ceiling_images_per_cpu_s"], ".1f"),
    )
    rows.append((f"ceiling: PIL loop, 1 process x {cores} cores", *ceiling))
    widths = [max(len(r[i]) if i < len(r) else 0 for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(r))
        for r in [head, *rows]
    ]
    ratio = summary["ratio"]
    if ratio is not None:
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        rounds = " ".join(f"{x:.2f}" for x in summary["tools"][OURS]["round_ratios"])
        lines.append(f"tinymix / img2dataset: {ratio:.2f}x (target >= {TARGET_RATIO}x: {verdict}); by round: {rounds}")
    share, cpu_share = summary["tinymix_share_of_ceiling"], summary["tinymix_cpu_share_of_ceiling"]
    lines.append(
        f"tinymix vs ceiling: {_num(None if share is None else 100 * share, '.0f')}% of its images/s, "
        f"{_num(None if cpu_share is None else 100 * cpu_share, '.0f')}% of its images per CPU-second"
    )
    return "\n".join(lines)
