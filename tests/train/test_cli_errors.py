"""Every `mixer` and `train` command answers a missing or malformed input with one line and exit code 2.

A missing manifest, a manifest with a typo, a manifest whose build or export is missing, a tokenizer that is not on
this machine: each is one line on stderr naming the file and field (or the missing path), never a traceback.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import train.estimate  # noqa: F401 - heavy imports first, so their import-time log lines stay out of the captures
import train.generate  # noqa: F401
import train.pipeline  # noqa: F401
from mixer.cli import app as mixer_app
from train.cli import app as train_app

sys.path.insert(0, str(Path(__file__).parents[1] / "mixer"))
from test_manifest import BASE  # noqa: E402 - the manifest tests' valid manifest, from their folder

APPS = {"mixer": mixer_app, "train": train_app}


def one_line(command: str, *args: str) -> str:
    """Run `mixer|train ARGS`: exit 2, exactly one line on stderr, no traceback; return the line."""
    tool, *rest = command.split()
    result = CliRunner().invoke(APPS[tool], [*rest, *args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def project(tmp_path: Path, tiny_tokenizer: Path) -> Path:
    """A valid manifest (test_manifest's BASE) whose data and tokenizer exist, and nothing built."""
    (tmp_path / "data/images").mkdir(parents=True)
    (tmp_path / "data/caps.tsv").write_text("a caption\thttp://127.0.0.1:9/1.jpg\n")
    (tmp_path / "data/chat.json").write_text("[]")
    data = copy.deepcopy(BASE)
    data["model"]["tokenizer"] = str(tiny_tokenizer)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return tmp_path


MANIFEST_COMMANDS = ["mixer validate", "mixer build", "mixer ablate", "train ablate", "train launch", "train estimate"]


@pytest.mark.parametrize("command", MANIFEST_COMMANDS)
def test_missing_manifest(command: str, tmp_path: Path) -> None:
    line = one_line(command, str(tmp_path / "nope.yaml"))
    assert line == f"{tmp_path / 'nope.yaml'}: cannot read the manifest: No such file or directory"


@pytest.mark.parametrize("command", MANIFEST_COMMANDS)
def test_malformed_manifest(command: str, project: Path) -> None:
    text = (project / "m.yaml").read_text().replace("- connector\n", "- visoin\n", 1)
    (project / "bad.yaml").write_text(text)
    line = one_line(command, str(project / "bad.yaml"))
    assert re.match(
        r"^\S*bad\.yaml:\d+: stages\[0\]\.trains: unknown trainable module 'visoin' \(did you mean 'vision'\?\)", line
    ), line


def test_missing_build_names_the_path(project: Path) -> None:
    line = one_line("train ablate", str(project / "m.yaml"))  # the sweep's stage reads the built length index
    assert line == f"{project / 'out/sources/caps/index.parquet'}: no such file or directory", line
    line = one_line("train launch", str(project / "m.yaml"))
    build = f"build the stages first (mixer build {project / 'm.yaml'})"
    assert line == f"{project / 'out/stages/one/stage.json'}: no such file: {build}", line
    (project / "out/stages/two").mkdir(parents=True)
    (project / "out/stages/two/stage.json").write_text("{}")
    line = one_line("train launch", str(project / "m.yaml"), "--stages", "two")  # only the stages it will train
    assert line.startswith(f"{project / 'out/stages/two/plan/summary.json'}: no such file"), line


def test_inspect_missing_build(tmp_path: Path) -> None:
    assert one_line("mixer inspect", str(tmp_path / "nope")) == f"{tmp_path / 'nope'}: no such build folder"


def test_generate_missing_export(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    line = one_line("train generate", str(tmp_path / "export"), "--image", str(tmp_path / "x.png"), "--prompt", "hi")
    assert str(tmp_path / "export") in line, line  # the missing export is named


def test_generate_damaged_export(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export/tinymix_vlm.json").write_text("{not json")
    (tmp_path / "x.png").write_bytes(b"")
    line = one_line("train generate", str(tmp_path / "export"), "--image", str(tmp_path / "x.png"), "--prompt", "hi")
    assert line.startswith(f"{tmp_path / 'export/tinymix_vlm.json'}: not a tinymix export description: JSONDecodeError")


def test_inspect_damaged_build(tmp_path: Path) -> None:
    (tmp_path / "stages/one").mkdir(parents=True)
    (tmp_path / "stages/one/stage.json").write_text("{not json")
    line = one_line("mixer inspect", str(tmp_path))
    assert line.startswith(f"{tmp_path / 'stages/one/stage.json'}: unreadable:"), line


@pytest.mark.parametrize("command", ["train estimate", "train launch"])
def test_tokenizer_not_on_this_machine(command: str, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(project / "empty-cache"))
    text = (project / "m.yaml").read_text()
    (project / "m.yaml").write_text(re.sub(r"tokenizer: \S+", "tokenizer: acme/no-such-tokenizer", text))
    line = one_line(command, str(project / "m.yaml"))
    assert re.match(r"^\S*m\.yaml:\d+: model\.tokenizer: 'acme/no-such-tokenizer' is neither a local folder", line)


@pytest.mark.parametrize("command", ["mixer validate", "mixer build", "train launch"])
def test_out_option_is_checked_like_output(command: str, project: Path) -> None:
    line = one_line(command, str(project / "m.yaml"), "--out", "/")
    assert line == (
        "--out: output: '/' is the filesystem root: name a folder of its own (the build writes sources/, stages/ …)"
    )


@pytest.mark.parametrize(
    "command", ["mixer validate", "mixer build", "train launch", "train estimate", "train ablate", "mixer ablate"]
)
def test_a_bad_set_override_is_one_line_naming_it(command: str, project: Path) -> None:
    args = [str(project / "m.yaml"), "--set", "stages.one.seq_len=256", "--set", "stages.one.size.steps=-1"]
    line = one_line(command, *args)
    assert line.startswith("--set stages.one.size.steps=-1: stages[0].size.steps: Input should be greater than 0")
    line = one_line(command, str(project / "m.yaml"), "--set", "stages.one.seq_len")
    assert line.startswith("--set stages.one.seq_len: expected PATH=VALUE")


def test_validate_shows_the_manifest_after_out_data_root_and_set(project: Path, tmp_path: Path) -> None:
    data = project / "data"
    (project / "m.yaml").write_text((project / "m.yaml").read_text().replace("data_root: data", "data_root: nowhere"))
    args = ["validate", str(project / "m.yaml"), "--data-root", str(data), "--out", str(tmp_path / "elsewhere")]
    result = CliRunner().invoke(mixer_app, [*args, "--set", "stages.one.size.steps=20", "--set", "stages.1.seq_len=96"])
    assert result.exit_code == 0, result.output
    assert f"output {tmp_path / 'elsewhere'}" in result.output
    assert (
        "1. one: 20 steps of 1 seq x 128 tok" in result.output
        and re.search(r"2\. two: .* of 1 seq x 96 tok", result.output) is not None  # the stage's size with --set
    )
    without = CliRunner().invoke(mixer_app, ["validate", str(project / "m.yaml")])
    assert without.exit_code == 2 and "sources.caps.paths[0]: no file matches" in without.output


def test_launch_hands_data_root_and_set_to_every_rank(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train launch --nproc 2` starts `train rank` processes: they must load the manifest as launch did."""
    import train.launch
    from mixer.contract import stage_folder as stage_dir
    from mixer.planning import plan_dir

    for name in ("one", "two"):  # what `missing_plan` looks for: launch goes on to start the ranks
        for folder, file in ((stage_dir, "stage.json"), (plan_dir, "summary.json")):
            Path(folder(str(project / "out"), name), file).parent.mkdir(parents=True, exist_ok=True)
            Path(folder(str(project / "out"), name), file).write_text("{}")
    started = []
    monkeypatch.setattr(train.launch, "launch", lambda program, **kw: started.append((program, kw)) or 0)
    args = ["launch", str(project / "m.yaml"), "--nproc", "2", "--out", str(project / "out")]
    args += ["--data-root", str(project / "data"), "--set", "stages.one.size.steps=7", "--set", "seed=3"]
    result = CliRunner().invoke(train_app, args)
    assert result.exit_code == 0, result.output
    ((program, kw),) = started
    assert kw == {"nproc": 2, "hostfile": None}
    assert program == [
        "-m", "train.cli", "rank", str(project / "m.yaml"), "--workers", "2", "--out", str(project / "out"),
        "--data-root", str(project / "data"), "--set", "stages.one.size.steps=7", "--set", "seed=3",
    ]  # fmt: skip


def test_train_ablate_fits_only_on_a_declared_benchmark(project: Path) -> None:
    line = one_line("train ablate", str(project / "m.yaml"), "--fit-on", "pope.f1")
    assert line == "ablate: --fit-on pope.f1: not loss or BENCH.METRIC of a benchmark in eval: (declared: none)"
    line = one_line("train ablate", str(project / "m.yaml"), "--ablation", "nope")
    assert line == "--ablation: no sweep named 'nope'; declared: sweep"
