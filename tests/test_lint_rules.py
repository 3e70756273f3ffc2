"""Every `noqa` in the project names the rule it silences and argues why, after " - ".

ruff's RUF100 (pyproject.toml) already refuses a `noqa` for a rule that does not fire or is not run;
what it cannot check is the argument, which is what lets a reader judge the exception.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGUED = re.compile(r"#\s*noqa:\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*\s+-\s+\S")


def _python_files() -> list[Path]:
    """The project's own Python files (what ruff lints), without a git call: a file not yet added counts too."""
    folders = ("api", "store", "worker", "dora_core", "dora_contract", "dora_formats", "dora_cli", "migrations",
               "tests", "benchmarks", "demo")
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_every_noqa_names_its_rule_and_argues_the_exception():
    unargued = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                for path in _python_files()
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                if re.search(r"#\s*noqa\b", line, flags=re.IGNORECASE) and not ARGUED.search(line)]
    assert not unargued, "a noqa without its rule and ' - why':\n" + "\n".join(unargued)


def test_the_check_tells_an_argued_noqa_from_a_bare_one():
    marker = "# " + "noqa"  # split, so these examples are not read as this file's own exceptions
    assert ARGUED.search(f"except Exception:  {marker}: BLE001 - housekeeping")
    assert ARGUED.search(f"x = 1  {marker}: E731, F401 - reason")
    assert not ARGUED.search(f"except Exception:  {marker}: BLE001")
    assert not ARGUED.search(f"import x  {marker}")
    assert not ARGUED.search(f"import x  {marker}: F401 (no dash)")
