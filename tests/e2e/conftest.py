"""Fixtures for the end-to-end suite: real `dora api` (uvicorn) and `dora worker` (Celery) processes.

Each test module starts one stack (tests/support/stack.py) on its own database, broker and
storage, with short leases and intervals so that crash recovery takes seconds. With CI set, an
unreachable PostgreSQL or Redis fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.stack import TIMINGS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from dora_core.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "e2e timings (seconds, this machine)")
        for name, value in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {json.dumps(value)}")
