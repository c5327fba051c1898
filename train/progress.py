"""`train launch`'s progress: an ETA for the stage and one for the whole run, learnt from the steps done so far.

Stages cost differently per step (another batch, sequence length, or set of trained weights), so the run's ETA is
the sum over its stages of steps left × seconds per step, where a stage's seconds per step is

- the mean of its own steps timed in this process, once it has one; the first step is left out of the mean once
  there are others, as it also pays for starting the loader's workers and the first allocations (on a GPU, kernel
  selection and warm-up), which would otherwise inflate the ETA for hundreds of steps;
- else the run's measured seconds per unit of work (the same means, pooled over the stages timed) × the stage's
  work per step (`global_batch × seq_len` token slots, from the build's stage.json): a prior that improves as
  steps are timed, stage after stage.

Before the first step the ETA is unknown (`?`). A resumed stage starts at its checkpoint's step, and stages before
the running one count as done (trained or skipped by `--resume`). A step's time runs from the end of the one before
(its checkpoint save included); a stage's set-up, its checkpoint load and the manifest's evals between stages are
not in the ETA.

The stage's bar (`stage_bar`, from `train.metrics.MetricsWriter`, rank 0) shows both. On a terminal:

    stage 2 pretrain:  40%|####      | 120/300 [01:02<01:33,  1.92 steps/s] run 420/1000 [05:10<07:41], loss=2.103, lr=…

in a log (not a TTY), a line every `$TINYMIX_PROGRESS_EVERY` seconds (30) and at the stage's end:

    stage 2 pretrain: 120/300 (40%) elapsed 01:02 eta 01:33,  1.92 steps/s, loss=2.103, lr=…
      | run 420/1000 elapsed 05:10 eta 07:41  (one line)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from shards.progress import progress

if TYPE_CHECKING:
    from mixer.manifest import Manifest

BAR_FORMAT = (  # the ETAs before loss and lr: a narrow terminal cuts the line's end
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{stage_eta}, {rate_fmt}] "
    "run {run_n}/{run_total} [{run_elapsed}<{run_eta}]{postfix}"
)
LOG_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) elapsed {elapsed} eta {stage_eta}, {rate_fmt}{postfix} "
    "| run {run_n}/{run_total} elapsed {run_elapsed} eta {run_eta}"
)

Clock = Callable[[], float]
clock: Clock = time.monotonic  # the estimator's time source (a test swaps in a fake one)


@dataclass(frozen=True)
class StagePlan:
    """A stage of the run as the ETA sees it: its name, planned optimizer steps and work per step."""

    name: str
    steps: int
    work: float  # token slots per optimizer step (global_batch × seq_len): relative cost between stages
    number: int | None = None  # 1-based in the manifest (as `--stages` counts), for the bar's label


class EtaEstimator:
    """Seconds left in a stage and in the run, from the steps timed so far (see the module doc)."""

    def __init__(self, stages: list[StagePlan], clock: Clock = time.monotonic) -> None:
        self.stages = {s.name: s for s in stages}
        self.clock = clock
        self.done = dict.fromkeys(self.stages, 0)
        self.timed = dict.fromkeys(self.stages, 0)
        self.seconds = dict.fromkeys(self.stages, 0.0)
        self.first = dict.fromkeys(self.stages, 0.0)  # seconds of each stage's first timed step
        self.current: str | None = None
        self.started: float | None = None
        self.last: float | None = None

    @property
    def total(self) -> int:
        return sum(s.steps for s in self.stages.values())

    @property
    def steps_done(self) -> int:
        return sum(self.done.values())

    def begin(self, name: str, done: int = 0) -> None:
        """Stage `name` starts (or resumes) at step `done`; the stages before it are finished."""
        order = list(self.stages)
        for earlier in order[: order.index(name)]:
            self.done[earlier] = self.stages[earlier].steps
        self.done[name] = done
        self.current = name
        self.last = self.clock()
        if self.started is None:
            self.started = self.last

    def step(self, n: int = 1) -> None:
        """`n` optimizer steps of the current stage finished now."""
        assert self.current is not None and self.last is not None, "begin() a stage before its steps"
        now = self.clock()
        if not self.timed[self.current]:
            self.first[self.current] = (now - self.last) / n
        self.seconds[self.current] += now - self.last
        self.timed[self.current] += n
        self.done[self.current] += n
        self.last = now

    def _steady(self, name: str) -> tuple[float, int]:
        """(seconds, steps) of the stage's timed steps, its first step left out once there are others."""
        if self.timed[name] > 1:
            return self.seconds[name] - self.first[name], self.timed[name] - 1
        return self.seconds[name], self.timed[name]

    def seconds_per_step(self, name: str) -> float | None:
        """The stage's own mean, else the run's seconds per unit of work × its work; None before any timed step."""
        seconds, steps = self._steady(name)
        if steps:
            return seconds / steps
        timed = [self._steady(s) + (self.stages[s].work,) for s in self.stages]
        work = sum(steps * w for _, steps, w in timed)
        return sum(seconds for seconds, _, _ in timed) / work * self.stages[name].work if work else None

    def stage_remaining(self, name: str | None = None) -> float | None:
        """Seconds left in stage `name` (default: the current one); None while unknown."""
        name = name or self.current
        assert name is not None
        left = self.stages[name].steps - self.done[name]
        if left <= 0:
            return 0.0
        rate = self.seconds_per_step(name)
        return None if rate is None else left * rate

    def run_remaining(self) -> float | None:
        """Seconds left in the whole run: every stage's `stage_remaining`; None while any is unknown."""
        parts = [self.stage_remaining(name) for name in self.stages]
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)

    def run_elapsed(self) -> float:
        """Seconds from the first stage's start to the last step timed."""
        return 0.0 if self.started is None or self.last is None else self.last - self.started


