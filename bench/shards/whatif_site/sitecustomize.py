"""Run at start-up by every Python process with this folder on PYTHONPATH: applies the `bench.shards.whatif` variant.

`bench.shards.ours` puts this folder on PYTHONPATH and names the variant in `TINYMIX_BENCH_WHAT_IF` while a Ray
cluster starts, so every Ray worker (pre-started ones included) runs with the patch from its first task on.
"""

import os
import sys
from pathlib import Path

if os.environ.get("TINYMIX_BENCH_WHAT_IF"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root, which holds `bench`
    from bench.shards.whatif import worker_hook

    worker_hook()
