"""Shared fixtures for dora_core tests: one tiny model per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init Llama model + tokenizer with a chat template, built once (seed 0)."""
    from dora_core.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    """The tiny model's tokenizer, loaded through load_tokenizer (offline)."""
    from dora_core.model_loading import load_tokenizer

    return load_tokenizer(tiny_model_dir, local_files_only=True)
