"""Manifest schema and `mixer validate`: every malformed manifest is named by file, line and field path."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mixer.cli import app
from mixer.manifest import ManifestError, load_manifest

BASE = {
    "name": "t",
    "output": "out",
    "data_root": "data",
    "sources": {
        "caps": {"kind": "cc3m-tsv", "paths": "caps.tsv"},
        "chat": {"kind": "llava-json", "paths": ["chat.json"], "image_root": "images"},
    },
    "model": {
        "vision": {"config": {"model_type": "clip_vision_model", "image_size": 64, "patch_size": 16}},
        "llm": {"config": {"model_type": "llama", "hidden_size": 64}},
        "tokenizer": "tok",
    },
    "stages": [
        {
            "name": "one",
            "mixture": {"caps": 1, "chat": 1},
            "size": {"steps": 10},
            "seq_len": 128,
            "template": "plain",
            "image_size": 64,
            "trains": ["connector"],
            "optimizer": {"lr": 1e-3, "warmup_steps": 2},
        },
        {
            "name": "two",
            "mixture": {"chat": 1},
            "size": {"tokens": 100000},
            "seq_len": 128,
            "template": "llava_v1",
            "image_size": 64,
            "trains": ["connector", "lora"],
            "optimizer": {"lr": 1e-4},
        },
    ],
    "ablations": {"sweep": {"stage": "one", "grid": {"vary": "caps", "shares": [0.2, 0.5]}}},
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "data/images").mkdir(parents=True)
    (tmp_path / "data/caps.tsv").write_text("a caption\thttp://x/1.jpg\n")
    (tmp_path / "data/chat.json").write_text("[]")
    (tmp_path / "tok").mkdir()
    return tmp_path


def write(project: Path, data: dict | str) -> Path:
    path = project / "m.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def problems_of(project: Path, data: dict | str) -> list[str]:
    with pytest.raises(ManifestError) as e:
        load_manifest(write(project, data))
    return e.value.problems


def test_base_is_valid_and_paths_resolve(project: Path) -> None:
    m = load_manifest(write(project, BASE))
    assert m.sources["caps"].paths == [str(project / "data/caps.tsv")]
    assert m.sources["chat"].image_root == str(project / "data/images")
    assert m.model.tokenizer == str(project / "tok")
    assert m.output == str(project / "out")
    assert m.stages[0].shares == {"caps": 0.5, "chat": 0.5}
    assert m.stages[1].steps() == -(-100000 // 128)  # tokens → steps at global batch 1
    assert m.stages[1].lora is not None and m.stages[1].lora.r == 64  # defaults filled when trains has lora
    assert m.model.image_tokens_for(64) == 16 and m.model.image_tokens_for(224) == 196


def mutate(fn):
    data = copy.deepcopy(BASE)
    fn(data)
    return data


def _set(path: str, value):
    def fn(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if p.isdigit() else d[p]
        if value is DELETE:
            del d[int(last) if last.isdigit() else last]
        else:
            d[int(last) if last.isdigit() else last] = value

    return fn


DELETE = object()

CASES = {
    "unknown reader kind": (
        _set("sources.caps.kind", "cc4m-tsv"),
        r"sources\.caps\.kind: unknown source kind 'cc4m-tsv' \(did you mean 'cc3m-tsv'\?\); known: laion-parquet, ",
    ),
    "missing input path": (_set("sources.caps.paths", ["nope/*.tsv"]), r"sources\.caps\.paths\[0\]: no file matches"),
    "missing image root": (_set("sources.chat.image_root", "imgs"), r"sources\.chat\.image_root: folder not found"),
    "undeclared source": (
        _set("stages.0.mixture", {"caps": 1, "chatt": 1}),
        r"stages\[0\]\.mixture\.chatt: source 'chatt' is not declared.*did you mean 'chat'",
    ),
    "negative weight": (_set("stages.0.mixture", {"caps": -1, "chat": 1}), r"stages\[0\]\.mixture: caps: weight must"),
    "all-zero weights": (
        _set("stages.0.mixture", {"caps": 0, "chat": 0}),
        r"stages\[0\]\.mixture: all weights are zero",
    ),
    "stage without size": (_set("stages.0.size", DELETE), r"stages\[0\]\.size: required field is missing"),
    "size with two units": (
        _set("stages.0.size", {"steps": 1, "tokens": 5}),
        r"stages\[0\]\.size: give exactly one of steps, tokens or epochs \(got steps, tokens\)",
    ),
    "seq_len below image tokens": (
        _set("stages.0.seq_len", 16),
        r"stages\[0\]\.seq_len: 16 does not fit one image's 16",
    ),
    "unknown template": (
        _set("stages.0.template", "chatml"),
        r"stages\[0\]\.template: unknown template 'chatml'; known: plain, tinygptv, minigptv2, llava_v1, phi, llama",
    ),
    "unknown trainable": (
        _set("stages.0.trains", ["connector", "decoder"]),
        r"stages\[0\]\.trains: unknown trainable module 'decoder'; known: connector, vision, llm, lora, norms$",
    ),
    "lr not positive": (
        _set("stages.0.optimizer.lr", 0),
        r"stages\[0\]\.optimizer\.lr: Input should be greater than 0",
    ),
    "min_lr above lr": (_set("stages.0.optimizer.min_lr", 1.0), r"stages\[0\]\.optimizer: min_lr 1\.0 is above lr"),
    "warmup longer than stage": (
        _set("stages.0.optimizer.warmup_steps", 50),
        r"stages\[0\]\.optimizer\.warmup_steps: warm-up of 50 steps is longer than the stage \(10 steps\)",
    ),
    "bad zero stage": (_set("deepspeed", {"zero_stage": 4}), r"deepspeed\.zero_stage: Input should be 0, 1, 2 or 3"),
    "deepspeed json missing": (
        _set("deepspeed", {"config": "ds.json"}),
        r"deepspeed\.config: DeepSpeed JSON not found",
    ),
    "offload_param without zero 3": (
        _set("deepspeed", {"zero_stage": 2, "offload_param": True}),
        r"deepspeed: offload_param needs zero_stage 3",
    ),
    "ablation over unknown stage": (
        _set("ablations.sweep.stage", "three"),
        r"ablations\.sweep\.stage: no stage named 'three'",
    ),
    "ablation varies a source not in the mixture": (
        _set("ablations.sweep.grid.vary", "chat2"),
        r"ablations\.sweep\.grid\.vary: source 'chat2' is not in the stage's mixture",
    ),
    "ablation share out of range": (
        _set("ablations.sweep.grid.shares", [0.5, 1.5]),
        r"ablations\.sweep\.grid: shares must be in \(0, 1\)",
    ),
    "ablation with grid and random": (
        _set("ablations.sweep.random", {"n": 4}),
        r"ablations\.sweep: give exactly one of grid or random",
    ),
    "unknown key with did-you-mean": (
        _set("stages.0.micro_bach", 2),
        r"stages\[0\]\.micro_bach: unknown key 'micro_bach' \(did you mean 'micro_batch'\?\)",
    ),
    "unknown top-level section": (_set("stagez", []), r"stagez: unknown key 'stagez' \(did you mean 'stages'\?\)"),
    "duplicate stage name": (_set("stages.1.name", "one"), r"stages\[1\]\.name: duplicate stage name 'one'"),
    "unknown shard format": (_set("shards", {"format": "tfrecord"}), r"shards\.format: Input should be 'webdataset'"),
    "encode quality over 100": (
        _set("shards", {"image": {"encode_quality": 101}}),
        r"shards\.image\.encode_quality: Input should be less than or equal to 100",
    ),
    "unknown resize mode": (
        _set("shards", {"image": {"resize_mode": "stretch"}}),
        r"shards\.image\.resize_mode: Input should be 'center_crop'",
    ),
    "llm with both name and config": (
        _set("model.llm.name_or_path", "microsoft/phi-2"),
        r"model\.llm: give exactly one of name_or_path or config",
    ),
    "inline config without model_type": (
        _set("model.vision.config", {"patch_size": 16}),
        r"model\.vision: config needs a model_type",
    ),
    "lora and llm together": (
        _set("stages.1.trains", ["llm", "lora"]),
        r"stages\[1\]: trains: lora and llm together",
    ),
    "global batch not a multiple of micro batch": (
        _set("stages.0.global_batch", 6),
        r"stages\[0\]: global_batch 6 is not a multiple of micro_batch 4",
    ),
    "missing tokenizer folder": (_set("model.tokenizer", "./tok2"), r"model\.tokenizer: local model folder not found"),
    "empty path list": (_set("sources.caps.paths", []), r"sources\.caps\.paths: List should have at least 1 item"),
}
CASES["global batch not a multiple of micro batch"] = (
    lambda d: (_set("stages.0.global_batch", 6)(d), _set("stages.0.micro_batch", 4)(d)),
    CASES["global batch not a multiple of micro batch"][1],
)


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_manifest_names_its_field(project: Path, case: str) -> None:
    fn, pattern = CASES[case]
    problems = problems_of(project, mutate(fn))
    assert any(re.search(pattern, p) for p in problems), problems
    for p in problems:  # every line is `file:line: field: message` or `file: field: message`
        assert re.match(r"^\S*m\.yaml(:\d+)?: \S", p), p


def test_yaml_syntax_error_has_line_and_column(project: Path) -> None:
    text = "name: t\noutput: out\nsources:\n  a: {kind: cc3m-tsv\n  b: 1\n"
    (problem,) = problems_of(project, text)
    assert re.match(r".*m\.yaml:5:\d+: YAML syntax error", problem), problem


def test_duplicate_source_names_are_caught_not_merged(project: Path) -> None:
    text = write(project, BASE).read_text().replace("  chat:\n", "  caps:\n", 1)
    problems = problems_of(project, text)
    assert any(re.search(r"m\.yaml:\d+: sources\.caps: duplicate key \(first at line \d+\)", p) for p in problems)


def test_empty_and_non_mapping_files(project: Path) -> None:
    assert problems_of(project, "") == [f"{project / 'm.yaml'}: the file is empty"]
    assert "top level must be a mapping" in problems_of(project, "- a\n- b\n")[0]


def test_error_lines_point_at_the_offending_key(project: Path) -> None:
    path = write(project, mutate(_set("stages.0.optimizer.lr", -1)))
    lines = path.read_text().splitlines()
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    (p,) = e.value.problems
    line = int(p.split(":")[1])
    assert lines[line - 1].strip().startswith("lr:")


def test_all_problems_reported_at_once(project: Path) -> None:
    def many(d):
        d["stages"][0]["template"] = "nope"
        d["stages"][1]["optimizer"]["lr"] = -1
        d["deepspeed"] = {"zero_stage": 7}

    assert len(problems_of(project, mutate(many))) == 3


def test_exponent_floats_without_a_dot(project: Path) -> None:
    text = write(project, BASE).read_text().replace("lr: 0.001", "lr: 1e-3")
    assert "1e-3" in text
    assert load_manifest(write(project, text)).stages[0].optimizer.lr == 1e-3


def test_extends_merges_and_detects_cycles(project: Path) -> None:
    write(project, BASE)
    (project / "child.yaml").write_text("extends: m.yaml\nname: child\nseed: 7\n")
    child = load_manifest(project / "child.yaml")
    assert (child.name, child.seed, [s.name for s in child.stages]) == ("child", 7, ["one", "two"])
    (project / "a.yaml").write_text("extends: b.yaml\n")
    (project / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ManifestError, match="cycle"):
        load_manifest(project / "a.yaml")


def test_cli_exit_codes_and_no_traceback(project: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(write(project, BASE))])
    assert ok.exit_code == 0, ok.output
    assert "shares by tokens: caps 50.0%, chat 50.0%" in ok.output
    bad = runner.invoke(app, ["validate", str(write(project, mutate(_set("stages.0.template", "x"))))])
    assert bad.exit_code == 2
    assert "Traceback" not in bad.output and "stages[0].template: unknown template 'x'" in bad.output
    missing = runner.invoke(app, ["validate", str(project / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read the manifest" in missing.output


def test_a_reader_or_template_added_to_its_table_is_a_valid_choice(project: Path, monkeypatch) -> None:
    """Adding a reader (or a template) is one line in its table: the manifest reads its choices and default tasks
    from there, so a kind registered at run time validates and gets its reader's task."""
    from mixer.templates.spec import TEMPLATES, Template
    from shards.readers import READERS, Reader, get_reader
    from shards.readers.tsv import read_cc3m

    def new_kinds(d):
        d["sources"]["caps"]["kind"] = "mycaps-tsv"
        d["stages"][0]["template"] = "mine"

    data = mutate(new_kinds)
    with pytest.raises(ManifestError) as e:
        load_manifest(write(project, data))
    assert [p.split(": ", 1)[1] for p in e.value.problems] == [
        f"sources.caps.kind: unknown source kind 'mycaps-tsv'; known: {', '.join(READERS)}",
        f"stages[0].template: unknown template 'mine'; known: {', '.join(TEMPLATES)}",
    ]
    monkeypatch.setitem(READERS, "mycaps-tsv", Reader(read_cc3m, "vqa"))
    monkeypatch.setitem(TEMPLATES, "mine", Template(name="mine"))
    m = load_manifest(write(project, data))
    assert (m.sources["caps"].kind, m.sources["caps"].task_tag, m.stages[0].template) == ("mycaps-tsv", "vqa", "mine")
    assert get_reader("mycaps-tsv") is read_cc3m


