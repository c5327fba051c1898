"""bench/train/gpu_check.py runs as a plain script from any folder; without CUDA it says so and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "train" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs its real checks (minutes)")
def test_without_a_gpu_it_says_so_and_exits_cleanly(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: the script finds the repository itself
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "gpu_check: no GPU (torch.cuda.is_available() is False): nothing to check here\n"
    assert list(tmp_path.iterdir()) == []  # nothing written
