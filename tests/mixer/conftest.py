"""Fixtures shared by the loader and contract tests: the session's small build and the tiny tokenizer, loaded.

A module that needs another build (a token-budget copy, a chat-template tokenizer) defines its own `out` / `tok`.
"""

from __future__ import annotations

import pytest
from test_loader_fixtures import built_stage

from mixer.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_tokenizer):
    """The build folder `test_loader_fixtures.build` makes once per session (one stage, STAGE, planned)."""
    return built_stage(tmp_path_factory, tiny_tokenizer)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return load_tokenizer(str(tiny_tokenizer))
