"""SQLAlchemy 2 models: the schema the API and the worker share (changed only by migrations/).

Ids are public, OpenAI-shaped strings (store.ids); on PostgreSQL they use the "C" collation so
that `id < :cursor` compares bytes, the same order as SQLite, whatever the server's locale.
Times are stored as naive UTC and handed out as aware UTC datetimes on both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.eval_status import EvalRunStatus
from store.job_status import JobStatus

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python: same behaviour on SQLite and PostgreSQL."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def IdString() -> String:  # noqa: N802 - reads like a type
    return String(40).with_variant(String(40, collation="C"), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """Only a sha256 of the key is kept; the prefix lets an operator tell keys apart."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class File(Base):
    """An uploaded dataset (`storage_key`) or a job's result (`artifact_id`, served as a tar)."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_id_id", "tenant_id", "id"),)
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    format: Mapped[str | None] = mapped_column(String(32), default=None)
    rows: Mapped[int | None] = mapped_column(Integer, default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    storage_key: Mapped[str | None] = mapped_column(String(512), default=None)
    artifact_id: Mapped[str | None] = mapped_column(IdString(), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
    )
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(255))
    training_file: Mapped[str] = mapped_column(IdString())
    validation_file: Mapped[str | None] = mapped_column(IdString(), default=None)
    status: Mapped[str] = mapped_column(String(24), default=JobStatus.QUEUED.value)  # a JobStatus value
    method: Mapped[dict[str, Any]] = mapped_column(default=dict)  # as shown to the user
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # resolved run settings
    seed: Mapped[int] = mapped_column(Integer)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    # GPUs (processes of one torch.distributed run) the job needs on one worker: its queue (store/queue.py)
    gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # execution: lease + fencing
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # a pause asked of the worker running it (migration 0008); cleared when it is paused
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # progress
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, default=None)
    epoch: Mapped[float | None] = mapped_column(Float, default=None)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer, default=None)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # outputs
    fine_tuned_model: Mapped[str | None] = mapped_column(String(255), default=None, index=True)
    result_files: Mapped[list[Any]] = mapped_column(default=list)
    # DELETE /v1/models/{id} removed the model, its outputs and checkpoints (store/model_deletion.py)
    model_deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # times
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    attempt_started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # events: the seq of the job's newest event (store/jobs.py _add_events numbers them under this row's lock)
    event_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class JobEvent(Base):
    """`seq` numbers a job's events 1, 2, ... in commit order (streams resume by it); `id` is
    time-ordered but, across processes, not commit-ordered."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),
                      Index("ix_job_events_job_id_seq", "job_id", "seq", unique=True))
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class MetricPoint(Base):
    """One training step's numbers; a resumed attempt overwrites the steps it re-runs."""

    __tablename__ = "metric_points"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    values: Mapped[dict[str, Any]] = mapped_column(default=dict)


class JobSample(Base):
    """One of the model's greedy answers to a validation prompt at an evaluation (issue #15).

    (job_id, step, index) is unique: a replayed progress write (store/progress.py) stores nothing
    twice, and a resumed attempt that evaluates a step again keeps the first answers. `id` is
    time-ordered; the list is paged by (step, index) with an id as the cursor."""

    __tablename__ = "job_samples"
    __table_args__ = (UniqueConstraint("job_id", "step", "sample_index"),)
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column("sample_index", Integer)  # 0-based among the evaluation's samples
    prompt: Mapped[str] = mapped_column(Text)
    expected: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_job_id_id", "job_id", "id"),)
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """A finished output folder (`adapter`, `merged`): its files, sizes and digests."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    storage_prefix: Mapped[str] = mapped_column(String(512))
    files: Mapped[list[Any]] = mapped_column(default=list)  # [{"path", "bytes", "sha256"}]
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # digest of the sorted file list
    file_id: Mapped[str | None] = mapped_column(IdString(), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Webhook(Base):
    """A tenant's endpoint for job events; `secret` (`whsec_<base64>`) signs every delivery.

    The secret is kept as is (signing needs it) and shown once, when the webhook is created."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_tenant_id_id", "tenant_id", "id"),)
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]] = mapped_column(default=list)  # event types (store/webhooks.py EVENT_TYPES)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one webhook: the outbox row, written in the job transition's transaction,
    and where its delivery stands (pending -> delivered | failed). `body` is the exact JSON sent."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
                      Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"))
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(IdString())
    event_type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(IdString(), default=None)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)  # due from then (None once done)
    published_at: Mapped[datetime | None] = mapped_column(default=None)  # a message for it was last sent then
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: when, the status code or the error, how long it took."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery_id_id", "delivery_id", "id"),)
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


