"""`mixer validate` catches what would fail later or write outside the output folder: one line, the field, exit 2.

Names that become folders, the output folder, YAML alias bombs and cycles, non-finite numbers, seeds, typos in
`trains` and `template`, and `extends:` cycles; each through the CLI as a user meets it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from test_manifest import BASE, _set, mutate, write
from typer.testing import CliRunner

from mixer.cli import app
from mixer.manifest.yaml_lines import MAX_NODES


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The files test_manifest's BASE names, laid out under tmp_path."""
    (tmp_path / "data/images").mkdir(parents=True)
    (tmp_path / "data/caps.tsv").write_text("a caption\thttp://x/1.jpg\n")
    (tmp_path / "data/chat.json").write_text("[]")
    (tmp_path / "tok").mkdir()
    return tmp_path


def fake_hub_cache(root: Path, names: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `names` look downloaded: 🤗's cache layout (refs/main → snapshots/<sha>/tokenizer_config.json) under
    `root`, which becomes the hub cache for this test."""
    import huggingface_hub.constants

    for name in names:
        repo = root / f"models--{name.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs/main").write_text("0" * 40)
        (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
        (repo / "snapshots" / ("0" * 40) / "tokenizer_config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))


def one_line_error(args: list[str]) -> str:
    """Run `mixer ARGS`; it must exit 2 with exactly one line on stderr and no traceback; return that line."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def validate_error(project: Path, data: dict | str, *options: str) -> str:
    return one_line_error(["validate", str(write(project, data)), *options])


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "..", ".", "", ".hidden", "-x"])
def test_source_name_is_an_identifier(project: Path, name: str) -> None:
    def rename(d: dict) -> None:
        d["sources"][name] = d["sources"].pop("caps")
        d["stages"][0]["mixture"] = {name: 1, "chat": 1}
        d["ablations"]["sweep"]["grid"]["vary"] = name

    line = validate_error(project, mutate(rename), "--no-paths")
    assert re.match(rf"^\S*m\.yaml:\d+: sources\[{re.escape(repr(name))}\]: source name .* is not an identifier", line)


@pytest.mark.parametrize("name", ["..", "a/b", "/tmp/x", ""])
def test_stage_name_is_an_identifier(project: Path, name: str) -> None:
    line = validate_error(project, mutate(_set("stages.1.name", name)), "--no-paths")
    assert re.match(r"^\S*m\.yaml:\d+: stages\[1\]\.name: stage name .* is not an identifier", line), line


def test_ablation_name_is_an_identifier(project: Path) -> None:
    data = mutate(lambda d: d.__setitem__("ablations", {"../up": d["ablations"]["sweep"]}))
    line = validate_error(project, data, "--no-paths")
    assert re.match(r"^\S*m\.yaml:\d+: ablations\['\.\./up'\]: ablation name '\.\./up' is not an identifier", line)


def test_output_is_not_the_root_nor_a_file(project: Path) -> None:
    line = validate_error(project, mutate(_set("output", "/")), "--no-paths")
    assert re.match(r"^\S*m\.yaml:2: output: '/' is the filesystem root", line), line
    line = validate_error(project, mutate(_set("output", "../../../../../../../../..")), "--no-paths")
    assert "output: " in line and "is the filesystem root" in line
    (project / "afile").write_text("x")
    line = validate_error(project, mutate(_set("output", "afile")), "--no-paths")
    assert re.match(rf"^\S*m\.yaml:2: output: {re.escape(str(project / 'afile'))} is an existing file", line), line


def test_alias_bomb_fails_fast_with_one_line(project: Path) -> None:
    # nine levels of nine-fold aliases: 9**9 (387 million) nodes if expanded
    bomb = "lol0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
    )
    text = write(project, BASE).read_text() + bomb
    start = time.process_time()
    line = validate_error(project, text, "--no-paths")
    assert time.process_time() - start < 10  # generous: not a speed target, a guard against expanding the bomb
    assert re.match(rf"^\S*m\.yaml:\d+: lol\d\S*: YAML aliases expand past {MAX_NODES:,} nodes", line), line


