"""Shared fixtures: a tiny BPE tokenizer trained once per session (nothing is downloaded), one embedded Ray cluster."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

_WORDS = (
    "a the cat dog man woman red blue green small large picture image photo shows is are on in of with and what "
    "where how many color does this that there two three sitting standing table street car bus sign text says book "
    "title author chart value year answer question describe detail brief"
).split()


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tokenizer trained on 400 synthetic sentences and the shipped templates' text (vocab <= 2000)."""
    from mixer.templates import template_texts
    from mixer.tokenizer import train_tokenizer  # imports transformers: only for the tests that ask for it

    rng = random.Random(0)
    sentences = [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))).capitalize() + rng.choice(".?!")
        for _ in range(400)
    ]
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tokenizer(sentences + template_texts() * 20, out)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray cluster (127.0.0.1) for the whole test session."""
    import ray

    from shards.cluster import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _restore_functional_linear():
    """DeepSpeed's ZeRO-3 replaces `torch.nn.functional.linear` process-wide ("persists unless manually reset"):
    undo it after each test, so a later test in the same process (torchao's int8 weights) gets torch's own."""
    yield
    import sys

    if "torch" in sys.modules:
        import torch

        torch.nn.functional.linear = torch._C._nn.linear