def test_set_overrides_apply_before_validation(project: Path) -> None:
    path = write(project, BASE)
    before = path.read_text()
    m = load_manifest(
        path,
        overrides=[
            "stages.one.size.steps=20",  # a list item by name
            "stages.1.seq_len=256",  # … or by index
            "stages.one.optimizer.lr=1e-4",  # YAML, read as the file is: an exponent float
            "stages.one.trains=[connector, norms]",
            "stages.two.size={steps: 3}",
            "sources.caps.task=vqa",
            "stages.two.lora.dropout=0.1",  # a mapping the file does not have is created
            "stages.one.optimizer.warmup_steps=",  # an empty VALUE is null
            "stages.one.size.steps=30",  # in order: the last one stands
        ],
    )
    one, two = m.stages
    assert (one.size.steps, one.optimizer.lr, one.trains, one.optimizer.warmup_steps) == (
        30,
        1e-4,
        ["connector", "norms"],
        None,
    )
    assert (two.seq_len, two.size.steps, two.size.tokens, two.lora.dropout if two.lora else None) == (256, 3, None, 0.1)
    assert m.sources["caps"].task_tag == "vqa"
    assert path.read_text() == before  # the file is not touched


SET_CASES = {
    "bad value": ("stages.one.size.steps=-1", "--set stages.one.size.steps=-1: stages[0].size.steps: Input should be"),
    "unknown key": (
        "stages.one.sise.steps=2",
        "--set stages.one.sise.steps=2: stages[0].sise: unknown key 'sise' (did you mean 'size'?)",
    ),
    "unknown stage": ("stages.three.seq_len=64", "--set stages.three.seq_len=64: stages has no item named 'three'"),
    "index past the end": ("stages.5.seq_len=64", "--set stages.5.seq_len=64: stages has 2 items, no index 5"),
    "not PATH=VALUE": ("stages.one.seq_len", "--set stages.one.seq_len: expected PATH=VALUE with a dotted PATH"),
    "empty part": ("stages..seq_len=1", "--set stages..seq_len=1: expected PATH=VALUE with a dotted PATH"),
    "inside a scalar": ("name.x=1", "--set name.x=1: name is 't', not a mapping or list to set 'x' in"),
    "bad YAML": ("seed=[1", "--set seed=[1: VALUE is not YAML"),
    "non-finite": ("stages.one.optimizer.lr=.nan", "--set stages.one.optimizer.lr=.nan: stages[0].optimizer.lr: must"),
    "bad kind": ("sources.caps.kind=tsv", "--set sources.caps.kind=tsv: sources.caps.kind: unknown source kind 'tsv'"),
}


