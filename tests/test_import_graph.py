"""`tools/import_graph.py`: the repository's imports run train → mixer → shards only, and the checker catches each
kind of backward edge (an import, a `from` import inside a function, a process started into `train`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "import_graph.py"


def run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=False)


def test_the_repository_has_no_backward_edge():
    done = run(ROOT)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0] == "shards -> nothing"
    assert lines[1].startswith("mixer -> shards (") and "train" not in lines[1]
    assert lines[2].startswith("train -> mixer (")
    assert lines[-1] == "ok: train -> mixer -> shards, nothing back"


def test_each_backward_edge_is_named_and_fails(tmp_path):
    for package in ("shards", "mixer", "train"):
        (tmp_path / package).mkdir()
    (tmp_path / "shards" / "a.py").write_text("import os\n\n\ndef f():\n    from mixer.plan import x\n")
    (tmp_path / "mixer" / "b.py").write_text("import shards\nimport train.loop\n")
    (tmp_path / "mixer" / "c.py").write_text(  # the shape of the old `mixer ablate`: argv built, then run
        "import subprocess\nimport sys\n\n\ndef go():\n"
        "    cmd = [sys.executable, '-m', 'train.cli', 'proxy']\n    return subprocess.run(cmd)\n"
    )
    (tmp_path / "mixer" / "d.py").write_text("import subprocess\n\nsubprocess.run(['ray', 'status'])\n")  # allowed
    (tmp_path / "train" / "e.py").write_text("import mixer\nimport shards\n")
    done = run(tmp_path)
    assert done.returncode == 1
    forbidden = [line for line in done.stdout.splitlines() if line.startswith("FORBIDDEN")]
    assert forbidden == [
        "FORBIDDEN shards/a.py:5: shards imports mixer",
        "FORBIDDEN mixer/b.py:2: mixer imports train",
        "FORBIDDEN mixer/c.py:6: mixer starts a train process",
    ]
    assert done.stdout.splitlines()[-1] == "3 forbidden edges"
