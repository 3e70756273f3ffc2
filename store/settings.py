"""The one settings object of the service, read from `DORA_*` environment variables.

Every process (API, worker, CLI) builds the same `Settings`, so a deployment is configured in
one place. Complex values (the base-model mapping) are JSON in the environment, e.g.
`DORA_BASE_MODELS='{"tiny-llama": "./var/models/tiny-llama"}'`.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, IPvAnyNetwork, PositiveFloat, PositiveInt, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.base_models import Registration

# a guessable operator token would open /metrics: e.g. `openssl rand -hex 32`
MIN_METRICS_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DORA_", env_file=".env", extra="ignore")

    # where things live
    database_url: str = "sqlite:///./var/dora.db"
    broker_url: str = "sqla+sqlite:///./var/broker.db"
    storage_url: str = "./var/artifacts"  # a folder, file:///abs/path or s3://bucket/prefix
    s3_endpoint_url: str | None = None  # MinIO / other S3-compatible endpoints
    s3_region: str | None = None  # else boto3's default (AWS_DEFAULT_REGION); credentials: boto3's chain

    # database pool (PostgreSQL); sized for the API's thread pool
    db_pool_size: int = 20
    db_max_overflow: int = 20
    # ping each pooled connection as it is checked out, so one broken by a PostgreSQL restart or
    # failover is replaced before a request uses it (no 500). Costs one round trip per checkout:
    # under 0.1 ms of server CPU per GET measured in-process, below the run-to-run noise of
    # benchmarks/api_load.py; turn it off only for a database that never restarts under the API.
    db_pool_pre_ping: bool = True
    # Give up on the database in seconds, not minutes: a request then answers 503 (Retry-After)
    # instead of hanging. connect: TCP + authentication of a new connection; statement: the
    # server cancels a statement running longer; pool: waiting for a free pooled connection.
    db_connect_timeout_seconds: int = 5
    db_statement_timeout_seconds: float = 30.0
    db_pool_timeout_seconds: float = 5.0

    # what users may ask for. A run's defaults are the run contract's (dora_contract); these are
    # the operator's limits on top of it (api/services/limits.py).
    # name -> source (local folder, hub id, .gguf file, package:<distribution>) or
    # {"source": ..., "public_id": <hub id>}: store/base_models.py
    base_models: dict[str, Registration] = Field(default_factory=dict)
    # where GGUF base models are converted to safetensors once (dora_core/gguf_import.py); unset:
    # dora_core's default, ~/.cache/dora-tuner/models
    model_cache_dir: str | None = None
    max_upload_bytes: int = 512 * 1024 * 1024
    max_json_body_bytes: int = 1024 * 1024  # every request body but an upload (api/body_limit.py)
    min_rank: int = 1
    max_rank: int = 256
    max_epochs: int = 100
    max_steps_limit: int = 1_000_000
    max_seq_len_limit: int = 32768
    max_batch_size: int = 1024
    default_max_attempts: int = 3
    # GiB of GPU memory of the workers' GPUs (JSON: '[80, 24]'). A job whose memory plan
    # (dora_contract/memory_plan.py) exceeds the largest is refused when it is created, with a 400
    # naming the setting to change (api/services/memory_check.py); empty: no check (CPU workers)
    worker_gpu_memory_gib: list[PositiveFloat] = Field(default_factory=list)
    # the most GPUs any worker has (its DORA_GPUS): a job asking for more is refused when it is
    # created (400 naming `gpus`), since no worker would ever take it from its queue
    max_job_gpus: PositiveInt = 1

    # per-tenant caps; 0 turns one off. Over a cap the API answers 429 with Retry-After (README,
    # "Limits per tenant"). Active jobs and stored bytes are counted in SQL under a lock on the
    # tenant's row, so they hold across every API process (api/quotas.py); the request rate is a
    # token bucket in each API process (api/rate_limit.py): with P processes a tenant gets up to
    # P times this rate in all.
    max_active_jobs_per_tenant: int = 20  # queued + running
    max_stored_bytes_per_tenant: int = 10 * 1024**3  # uploaded files (job outputs are not counted)
    rate_limit_per_minute: int = 600  # the bucket's refill rate: requests per minute, per tenant
    rate_limit_burst: int = 100  # the bucket's size: requests a tenant may send at once

    # job leases (the worker heartbeats well inside this)
    lease_seconds: int = 120

    # webhooks (store/webhooks.py; `dora webhooks` sends them): a failed delivery is tried again
    # after each of these delays in turn (about 22 h in all), then marked failed. Targets must
    # resolve to public addresses, unless the operator allows more: webhook_allow_private (any
    # address), or the networks in webhook_allowed_cidrs (JSON: '["127.0.0.0/8", "::1/128"]',
    # which `dora up --demo` sets). 0 webhooks per tenant turns the cap off.
    webhook_max_per_tenant: int = Field(default=20, ge=0)
    webhook_retry_schedule_seconds: list[PositiveFloat] = Field(
        default_factory=lambda: [5, 30, 120, 600, 3600, 3 * 3600, 6 * 3600, 12 * 3600], min_length=1)
    webhook_timeout_seconds: PositiveFloat = 10.0  # one attempt, from connecting to the response
    webhook_allow_private: bool = False
    webhook_allowed_cidrs: list[IPvAnyNetwork] = Field(default_factory=list)
    webhook_sweep_interval_seconds: PositiveFloat = 5.0  # publish due deliveries (retries, lost messages)
    webhook_republish_after_seconds: PositiveFloat = 60.0  # published, not attempted by then: again
    webhook_concurrency: int = Field(default=8, ge=1)  # attempts at once in one `dora webhooks`

    # API server
    host: str = "127.0.0.1"
    port: int = 8000
    check_schema_on_startup: bool = True
    # a valid key's lookup is reused this long, per API process, keyed by the key's sha256: a
    # revoked key keeps working for at most this many seconds (0 = look up every request)
    auth_cache_seconds: float = 10.0
    # /metrics (counts over every tenant) is for the operator: it needs `Authorization: Bearer
    # <this token>`; unset, /metrics is refused on every address (api/routes/health.py)
    metrics_token: SecretStr | None = None
    upload_tmp_dir: str | None = None  # where uploads are staged while validated (system temp)
    # event streams (`?stream=true`, api/streams.py): a `: ping` after this many quiet seconds; how
    # often a stream re-reads SQL where nothing wakes it (SQLite); open streams per tenant in each
    # API process (0: no bound)
    stream_heartbeat_seconds: float = Field(15.0, gt=0)
    stream_poll_seconds: float = Field(0.5, gt=0)
    max_streams_per_tenant: int = Field(10, ge=0)
    log_level: str = "info"

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if not 1 <= self.min_rank <= self.max_rank:
            raise ValueError("DORA_MIN_RANK must be >= 1 and <= DORA_MAX_RANK")
        if self.max_upload_bytes <= 0:
            raise ValueError("DORA_MAX_UPLOAD_BYTES must be positive")
        caps = ("max_active_jobs_per_tenant", "max_stored_bytes_per_tenant", "rate_limit_per_minute")
        for name in caps:
            if getattr(self, name) < 0:
                raise ValueError(f"DORA_{name.upper()} must be >= 0 (0 turns it off)")
        if self.rate_limit_burst < 1:
            raise ValueError("DORA_RATE_LIMIT_BURST must be at least 1")
        token = self.metrics_token.get_secret_value() if self.metrics_token is not None else None
        if token is not None and len(token) < MIN_METRICS_TOKEN_LENGTH:
            raise ValueError(f"DORA_METRICS_TOKEN must be at least {MIN_METRICS_TOKEN_LENGTH} characters")
        return self


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
