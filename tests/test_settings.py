"""Settings in groups: every `DORA_*` name kept, each process loading only the groups it reads,
each group's checks still made, and docs/settings.md rendered from the models and current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from dora_cli.main import main
from dora_cli.process_settings import PROCESSES, AllSettings
from dora_cli.settings_doc import groups
from serve.settings import ServeSettings
from store.settings import ApiSettings, Settings, get_settings
from worker.settings import EvalRunnerSettings, WebhookSenderSettings, WorkerSettings

ROOT = Path(__file__).resolve().parents[1]

# Every variable before the settings were split into groups (store/settings.py's Settings and
# worker/settings.py's WorkerSettings of then): renaming one breaks deployments silently.
NAMES = {
    "DORA_AUTH_CACHE_SECONDS", "DORA_BASE_MODELS", "DORA_BROKER_URL", "DORA_CHECK_SCHEMA_ON_STARTUP",
    "DORA_DATABASE_URL", "DORA_DB_CONNECT_TIMEOUT_SECONDS", "DORA_DB_MAX_OVERFLOW", "DORA_DB_POOL_PRE_PING",
    "DORA_DB_POOL_SIZE", "DORA_DB_POOL_TIMEOUT_SECONDS", "DORA_DB_STATEMENT_TIMEOUT_SECONDS",
    "DORA_DEFAULT_MAX_ATTEMPTS", "DORA_HOST", "DORA_LEASE_SECONDS", "DORA_LOG_LEVEL",
    "DORA_MAX_ACTIVE_JOBS_PER_TENANT", "DORA_MAX_BATCH_SIZE", "DORA_MAX_EPOCHS", "DORA_MAX_JOB_GPUS",
    "DORA_MAX_JSON_BODY_BYTES", "DORA_MAX_RANK", "DORA_MAX_SEQ_LEN_LIMIT", "DORA_MAX_STEPS_LIMIT",
    "DORA_MAX_STORED_BYTES_PER_TENANT", "DORA_MAX_STREAMS_PER_TENANT", "DORA_MAX_UPLOAD_BYTES",
    "DORA_METRICS_TOKEN", "DORA_MIN_RANK", "DORA_MODEL_CACHE_DIR", "DORA_PORT", "DORA_RATE_LIMIT_BURST",
    "DORA_RATE_LIMIT_PER_MINUTE", "DORA_S3_ENDPOINT_URL", "DORA_S3_REGION", "DORA_STORAGE_URL",
    "DORA_STREAM_HEARTBEAT_SECONDS", "DORA_STREAM_POLL_SECONDS", "DORA_UPLOAD_TMP_DIR", "DORA_WEBHOOK_ALLOWED_CIDRS",
    "DORA_WEBHOOK_ALLOW_PRIVATE", "DORA_WEBHOOK_CONCURRENCY", "DORA_WEBHOOK_MAX_PER_TENANT",
    "DORA_WEBHOOK_REPUBLISH_AFTER_SECONDS", "DORA_WEBHOOK_RETRY_SCHEDULE_SECONDS",
    "DORA_WEBHOOK_SWEEP_INTERVAL_SECONDS", "DORA_WEBHOOK_TIMEOUT_SECONDS", "DORA_WORKER_GPU_MEMORY_GIB",
    # added since (issue [reliability-3]): the connection budget, the download cap, the stalled-client bound
    "DORA_DB_CONNECTION_BUDGET", "DORA_DB_PROCESSES", "DORA_MAX_DOWNLOADS_PER_TENANT",
    "DORA_STREAM_SEND_TIMEOUT_SECONDS",
    # the worker's own
    "DORA_CONCURRENCY", "DORA_DEVICE", "DORA_GPUS", "DORA_HEARTBEAT_SECONDS", "DORA_JOB_TIME_LIMIT_SECONDS",
    "DORA_PRELOAD_ML", "DORA_PROGRESS_BUFFER_EVENTS", "DORA_PROGRESS_BUFFER_STEPS",
    "DORA_RECONCILE_INTERVAL_SECONDS", "DORA_REQUEUE_AFTER_SECONDS", "DORA_WORK_DIR",
    "DORA_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", "DORA_WEBHOOK_MAX_IN_FLIGHT_PER_TENANT",  # added since: the sender's
    "DORA_WEBHOOK_BREAKER_FAILURES", "DORA_WEBHOOK_BREAKER_COOLDOWN_SECONDS",  # fairness and circuit breaker
    # added since
    "DORA_MAX_JOBS_CREATED_PER_TENANT", "DORA_JOB_CREATION_WINDOW_SECONDS",  # the creation rate (api/quotas.py)
    # added since (issue [serve]): completions and the inference servers
    "DORA_MAX_COMPLETION_TOKENS", "DORA_MAX_COMPLETION_CHOICES", "DORA_MAX_GENERATIONS_PER_TENANT",
    "DORA_INFERENCE_SECRET", "DORA_INFERENCE_SERVER_TTL_SECONDS", "DORA_INFERENCE_CONNECT_TIMEOUT_SECONDS",
    "DORA_INFERENCE_FIRST_EVENT_TIMEOUT_SECONDS",
    # added since (issue #24): eval runs
    "DORA_MAX_EVAL_ITEMS", "DORA_MAX_ACTIVE_EVAL_RUNS_PER_TENANT",
    "DORA_EVAL_CONCURRENCY", "DORA_EVAL_COMPLETION_CONCURRENCY", "DORA_EVAL_BATCH_ITEMS", "DORA_EVAL_LEASE_SECONDS",
    "DORA_EVAL_HEARTBEAT_SECONDS", "DORA_EVAL_SWEEP_INTERVAL_SECONDS", "DORA_EVAL_REQUEUE_AFTER_SECONDS",
    "DORA_EVAL_SERVER_WAIT_SECONDS",  # `dora evals`, the executor
    "DORA_PYTHON_GRADER_ENABLED",  # the python grader (dora_graders/sandbox.py)
    "DORA_JUDGE_SERVER_WAIT_SECONDS",  # a reinforcement job's judge (worker/training_judge.py)
    # the inference server's own (`dora serve`)
    "DORA_SERVE_HOST", "DORA_SERVE_PORT", "DORA_SERVE_URL", "DORA_SERVE_BASE_MODELS", "DORA_SERVE_DEVICE",
    "DORA_SERVE_MAX_BATCH", "DORA_SERVE_ADAPTER_SLOTS", "DORA_SERVE_MAX_ADAPTER_RANK", "DORA_SERVE_HEARTBEAT_SECONDS",
    # added since (issue #26): experiment tracking (a job's integrations)
    "DORA_WANDB_API_KEY", "DORA_WANDB_BASE_URL", "DORA_WANDB_MODE", "DORA_WANDB_DIR", "DORA_MLFLOW_TRACKING_URI",
    "DORA_TRACKING_BUFFER_POINTS", "DORA_TRACKING_FLUSH_SECONDS", "DORA_TRACKING_TIMEOUT_SECONDS",
}
# `DORA_*` variables that are not settings of the service: read by dora_core itself
NOT_SETTINGS = {"DORA_DISABLE_TRITON"}  # dora_core/kernels: 1 turns the Triton kernels off
# where operators read variable names
DOCUMENTED_IN = ["README.md", "docs/*.md", "docker/*", "docker-compose.yml", "Makefile", "dora_cli/*.py"]


def env_names(cls) -> set[str]:
    return {f"DORA_{name.upper()}" for name in cls.model_fields}


def test_every_variable_name_is_unchanged():
    assert set().union(*(env_names(group) for group in groups())) == NAMES
    assert env_names(AllSettings) == NAMES


def test_each_field_is_in_one_group_with_a_description():
    owners: dict[str, list[str]] = {}
    for group in groups():
        for name, field in group.model_fields.items():
            owners.setdefault(name, []).append(group.__name__)
            assert field.description, f"{group.__name__}.{name} has no description (docs/settings.md shows it)"
    assert {name: found for name, found in owners.items() if len(found) > 1} == {}


def test_each_process_loads_only_its_groups():
    for process in PROCESSES:
        own = [group for group in groups() if issubclass(process.settings, group)]
        assert set(process.settings.model_fields) == set().union(*(group.model_fields for group in own))
    assert Settings is ApiSettings and isinstance(get_settings(), ApiSettings)
    api, worker, sender = (set(cls.model_fields) for cls in (ApiSettings, WorkerSettings, WebhookSenderSettings))
    assert not api & {"work_dir", "lease_seconds", "gpus", "webhook_concurrency", "webhook_retry_schedule_seconds"}
    assert not worker & {"port", "metrics_token", "max_rank", "rate_limit_burst", "webhook_allowed_cidrs"}
    assert not sender & {"port", "storage_url", "base_models", "max_rank", "work_dir"}
    assert {"database_url", "broker_url", "webhook_allowed_cidrs", "log_level"} <= sender


def _reads(paths: list[Path]) -> set[str]:
    """Attributes read from a `settings` object in these files (a job's `settings` dict aside)."""
    text = "\n".join(path.read_text() for path in paths)
    return {name for prefix, name in re.findall(r"([\w.]*)\bsettings\.([a-z_][a-z0-9_]*)", text)
            if not prefix.endswith("job.") and name not in ("get", "py")}


@pytest.mark.parametrize(("cls", "files"), [
    (ApiSettings, ["api/**/*.py"]),
    (WorkerSettings, ["worker/*.py"]),
    (WebhookSenderSettings, ["worker/webhooks.py"]),
    (EvalRunnerSettings, ["worker/eval*.py"]),
    (ServeSettings, ["serve/*.py", "dora_cli/serve_commands.py"]),
])
def test_what_a_process_reads_is_in_what_it_loads(cls, files):
    """Tests may run the whole stack on `AllSettings`; this keeps each process's code to its own."""
    paths = [path for pattern in files for path in sorted(ROOT.glob(pattern))
             if cls is not WorkerSettings or not (path.name in ("webhooks.py", "settings.py")
                                                  or path.name.startswith("eval"))]
    missing = sorted(name for name in _reads(paths) if name not in cls.model_fields and not hasattr(cls, name))
    assert missing == [], f"read by {files} but not in {cls.__name__}"


def test_a_bad_value_stops_only_the_processes_that_read_it(monkeypatch):
    monkeypatch.setenv("DORA_MIN_RANK", "0")
    with pytest.raises(ValidationError, match="DORA_MIN_RANK"):
        ApiSettings(_env_file=None)
    assert WorkerSettings(_env_file=None).lease_seconds == 120 and WebhookSenderSettings(_env_file=None)
    monkeypatch.delenv("DORA_MIN_RANK")
    monkeypatch.setenv("DORA_HEARTBEAT_SECONDS", "100")
    with pytest.raises(ValidationError, match="DORA_HEARTBEAT_SECONDS"):
        WorkerSettings(_env_file=None)
    assert ApiSettings(_env_file=None).min_rank == 1


@pytest.mark.parametrize(("cls", "values", "message"), [
    (ApiSettings, {"min_rank": 0}, "DORA_MIN_RANK must be >= 1"),
    (ApiSettings, {"min_rank": 8, "max_rank": 4}, "DORA_MIN_RANK must be >= 1 and <= DORA_MAX_RANK"),
    (ApiSettings, {"max_upload_bytes": 0}, "DORA_MAX_UPLOAD_BYTES must be positive"),
    (ApiSettings, {"max_active_jobs_per_tenant": -1}, "DORA_MAX_ACTIVE_JOBS_PER_TENANT must be >= 0"),
    (ApiSettings, {"max_stored_bytes_per_tenant": -1}, "DORA_MAX_STORED_BYTES_PER_TENANT must be >= 0"),
    (ApiSettings, {"rate_limit_per_minute": -1}, "DORA_RATE_LIMIT_PER_MINUTE must be >= 0"),
    (ApiSettings, {"rate_limit_burst": 0}, "DORA_RATE_LIMIT_BURST must be at least 1"),
    (ApiSettings, {"webhook_max_per_tenant": -1}, "webhook_max_per_tenant"),
    (ApiSettings, {"metrics_token": "short"}, "DORA_METRICS_TOKEN must be at least 16 characters"),
    (ApiSettings, {"stream_poll_seconds": 0}, "stream_poll_seconds"),
    (ApiSettings, {"max_streams_per_tenant": -1}, "max_streams_per_tenant"),
    (ApiSettings, {"max_jobs_created_per_tenant": -1}, "DORA_MAX_JOBS_CREATED_PER_TENANT must be >= 0"),
    (ApiSettings, {"job_creation_window_seconds": 0}, "job_creation_window_seconds"),
    (ApiSettings, {"max_downloads_per_tenant": -1}, "max_downloads_per_tenant"),
    (ApiSettings, {"stream_send_timeout_seconds": 0}, "stream_send_timeout_seconds"),
    (WorkerSettings, {"db_connection_budget": 2, "db_processes": 3}, "DORA_DB_CONNECTION_BUDGET (2) must give"),
    (ApiSettings, {"max_job_gpus": 0}, "max_job_gpus"),
    (WorkerSettings, {"lease_seconds": 10, "heartbeat_seconds": 6}, "DORA_HEARTBEAT_SECONDS must be positive"),
    (WorkerSettings, {"heartbeat_seconds": 0}, "DORA_HEARTBEAT_SECONDS"),
    (WorkerSettings, {"progress_buffer_events": 0}, "DORA_PROGRESS_BUFFER_EVENTS must be at least 1"),
    (WorkerSettings, {"job_time_limit_seconds": 0}, "DORA_JOB_TIME_LIMIT_SECONDS must be positive"),
    (WorkerSettings, {"gpus": 0}, "gpus"),
    (WebhookSenderSettings, {"webhook_retry_schedule_seconds": []}, "webhook_retry_schedule_seconds"),
    (WebhookSenderSettings, {"webhook_concurrency": 0}, "webhook_concurrency"),
    (WebhookSenderSettings, {"webhook_timeout_seconds": 0}, "webhook_timeout_seconds"),
])
@pytest.mark.parametrize("union", [False, True], ids=["process", "all"])
def test_each_group_still_refuses_what_it_refused(cls, values, message, union):
    """Through the process's composite and through the union of all (`dora up`): a group's check
    is inherited by name, so two groups with a same-named validator would lose one."""
    with pytest.raises(ValidationError, match=re.escape(message)):
        (AllSettings if union else cls)(_env_file=None, **values)


def test_a_setting_of_another_group_is_refused_as_an_argument_and_ignored_in_dotenv(tmp_path):
    with pytest.raises(TypeError, match="ApiSettings has no setting work_dir"):
        ApiSettings(work_dir="/scratch")
    dotenv = tmp_path / ".env"
    dotenv.write_text("DORA_WORK_DIR=/scratch\nDORA_PORT=9000\n")  # one file for every process
    assert ApiSettings(_env_file=dotenv).port == 9000
    assert WorkerSettings(_env_file=dotenv).work_dir == "/scratch"


def test_every_variable_the_docs_name_is_a_setting():
    named = {}
    for pattern in DOCUMENTED_IN:
        for path in sorted(ROOT.glob(pattern)):
            for name in re.findall(r"\bDORA_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text()):
                named.setdefault(name, path.relative_to(ROOT).as_posix())
    unknown = {name: where for name, where in named.items() if name not in NAMES | NOT_SETTINGS}
    assert unknown == {}, "named in the docs but no setting has that name (renamed?)"
    assert len(named) > 30  # the patterns still find the docs


def test_docs_settings_md_is_what_dora_settings_prints(capsys):
    assert main(["settings"]) == 0
    expected = capsys.readouterr().out
    assert "| `DORA_WORK_DIR` | str | `./var/work` | worker |" in expected
    current = (ROOT / "docs" / "settings.md").read_text()
    assert current == expected, "docs/settings.md is stale: run `.venv/bin/dora settings > docs/settings.md`"