def test_alias_cycle_is_one_line(project: Path) -> None:
    text = write(project, BASE).read_text() + "loop: &x {again: *x}\n"
    line = validate_error(project, text, "--no-paths")
    assert re.match(r"^\S*m\.yaml:\d+: loop\.again: YAML alias refers to a node that contains it", line), line


def test_plain_aliases_still_work(project: Path) -> None:
    text = write(project, BASE).read_text().replace("name: t\n", "name: t\nx-opt: &opt {lr: 0.01}\n")
    text = text.replace("  optimizer:\n    lr: 0.0001\n", "  optimizer: *opt\n")
    text = text.replace("x-opt: &opt {lr: 0.01}\n", "")  # an anchor must be defined where it is used first
    text = text.replace("  optimizer:\n    lr: 0.001\n", "  optimizer: &opt\n    lr: 0.001\n", 1)
    assert "*opt" in text and "&opt" in text
    result = CliRunner().invoke(app, ["validate", str(write(project, text)), "--no-paths"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_weights_are_finite(project: Path, value: str) -> None:
    text = write(project, BASE).read_text().replace("    caps: 1\n", f"    caps: {value}\n", 1)
    line = validate_error(project, text, "--no-paths")
    assert re.match(r"^\S*m\.yaml:\d+: stages\[0\]\.mixture\.caps: must be a finite number \(got -?(nan|inf)\)", line)


@pytest.mark.parametrize(("seed", "bound"), [(2**64, "less than or equal to 4294967295"), (-1, "greater than")])
def test_seed_is_32_bit(project: Path, seed: int, bound: str) -> None:
    line = validate_error(project, mutate(_set("seed", seed)), "--no-paths")
    assert re.match(rf"^\S*m\.yaml:\d+: seed: Input should be {bound}", line), line
    line = validate_error(project, mutate(_set("ablations.sweep.proxy", {"seed": seed})), "--no-paths")
    assert re.match(rf"^\S*m\.yaml:\d+: ablations\.sweep\.proxy\.seed: Input should be {bound}", line), line


def test_trains_typo_names_the_module(project: Path) -> None:
    line = validate_error(project, mutate(_set("stages.0.trains", ["visoin"])), "--no-paths")
    assert re.match(
        r"^\S*m\.yaml:\d+: stages\[0\]\.trains: unknown trainable module 'visoin' \(did you mean 'vision'", line
    )


def test_template_typo_names_the_template(project: Path) -> None:
    line = validate_error(project, mutate(_set("stages.1.template", "llava_v2")), "--no-paths")
    assert re.match(
        r"^\S*m\.yaml:\d+: stages\[1\]\.template: unknown template 'llava_v2' \(did you mean 'llava_v1'", line
    )


def test_extends_cycle_is_one_line(project: Path) -> None:
    (project / "a.yaml").write_text("extends: b.yaml\n")
    (project / "b.yaml").write_text("extends: a.yaml\n")
    line = one_line_error(["validate", str(project / "a.yaml")])
    assert re.match(r"^\S*b\.yaml:1: extends: cycle a\.yaml → b\.yaml → a\.yaml$", line), line


VISION_CONFIG = "model.vision.config"
HF_CASES = {
    "vision heads do not divide the width": (
        _set(
            VISION_CONFIG,
            {"model_type": "clip_vision_model", "hidden_size": 64, "num_attention_heads": 5, "patch_size": 16},
        ),
        r"model\.vision\.config\.num_attention_heads: 5 heads do not divide hidden_size 64",
    ),
    "feature layer past the tower": (
        lambda d: (
            _set(VISION_CONFIG, {"model_type": "siglip_vision_model", "num_hidden_layers": 4, "patch_size": 16})(d),
            _set("model.vision.feature_layer", -10)(d),
        ),
        r"model\.vision\.feature_layer: -10 is out of range: the tower has 4 layers, so hidden states -5\.\.4",
    ),
    "unknown llm model_type": (
        _set("model.llm.config", {"model_type": "lama", "hidden_size": 64}),
        r"model\.llm\.config\.model_type: unknown 🤗 model_type 'lama' \(did you mean 'llama'\?\)",
    ),
    "llm that is not a causal LM": (
        _set("model.llm.config", {"model_type": "vit", "hidden_size": 64, "num_attention_heads": 4}),
        r"model\.llm\.config\.model_type: 'vit' is not a 🤗 causal LM",
    ),
    "unsupported vision tower": (
        _set(VISION_CONFIG, {"model_type": "vit", "patch_size": 16}),
        r"model\.vision\.config\.model_type: unsupported vision tower 'vit'",
    ),
    "typo in a config key": (
        _set("model.llm.config", {"model_type": "llama", "hidden_size": 64, "num_attention_head": 4}),
        r"model\.llm\.config\.num_attention_head: unknown key 'num_attention_head' for a llama config "
        r"\(did you mean 'num_attention_heads'\?\)",
    ),
    "kv heads do not divide heads": (
        _set(
            "model.llm.config",
            {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3},
        ),
        r"model\.llm\.config\.num_key_value_heads: 3 key/value heads do not divide num_attention_heads 4",
    ),
    "wrong type in a config value": (
        _set("model.llm.config", {"model_type": "llama", "hidden_size": "wide"}),
        r"model\.llm\.config\.hidden_size: .*expected int, got str",
    ),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_inline_hf_configs_are_built_at_validation(project: Path, case: str) -> None:
    fn, pattern = HF_CASES[case]
    line = validate_error(project, mutate(fn), "--no-paths")
    assert re.match(rf"^\S*m\.yaml:\d+: {pattern}", line), line


def test_proxy_model_overrides_are_checked_too(project: Path) -> None:
    bad = {"llm": {"config": {"model_type": "llama", "hidden_size": 60, "num_attention_heads": 8}}}
    line = validate_error(project, mutate(_set("ablations.sweep.proxy", {"model": bad})), "--no-paths")
    assert re.match(r"^\S*m\.yaml:\d+: ablations\.sweep\.proxy\.model\.llm\.config\.num_attention_heads: 8 heads", line)


def test_tokenizer_not_on_this_machine_fails_fast(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub_cache(project / "hf", ["acme/tok"], monkeypatch)
    start = time.process_time()
    line = validate_error(project, mutate(_set("model.tokenizer", "acme/tokk")))
    assert time.process_time() - start < 30  # never the hub's retries: no network call is made at all
    assert re.match(
        r"^\S*m\.yaml:\d+: model\.tokenizer: 'acme/tokk' is neither a local folder nor in the local 🤗 cache \(\S*hf\);"
        r" fetch it first \(`hf download acme/tokk`\)",
        line,
    ), line
    ok = CliRunner().invoke(app, ["validate", str(write(project, mutate(_set("model.tokenizer", "acme/tok"))))])
    assert ok.exit_code == 0, ok.output


def test_deepspeed_json_agrees_with_the_stage_batches(project: Path) -> None:
    def with_json(config: dict) -> dict:
        (project / "ds.json").write_text(json.dumps(config))
        return mutate(lambda d: (_set("deepspeed", {"config": "ds.json"})(d), _set("stages.0.global_batch", 8)(d)))

    line = validate_error(project, with_json({"train_batch_size": 32}), "--no-paths")
    assert re.match(
        r"^\S*m\.yaml:\d+: deepspeed\.config: \S*ds\.json: train_batch_size 32 disagrees with global_batch of stages "
        r"one \(8\), two \(1\)",
        line,
    ), line
    line = validate_error(project, with_json({"gradient_accumulation_steps": 3}), "--no-paths")
    assert "gradient_accumulation_steps 3 does not divide global_batch / micro_batch of stages one" in line
    line = validate_error(project, with_json({"train_micro_batch_size_per_gpu": 2}), "--no-paths")
    assert "train_micro_batch_size_per_gpu 2 disagrees with micro_batch of stages one (1), two (1)" in line
    ok = CliRunner().invoke(app, ["validate", str(write(project, with_json({"train_batch_size": "auto"})))])
    assert ok.exit_code == 0, ok.output


def test_huge_plan_asks_for_yes_before_building(project: Path) -> None:
    path = write(project, mutate(_set("stages.0.size", {"steps": 100_000_000})))
    line = one_line_error(["build", str(path)])
    # 10^8 sequences of at least one 15-byte segment and an 8-byte offset: 2.1 GiB before any sample is read
    assert line == (
        f"{path}: stages[0] (one): its plan would take at least 2.1 GiB on disk (more than 1.0 GiB): check size; "
        "rerun with --yes to write it"
    )
    assert not (project / "out").exists()  # refused before a shard was built


def test_plan_size_estimate_counts_segments_from_the_lengths() -> None:
    import numpy as np

    from mixer.manifest import StageConfig
    from mixer.plan import SourceInput
    from mixer.planning import UNUSABLE, plan_bytes, plan_size_problem

    stage = StageConfig.model_validate(
        {
            "name": "s",
            "mixture": {"a": 1},
            "size": {"steps": 10},
            "seq_len": 128,
            "trains": ["connector"],
            "optimizer": {"lr": 1e-3},
            "global_batch": 4,
        }
    )
    lengths = np.array([32, 32, UNUSABLE, 32], dtype=np.int32)  # the unusable sample does not count
    src = SourceInput(
        "a", 1.0, lengths, (np.zeros(5, dtype=np.int64), np.zeros(0, dtype=np.int32)), np.zeros(4, np.int8)
    )
    assert plan_bytes(stage) == 40 * (8 + 15)  # before the index: one segment per sequence
    assert plan_bytes(stage, [src]) == 40 * (8 + 15 * 4)  # 128 / 32 = four segments per packed sequence
    assert plan_bytes(stage.model_copy(update={"packing": False}), [src]) == 40 * (8 + 15)
    assert plan_size_problem(stage, 0, 40 * 68, [src]) is None
    assert plan_size_problem(stage, 0, 40 * 68 - 1, [src]).startswith("stages[0] (s): its plan would take about")
    assert plan_size_problem(stage, 0, None, [src]) is None  # --yes


def test_feature_layer_of_a_local_tower_folder(project: Path) -> None:
    from transformers import SiglipVisionConfig

    SiglipVisionConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, patch_size=16).save_pretrained(
        project / "tower"
    )
    data = mutate(_set("model.vision", {"name_or_path": "./tower", "feature_layer": 4}))
    line = validate_error(project, data, "--no-paths")
    assert re.match(r"^\S*m\.yaml:\d+: model\.vision\.feature_layer: 4 is out of range: the tower has 3 layers", line)
    ok = CliRunner().invoke(app, ["validate", str(write(project, mutate(_set("model.vision.feature_layer", -4))))])
    assert ok.exit_code == 0, ok.output  # -4 is the embeddings' output of a 3-layer tower: in range


def test_config_keys_of_older_configs_are_not_typos(project: Path) -> None:
    """A v4 config.json's rope_theta / torch_dtype is still understood by 🤗: only near-misses of a field fail."""
    llm = {"model_type": "llama", "hidden_size": 64, "rope_theta": 500000.0, "torch_dtype": "bfloat16"}
    ok = CliRunner().invoke(app, ["validate", str(write(project, mutate(_set("model.llm.config", llm))))])
    assert ok.exit_code == 0, ok.output
