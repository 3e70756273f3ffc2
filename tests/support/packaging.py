"""Building the project's wheel from a copy of what it is built from, as `pip wheel .` would."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_wheel(work: Path) -> Path:
    """The wheel built (setuptools' PEP 517 hook) from a copy of pyproject.toml, README and the
    packages pyproject names, so nothing outside them (a stray build/ or egg-info) can leak in."""
    source = work / "src"
    source.mkdir(parents=True)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ROOT.iterdir():
        if folder.is_dir() and any(fnmatch.fnmatch(folder.name, p) for p in patterns):
            shutil.copytree(folder, source / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                            "print(build_meta.build_wheel(sys.argv[1]))", str(work / "dist")],
                           cwd=source, capture_output=True, text=True, timeout=180)
    assert built.returncode == 0, built.stderr[-3000:]
    return work / "dist" / built.stdout.strip().splitlines()[-1]
