"""The service's settings, one class per concern, read from `DORA_*` environment variables.

A group is a small `BaseSettings` (`DatabaseSettings`, `StorageSettings`, ...) that checks its own
values; a process loads the composite of the groups it reads (`ApiSettings` here, `WorkerSettings`
and `WebhookSenderSettings` in worker/settings.py), so a bad value for one concern stops only the
processes that use it. Field names are flat: `settings.database_url` reads `DORA_DATABASE_URL`
whichever composite holds it. Lists and mappings are JSON in the environment, e.g.
`DORA_BASE_MODELS='{"tiny-llama": "./var/models/tiny-llama"}'`.

The descriptions below are the reference: docs/settings.md is rendered from them (`dora settings`).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PositiveFloat, PositiveInt, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.base_models import Registration

# a guessable operator token or inference secret would open /metrics or the inference servers:
# e.g. `openssl rand -hex 32`
MIN_SECRET_LENGTH = 16


class DoraSettings(BaseSettings):
    """The base of every group: `DORA_<FIELD>` from the environment or `.env`.

    `.env` may hold variables of other groups (one file serves every process), so unknown ones
    there are ignored; an unknown keyword argument is refused instead, so code or a test that
    hands a composite a setting of a group it lacks fails at once rather than being ignored.
    Validators of groups need names of their own: a composite inherits them all by name.
    """

    model_config = SettingsConfigDict(env_prefix="DORA_", env_file=".env", extra="ignore")

    def __init__(self, **values: Any) -> None:
        unknown = sorted(name for name in values if not name.startswith("_") and name not in type(self).model_fields)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting {', '.join(unknown)} "
                            "(docs/settings.md says which settings class holds each)")
        super().__init__(**values)


# -- where things live ------------------------------------------------------------------------------
class DatabaseSettings(DoraSettings):
    """The SQL database (the truth of every job) and its connection pool.

    The timeouts give up on the database in seconds, not minutes: a request then answers 503
    (Retry-After) instead of hanging.
    """

    database_url: str = Field("sqlite:///./var/dora.db", description=(
        "SQLAlchemy URL of the database: SQLite for one machine, `postgresql+psycopg://...` otherwise"))
    db_pool_size: int = Field(20, description="pooled connections per process (PostgreSQL); sized for the "
                                              "API's thread pool")
    db_max_overflow: int = Field(20, description="connections opened beyond the pool when it is busy")
    db_pool_pre_ping: bool = Field(True, description=(
        "ping each pooled connection as it is checked out, so one broken by a PostgreSQL restart or failover "
        "is replaced before a request uses it (no 500); costs one round trip per checkout, below the noise of "
        "benchmarks/api_load.py: turn it off only for a database that never restarts under the API"))
    db_connect_timeout_seconds: int = Field(5, description="TCP connection and authentication of a new connection")
    db_statement_timeout_seconds: float = Field(30.0, description="the server cancels a statement running longer")
    db_pool_timeout_seconds: float = Field(5.0, description="waiting for a free pooled connection")
    db_connection_budget: int = Field(0, ge=0, description=(
        "connections all the processes of this deployment together may hold on the database: PostgreSQL's "
        "max_connections less a reserve (superuser slots, migrations, psql, other clients); each process then "
        "keeps its pool within its share, budget / DORA_DB_PROCESSES (docs/architecture.md, \"Connection "
        "budget\"); 0: no budget, each process may hold DORA_DB_POOL_SIZE + DORA_DB_MAX_OVERFLOW"))
    db_processes: int = Field(1, ge=1, description=(
        "processes that connect to the database, all hosts together: each uvicorn worker of `dora api`, and per "
        "`dora worker` its parent, job process and reconciler, and each `dora webhooks`; the budget is shared "
        "among them, and each process warns at start when this many of its pools could exceed max_connections"))

    @model_validator(mode="after")
    def _check_connection_budget(self) -> DatabaseSettings:
        if self.db_connection_budget and self.db_connection_budget < self.db_processes:
            raise ValueError(f"DORA_DB_CONNECTION_BUDGET ({self.db_connection_budget}) must give each of the "
                             f"DORA_DB_PROCESSES ({self.db_processes}) at least one connection")
        return self


class BrokerSettings(DoraSettings):
    """The message broker: it only wakes workers and the webhook sender; SQL holds the truth."""

    broker_url: str = Field("sqla+sqlite:///./var/broker.db", description=(
        "Celery broker URL: `redis://host:6379/0`, or kombu's SQLAlchemy transport on SQLite for one machine"))


class SessionSettings(DatabaseSettings, BrokerSettings):
    """What a session of store/db.py needs: the database, and the broker that the webhook
    deliveries a transaction wrote are published to after its commit."""


class StorageSettings(DoraSettings):
    """Artifact storage: uploaded files and job outputs (store/storage.py)."""

    storage_url: str = Field("./var/artifacts", description="a folder, `file:///abs/path` or `s3://bucket/prefix`")
    s3_endpoint_url: str | None = Field(None, description="MinIO or another S3-compatible endpoint; unset: AWS")
    s3_region: str | None = Field(None, description=(
        "S3 region; unset: boto3's default (AWS_DEFAULT_REGION). Credentials: boto3's own chain"))


class LogSettings(DoraSettings):
    """Logging of the long-running processes (uvicorn's and Celery's log level)."""

    log_level: str = Field("info", description="debug, info, warning or error")


class BaseModelSettings(DoraSettings):
    """The base models users may fine-tune: the API lists and checks them, the worker and the inference
    servers load them (converting a GGUF source once into the model cache)."""

    base_models: dict[str, Registration] = Field(default_factory=dict, description=(
        "name -> source (local folder, hub id, `.gguf` file, `package:<distribution>`) or "
        "`{\"source\": ..., \"public_id\": <hub id>}` (store/base_models.py)"))
    model_cache_dir: str | None = Field(None, description=(
        "where GGUF base models are converted to safetensors once, by the worker and `dora serve` "
        "(dora_core/gguf_import.py reads the same variable), and where `dora serve` keeps the adapters it "
        "downloaded (`adapters/`); unset: `~/.cache/dora-tuner/models`"))



class EvalSettings(DoraSettings):
    """Eval runs (issue #24): read by the API when a run is created and by the executor that runs it."""

    max_eval_items: PositiveInt = Field(10_000, description=(
        "most items an eval run's data source may hold (a file's rows or inline content); more is a 400 naming "
        "data_source.source"))
    max_active_eval_runs_per_tenant: int = Field(10, ge=0, description=(
        "queued + in_progress eval runs a tenant may have; one more is a 429 (0: no cap)"))

class TrackingSettings(DoraSettings):
    """Experiment tracking (issue #26): the operator's W&B and MLflow servers a job's `integrations` log to.
    The API refuses an integration whose server is not configured here (400 naming integrations.<i>.type);
    the worker logs to it from a background thread, so a slow or dead server never slows or fails a job."""

    wandb_api_key: SecretStr | None = Field(None, description=(
        "the W&B API key the worker logs with; unset (and DORA_WANDB_MODE online): the wandb integration is refused"))
    wandb_base_url: str | None = Field(None, description="the W&B server (a self-hosted one); unset: W&B's cloud")
    wandb_mode: Literal["online", "offline"] = Field("online", description=(
        "offline: runs are only written under DORA_WANDB_DIR (upload them later with `wandb sync`); no key needed"))
    wandb_dir: str = Field("./var/wandb", description="where the wandb client writes its run files on the worker")
    mlflow_tracking_uri: str | None = Field(None, description=(
        "the MLflow tracking server (http://host:5000); unset: the mlflow integration is refused"))
    tracking_buffer_points: int = Field(10_000, ge=1, description=(
        "metric points and samples a job keeps for a tracking server that is slow or down; past it the oldest are "
        "dropped, and the job's final event says how many were not logged"))
    tracking_flush_seconds: float = Field(10.0, ge=0, description=(
        "at the end of a job, how long it waits for its tracking servers to take what is buffered; then the job "
        "goes on and an event says what was not logged"))
    tracking_timeout_seconds: float = Field(10.0, gt=0, description="one request to a tracking server")

    def integration_configured(self, kind: str) -> bool:
        """Whether the operator set up the server of integration type `kind` (wandb, mlflow)."""
        if kind == "wandb":
            return self.wandb_api_key is not None or self.wandb_mode == "offline"
        return kind == "mlflow" and bool(self.mlflow_tracking_uri)


# -- the API's ----------------------------------------------------------------------------------------
class GraderSettings(DoraSettings):
    """The graders (dora_graders): read by the API (`graders/run|validate`) and by the worker (evals, RFT)."""

    python_grader_enabled: bool = Field(False, description=(
        "run `python` graders (user code, in a confined process: no network, no service files, CPU/memory/time "
        "limits; needs util-linux `unshare` with user namespaces); off: a python grader is a 400 naming its type"))


class RequestLimits(DoraSettings):
    """What users may ask for: the operator's limits on top of the run contract's own bounds
    (api/services/limits.py), and the sizes of request bodies."""

    max_upload_bytes: int = Field(512 * 1024 * 1024, description="largest uploaded file")
    max_json_body_bytes: int = Field(1024 * 1024, description="every request body but an upload (api/body_limit.py)")
    min_rank: int = Field(1, description="lowest adapter rank a job may ask for")
    max_rank: int = Field(256, description="highest adapter rank a job may ask for")
    max_epochs: int = Field(100, description="most epochs a job may ask for")
    max_steps_limit: int = Field(1_000_000, description="most optimiser steps a job may ask for")
    max_seq_len_limit: int = Field(32768, description="longest sequence length a job may ask for")
    max_batch_size: int = Field(1024, description="largest batch size a job may ask for")
    default_max_attempts: int = Field(3, description="attempts of a job that does not say (a worker lost mid-job "
                                                     "costs one)")
    worker_gpu_memory_gib: list[PositiveFloat] = Field(default_factory=list, description=(
        "GiB of GPU memory of the workers' GPUs (`[80, 24]`): a job whose memory plan exceeds the largest is "
        "refused when it is created, with a 400 naming the setting to change (api/services/memory_check.py); "
        "empty: no check (CPU workers)"))
    max_job_gpus: PositiveInt = Field(1, description=(
        "the most GPUs any worker has (its DORA_GPUS): a job asking for more is refused when it is created, "
        "since no worker would ever take it"))
    max_completion_tokens: PositiveInt = Field(4096, description=(
        "most tokens a chat completion or completion may ask for (`max_tokens`, `max_completion_tokens`); "
        "one that does not say gets up to this many, within the model's context"))
    max_completion_choices: PositiveInt = Field(8, description="most choices (`n`) a completion may ask for")

    @model_validator(mode="after")
    def _check_request_limits(self) -> RequestLimits:
        if not 1 <= self.min_rank <= self.max_rank:
            raise ValueError("DORA_MIN_RANK must be >= 1 and <= DORA_MAX_RANK")
        if self.max_upload_bytes <= 0:
            raise ValueError("DORA_MAX_UPLOAD_BYTES must be positive")
        return self


class TenantQuotas(DoraSettings):
    """Caps per tenant; 0 turns one off. Over a cap the API answers 429 with Retry-After.

    Active jobs, jobs created in the last window and stored bytes are counted in SQL under a lock
    on the tenant's row, so they hold across every API process (api/quotas.py); the request rate
    is a token bucket in each API process (api/rate_limit.py): with P processes a tenant gets up
    to P times this rate in all.
    """

    max_active_jobs_per_tenant: int = Field(20, description="queued + running jobs (a paused one is not counted; "
                                                         "its resume is checked against the cap)")
    max_jobs_created_per_tenant: int = Field(120, description=(
        "jobs a tenant may create per DORA_JOB_CREATION_WINDOW_SECONDS, whatever became of them: a cancelled job "
        "still counts, so a create-then-cancel loop is bounded where the active-jobs cap is not"))
    job_creation_window_seconds: PositiveInt = Field(600, description=(
        "the sliding window DORA_MAX_JOBS_CREATED_PER_TENANT counts over"))
    max_stored_bytes_per_tenant: int = Field(10 * 1024**3, description=(
        "bytes of uploaded files and job results (deleting the model frees its results; checkpoints are not "
        "counted); a job's results may go over it, then uploads are refused"))
    rate_limit_per_minute: int = Field(600, description="the bucket's refill rate: requests per minute")
    rate_limit_burst: int = Field(100, description="the bucket's size: requests a tenant may send at once (>= 1)")
    webhook_max_per_tenant: int = Field(20, ge=0, description="webhooks a tenant may register")
    max_generations_per_tenant: int = Field(16, ge=0, description=(
        "completions a tenant may have running at once in each API process (each choice of `n` counts); one "
        "more is a 429 with Retry-After (0: no bound)"))

    @model_validator(mode="after")
    def _check_tenant_quotas(self) -> TenantQuotas:
        for name in ("max_active_jobs_per_tenant", "max_jobs_created_per_tenant", "max_stored_bytes_per_tenant",
                     "rate_limit_per_minute"):
            if getattr(self, name) < 0:
                raise ValueError(f"DORA_{name.upper()} must be >= 0 (0 turns it off)")
        if self.rate_limit_burst < 1:
            raise ValueError("DORA_RATE_LIMIT_BURST must be at least 1")
        return self


class StreamSettings(DoraSettings):
    """Streamed responses: event streams (`?stream=true`, api/streams.py) and downloads (file content,
    artifact files and archives, api/downloads.py). Neither holds a database connection while it streams;
    what each costs is a slot of its tenant in the API process, bounded here."""

    stream_heartbeat_seconds: float = Field(15.0, gt=0, description="a `: ping` after this many quiet seconds")
    stream_poll_seconds: float = Field(0.5, gt=0, description="how often a stream re-reads SQL where nothing wakes "
                                                              "it (SQLite)")
    max_streams_per_tenant: int = Field(10, ge=0, description="open streams per tenant in each API process "
                                                              "(0: no bound)")
    max_downloads_per_tenant: int = Field(10, ge=0, description=(
        "downloads a tenant may have streaming at once in each API process; one more is a 429 with Retry-After "
        "(0: no bound)"))
    stream_send_timeout_seconds: float = Field(60.0, gt=0, description=(
        "a download whose client takes none of its next 64 KiB, or an event stream whose client takes none of its "
        "next message, for this long is cut (the connection is closed): a stalled client holds its slot no "
        "longer; a download must be read at about 64 KiB per this many seconds or faster"))


class InferenceSettings(DoraSettings):
    """How the API and the inference servers (`dora serve`) find and trust each other: servers
    register in SQL with a heartbeat (store/inference_servers.py), the API forwards to a live one
    with the shared secret."""

    inference_secret: SecretStr | None = Field(None, description=(
        "shared secret the API sends to inference servers, which refuse any request without it (never a "
        "tenant's key); `dora up` makes one for its processes when unset; `dora serve` and completions "
        "need it otherwise (at least 16 characters)"))
    inference_server_ttl_seconds: float = Field(15.0, gt=0, description=(
        "an inference server whose last heartbeat is older than this is no longer sent requests"))
    inference_connect_timeout_seconds: float = Field(5.0, gt=0, description=(
        "the API's wait to connect to an inference server; a server that cannot be reached is dropped and "
        "the request goes to the next one"))
    inference_first_event_timeout_seconds: float = Field(120.0, gt=0, description=(
        "the API's wait for a server to accept a prompt (load the adapter, queue, prefill) before it answers 503"))

    @model_validator(mode="after")
    def _check_inference_settings(self) -> InferenceSettings:
        secret = self.inference_secret
        if secret is not None and len(secret.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"DORA_INFERENCE_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        return self


class AuthSettings(DoraSettings):
    """API keys as the API checks them (`dora keys revoke` reports this delay)."""

    auth_cache_seconds: float = Field(10.0, description=(
        "a valid key's lookup is reused this long, per API process, keyed by the key's sha256: a revoked key "
        "keeps working for at most this many seconds (0: look up every request)"))


# -- webhook targets the operator allows ----------------------------------------------------------
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
EVERY_PORT = ((1, 65535),)
WEB_PORTS = ((80, 80), (443, 443))  # what an allowed network without `:PORTS` opens


def parse_allowed_target(entry: object) -> tuple[Network, tuple[tuple[int, int], ...]]:
    """A DORA_WEBHOOK_ALLOWED_CIDRS entry as (network, port ranges): `127.0.0.1/32:8719`,
    `10.0.0.0/8:8000-8099,9443`, `[::1]:8719`, `::1/128:*`, or a bare network (ports 80 and 443)."""
    if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return entry, WEB_PORTS
    text, ports = str(entry).strip(), None
    if text.startswith("["):  # [IPv6] or [IPv6]/prefix, then :PORTS
        address, closed, rest = text[1:].partition("]")
        prefix, colon, ports = rest.partition(":")
        if not closed or (prefix and not prefix.startswith("/")):
            raise ValueError(f"{text!r} is not NETWORK[:PORTS] (an IPv6 network is written [::1]/128:PORTS)")
        network_text, ports = address + prefix, ports if colon else None
    elif "/" in text:  # the prefix length ends the network, so an IPv6 network needs no brackets
        address, _, rest = text.partition("/")
        prefix, colon, ports = rest.partition(":")
        network_text, ports = f"{address}/{prefix}", ports if colon else None
    elif text.count(":") == 1:  # an IPv4 address and its ports
        network_text, _, ports = text.partition(":")
    else:
        network_text = text
    try:
        network = ipaddress.ip_network(network_text)
    except ValueError as error:
        raise ValueError(f"{text!r}: {error}") from None
    return network, WEB_PORTS if ports is None else _port_ranges(text, ports)


def _port_ranges(entry: str, text: str) -> tuple[tuple[int, int], ...]:
    if text.strip() == "*":
        return EVERY_PORT
    ranges = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"{entry!r}: ports must be a port, a range (8000-8099), a comma list of them, or *")
        first, last = int(low), int(high) if dash else int(low)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"{entry!r}: ports are 1 to 65535, a range low-high")
        ranges.append((first, last))
    return tuple(ranges)


