"""img2dataset, the peer: installed from PyPI into its own venv under the work folder, run as a user would run it.

The whole command is timed; successes are counted from its own `*_stats.json` files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

VENV = "img2dataset-venv"
MARKER = ".bench-installed"  # written after a successful install, so a half-built venv is rebuilt
INSTALL_TIMEOUT = 1800
# albumentations (imported by img2dataset) asks PyPI for a newer version in every process it starts: network
# traffic beyond 127.0.0.1 and seconds of start-up that have nothing to do with img2dataset's work.
RUN_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}


class PeerUnavailable(RuntimeError):
    """img2dataset could not be installed or run; the message says why and where the log is."""


def ensure_img2dataset(work: Path) -> tuple[Path, str]:
    """The img2dataset executable and its version, installing it into `work/img2dataset-venv` unless already there."""
    venv = work / VENV
    exe, marker = venv / "bin" / "img2dataset", venv / MARKER
    if marker.exists() and exe.exists():
        return exe, marker.read_text().strip()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "img2dataset-install.log"
    print(f"installing img2dataset into {venv} (log: {log}); reused by later runs", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    python = venv / "bin" / "python"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "img2dataset"],
    ]
    with log.open("w") as f:
        for cmd in steps:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            try:
                done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                raise PeerUnavailable(f"img2dataset install timed out after {INSTALL_TIMEOUT}s; see {log}") from None
            except OSError as e:
                raise PeerUnavailable(f"cannot run `{cmd[0]}`: {e}") from None
            if done.returncode != 0:
                step = " ".join([Path(cmd[0]).name, *cmd[1:]])
                raise PeerUnavailable(f"`{step}` failed (exit {done.returncode}): {_tail(log)}; see {log}")
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('img2dataset'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not exe.exists() or not version:
        raise PeerUnavailable(f"img2dataset installed but not runnable from {exe}; see {log}")
    marker.write_text(version + "\n")
    return exe, version


def img2dataset_command(
    exe: Path, url_parquet: Path, out: Path, processes: int, threads: int, size: int, per_shard: int
) -> list[str]:
    """The img2dataset command line of the benchmark: the settings the issue names, everything else its defaults."""
    return [
        str(exe),
        "--url_list",
        str(url_parquet),
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_folder",
        str(out),
        "--output_format",
        "webdataset",
        "--image_size",
        str(size),
        "--resize_mode",
        "center_crop",
        "--encode_format",
        "jpg",
        "--encode_quality",
        "95",
        "--number_sample_per_shard",
        str(per_shard),
        "--processes_count",
        str(processes),
        "--thread_count",
        str(threads),
        "--distributor",
        "multiprocessing",
    ]


def run_img2dataset(cmd: list[str], out: Path, log: Path) -> dict[str, float | int]:
    """Run `cmd` into a fresh `out`; wall seconds of the whole command, and counts summed from its stats files.

    Its update check and telemetry are switched off (`RUN_ENV`); everything else runs as a user would run it.
    CPU seconds are those of the command and every process it waited for.
    """
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ | RUN_ENV)
        # wait4 gives the CPU of img2dataset and of every process it waited for (its pool, its logger)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise PeerUnavailable(f"img2dataset exited with {proc.returncode}: {_tail(log)}; see {log}")
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    if not stats:
        raise PeerUnavailable(f"img2dataset wrote no *_stats.json under {out}; see {log}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        # first shard start to last shard end, from its stats: its work without process start-up and input sharding
        "workers_span_s": max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats),
        "shard_s_sum": sum(s["duration"] for s in stats),  # its own per-shard durations, added up
        "input": sum(s["count"] for s in stats),
        "successes": sum(s["successes"] for s in stats),
        "shards": len(list(out.glob("*.tar"))),
    }


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) if text else "(no output)"