_run: EtaEstimator | None = None


def start_run(stages: list[StagePlan]) -> EtaEstimator:
    """The launch's estimator: the stage bars of this process report to it (one per `train launch`)."""
    global _run
    _run = EtaEstimator(stages, clock=lambda: clock())
    return _run


def run_plans(out: str, names: list[str], numbers: list[int]) -> list[StagePlan]:
    """The stages' planned steps and work per step, from the build's stage.json (as the loader counts steps)."""
    from mixer.contract import StageContract

    plans = []
    for name, number in zip(names, numbers, strict=True):
        c = StageContract.read(out, name)
        plans.append(StagePlan(name, c.steps, float(c.global_batch * c.seq_len), number))
    return plans


def start_launch(m: Manifest, stages: list[int], out: str) -> EtaEstimator:
    """`start_run` over the launch's stages (manifest indexes `stages`) of the build at `out`."""
    return start_run(run_plans(out, [m.stages[i].name for i in stages], [i + 1 for i in stages]))


def _fmt(seconds: float | None) -> str:
    return "?" if seconds is None else tqdm.format_interval(seconds)


def _fields(eta: EtaEstimator) -> Callable[[], dict[str, Any]]:
    def fields() -> dict[str, Any]:
        return {
            "stage_eta": _fmt(eta.stage_remaining()),
            "run_eta": _fmt(eta.run_remaining()),
            "run_elapsed": _fmt(eta.run_elapsed()),
            "run_n": eta.steps_done,
            "run_total": eta.total,
        }

    return fields


class _StageBar:
    """A stage's bar that moves its estimator first, so each line's ETAs count the step it reports."""

    def __init__(self, bar: tqdm, eta: EtaEstimator) -> None:
        self.bar, self.eta = bar, eta

    def update(self, n: int = 1) -> None:
        self.eta.step(n)
        self.bar.update(n)

    def set_postfix(self, **kwargs: Any) -> None:
        self.bar.set_postfix(**kwargs)

    def close(self) -> None:
        self.bar.close()


def stage_bar(*, total: int, initial: int, desc: str, disable: bool) -> _StageBar:
    """The bar of stage `desc` (its name) from step `initial` of `total`, with the run's ETA when one is running.

    Outside a launch (a proxy run, a test calling `run_stage`) or for a stage the run does not know, the estimator
    covers this stage alone.
    """
    eta = _run if _run is not None and desc in _run.stages else None
    if eta is None:
        eta = EtaEstimator([StagePlan(desc, total, 1.0)], clock=lambda: clock())
    eta.begin(desc, initial)
    number = eta.stages[desc].number
    label = f"stage {desc}" if number is None else f"stage {number} {desc}"
    bar = progress(
        total=total,
        initial=initial,
        desc=label,
        unit=" steps",
        disable=disable,
        fields=_fields(eta),
        bar_format=BAR_FORMAT,
        log_format=LOG_FORMAT,
    )
    return _StageBar(bar, eta)
