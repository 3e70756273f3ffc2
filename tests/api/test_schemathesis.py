"""schemathesis against the app (ASGI, in-process): requests generated from /openapi.json, valid
and invalid, for every operation, sent with a valid API key. Every answer must be no 5xx and
what the document says: a documented status, media type, headers and body (the documented
400/404/409/413/416/429 bodies included).

Each operation runs in positive and in negative mode with generated path parameters, and the
operations on a job or a file once more with the ids of a finished job of that tenant (so the
200s and 206s of reads and downloads are checked, not only 404s). Bounded and deterministic:
MAX_EXAMPLES cases per run, Hypothesis derandomized (its seed is fixed by the test's name), no
example database, no shrinking; well under a minute per database.

(schemathesis' own pytest loader, `schemathesis.pytest.from_fixture`, does not work with pytest
9.2, so the operations' Hypothesis strategies are run here directly.)
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode

from tests.support.api_client import FakeWorker, make_tenant, recording_app
from tests.support.artifacts import finish_with_artifacts

MAX_EXAMPLES = 15  # per run: 30 to 45 cases per operation
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module")
def fuzzed(client, settings, tmp_path_factory):
    """An app of its own, with no request rate limit (every case is sent by one tenant) and a broker
    it can reach (the embedded one, so /readyz is ready), the tenant, and the ids its finished job
    and files give to path parameters."""
    tenant = make_tenant(client, settings)
    job = finish_with_artifacts(tenant, FakeWorker(settings), settings)
    broker = f"sqla+sqlite:///{tmp_path_factory.mktemp('broker') / 'broker.db'}"
    app = recording_app(settings.model_copy(update={"rate_limit_per_minute": 0, "broker_url": broker}))
    # two sets of real ids: the job's training file (bytes) and its result file (a tar)
    real_ids = [{"job_id": job["id"], "file_id": file_id, "name": "adapter", "path": "adapter_config.json",
                 "model_id": "tiny-llama"} for file_id in (job["training_file"], job["result_files"][0])]
    return schemathesis.openapi.from_asgi("/openapi.json", app), tenant, real_ids


def _runs(operation, real_ids: list[dict]):
    """(label, strategy) for each run of one operation: positive and negative with generated path
    parameters, then positive with each set of real ids (not for DELETE: it would delete them)."""
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        yield mode.value, operation.as_strategy(generation_mode=mode)
    names = {p.name for p in operation.path_parameters}
    if not names or operation.method.upper() == "DELETE":
        return
    fixed_sets = []
    for ids in real_ids:
        fixed = {name: ids[name] for name in names if name in ids}
        if len(fixed) == len(names) and fixed not in fixed_sets:
            fixed_sets.append(fixed)
    for fixed in fixed_sets:
        yield f"positive, real {fixed}", operation.as_strategy(generation_mode=GenerationMode.POSITIVE,
                                                               path_parameters=fixed)


def _failures(strategy, headers: dict) -> tuple[int, list[str]]:
    """Cases sent and the failure reports of one run (every case runs; no shrinking)."""
    sent, failures = [0], []

    @hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @hypothesis.given(case=strategy)
    def run(case):
        sent[0] += 1
        try:
            case.call_and_validate(headers=headers, checks=CHECKS)
        except FailureGroup as error:
            failures.append(str(error))

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # negative mode on an operation that takes no input: nothing to send
        assert sent[0] == 0
    return sent[0], failures


def test_generated_requests_get_no_server_error_and_the_documented_answer(fuzzed):
    schema, tenant, real_ids = fuzzed
    found, sent = {}, 0
    for result in schema.get_all_operations():
        operation = result.ok()  # an operation schemathesis cannot read is a failure too
        for label, strategy in _runs(operation, real_ids):
            count, failures = _failures(strategy, tenant.headers)
            sent += count
            if failures:
                found[f"{operation.label} ({label})"] = failures
    assert sent > 0
    report = "\n\n".join(f"== {where}: {len(failures)} failing cases; the first:\n{failures[0]}"
                         for where, failures in found.items())
    assert not found, report
