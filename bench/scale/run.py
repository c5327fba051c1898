"""Scale benchmark: plan a stage over a synthetic index of N samples and open the plan near its end.

    python -m bench.scale.run --sizes 10000000 100000000

Each size runs in its own subprocess (generate the index if missing, plan one stage of seq_len 4096 weighted by
tokens over ~98% of the index's tokens, open the plan 10 sequences before its end); the parent prints wall times,
peak RSS (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`), the growth factor between sizes and the open time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.scale.generate import generate
from mixer.plan import PlanReader, PlanSpec, SourceInput, plan_stage

WORK = Path(__file__).resolve().parents[1] / "_work" / "scale"
SEQ_LEN = 4096


def child(n: int, work: Path, seed: int) -> dict:
    """Generate (if needed), plan and open one size; returns the measurements."""
    index = work / f"index-{n}"
    t0 = time.perf_counter()
    meta = generate(index, n, seed)
    gen_s = time.perf_counter() - t0
    total = sum(s["tokens"] for s in meta["sources"])
    sources = [
        SourceInput(
            s["name"],
            s["tokens"] / total,  # weights by token share: the stage is about one pass over everything
            np.load(index / f"{s['name']}.lengths.npy", mmap_mode="r"),
            images=np.load(index / f"{s['name']}.images.npy", mmap_mode="r"),
        )
        for s in meta["sources"]
    ]
    spec = PlanSpec(seq_len=SEQ_LEN, weight_by="tokens", seed=seed, num_tokens=int(total * 0.98))
    t0, c0 = time.perf_counter(), time.process_time()
    summary = plan_stage(sources, spec, work / f"plan-{n}")
    plan_s, plan_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    reader = PlanReader(work / f"plan-{n}")
    tail = list(reader.sequences(len(reader) - 10))
    open_s = time.perf_counter() - t0
    assert len(tail) == 10
    return {
        "n": n,
        "generate_s": round(gen_s, 2),
        "plan_s": round(plan_s, 2),
        "plan_cpu_s": round(plan_cpu, 2),  # the machine is shared: CPU time is the steadier figure
        "open_s": round(open_s, 4),
        "self_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "sequences": summary.num_sequences,
        "segments": int(sum(summary.samples)),
        "packing_efficiency": round(summary.packing_efficiency, 5),
        "worst_window_deviation_pp": round(summary.worst_window_deviation_pp, 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    ap.add_argument("--work", type=Path, default=WORK, help="where indexes and plans are written")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.work, args.seed)), flush=True)
        return
    rows = []
    for n in sorted(args.sizes):
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "bench.scale.run", "--child", str(n), "--work", str(args.work)]
        out = subprocess.run([*cmd, "--seed", str(args.seed)], check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        # ru_maxrss of children is the largest of any child so far; sizes run smallest first, so it is this one's
        row["children_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    head = ("samples", "plan s", "cpu s", "gen s", "open s", "peak MiB", "eff", "dev pp")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (12, 8, 8, 7, 7, 9, 8, 7), strict=True)))
    for r in rows:
        print(
            f"{r['n']:>12,} {r['plan_s']:>8.1f} {r['plan_cpu_s']:>8.1f} {r['generate_s']:>7.1f} {r['open_s']:>7.3f} "
            f"{r['children_maxrss_mib']:>9.0f} {r['packing_efficiency']:>8.4f} {r['worst_window_deviation_pp']:>7.3f}"
        )
    for a, b in zip(rows, rows[1:], strict=False):
        ratio = b["n"] / a["n"]
        print(
            f"growth {a['n']:,} -> {b['n']:,} samples ({ratio:.0f}x): plan wall {b['plan_s'] / a['plan_s']:.2f}x, "
            f"cpu {b['plan_cpu_s'] / a['plan_cpu_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
