"""The README's run-config block is the run contract's defaults: a test, so the two cannot drift.

The block under "## Train locally" (```yaml) says "every value below except the two paths is the
default"; here it is parsed and compared with `RunContract` built from those two paths alone,
key for key (a missing, extra or different key fails).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dora_contract import RunContract

README = Path(__file__).resolve().parents[1] / "README.md"


def _run_config_block() -> dict:
    section = README.read_text().split("## Train locally", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "expected one yaml block (the run config) in 'Train locally'"
    return yaml.safe_load(blocks[0])


def test_readme_run_config_block_is_the_contracts_defaults():
    documented = _run_config_block()
    defaults = RunContract(base_model=documented["base_model"], train_file=documented["train_file"])
    assert documented == defaults.model_dump(mode="json")
