"""The engine's pure parts: DeepSpeed config, gradient accumulation, AdamW groups, the launch commands, accelerator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_engine_fixtures import stage, stage_run
from test_model_fixtures import model_config, train_tokenizer

from mixer.manifest.runtime import DeepSpeedSettings
from train.engine import ds_config, enable_checkpointing, grad_accum_steps, merge_user, offloads_optimizer
from train.launch import LOOPBACK_BACKEND, deepspeed_command, rank_env, torchrun_args
from train.model import build_vlm
from train.model.tinygpt import is_norm
from train.optim import param_groups


@pytest.mark.parametrize(
    ("global_batch", "micro", "world", "expected"),
    [(8, 1, 1, 8), (8, 2, 2, 2), (8, 4, 2, 1), (6, 3, 2, 1), (32, 4, 4, 2)],
)
def test_grad_accum_is_global_over_micro_times_world(global_batch, micro, world, expected):
    assert grad_accum_steps(global_batch, micro, world) == expected


def test_grad_accum_not_divisible_names_the_numbers():
    with pytest.raises(
        ValueError, match=r"stages\[1\]: global_batch 8 is not divisible by micro_batch 2 × world size 3"
    ):
        grad_accum_steps(8, 2, 3, where="stages[1]")


def test_ds_config_from_settings_and_stage():
    st = stage(["connector"], micro_batch=2, global_batch=16)
    config = ds_config(
        stage_run(
            st, DeepSpeedSettings(zero_stage=3, bf16=True, offload_optimizer=True, offload_param=True), Path("run")
        ),
        2,
    )
    assert config["train_batch_size"] == 16
    assert config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 1.0
    assert config["bf16"] == {"enabled": True}
    assert config["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": False},
        "offload_param": {"device": "cpu", "pin_memory": False},
    }
    plain = ds_config(stage_run(st, DeepSpeedSettings(zero_stage=2, bf16=False), Path("run")), 4)
    assert plain["zero_optimization"] == {"stage": 2}
    assert plain["bf16"] == {"enabled": False}
    assert plain["gradient_accumulation_steps"] == 2


def test_user_json_wins_key_by_key(tmp_path):
    user = {"zero_optimization": {"stage": 1, "overlap_comm": True}, "train_batch_size": "auto", "fp16": {"enabled": 0}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    config = ds_config(
        stage_run(stage(["connector"]), DeepSpeedSettings(zero_stage=3, config=str(path)), Path("run")), 1
    )
    assert config["zero_optimization"] == {"stage": 1, "overlap_comm": True}
    assert config["train_batch_size"] == 2  # "auto" keeps ours
    assert config["fp16"] == {"enabled": 0}
    assert merge_user({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_user_json_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="deepspeed.config: no such file"):
        ds_config(
            stage_run(stage(["connector"]), DeepSpeedSettings(config=str(tmp_path / "missing.json")), Path("run")), 1
        )
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  'stage': 2\n}")
    with pytest.raises(ValueError, match=r"bad\.json: invalid JSON at line 2"):
        ds_config(stage_run(stage(["connector"]), DeepSpeedSettings(config=str(bad)), Path("run")), 1)


@pytest.mark.parametrize(("llm", "options"), [("llama", {}), ("phi", {"qk_norm": True, "post_attn_norm": True})])
def test_param_groups_no_decay_on_norms_and_biases_and_connector_lr(tmp_path, llm, options):
    vlm = build_vlm(model_config(llm, "mlp2x_gelu", **options), train_tokenizer(tmp_path), 32)
    st = stage(["connector", "llm", "vision"], lr=1e-4)
    groups = {g["name"]: g for g in param_groups(vlm, st, connector_lr=2e-3)}
    assert set(groups) == {"model_decay", "model_no_decay", "connector_decay", "connector_no_decay"}
    assert {n: g["lr"] for n, g in groups.items()} == {
        "model_decay": 1e-4,
        "model_no_decay": 1e-4,
        "connector_decay": 2e-3,
        "connector_no_decay": 2e-3,
    }
    assert {n: g["weight_decay"] for n, g in groups.items()} == {
        "model_decay": 0.01,
        "model_no_decay": 0.0,
        "connector_decay": 0.01,
        "connector_no_decay": 0.0,
    }
    # Reference: classify every parameter from its module, independently of the implementation.
    expected: dict[str, set[int]] = {name: set() for name in groups}
    for prefix, module in vlm.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            decay = not (is_norm(module) or pname == "bias" or p.ndim < 2)
            part = "connector" if prefix.startswith("connector") else "model"
            expected[f"{part}_{'decay' if decay else 'no_decay'}"].add(id(p))
    assert {n: {id(p) for p in g["params"]} for n, g in groups.items()} == expected
    norms = [p for m in vlm.llm.modules() if is_norm(m) for p in m.parameters(recurse=False)]
    assert norms and all(id(p) in expected["model_no_decay"] for p in norms)


def test_param_groups_skip_frozen_and_default_connector_lr(tmp_path):
    vlm = build_vlm(model_config("llama", "linear"), train_tokenizer(tmp_path), 32)
    for p in vlm.parameters():
        p.requires_grad_(False)
    for p in vlm.connector.parameters():
        p.requires_grad_(True)
    groups = param_groups(vlm, stage(["connector"], lr=5e-4))
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [
        ("connector_decay", 5e-4, 1),
        ("connector_no_decay", 5e-4, 1),
    ]
    vlm.connector.requires_grad_(False)
    with pytest.raises(ValueError, match=r"stages\.toy\.trains: no parameter trains"):
        param_groups(vlm, stage(["connector"]))


def test_torchrun_args_local_loopback():
    args = torchrun_args(["-m", "train.cli", "run", "x.yaml"], 3, run_id="r1")
    assert args == [
        "--nnodes=1",
        "--nproc-per-node=3",
        f"--rdzv-backend={LOOPBACK_BACKEND}",
        "--rdzv-endpoint=127.0.0.1:0",
        "--rdzv-id=r1",
        "--max-restarts=0",
        "--module",
        "train.cli",
        "run",
        "x.yaml",
    ]
    assert torchrun_args(["w.py", "a"], 1, run_id="r")[-2:] == ["w.py", "a"]
    with pytest.raises(ValueError, match="--nproc must be >= 1"):
        torchrun_args(["w.py"], 0)


def test_deepspeed_hostfile_command(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=8\nnode2 slots=8\n")
    cmd = deepspeed_command(["-m", "train.cli", "run"], str(hostfile), master_port=29600)
    assert cmd[1:] == [
        "-m",
        "deepspeed.launcher.runner",
        "--hostfile",
        str(hostfile),
        "--master_port",
        "29600",
        "--no_local_rank",
        "--module",
        "train.cli",
        "run",
    ]
    with pytest.raises(ValueError, match="--hostfile: no such file"):
        deepspeed_command(["w.py"], str(tmp_path / "nope"))


def test_rank_env_selects_the_cpu_accelerator_without_a_gpu():
    env = rank_env(2, base={"PATH": "/bin"}, gpu=False)
    assert env["DS_ACCELERATOR"] == "cpu"
    assert int(env["OMP_NUM_THREADS"]) >= 1
    assert env["GLOO_SOCKET_IFNAME"].startswith("lo")
    assert "DS_ACCELERATOR" not in rank_env(2, base={}, gpu=True)
    assert rank_env(2, base={"DS_ACCELERATOR": "cuda"}, gpu=False)["DS_ACCELERATOR"] == "cuda"  # explicit wins


def test_checkpointing_switches_per_part(tmp_path):
    vlm = build_vlm(model_config("llama", "linear"), train_tokenizer(tmp_path), 32)
    enable_checkpointing(vlm, llm=False, vision=True)
    assert vlm.vision.model.is_activation_checkpointing and not vlm.llm.is_activation_checkpointing
    enable_checkpointing(vlm, llm=True, vision=False)
    assert vlm.llm.is_activation_checkpointing


def test_offload_is_read_from_the_final_config(tmp_path):
    st = stage(["connector"])
    assert offloads_optimizer(
        ds_config(stage_run(st, DeepSpeedSettings(zero_stage=2, offload_optimizer=True), Path("run")), 1)
    )
    assert not offloads_optimizer(ds_config(stage_run(st, DeepSpeedSettings(zero_stage=2), Path("run")), 1))
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "nvme"}}}))
    assert offloads_optimizer(
        ds_config(stage_run(st, DeepSpeedSettings(zero_stage=3, config=str(path)), Path("run")), 1)
    )
    path.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "none"}}}))
    assert not offloads_optimizer(
        ds_config(
            stage_run(st, DeepSpeedSettings(zero_stage=3, offload_optimizer=True, config=str(path)), Path("run")), 1
        )
    )
