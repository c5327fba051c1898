"""Stage freezing: what each `trains` entry selects, the counts it reports, and that a DeepSpeed stage leaves frozen
parameters bit-identical while the trained ones move (connector only, then connector + LoRA on the same model)."""

from __future__ import annotations

import pytest
import torch
from test_engine_fixtures import SeededLoader, one_thread, run_here, stage, tiny_vlm  # noqa: F401 - fixture
from test_model_fixtures import model_config, train_tokenizer

from mixer.manifest.runtime import DeepSpeedSettings
from train.freeze import apply_freeze, freeze_stage
from train.model import build_vlm
from train.model.tinygpt import norm_parameters


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _count(params) -> int:
    return sum(p.numel() for p in params)


def _trainable_ids(model) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def test_connector_only(tok):
    vlm = tiny_vlm(tok)
    report = apply_freeze(vlm, ["connector"])
    assert _trainable_ids(vlm) == {id(p) for p in vlm.connector.parameters()}
    assert report.per_module == {"connector": _count(vlm.connector.parameters())}
    assert report.trainable == _count(vlm.connector.parameters())
    assert report.total == _count(vlm.parameters())
    assert str(report).startswith(f"trainable {report.trainable:,} of {report.total:,} parameters (connector ")


def test_connector_and_norms_of_a_tinygpt_llm(tok):
    vlm = build_vlm(model_config("phi", "mlp2x_gelu", qk_norm=True, post_attn_norm=True), tok, 32)
    report = apply_freeze(vlm, ["connector", "norms"])
    norms = [p for _, p in norm_parameters(vlm.llm)]
    assert _trainable_ids(vlm) == {id(p) for p in [*vlm.connector.parameters(), *norms]}
    assert report.per_module["norms"] == _count(norms) > 0
    assert not any(p.requires_grad for p in vlm.vision.parameters())


def test_vision_and_llm_then_refreezing(tok):
    vlm = tiny_vlm(tok)
    apply_freeze(vlm, ["vision", "llm"])
    assert _trainable_ids(vlm) == {id(p) for p in [*vlm.vision.parameters(), *vlm.llm.parameters()]}
    apply_freeze(vlm, ["connector"])  # a later stage freezes what the earlier one trained
    assert _trainable_ids(vlm) == {id(p) for p in vlm.connector.parameters()}


def test_lora_stage_adds_adapters_and_trains_only_them(tok):
    vlm = tiny_vlm(tok)
    base = {id(p) for p in vlm.llm.parameters()}
    st = stage(["connector", "lora"], lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    report = freeze_stage(vlm, st, 1)
    lora = [p for n, p in vlm.llm.named_parameters() if "lora_" in n]
    assert len(lora) == 2 * 2 * 2  # A and B, q and v, two layers
    assert _trainable_ids(vlm) == {id(p) for p in [*vlm.connector.parameters(), *lora]}
    assert report.per_module["lora"] == _count(lora)
    assert not any(id(p) in base for p in lora)


def test_bad_trains_entries(tok):
    vlm = tiny_vlm(tok)
    with pytest.raises(ValueError, match=r"stages\[2\]\.trains: lora selects no parameter .*ensure_lora"):
        apply_freeze(vlm, ["connector", "lora"], where="stages[2].trains")
    with pytest.raises(ValueError, match="unknown module 'decoder'; known: connector, vision, llm, lora, norms"):
        apply_freeze(vlm, ["decoder"])
    with pytest.raises(ValueError, match="needs a model with a `connector` module"):
        apply_freeze(torch.nn.Linear(2, 2), ["connector"])


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _same(params, snapshot) -> bool:
    return all(torch.equal(p.detach(), s) for p, s in zip(params, snapshot, strict=True))


def _all_moved(params, snapshot) -> bool:
    return all(not torch.equal(p.detach(), s) for p, s in zip(params, snapshot, strict=True))


def test_deepspeed_stages_leave_frozen_parameters_bit_identical(tok, tmp_path, one_thread):  # noqa: F811
    vlm = tiny_vlm(tok)
    loader = SeededLoader(tok, vlm.n_image_tokens(32), seed=1, micro_batch=1)
    ds = DeepSpeedSettings(zero_stage=2, bf16=True)
    vision, connector, llm = (list(m.parameters()) for m in (vlm.vision, vlm.connector, vlm.llm))
    start = _snapshot(vision + connector + llm)
    # bf16 training casts the whole module once; frozen weights must come back exactly as that cast made them.
    cast = [t.bfloat16().float() for t in start]

    run_here(vlm, loader, stage(["connector"], steps=2), ds, tmp_path / "a")
    n_v, n_c = len(vision), len(connector)
    assert _same(vision, cast[:n_v]) and _same(llm, cast[n_v + n_c :])
    assert _all_moved(connector, start[n_v : n_v + n_c])
    assert all(p.dtype == torch.float32 for p in vlm.parameters())

    after_a = _snapshot(vision + connector + llm)
    lora_stage = stage(["connector", "lora"], steps=2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    run_here(vlm, loader, lora_stage, ds, tmp_path / "b")
    adapters = [p for n, p in vlm.llm.named_parameters() if "lora_B" in n]
    assert adapters and all(bool(p.abs().sum() > 0) for p in adapters)  # peft starts lora_B at zero
    assert _same(vision, after_a[:n_v]) and _same(llm, after_a[n_v + n_c :])  # base LLM weights untouched
    assert _all_moved(connector, after_a[n_v : n_v + n_c])


def test_vision_from_trains_the_tower_from_a_middle_layer_with_its_own_lr(tok, tmp_path, one_thread):  # noqa: F811
    from test_model_fixtures import VISION

    from train.freeze import vision_layer
    from train.optim import param_groups

    torch.manual_seed(0)
    # feature_layer -1: every layer from vision_from on feeds the connector (with LLaVA's -2, the last gets no gradient)
    tower = {**VISION, "num_hidden_layers": 4}
    vlm = build_vlm(model_config("llama", "mlp2x_gelu", vision=tower, vision_options={"feature_layer": -1}), tok, 32)
    st = stage(["connector", "vision"], steps=3, lr=3e-3, vision_from=2, vision_lr=1e-3)
    report = freeze_stage(vlm, st, 0)
    params = dict(vlm.vision.named_parameters())
    trained = {n for n, p in params.items() if p.requires_grad}
    assert trained == {n for n in params if vision_layer(n) in (2, 3)}  # embeddings, layers 0-1, norms: frozen
    assert report.per_module["vision"] == sum(params[n].numel() for n in trained)
    groups = {g["name"]: g["lr"] for g in param_groups(vlm, st)}
    assert groups == {
        "connector_decay": 3e-3,
        "connector_no_decay": 3e-3,
        "vision_decay": 1e-3,
        "vision_no_decay": 1e-3,
    }

    before = {n: p.detach().clone() for n, p in vlm.named_parameters()}
    loader = SeededLoader(tok, vlm.n_image_tokens(32), seed=0, micro_batch=1)
    run_here(vlm, loader, st, DeepSpeedSettings(bf16=False), tmp_path)
    after = dict(vlm.named_parameters())
    for n in before:
        moved = not torch.equal(before[n], after[n])
        learns = n.startswith("connector.") or n.removeprefix("vision.") in trained
        assert moved == learns, n


def test_vision_from_past_the_last_layer_is_named(tok):
    vlm = tiny_vlm(tok)  # two tower layers
    with pytest.raises(ValueError, match=r"stages\[1\]\.vision_from: 5 is past the vision tower's last layer \(1\)"):
        freeze_stage(vlm, stage(["vision"], vision_from=5), 1)