class InferenceServer(Base):
    """A running `dora serve` process, as it registers itself: where the API reaches it, which base
    models it holds, and its last heartbeat (a row whose heartbeat is older than
    DORA_INFERENCE_SERVER_TTL_SECONDS is ignored, and removed by the next server that beats)."""

    __tablename__ = "inference_servers"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # host:pid:random, chosen by the server
    url: Mapped[str] = mapped_column(String(2048))
    base_models: Mapped[list[Any]] = mapped_column(default=list)  # the names of DORA_BASE_MODELS it serves
    max_batch: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Eval(Base):
    """An eval (issue #24): what an item looks like (`data_source_config`, as OpenAI returns it: type
    custom, schema {item, sample}) and the graders every run applies (`testing_criteria`)."""

    __tablename__ = "evals"
    __table_args__ = (Index("ix_evals_tenant_id_id", "tenant_id", "id"),)
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(255), default=None)
    data_source_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    testing_criteria: Mapped[list[Any]] = mapped_column(default=list)  # grader specs, each with a unique name
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalRun(Base):
    """One run of an eval over a data source: its status (store/eval_status.py), the counts the
    lease holder keeps up to date, and the lease that fences its worker (as jobs have)."""

    __tablename__ = "eval_runs"
    __table_args__ = (
        Index("ix_eval_runs_eval_id_id", "eval_id", "id"),
        Index("ix_eval_runs_tenant_id_status", "tenant_id", "status"),
        Index("ix_eval_runs_status_lease_expires_at", "status", "lease_expires_at"),
    )
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(255), default=None)
    status: Mapped[str] = mapped_column(String(24), default=EvalRunStatus.QUEUED.value)  # an EvalRunStatus value
    data_source: Mapped[dict[str, Any]] = mapped_column(default=dict)  # as given, the model resolved
    model: Mapped[str | None] = mapped_column(String(255), default=None)  # requested model id; None for jsonl
    result_counts: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {total, passed, failed, errored}
    per_testing_criteria_results: Mapped[list[Any]] = mapped_column(default=list)
    per_model_usage: Mapped[list[Any]] = mapped_column(default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # {code, message}
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    # execution: lease + fencing
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # times
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class EvalOutputItem(Base):
    """One data source item of a run, sampled and graded. UNIQUE (run_id, datasource_item_id) is
    the exactly-once guarantee: the lease holder inserts an item once, with its grade."""

    __tablename__ = "eval_output_items"
    __table_args__ = (
        UniqueConstraint("run_id", "datasource_item_id"),
        Index("ix_eval_output_items_run_id_id", "run_id", "id"),
    )
    id: Mapped[str] = mapped_column(IdString(), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    eval_id: Mapped[str] = mapped_column(IdString())
    tenant_id: Mapped[str] = mapped_column(IdString())
    datasource_item_id: Mapped[int] = mapped_column(Integer)  # the item's 0-based index in the data source
    datasource_item: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sample: Mapped[dict[str, Any]] = mapped_column(default=dict)  # input, output, finish_reason, usage, model, error
    results: Mapped[list[Any]] = mapped_column(default=list)  # per grader: name, type, score, passed, sample/error
    status: Mapped[str] = mapped_column(String(8))  # store/eval_status.py ITEM_STATUSES
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
