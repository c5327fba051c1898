"""The one results model of an ablation sweep: `VariantResult` per proxy run, `AblationResults` for results.json.

The sweep runner saves a `VariantResult` per variant, the report writes them into `OUT/ablations/<name>/results.json`
and `mixer inspect` reads that file back through `AblationResults`: one schema, validated on both sides.
"""

from __future__ import annotations

import math
from dataclasses import asdict, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.dataclasses import dataclass

from mixer.ablate.variants import Variant

STATUSES = ("ok", "failed")


@dataclass
class VariantResult:
    """What one proxy run measured, or why it failed.

    `mixture` is the variant's declared mixture; `realised_shares` what the plan actually gave. `eval_loss` is the
    mean token cross-entropy on each source's held-out slice; `eval_accuracy` is exact match for VQA/OCR sources
    and None where it does not apply. `scores` holds the manifest's `eval:` benchmark scores (benchmark → metric →
    value) when it declares any. `loss_curve` is the training loss per optimizer step.
    """

    name: str
    mixture: dict[str, float]
    status: str = "ok"
    error: str | None = None
    realised_shares: dict[str, float] = field(default_factory=dict)
    eval_loss: dict[str, float] = field(default_factory=dict)
    eval_accuracy: dict[str, float | None] = field(default_factory=dict)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens_seen: int = 0
    wall_time_s: float = 0.0
    loss_curve: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"variant {self.name}: status must be one of {STATUSES} (got {self.status!r})")

    @classmethod
    def failed(cls, variant: Variant, error: str, wall_time_s: float = 0.0) -> VariantResult:
        return cls(variant.name, dict(variant.mixture), "failed", error=error, wall_time_s=wall_time_s)

    @property
    def mean_eval_loss(self) -> float | None:
        """Mean over sources of the eval loss; None unless the run is ok and every loss is finite."""
        losses = list(self.eval_loss.values())
        if self.status != "ok" or not losses or not all(math.isfinite(x) for x in losses):
            return None
        return sum(losses) / len(losses)

    def score(self, target: str) -> float | None:
        """The value a mixture fit minimises, None when the run has no finite such value.

        `loss` is the mean eval loss; `BENCH.METRIC` a benchmark score, negated (higher is better).
        """
        if target == "loss":
            return self.mean_eval_loss
        bench, _, metric = target.partition(".")
        value = self.scores.get(bench, {}).get(metric) if self.status == "ok" else None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return -float(value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantResult:
        return cls(**data)


class AblationResults(BaseModel):
    """`OUT/ablations/<name>/results.json`: the variants of one sweep (the fits and prediction are not re-read)."""

    model_config = ConfigDict(extra="ignore")

    stage: str | None = Field(None, description="The stage the sweep varies.")
    varied: str | None = Field(None, description="The source a grid sweep varies (None for random mixtures).")
    fit_on: str = Field("loss", description="What the mixture fit minimised: loss, or BENCH.METRIC (maximised).")
    variants: list[VariantResult] = Field(description="Every variant, finished or failed.")