@pytest.mark.parametrize("case", list(SET_CASES))
def test_a_bad_override_is_one_problem_naming_it(project: Path, case: str) -> None:
    override, start = SET_CASES[case]
    with pytest.raises(ManifestError) as e:
        load_manifest(write(project, BASE), overrides=[override])
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(start), e.value.problems


def test_a_problem_above_an_override_names_the_line_and_the_override(project: Path) -> None:
    path = write(project, BASE)
    with pytest.raises(ManifestError) as e:
        load_manifest(path, overrides=["stages.one.size.tokens=5"])
    (p,) = e.value.problems
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip() == "size:")
    assert p == (
        f"{path}:{line} (with --set stages.one.size.tokens=5): stages[0].size: "
        "give exactly one of steps, tokens or epochs (got steps, tokens)"
    )


def test_out_and_data_root_resolve_against_the_current_folder(project: Path, monkeypatch) -> None:
    monkeypatch.chdir(project / "data")
    (project / "data/data").mkdir()
    (project / "data/data/caps.tsv").write_text("x\thttp://x/1.jpg\n")
    (project / "data/data/chat.json").write_text("[]")
    (project / "data/data/images").mkdir()
    m = load_manifest(write(project, BASE), data_root="data", output="elsewhere")
    assert m.sources["caps"].paths == [str(project / "data/data/caps.tsv")]
    assert m.output == str(project / "data/elsewhere")
    assert load_manifest(write(project, BASE), output="s3://bucket/run").output == "s3://bucket/run"
    with pytest.raises(ManifestError) as e:
        load_manifest(write(project, BASE), output="/")
    assert e.value.problems == [
        "--out: output: '/' is the filesystem root: name a folder of its own (the build writes sources/, stages/ …)"
    ]


def test_every_readers_default_task_is_a_task_a_source_may_name() -> None:
    import typing

    from mixer.manifest.sources import Task
    from shards.readers import READERS

    assert {r.task for r in READERS.values()} <= set(typing.get_args(Task))
