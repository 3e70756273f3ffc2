"""The "Train locally" commands of docs/training.md run as written on a fresh clone.

The first ```bash block under "## Train locally" is read from docs/training.md at test time (the
README points there), and each of its commands runs, unchanged, through bash in a fresh folder
that holds what a clone has: a copy of the repository's `demo/` folder (without anything generated)
and `.venv`, here a link to the virtual environment running the tests, so `.venv/bin/dora` resolves
as `make install` would make it. A command that exits non-zero, or a training run that leaves out
an output the page promises, fails the test; editing the block changes what runs.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import doc_blocks
from tests.support.doc_blocks import DOCS, README, ROOT

PAGE = DOCS / "training.md"
SECTION = "## Train locally"
GENERATED = ("model", "out")  # what the commands write into demo/ (git-ignored)


def section_commands(markdown: str, heading: str = SECTION) -> list[str]:
    """The shell commands of the first ```bash block under `heading` (comment lines and blank lines
    left out, backslash continuations joined), in order."""
    blocks = [body for language, body in doc_blocks.fenced_blocks(doc_blocks.section(markdown, heading))
              if language == "bash"]
    assert blocks, f"the '{heading}' section has no ```bash block"
    return doc_blocks.commands(blocks[0])


def out_folder(commands: list[str]) -> Path:
    """The --out of the block's `train` command (the folder whose outputs the page lists)."""
    for command in commands:
        words = shlex.split(command, comments=True)
        if "train" in words and "--out" in words:
            return Path(words[words.index("--out") + 1])
    pytest.fail(f"no `dora train ... --out DIR` among the page's commands: {commands}")


def test_the_section_parser_reads_commands_and_skips_comments():
    markdown = ("# x\n\n## Train locally\n\nText.\n\n### Within it\n\n```bash\n# a comment\n"
                ".venv/bin/dora a b   # why\n\n.venv/bin/dora train c \\\n  --out d\n```\n\n"
                "```bash\nnot this\n```\n\n## Next\n")
    assert section_commands(markdown) == [".venv/bin/dora a b   # why", ".venv/bin/dora train c    --out d"]
    assert out_folder(section_commands(markdown)) == Path("d")


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """A folder shaped like a fresh clone for these commands: demo/ as tracked, and .venv."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "dora").exists():
        pytest.skip(f"the `dora` entry point is not installed in {venv} (run `make install`)")
    shutil.copytree(ROOT / "demo", tmp_path / "demo", ignore=shutil.ignore_patterns(*GENERATED))
    (tmp_path / ".venv").symlink_to(venv, target_is_directory=True)
    return tmp_path


def test_train_locally_commands_run_as_written_in_a_fresh_clone(fresh_clone: Path):
    commands = section_commands(PAGE.read_text(encoding="utf-8"))
    assert any("make-tiny-model" in command for command in commands), commands
    out = fresh_clone / out_folder(commands)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=fresh_clone, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, (f"{PAGE.name} command failed (exit {done.returncode}): {command}\n"
                                      f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")

    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "config.json").is_file() and list((out / "merged").glob("*.safetensors"))
    assert (out / "metrics.jsonl").read_text().strip(), "metrics.jsonl is empty"


# what the walkthroughs (the README's tour with curl and the openai client, docs/service.md's real
# model, docs/training.md's gguf download) write into the folder they run in, the repository root,
# and the settings file the docs suggest
WALKTHROUGH_FILES = ("train.jsonl", "addition-train.jsonl", "addition-validation.jsonl", "adapter.tar", "merged.tar",
                     "gguf.tar", "adapter/", "merged/", "gguf/", ".env")


def test_what_the_readme_walkthroughs_write_in_the_repository_root_is_ignored_by_git():
    docs = "\n".join(path.read_text(encoding="utf-8") for path in [README, *sorted(DOCS.glob("*.md"))])
    patterns = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(name: str) -> bool:  # root-level names only: a leading "/" anchors, a trailing "/" is a folder
        folder = name.endswith("/")
        return any(fnmatch.fnmatch(name.rstrip("/"), pattern.strip("/"))
                   for pattern in patterns if folder or not pattern.endswith("/"))

    for name in WALKTHROUGH_FILES:
        assert name.rstrip("/") in docs, f"no page mentions {name} any more: update WALKTHROUGH_FILES"
    assert [name for name in WALKTHROUGH_FILES if not ignored(name)] == []
