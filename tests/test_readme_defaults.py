"""The run-config block of docs/training.md is the run contract's defaults: a test, so the two cannot drift.

The block under "## Train locally" (```yaml) says "every value below except the two paths is the
default"; here it is parsed and compared with `RunContract` built from those two paths alone,
key for key (a missing, extra or different key fails).
"""

from __future__ import annotations

import yaml

from dora_contract import RunContract
from tests.support.doc_blocks import DOCS, fenced_blocks, page_section

PAGE = DOCS / "training.md"


def _run_config_block() -> dict:
    blocks = [body for language, body in fenced_blocks(page_section(PAGE, "## Train locally")) if language == "yaml"]
    assert len(blocks) == 1, f"expected one yaml block (the run config) in {PAGE.name}'s 'Train locally'"
    return yaml.safe_load(blocks[0])


def test_readme_run_config_block_is_the_contracts_defaults():
    documented = _run_config_block()
    defaults = RunContract(base_model=documented["base_model"], train_file=documented["train_file"])
    assert documented == defaults.model_dump(mode="json")
