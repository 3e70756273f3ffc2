"""The settings of `dora serve`: where it listens, which base models it holds, how much it batches.

`InferenceServerSettings` is the group only the inference server reads; `ServeSettings` is its
composite with the shared groups of store/settings.py (the database for the registry, the artifact
storage for adapters, the base models and their cache, the shared secret), e.g.
`DORA_SERVE_PORT=8101 DORA_SERVE_BASE_MODELS='["tiny-llama"]' dora serve`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from store.settings import (
    BaseModelSettings,
    DatabaseSettings,
    DoraSettings,
    InferenceSettings,
    LogSettings,
    StorageSettings,
)


class InferenceServerSettings(DoraSettings):
    """One inference server (`dora serve`): its address, the base models it holds and its batch."""

    serve_host: str = Field("127.0.0.1", description="bind address of `dora serve` (`0.0.0.0`: every interface)")
    serve_port: int = Field(8100, ge=1, le=65535, description="port of `dora serve`")
    serve_url: str | None = Field(None, description=(
        "the URL the API reaches this server at, as it registers itself (`http://serve-1:8100` behind a "
        "network); unset: `http://<DORA_SERVE_HOST>:<DORA_SERVE_PORT>` (the loopback for `0.0.0.0`)"))
    serve_base_models: list[str] = Field(default_factory=list, description=(
        "names of DORA_BASE_MODELS this server loads and serves (`[\"tiny-llama\"]`); empty: all of them"))
    serve_device: Literal["auto", "cpu", "cuda"] = Field("auto", description=(
        "where the models run: `auto` is the first CUDA GPU when there is one, else the CPU"))
    serve_max_batch: PositiveInt = Field(16, description=(
        "sequences decoded together in one step per base model; more requests wait in the engine's queue"))
    serve_adapter_slots: int = Field(16, ge=1, description=(
        "adapters held at once per base model (an LRU: an idle one is evicted for a new one); requests for "
        "more distinct adapters at once than this are answered 503 server_busy"))
    serve_max_adapter_rank: PositiveInt = Field(64, description=(
        "highest adapter rank the slots hold (their memory grows with it); a higher-rank adapter is refused"))
    serve_heartbeat_seconds: PositiveFloat = Field(2.0, description=(
        "how often the server renews its row in the registry (keep it well under "
        "DORA_INFERENCE_SERVER_TTL_SECONDS)"))

    @property
    def advertised_url(self) -> str:
        """DORA_SERVE_URL, else the URL of the bound address (every interface: this machine's loopback)."""
        if self.serve_url:
            return self.serve_url.rstrip("/")
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.serve_host, self.serve_host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.serve_port}"


# Shared groups first, in the order of the other composites (store/settings.py): `dora up`'s union
# of every composite needs one consistent method resolution order.
class ServeSettings(DatabaseSettings, StorageSettings, LogSettings, BaseModelSettings, InferenceSettings,
                    InferenceServerSettings):
    """What `dora serve` loads."""

    @model_validator(mode="after")
    def _check_serve_settings(self) -> ServeSettings:
        unknown = sorted(set(self.serve_base_models) - set(self.base_models))
        if unknown:
            raise ValueError(f"DORA_SERVE_BASE_MODELS names {unknown}, which DORA_BASE_MODELS does not register "
                             f"(registered: {sorted(self.base_models)})")
        return self

    def served_models(self) -> list[str]:
        """The names this server holds: DORA_SERVE_BASE_MODELS, or every registered base model."""
        return list(self.serve_base_models) or list(self.base_models)


class MissingSecretError(RuntimeError):
    """`dora serve` without DORA_INFERENCE_SECRET: anyone who reaches its port could generate."""


def require_secret(settings: InferenceSettings) -> bytes:
    """The exact `authorization` header value the API sends; MissingSecretError without a secret."""
    if settings.inference_secret is None:
        raise MissingSecretError(
            "DORA_INFERENCE_SECRET is not set: the inference server accepts requests only from the API, which "
            "sends this shared secret; set the same value (at least 16 characters, e.g. `openssl rand -hex 32`) "
            "for `dora serve` and `dora api` (`dora up` makes one for its own processes)")
    return f"Bearer {settings.inference_secret.get_secret_value()}".encode()


@lru_cache
def get_serve_settings() -> ServeSettings:
    """The inference server's settings, read once from the environment."""
    return ServeSettings()
