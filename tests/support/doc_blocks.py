"""What the tests run from the documentation: a section of a Markdown page, its fenced blocks, the
shell commands of a block, and a shell that takes blocks one after another, as a terminal does
when they are pasted into it.

The tests read the pages at test time, so editing a page changes what runs: README.md (the tour),
docs/training.md ("Train locally"), docs/service.md (the real-model walkthrough, the quotas table).
"""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def section(markdown: str, heading: str) -> str:
    """The text under the heading line `heading` ("## Train locally", or the start of a longer
    heading up to a colon or a space: "## A real model" finds "## A real model: teach ..."), up to
    the next heading of its level or a higher one. Lines inside fenced blocks are never headings."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = markdown.splitlines(keepends=True)
    start, fenced = None, False
    for number, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced or not line.startswith("#"):
            continue
        if start is None:
            text = line.rstrip("\n")
            if text == heading or text.startswith((f"{heading}:", f"{heading} ")):
                start = number + 1
            continue
        if len(line) - len(line.lstrip("#")) <= level:
            return "".join(lines[start:number])
    assert start is not None, f"no {heading!r} heading"
    return "".join(lines[start:])


def page_section(path: Path, heading: str) -> str:
    """`section` of the page at `path` (the failure names the page)."""
    try:
        return section(path.read_text(encoding="utf-8"), heading)
    except AssertionError:
        raise AssertionError(f"{path.relative_to(ROOT)} has no {heading!r} heading") from None


def fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order (language "" when the fence names none)."""
    return re.findall(r"^```([\w-]*)\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """The shell commands of a block, in order: comment and blank lines left out, backslash
    continuations joined."""
    found, pending = [], ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append(pending + line)
        pending = ""
    assert not pending, f"the block's last command ends with a backslash: {block!r}"
    return found


class Shell:
    """One bash (`-e -o pipefail`, so a failing command ends it) that takes blocks one after the
    other, keeping its variables between them, as a terminal does."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(["bash", "-e", "-o", "pipefail"], cwd=cwd, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, block: str, timeout: float) -> str:
        """Paste `block`; what it printed (stdout and stderr), once its last command has run.
        An AssertionError, with that output, if the shell exited (a command failed) or the block
        ran past `timeout` seconds."""
        done = f"::block-done-{uuid.uuid4().hex}::"
        self.process.stdin.write(f"{block.rstrip()}\necho {done}\n")
        self.process.stdin.flush()
        printed: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the block ran past {timeout} s:\n{block}\n--- it printed:\n"
                                     f"{''.join(printed)}") from None
            if line is None:
                raise AssertionError(f"the shell exited with {self.process.wait()} in the block:\n{block}\n"
                                     f"--- it printed:\n{''.join(printed)}")
            if line.rstrip("\n") == done:
                return "".join(printed)
            printed.append(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