def allowed_target_text(entry: object) -> str:
    """An entry in its canonical form, `NETWORK/PREFIX:PORTS` (a bare network shows its ports 80,443)."""
    network, ranges = parse_allowed_target(entry)
    ports = "*" if ranges == EVERY_PORT else ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
    return f"{network}:{ports}"


AllowedTarget = Annotated[str, BeforeValidator(allowed_target_text)]


class WebhookTargetSettings(DoraSettings):
    """Where webhooks may point: public addresses only, unless the operator allows more. The API
    checks a target when it is registered, the sender again at each attempt (store/webhooks.py)."""

    webhook_allow_private: bool = Field(False, description=(
        "allow every address and every port, private and loopback ones too"))
    webhook_allowed_cidrs: list[AllowedTarget] = Field(default_factory=list, description=(
        "networks and their ports allowed besides public addresses: `NETWORK:PORTS`, PORTS a port, a range or a "
        "comma list of them, or `*` for every port (`[\"10.20.0.0/16:8443\", \"127.0.0.1/32:8719\", "
        "\"::1/128:8719\"]`; `dora up --demo` sets `127.0.0.0/8:8719` and `::1/128:8719`); a network without "
        "`:PORTS` allows ports 80 and 443 only, so allowing a host for its receiver never opens its other "
        "services (Redis, the API, a database)"))


