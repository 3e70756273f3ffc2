"""`quantization` in a job request: the run contract's field, taken, shown, stored, and refused by name."""

from __future__ import annotations

from dora_contract import JobSpec, TrainingSettings
from store.db import session_scope
from store.models import Job


def test_a_job_asks_for_an_nf4_base_and_the_worker_gets_it(tenant, settings):
    job = tenant.job({"method": {"type": "dora", "dora": {"hyperparameters": {"quantization": "nf4"}}}})
    assert job["method"]["dora"]["hyperparameters"]["quantization"] == "nf4"
    with session_scope(settings) as session:
        stored = JobSpec.from_data(session.get(Job, job["id"]).settings)
    assert stored.run.training.quantization == "nf4"  # what worker/job.py hands dora_core
    default = tenant.job()
    assert default["method"]["dora"]["hyperparameters"]["quantization"] == TrainingSettings().quantization == "none"


def test_an_unknown_quantization_is_a_400_naming_the_field(tenant):
    before = tenant.counts()
    response = tenant.create_job({"method": {"type": "lora", "lora": {"hyperparameters": {"quantization": "int4"}}}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "method.lora.hyperparameters.quantization" and "'nf4'" in error["message"], error
    after = tenant.counts()
    assert after[1] == before[1]  # no job row
