"""`python -m bench.mixer.run`: issue 4's mixer bench — (a) packing, (b) windowed shares, (c) loader — in one go.

Story: draw the LLaVA-mix-like pool (`bench/lengths.py`) → per seq_len, (a) packing efficiency of every contestant
and of tinymix with its constraints changed one at a time, (b) windowed share deviations of tinymix and its peers and
the planner what-ifs → (c) `bench.mixer.loader` as it is → Markdown tables on stdout, everything in a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.mixer import loader
from bench.mixer.packing import compare_packing, cut_lengths, make_pool, packing_limits
from bench.mixer.shares import compare_shares, granularity, share_limits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.mixer.run", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000, help="Samples in the pool (all six sources together).")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096], help="Packed sequence lengths.")
    p.add_argument("--window", type=int, default=64, help="Sequences per share window.")
    p.add_argument("--batch", type=int, default=16, help="Per-device batch of the padding baselines (LLaVA-1.5: 16).")
    p.add_argument("--world", type=int, default=8, help="Ranks of LLaVA-1.5's length grouping (megabatch = B x ranks).")
    p.add_argument("--open", type=int, default=8, help="Open sequences of the greedy packer that packs peer streams.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-loader", action="store_true", help="Leave out part (c).")
    p.add_argument("--out", type=Path, default=Path("bench/_work/mixer/results.json"), help="Where the JSON goes.")
    return p.parse_args(argv)


def table(head: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats are printed as given by the caller."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def pp(x: float) -> str:
    return f"{x:.2f}"


def show_packing(seq_len: int, rows: list[dict], limits: list[dict]) -> None:
    print(f"\n### (a) packing efficiency, seq_len {seq_len}\n")
    mix = [r.get("global_batch_mix_pp") for r in rows]
    cells = [
        [r["name"], pct(r["efficiency"]), f"{m['median']:.1f} / {m['worst']:.1f}" if m else _window(r)]
        for r, m in zip(rows, mix, strict=True)
    ]
    print(table(["contestant", "efficiency", "global batch mix dev, median / worst (pp)"], cells))
    print(f"\ntinymix with its constraints changed (seq_len {seq_len}):\n")
    print(
        table(
            ["window", "shares held", "efficiency", "worst window dev (pp)"],
            [[r["window"], r["shares"], pct(r["efficiency"]), pp(r["worst_pp"])] for r in limits],
        )
    )


def _window(row: dict) -> str:
    """A tinymix row's mix column: its worst aligned window (= global batch when global_batch = window)."""
    return f"worst window {row['worst_window_pp']:.2f}" if "worst_window_pp" in row else ""


def show_shares(seq_len: int, res: dict, limits: list[dict], steps: dict[str, float], window: int) -> None:
    print(f"\n### (b) share deviation over {window}-sequence windows, seq_len {seq_len} (percentage points)\n")
    head = ["contestant", "tokens: worst", "worst sliding", "median", "samples: worst", "worst sliding", "median"]
    head += ["packing", "windows"]
    rows = []
    for r in res["rows"]:
        t, s = r["tokens"], r["samples"]
        rows.append([r["name"], pp(t["worst"]), pp(t["worst_sliding"]), pp(t["median"])])
        rows[-1] += [pp(s["worst"]), pp(s["worst_sliding"]), pp(s["median"]), pct(r["efficiency"]), t["windows"]]
    print(table(head, rows))
    print(
        f"\ntinymix by tokens, what-ifs (deviation over {window}-sequence windows; 'own' = over the plan's window):\n"
    )
    print(
        table(
            ["what-if", "tokens: worst", "worst sliding", "median", "p99", "own worst", "packing"],
            [
                [r["variant"], pp(r["tokens"]["worst"]), pp(r["tokens"]["worst_sliding"]), pp(r["tokens"]["median"])]
                + [pp(r["tokens"]["p99"]), pp(r["own_window_worst"]), pct(r["efficiency"])]
                for r in limits
            ],
        )
    )
    print("\none median sample as pp of a window: " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    pool = make_pool(args.n, args.seed)
    sizes = ", ".join(f"{n} {len(x):,}" for n, x in zip(pool.names, pool.lengths, strict=True))
    print(f"pool: {pool.samples():,} samples ({sizes})")
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "packing": {}, "shares": {}}
    for seq_len in args.seq_lens:
        t = time.perf_counter()
        rows = compare_packing(pool, seq_len, window=args.window, batch=args.batch, world=args.world, seed=args.seed)
        limits = packing_limits(pool, seq_len, seed=args.seed, windows=(args.window, 4 * args.window, 16 * args.window))
        results["packing"][seq_len] = {"rows": rows, "limits": limits, "seconds": time.perf_counter() - t}
        show_packing(seq_len, rows, limits)
        t = time.perf_counter()
        res = compare_shares(pool, seq_len, window=args.window, open_max=args.open, seed=args.seed)
        lim = share_limits(pool, seq_len, window=args.window, seed=args.seed)
        steps = granularity(cut_lengths(pool, seq_len), pool.names, seq_len, args.window)
        results["shares"][seq_len] = {
            **res,
            "limits": lim,
            "median_sample_pp": steps,
            "seconds": time.perf_counter() - t,
        }
        show_shares(seq_len, res, lim, steps, args.window)
    if not args.skip_loader:
        print("\n### (c) loader throughput (bench.mixer.loader, 2 workers)\n", flush=True)
        results["loader"] = loader.main(["--workers", "2"])["summary"]
    results["machine"] = {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "webdataset": version("webdataset"),
        "datasets": version("datasets"),
        "scipy": version("scipy"),
    }
    results["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\ntotal {results['seconds']:.0f} s; results in {args.out}")
    return results


if __name__ == "__main__":
    main()
