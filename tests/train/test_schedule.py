"""The per-step schedule: exact values at its landmarks, 🤗's cosine as a reference, and the LambdaLR over groups."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from mixer.manifest.stages import StageConfig
from train.schedule import lr_factor, stage_schedule, stage_scheduler


def _stage(steps: int = 20, **optimizer) -> StageConfig:
    return StageConfig.model_validate(
        {
            "name": "s",
            "mixture": {"a": 1},
            "size": {"steps": steps},
            "trains": ["connector"],
            "optimizer": {"lr": 1e-3, **optimizer},
        }
    )


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.25),  # first update already moves: (0 + 1) / 4
        (3, 1.0),  # last warm-up step reaches the peak
        (4, 1.0),  # cosine starts at the peak
        (12, 0.1 + 0.9 * 0.5),  # halfway through the cosine (8 of 16 steps)
        (19, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16))),  # the last update
        (20, 0.1),  # the end: min_lr / lr
        (25, 0.1),  # past the end it stays there
    ],
)
def test_landmarks(step, expected):
    assert lr_factor(step, warmup=4, total=20, min_ratio=0.1) == pytest.approx(expected, abs=1e-12)


def test_no_warmup_starts_at_the_peak():
    assert lr_factor(0, warmup=0, total=10, min_ratio=0.0) == 1.0
    assert lr_factor(5, warmup=0, total=10, min_ratio=0.0) == pytest.approx(0.5, abs=1e-12)


def test_cosine_part_matches_transformers():
    # 🤗's schedule (LLaVA's) differs only in warm-up: step / warmup instead of (step + 1) / warmup.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_cosine_schedule_with_warmup(opt, num_warmup_steps=5, num_training_steps=30).lr_lambdas[0]
    for step in range(5, 31):
        assert lr_factor(step, warmup=5, total=30, min_ratio=0.0) == pytest.approx(hf(step), abs=1e-12)
    assert [lr_factor(s, warmup=5, total=30, min_ratio=0.0) for s in range(5)] == [hf(s + 1) for s in range(5)]


def test_stage_schedule_reads_warmup_ratio_and_min_lr():
    schedule = stage_schedule(_stage(min_lr=2e-4, warmup_ratio=0.1), 50)
    assert (schedule.warmup, schedule.total) == (5, 50)
    assert schedule.min_ratio == pytest.approx(0.2)
    assert stage_schedule(_stage(warmup_steps=3), 50).warmup == 3


def test_warmup_longer_than_the_stage_is_rejected():
    with pytest.raises(ValueError, match=r"stages\.s\.optimizer: warm-up of 30 steps is longer than the stage \(20\)"):
        stage_schedule(_stage(warmup_steps=30), 20)


def test_scheduler_scales_every_group_and_survives_a_state_dict_round_trip():
    stage = _stage(min_lr=1e-4, warmup_steps=2)
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 5e-3}])
    sched = stage_scheduler(opt, stage, 10)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for step, (lr, connector_lr) in enumerate(seen):
        factor = lr_factor(step, warmup=2, total=10, min_ratio=0.1)
        assert lr == pytest.approx(1e-3 * factor, rel=1e-12)
        assert connector_lr == pytest.approx(5e-3 * factor, rel=1e-12)
    assert opt.param_groups[1]["lr"] == pytest.approx(5e-4)  # the connector ends at its lr × min_lr / lr

    fresh_opt = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-3}, {"params": [params[1]], "lr": 5e-3}])
    fresh = stage_scheduler(fresh_opt, _stage(), 99)  # a different stage: the loaded state must win
    fresh.load_state_dict(sched.state_dict())
    assert fresh.lr_lambdas[0] == sched.lr_lambdas[0]
    assert fresh.last_epoch == 10
