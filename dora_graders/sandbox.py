"""The python grader's sandbox: the user's code runs in a separate, confined process, never in ours.

The process (util-linux `unshare`, then `chroot` and `setpriv`) gets:
- new user, network, mount and PID namespaces: no network at all (only a loopback that is down), its
  own mounts, and every process it starts dies with it (the namespace's init is killed on timeout);
- a root of its own: a small tmpfs holding only /usr and the Python installation, both bind-mounted
  read-only, and its working folder /work (writable, 16 MiB, gone afterwards); the service's files,
  settings, database, artifacts and /etc are not in it;
- no capabilities (bounding set emptied, no-new-privs), an empty environment, `python -I -S`
  (the standard library only, no site-packages, no PYTHON* variables);
- rlimits set before exec: CPU seconds, address space, file size, open files; new processes are
  refused by the runner itself (RLIMIT_NPROC 0) before the user's code runs;
- a wall-clock limit, after which the whole process group is killed.
What remains readable: /usr and the interpreter's own files, read-only. Where `unshare` cannot create
the namespaces (a container without user namespaces), the grader fails with `python_grader_server_error`
saying so: the code is never run unconfined.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dora_graders.errors import GradingError

RUNNER = Path(__file__).with_name("sandbox_runner.py")
MAX_ANSWER_BYTES = 64 * 1024
STARTED = b"dora-grader-runner: started"  # the runner's first line on stderr
# in the new mount namespace: build the root, then enter it without capabilities
_ENTER = r"""
set -e
R="$1"; PREFIX="$2"; PY="$3"; RUNNER="$4"
mount -t tmpfs -o size=16m,mode=755 sandbox "$R"
mkdir -p "$R/usr" "$R/work"
mount --rbind /usr "$R/usr"; mount -o remount,bind,ro "$R/usr"
case "$PREFIX" in /usr/*) ;; *) mkdir -p "$R$PREFIX"; mount --rbind "$PREFIX" "$R$PREFIX"
                                 mount -o remount,bind,ro "$R$PREFIX";; esac
ln -s usr/lib "$R/lib"; ln -s usr/bin "$R/bin"; [ -e /usr/lib64 ] && ln -s usr/lib64 "$R/lib64"
cp "$RUNNER" "$R/work/runner.py"; chmod 777 "$R/work"
exec chroot "$R" /usr/bin/setpriv --bounding-set=-all --inh-caps=-all --no-new-privs -- \
    /usr/bin/env -i "$PY" -I -S /work/runner.py
"""


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 512 * 1024 * 1024
    file_bytes: int = 1024 * 1024  # also bounds what it prints: stdout and stderr are files
    open_files: int = 64


class PythonSandbox:
    """`run(source, sample, item)`: the reward the user's `grade(sample, item)` returns."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.python = os.path.realpath(sys.executable)  # the interpreter, not a venv's link to it
        self.prefix = os.path.realpath(sys.base_prefix)

    def _limit(self) -> None:  # in the child, before exec
        limits = self.limits
        for which, value in ((resource.RLIMIT_CPU, limits.cpu_seconds), (resource.RLIMIT_AS, limits.memory_bytes),
                             (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_NOFILE, limits.open_files),
                             (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(which, (value, value))

    def run(self, source: str, sample: dict[str, Any], item: Any) -> float:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise GradingError("python_grader_server_error", "the sandbox needs util-linux `unshare`, not found")
        request = json.dumps({"source": source, "sample": sample, "item": item}).encode()
        with tempfile.TemporaryDirectory(prefix="dora-grader-") as folder:
            root, out, err = Path(folder, "root"), Path(folder, "out"), Path(folder, "err")
            root.mkdir()
            Path(folder, "in").write_bytes(request)
            command = [unshare, "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child",
                       "/bin/sh", "-c", _ENTER, "sandbox", str(root), self.prefix, self.python, str(RUNNER)]
            with open(Path(folder, "in"), "rb") as stdin, open(out, "wb") as stdout, open(err, "wb") as stderr:
                process = subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=stderr, env={}, cwd=folder,
                                           preexec_fn=self._limit, start_new_session=True)
                try:
                    code = process.wait(timeout=self.limits.wall_seconds)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    limit = self.limits.wall_seconds
                    raise GradingError("python_grader_runtime_error",
                                       f"the grader ran past its time limit ({limit:g} s)") from None
            answer = out.read_bytes()[:MAX_ANSWER_BYTES]
            with open(err, "rb") as written:
                started = written.read(len(STARTED) + 256).find(STARTED) >= 0
            errors = err.read_bytes()[-2000:].decode(errors="replace")
        return _reward(code, answer, started, errors, self.limits)


def _reward(code: int, answer: bytes, started: bool, errors: str, limits: SandboxLimits) -> float:
    try:
        result = json.loads(answer) if answer else None
    except ValueError:
        result = None
    if isinstance(result, dict) and "reward" in result:
        return float(result["reward"])
    if isinstance(result, dict) and "error" in result:
        raise GradingError("python_grader_runtime_error", str(result["error"]))
    if not started:
        raise GradingError("python_grader_server_error", f"the sandbox could not start here: {errors.strip()}")
    raise GradingError("python_grader_runtime_error",
                         f"the grader ended without a result (exit {code}; killed at its CPU limit of "
                         f"{limits.cpu_seconds} s or a file over {limits.file_bytes} bytes?): {errors.strip()[-500:]}")