class ApiServerSettings(DoraSettings):
    """The API server itself: where it listens, what it checks at start, who may read /metrics."""

    host: str = Field("127.0.0.1", description="bind address of `dora api` (`0.0.0.0`: every interface)")
    port: int = Field(8000, description="port of `dora api`")
    check_schema_on_startup: bool = Field(True, description=(
        "refuse to start on an outdated database schema (run `dora migrate`)"))
    metrics_token: SecretStr | None = Field(None, description=(
        "/metrics (counts over every tenant) needs `Authorization: Bearer <this token>`, at least "
        f"{MIN_SECRET_LENGTH} characters; unset: /metrics is refused on every address"))
    upload_tmp_dir: str | None = Field(None, description="where uploads are staged while validated; unset: the "
                                                         "system temp folder")

    @model_validator(mode="after")
    def _check_metrics_token(self) -> ApiServerSettings:
        token = self.metrics_token.get_secret_value() if self.metrics_token is not None else None
        if token is not None and len(token) < MIN_SECRET_LENGTH:
            raise ValueError(f"DORA_METRICS_TOKEN must be at least {MIN_SECRET_LENGTH} characters")
        return self


# Shared groups come first and in the same order in every composite (worker/settings.py too),
# so that a union of composites (`dora up`) has a consistent method resolution order.
class ApiSettings(SessionSettings, StorageSettings, LogSettings, BaseModelSettings, EvalSettings, GraderSettings,
                  RequestLimits, TenantQuotas, StreamSettings, AuthSettings, WebhookTargetSettings, ApiServerSettings,
                  InferenceSettings, TrackingSettings):
    """What the API process loads (`dora api`, `create_app`)."""


# The name every module of api/ annotates: the API's settings, as `get_settings()` returns them.
Settings = ApiSettings


@lru_cache
def get_settings() -> ApiSettings:
    """The API process's settings, read once from the environment."""
    return ApiSettings()
