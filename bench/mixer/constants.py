"""`python -m bench.mixer.constants`: the planner's tuned constants changed one at a time, on bench (a)'s pool.

Each row plans bench (a)'s tinymix stage (natural token shares, windows of 64) at seq_len 2048 and 4096 with one
constant of `mixer.plan.planner` patched in-process (`shares.planner_constants`), and prints packing, worst window
deviation (pp) and planning CPU seconds: the measured reasons in the comments beside the constants.
"""

from __future__ import annotations

import argparse
import time

from bench.mixer.packing import cut_lengths, make_pool, natural_sources, run_plan, stage_sequences
from bench.mixer.run import table
from bench.mixer.shares import planner_constants
from mixer.plan import PlanSpec

CASES: list[tuple[str, dict[str, float]]] = [
    ("as set", {}),
    ("CORE_FILL 1.0", {"CORE_FILL": 1.0}),
    ("CORE_FILL 0.9", {"CORE_FILL": 0.9}),
    ("no adapting (CORE_MIN = CORE_FILL)", {"CORE_MIN": 0.95}),
    ("CORE_MIN 0.8", {"CORE_MIN": 0.8}),
    ("CORE_STEP 0.05", {"CORE_STEP": 0.05}),
    ("LOOKAHEAD 256", {"LOOKAHEAD": 256}),
    ("LOOKAHEAD 4096", {"LOOKAHEAD": 4096}),
    ("OVERSHOOT 0", {"OVERSHOOT": 0.0}),
    ("BALANCE_TOL 0.002", {"BALANCE_TOL": 0.002}),
    ("BALANCE_MOVES 64", {"BALANCE_MOVES": 64}),
    ("BALANCE_LOSS 0", {"BALANCE_LOSS": 0.0}),
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.mixer.constants", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000, help="Samples in the pool.")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    pool = make_pool(args.n, args.seed)
    stages = []
    for seq_len in args.seq_lens:
        cut = cut_lengths(pool, seq_len)
        spec = PlanSpec(seq_len, "tokens", args.seed, num_sequences=stage_sequences(cut, seq_len, 64), window=64)
        stages.append((natural_sources(pool, cut), spec))
    run_plan(*stages[0])  # compiles the kernels (when their cache is cold) outside the timed rows
    rows = []
    for name, values in CASES:
        row = [name]
        for sources, spec in stages:
            with planner_constants(**values):
                start = time.process_time()
                s = run_plan(sources, spec).summary
            row += [f"{100 * s.packing_efficiency:.2f}%", f"{s.worst_window_deviation_pp:.2f}"]
            row.append(f"{time.process_time() - start:.1f}")
        rows.append(row)
        print(f"{name}: done", flush=True)
    head = ["what-if"]
    for seq_len in args.seq_lens:
        head += [f"{seq_len} packing", "worst (pp)", "CPU s"]
    print(table(head, rows))


if __name__ == "__main__":
    main()
