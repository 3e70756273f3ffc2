"""Runs inside the sandbox (python -I -S, stdlib only): reads {source, sample, item} as JSON on stdin,
calls the user's `grade(sample, item)`, and writes {"reward": x} or {"error": "..."} as JSON on the
original stdout; whatever the user's code prints goes to stderr. It forbids itself new processes
before the user's code runs (RLIMIT_NPROC 0 within its user namespace)."""

import json
import os
import resource
import sys
import traceback

STARTED = "dora-grader-runner: started"  # sandbox.py tells a failed start from a failed grader by it

os.chdir(os.path.dirname(os.path.abspath(__file__)))  # its own folder, the only writable one
request = json.loads(sys.stdin.read())
sys.stderr.write(STARTED + "\n")
sys.stderr.flush()
answer = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # the user's prints go to stderr
sys.stdout = sys.stderr
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
try:
    scope = {"__name__": "grader"}
    exec(compile(request["source"], "grader.py", "exec"), scope)
    reward = scope["grade"](request["sample"], request["item"])
    result = {"reward": float(reward)}
except BaseException as error:  # noqa: BLE001 - every failure of the user's code is reported, not raised
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    result = {"error": "".join(lines[-6:])[-2000:]}
answer.write(json.dumps(result))
answer.flush()
