"""Fan-out of each step's metrics row to the loggers a run asks for (`report_to`), through the libraries themselves.

- `jsonl`: always written by `train.metrics.MetricsWriter` (`RUN/metrics/<n>-<stage>.jsonl`; resume and
  `OUT/report.html` read it), so naming it changes nothing;
- `tensorboard`: `torch.utils.tensorboard.SummaryWriter` into `RUN/tensorboard`, a scalar `<stage>/<metric>` per
  step at the stage's step; the run config and plan digests as text;
- `wandb`: `wandb.init(dir=RUN, config=…)`, one `wandb.log` per step with `<stage>/<metric>` keys and
  `<stage>/step`. Offline (`RUN/wandb/offline-run-*`, upload later with `wandb sync`) unless the user sets
  `WANDB_MODE` (e.g. `online`): a training job never reaches for the network on its own.

Per step: loss, lr, grad norm, tokens/s, samples/s, images/s, loader wait and step time (the row's numbers, so every
logger holds the JSONL's values); per stage, the manifest's eval scores as `<stage>/eval/<benchmark>.<metric>`.
The run's config (the manifest) and each stage's plan digest are run metadata.
`MetricsWriter.write` calls `log(row)`; `open_reporters` (rank 0, from `train.pipeline.train`) sets the active fan-out.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path
from typing import Any

LOGGERS = ("jsonl", "tensorboard", "wandb")
SCALARS = (
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "samples_per_s",
    "images_per_s",
    "loader_wait_s",
    "step_time_s",
    "data_s",
    "forward_backward_s",
    "optimizer_s",
)  # the row's keys logged when present (the step time split lands as the loop reports it)


def parse_report_to(value: str | list[str] | None) -> list[str]:
    """`"tensorboard,wandb"` or a list → the logger names; ValueError naming an unknown one."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value or []) if v.strip()]
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise ValueError(f"report_to: unknown logger {bad[0]!r}; choose from {', '.join(LOGGERS)}")
    return list(dict.fromkeys(names))


class Reporter:
    """The open loggers of one run (rank 0)."""

    def __init__(self, run_dir: Path, report_to: list[str], config: dict[str, Any], name: str) -> None:
        self.report_to = parse_report_to(report_to)
        self.tb: Any = None
        self.wandb: Any = None
        if "tensorboard" in self.report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            for key, value in config.items():
                self.tb.add_text(f"run/{key}", "```\n" + json.dumps(value, indent=2) + "\n```", 0)
        if "wandb" in self.report_to:
            import wandb

            run_dir.mkdir(parents=True, exist_ok=True)
            for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
                os.environ.setdefault(var, str(run_dir / "wandb" / sub))  # nothing written outside the run folder
            mode = os.environ.get("WANDB_MODE") or "offline"  # online only when the user says so
            self.wandb = wandb.init(dir=str(run_dir), project=name, config=config, mode=mode, reinit="create_new")
        atexit.register(self.close)  # a run that dies still leaves its loggers' files complete

    def log(self, row: dict[str, Any]) -> None:
        stage, step = row["stage"], int(row["step"])
        values = {k: float(row[k]) for k in SCALARS if row.get(k) is not None}
        values |= {f"eval/{k}": float(v) for k, v in _numbers("", row.get("eval") or {})}
        if self.tb is not None:
            for key, v in values.items():
                self.tb.add_scalar(f"{stage}/{key}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{stage}/{k}": v for k, v in values.items()} | {f"{stage}/step": step})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def run_config(m: Any, stages: list[int], out: str) -> dict[str, Any]:
    """The run metadata every logger gets: the manifest (as JSON), the stages run and each one's plan digest."""
    from train.pipeline import plan_digest

    names = [m.stages[i].name for i in stages]
    return {"manifest": m.model_dump(mode="json"), "stages": names, "plans": {n: plan_digest(out, n) for n in names}}


def _numbers(prefix: str, x: Any) -> list[tuple[str, float]]:
    """The numeric leaves of a nested scores dict as ('gqa.accuracy', 0.31) pairs."""
    if isinstance(x, dict):
        return [kv for k, v in x.items() for kv in _numbers(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, x)] if isinstance(x, int | float) and not isinstance(x, bool) else []


_active: Reporter | None = None


def open_reporters(run_dir: Path, report_to: list[str], config: dict[str, Any], name: str) -> Reporter:
    """Open the loggers and make them the ones `log` feeds (closing any earlier set)."""
    global _active
    close()
    _active = Reporter(run_dir, report_to, config, name)
    return _active


def log(row: dict[str, Any]) -> None:
    """Send one metrics row (`StepMetrics.record()`) to the active loggers, if any."""
    if _active is not None:
        _active.log(row)


def close() -> None:
    """Close the active loggers (flushes TensorBoard's events, finishes the W&B run)."""
    global _active
    if _active is not None:
        _active.close()
        _active = None
