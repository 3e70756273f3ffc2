"""The python grader's sandbox: what user code can reach, and that a failure stays one grader error.

Each case runs real `unshare` + `chroot` processes with short limits (about 0.1 s each; the loops
are bounded by a 1 s CPU limit and a 2 s wall limit).
"""

from __future__ import annotations

import os

import pytest

from dora_contract.graders import PythonGrader
from dora_graders import GradingContext, PythonSandbox, SandboxLimits, grade

SANDBOX = PythonSandbox(SandboxLimits(wall_seconds=2.0, cpu_seconds=1))
CONTEXT = GradingContext(python=SANDBOX)
# the service's own files: this checkout (its settings .env, var/ with the SQLite database) and the venv
SERVICE_FILE = os.path.abspath(__file__)
GOOD = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['answer'] else 0.25\n"


def run(source: str, output: str = "42", item: dict | None = None):
    grader = PythonGrader(type="python", name="py", source=source)
    return grade(grader, output_text=output, item=item or {"answer": "42"}, context=CONTEXT)


def test_a_grader_reads_sample_and_item():
    assert run(GOOD).reward == 1.0
    assert run(GOOD, output="41").reward == 0.25
    json_sample = run("def grade(sample, item):\n    return sample['output_json']['x'] / 4", output='{"x": 3}')
    assert json_sample.reward == 0.75


CASES = [
    ("a service file", f"def grade(s, i):\n    return len(open({SERVICE_FILE!r}).read())", "FileNotFoundError"),
    ("/etc/passwd", "def grade(s, i):\n    return len(open('/etc/passwd').read())", "FileNotFoundError"),
    ("the environment", "import os\ndef grade(s, i):\n    assert not any(k.startswith('DORA') for k in os.environ)\n"
                        "    assert 'PATH' not in os.environ, dict(os.environ)\n    raise RuntimeError('clean')",
     "RuntimeError: clean"),
    ("a socket", "import socket\ndef grade(s, i):\n    socket.create_connection(('1.1.1.1', 53), timeout=1)",
     "Network is unreachable"),
    ("10 GB", "def grade(s, i):\n    return len(bytearray(10 * 1024 ** 3))", "MemoryError"),
    ("a write to /usr", "def grade(s, i):\n    open('/usr/x', 'w')", "Read-only file system"),
    ("a chroot escape", "import os\ndef grade(s, i):\n    os.mkdir('x'); os.chroot('x')", "PermissionError"),
    ("a loop", "def grade(s, i):\n    while True: pass", "without a result"),
    ("a sleep", "import time\ndef grade(s, i):\n    time.sleep(60)", "time limit"),
]


@pytest.mark.parametrize(("case", "source", "why"), CASES, ids=[case for case, _, _ in CASES])
def test_what_user_code_cannot_do_fails_as_a_grader_error_and_the_next_grade_works(case, source, why):
    failed = run(source)
    assert failed.reward == 0.0 and failed.error == "python_grader_runtime_error", (case, failed)
    assert why in failed.message, (case, failed.message)
    details = failed.to_openai()["metadata"]["errors"]
    assert details["python_grader_runtime_error"] is True and why in details["python_grader_runtime_error_details"]
    assert run(GOOD).reward == 1.0  # the next grade is unaffected
