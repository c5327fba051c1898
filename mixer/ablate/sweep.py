"""The resumable sweep runner: one proxy run per variant, each result saved atomically as it finishes.

Layout under the sweep folder (`OUT/ablations/<name>`): `variants/<variant>/result.json`, plus `error.txt` with the
traceback of a variant that raised. A rerun skips every variant whose saved result is `ok` and was trained on the
same mixture; failed variants, and variants whose mixture changed, run again. A variant that raises is recorded as
failed and the sweep goes on.

With `parallel > 1` variants run concurrently, each in a fresh spawned process (one variant per process, so no
torch or RNG state leaks between variants). Each proxy run is itself single-process: `parallel` is the number of
runs at once, so K runs want K cores (or GPUs) to themselves.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import pickle
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from mixer.ablate.results import VariantResult
from mixer.ablate.variants import Variant, safe_name
from shards.progress import progress

log = logging.getLogger(__name__)

RunVariant = Callable[[Variant], VariantResult]
"""Trains and evaluates one proxy. Must pickle for `parallel > 1`: a module-level function or a partial of one."""


def result_path(out_dir: Path | str, variant: str) -> Path:
    return Path(out_dir) / "variants" / variant / "result.json"


def load_result(out_dir: Path | str, variant: str) -> VariantResult | None:
    """The saved result of `variant`, or None if there is none or it cannot be read (then it runs again)."""
    path = result_path(out_dir, variant)
    try:
        return VariantResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        log.warning("%s: unreadable result (%s); the variant runs again", path, e)
        return None


def run_sweep(
    name: str, variants: Sequence[Variant], run_variant: RunVariant, out_dir: Path | str, parallel: int = 1
) -> list[VariantResult]:
    """Run every unfinished variant of sweep `name` into `out_dir` (the sweep folder); results in variant order.

    `parallel=1` runs the variants one after another in this process; `parallel=K` runs up to K at once, each in a
    fresh process of its own.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1 (got {parallel})")
    _check_names(variants)
    out_dir = Path(out_dir)
    results: dict[str, VariantResult] = {}
    todo: list[Variant] = []
    for v in variants:
        done = load_result(out_dir, v.name)
        if done is not None and done.status == "ok" and _same_mixture(done.mixture, v.mixture):
            log.info("%s/%s: finished earlier, skipped", name, v.name)
            results[v.name] = done
        else:
            todo.append(v)
    bar = progress(total=len(todo), desc=f"ablate {name}", unit=" variants", disable=not todo)
    if parallel == 1:
        for v in todo:
            results[v.name] = run_and_save(v, run_variant, out_dir)
            bar.update(1)
    elif todo:
        _check_picklable(run_variant)
        ctx = multiprocessing.get_context("spawn")  # fork under torch/Ray threads can deadlock the child
        with ProcessPoolExecutor(min(parallel, len(todo)), mp_context=ctx, max_tasks_per_child=1) as pool:
            futures = {pool.submit(run_and_save, v, run_variant, out_dir): v for v in todo}
            for future in as_completed(futures):  # the bar moves as variants finish, in any order
                v = futures[future]
                try:
                    results[v.name] = future.result()
                except Exception as e:  # the worker process died (killed, out of memory): the pool is broken
                    results[v.name] = _save(out_dir, VariantResult.failed(v, f"worker process: {_one_line(e)}"))
                bar.update(1)
    bar.close()
    for v in todo:
        r = results[v.name]
        log.info("%s/%s: %s in %.1f s%s", name, v.name, r.status, r.wall_time_s, f" ({r.error})" if r.error else "")
    return [results[v.name] for v in variants]


def run_and_save(variant: Variant, run_variant: RunVariant, out_dir: Path) -> VariantResult:
    """Run one variant, turning an exception into a failed result (traceback in `error.txt`), and save it."""
    error_file = result_path(out_dir, variant.name).with_name("error.txt")
    start = time.perf_counter()
    try:
        result = run_variant(variant)
        if result.name != variant.name or not _same_mixture(result.mixture, variant.mixture):
            raise ValueError(
                f"the runner returned a result for {result.name!r} {result.mixture}, not for the variant it was given"
                " (mixture is the variant's declared mixture; what the plan realised goes in realised_shares)"
            )
    except Exception as e:
        _atomic_write(error_file, traceback.format_exc())
        result = VariantResult.failed(variant, _one_line(e), time.perf_counter() - start)
    else:
        error_file.unlink(missing_ok=True)  # the traceback of an earlier failed attempt
    return _save(out_dir, result)


def _save(out_dir: Path, result: VariantResult) -> VariantResult:
    _atomic_write(result_path(out_dir, result.name), json.dumps(result.to_dict(), indent=2))
    return result


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_picklable(run_variant: RunVariant) -> None:
    try:
        pickle.dumps(run_variant)
    except Exception as e:
        raise TypeError(
            f"parallel sweeps send the runner to worker processes, but {run_variant!r} does not pickle ({e}); "
            "use a module-level function or a functools.partial of one"
        ) from e


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _same_mixture(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a)


def _check_names(variants: Sequence[Variant]) -> None:
    names = [v.name for v in variants]
    bad = [n for n in names if n != safe_name(n)]
    if bad:
        raise ValueError(f"variant names must be folder-safe ([A-Za-z0-9_.-], no leading dot): {bad}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"variant names repeat: {dupes}")
