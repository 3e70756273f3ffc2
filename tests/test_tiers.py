"""The test tiers (tests/conftest.py): the markers land where they are true and cannot drift.

`make test-fast` runs the tests that carry none of postgres, redis, browser, processes, e2e and
slow; a test that needs a server or starts a process but carries none of them would make that run
slow, or fail where no server runs. Here: known tests carry what they need (an in-process
collection of a few modules, no test runs), and a static check that every test or fixture whose own
module code names a process launcher or a service client (subprocess, Popen, multiprocessing,
train_in_processes, psycopg, redis, chromium, ...) is covered by one of the conftest's tables.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_NEEDS, PARAM_NEEDS, PATH_NEEDS, ROOT, TIERS

# a name in a test's (or fixture's) own code -> what the test needs
SIGNALS = {
    "processes": {"subprocess", "Popen", "multiprocessing", "train_in_processes", "elastic_launch", "api_processes",
                  "build_wheel", "running_stack", "make_stack"},
    "postgres": {"psycopg", "postgres_database", "PG_ADMIN_URL"},
    "redis": {"redis", "REDIS_URL"},
    "browser": {"chromium", "sync_playwright"},
    "slow": {"real_model_dir", "real_gguf"},  # the real SmolLM2 (converted on first use)
}
SAMPLE = ["tests/core/test_dora_layer.py", "tests/api/test_app.py", "tests/api/test_queue.py",
          "tests/api/test_storage.py", "tests/e2e/test_dashboard.py", "tests/e2e/test_database_outage.py"]


class _Collected:
    def __init__(self) -> None:
        self.marks: dict[str, set[str]] = {}

    def pytest_collection_finish(self, session) -> None:
        self.marks = {item.nodeid: {m.name for m in item.iter_markers() if m.name in TIERS} for item in session.items}


@pytest.fixture(scope="module")
def collected() -> dict[str, set[str]]:
    """{node id: its tier markers} for the SAMPLE modules, collected (not run) in this process."""
    plugin = _Collected()
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(ROOT),
                        *(str(ROOT / path) for path in SAMPLE)], plugins=[plugin])
    assert code == 0 and plugin.marks, f"collecting {SAMPLE} failed (exit {code})"
    return plugin.marks


def _marks(collected, prefix: str) -> list[set[str]]:
    found = [marks for nodeid, marks in collected.items() if nodeid.startswith(prefix)]
    assert found, f"no collected test starts with {prefix}"
    return found


def test_the_tier_markers_are_registered(pytestconfig):
    registered = {line.split(":", 1)[0].strip() for line in pytestconfig.getini("markers")}
    assert set(TIERS) <= registered


def test_known_tests_carry_what_they_need_and_in_process_ones_nothing(collected):
    assert all(marks == set() for marks in _marks(collected, "tests/core/test_dora_layer.py::"))
    assert _marks(collected, "tests/api/test_app.py::test_health_ready_and_prometheus[sqlite]") == [set()]
    assert _marks(collected, "tests/api/test_app.py::test_health_ready_and_prometheus[postgresql]") == [{"postgres"}]
    assert _marks(collected, "tests/api/test_app.py::test_alembic_ini_in_the_checkout_still_migrates") == [
        {"processes"}]
    assert all(marks == {"redis"} for marks in _marks(collected, "tests/api/test_queue.py::test_publish"))
    storage = "tests/api/test_storage.py::test_an_empty_object"
    assert all(marks == {"processes"} for marks in _marks(collected, f"{storage}[s3"))
    assert all(marks == set() for marks in _marks(collected, f"{storage}[local"))
    assert all({"browser", "e2e", "processes"} <= marks for marks in _marks(collected, "tests/e2e/test_dashboard.py::"))
    assert all({"postgres", "redis", "e2e", "processes"} <= marks
               for marks in _marks(collected, "tests/e2e/test_database_outage.py::"))


def _is_fixture(function: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(decorator) for decorator in function.decorator_list)


def _names(node: ast.AST) -> set[str]:
    names = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            names.add(child.id)
        elif isinstance(child, ast.alias):
            names.add(child.asname or child.name.split(".")[0])
        elif isinstance(child, ast.arg):
            names.add(child.arg)  # a fixture requested by name
    return names


def _covered_by_fixture(key: str) -> bool:
    return key in FIXTURE_NEEDS or any(param.startswith(f"{key}[") for param in PARAM_NEEDS)


def _audit(path: Path) -> list[str]:
    """The tests and fixtures of one module whose own code reaches a signal their tier does not cover."""
    module = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text())
    definitions: dict[str, ast.AST] = {}  # module-level functions, fixtures and assignments, by name
    units: list[tuple[str, ast.FunctionDef]] = []  # tests and fixtures
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            definitions[node.name] = node
            if node.name.startswith("test_") or _is_fixture(node):
                units.append((node.name, node))
        elif isinstance(node, ast.ClassDef):
            definitions[node.name] = node
            units += [(item.name, item) for item in node.body
                      if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test_")]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    definitions[target.id] = node

    def reached(start: ast.AST) -> set[str]:
        seen, todo, names = set(), [start], set()
        while todo:
            found = _names(todo.pop())
            names |= found
            for name in found - seen:
                seen.add(name)
                node = definitions.get(name)
                if node is None or node is start:
                    continue
                if isinstance(node, ast.FunctionDef) and _is_fixture(node) and _covered_by_fixture(f"{module}::{name}"):
                    continue  # the table says what this fixture needs
                todo.append(node)
        return names

    pg_only_module = any(isinstance(node, ast.Assign) and "pytestmark" in _names(node) and
                         "postgresql_only" in ast.unparse(node.value) for node in tree.body)
    problems = []
    parents = [parent.as_posix() for parent in Path(module).parents if parent != Path(".")]
    module_needs = {need for key in [*parents, module] for need in PATH_NEEDS.get(key, ())}
    conftest_fixtures = {}  # fixtures of the conftests above this module that the table covers: name -> needs
    for key, needs in FIXTURE_NEEDS.items():
        where, name = key.split("::")
        if where.endswith("/conftest.py") and where.rsplit("/", 1)[0] in parents:
            conftest_fixtures[name] = set(needs)
    for name, node in units:
        if _is_fixture(node) and _covered_by_fixture(f"{module}::{name}"):
            continue
        needs = {need for need, signals in SIGNALS.items() if reached(node) & signals}
        requested = {need for arg in node.args.args for need in conftest_fixtures.get(arg.arg, ())}
        if pg_only_module or any("postgresql_only" in ast.unparse(mark) for mark in node.decorator_list):
            requested.add("postgres")  # the conftest marks postgresql_only tests postgres
        missing = needs - module_needs - requested - set(PATH_NEEDS.get(f"{module}::{name}", ()))
        if missing:
            problems.append(f"{module}::{name} reaches {sorted(missing)}")
    return problems


def test_every_test_that_starts_a_process_or_reaches_a_service_itself_is_in_the_tables():
    files = sorted({*ROOT.glob("tests/**/test_*.py"), *ROOT.glob("tests/**/conftest.py")})
    assert len(files) > 50
    problems = [problem for path in files if path.name != "test_tiers.py" for problem in _audit(path)]
    assert not problems, ("add them to PATH_NEEDS (or FIXTURE_NEEDS / PARAM_NEEDS) in tests/conftest.py:\n"
                          + "\n".join(problems))
