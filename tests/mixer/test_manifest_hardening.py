"""`mixer validate` catches what would fail later or write outside the output folder: one line, the field, exit 2.

Names that become folders, the output folder, YAML alias bombs and cycles, non-finite numbers, seeds, typos in
`trains` and `template`, and `extends:` cycles; each through the CLI as a user meets it.
"""

from __future__ import annotations

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
