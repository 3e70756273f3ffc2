"""Model graders' judges (score_model, label_model), as the eval executor and the training worker ask them.

A judge is a model id the grader names (a registered base, an `ft:` model, a checkpoint), resolved
once per id for one tenant (store/served_models.py, the API's resolution: another tenant's model is
not found) and completed by the inference servers (store/inference_client.py), never by a model
loaded here. A completion no server can take now (none running, busy, lost) is tried again for a
bounded wait (`generate_waiting`), then is a `ServerWaitError`; a 4xx refusal (a prompt too long for
the judge) is raised as it is, the request's own fault. What a judge that cannot answer means is
each caller's: the eval executor errors the criterion and goes on (worker/eval_run.py), the
training worker fails the reinforcement run (worker/training_judge.py). Torch-free: `dora evals`
imports it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dora_contract.serving import ChatMessage, GenerationRequest, SamplingParams
from store.db import session_scope
from store.inference_client import (
    Collected,
    GenerationRefusedError,
    InferenceClient,
    InferenceError,
    InferenceNotConfiguredError,
)
from store.served_models import (
    MalformedModelIdError,
    ModelNotFoundError,
    ModelNotServableError,
    ServedModel,
    resolve_model,
)
from store.storage import Storage
from worker.database import Backoff

RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.5, 5.0
# what resolve_model raises for a model id this tenant cannot be served (remembered like a resolution)
UNSERVABLE = (ModelNotFoundError, MalformedModelIdError, ModelNotServableError)

# generate(request, route_key) -> every choice of the completion; how a caller sends it (and waits)
Generate = Callable[[GenerationRequest, str], Collected]


class ServerWaitError(Exception):
    """No inference server took the completion within the wait, or completions are not configured here."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def generate_waiting(client: InferenceClient, request: GenerationRequest, route_key: str, *, wait_seconds: float,
                     give_up: Callable[[], bool] = lambda: False) -> Collected:
    """The completion, tried again while no server can take it, for `wait_seconds` (sooner once `give_up()`)."""
    backoff, since = Backoff(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS), None
    while True:
        try:
            return client.generate(request, route_key=route_key)
        except InferenceNotConfiguredError as error:
            raise ServerWaitError(error.code, str(error)) from None
        except GenerationRefusedError as refused:
            if refused.client_error:
                raise
            error = refused
        except InferenceError as failure:  # no server, lost, timed out: another may come
            error = failure
        since = since or time.monotonic()
        waited = time.monotonic() - since
        if waited >= wait_seconds or give_up():
            raise ServerWaitError(error.code, f"{error} (waited {waited:.0f} s for an inference server)")
        time.sleep(backoff.next())


class JudgeModels:
    """The judges of one run or job: each model id resolved once for its tenant, then completed by `generate`.

    `settings` holds the database and DORA_BASE_MODELS (the registered names a base judge may be);
    `max_tokens_default` bounds a judge call whose grader sets no max_completions_tokens (None: what
    the judge model's context leaves). Thread-safe: the eval executor grades items in threads."""

    def __init__(self, settings: Any, storage: Storage, *, tenant_id: str, tenant_name: str, generate: Generate,
                 max_tokens_default: int | None) -> None:
        self.settings, self.storage, self.generate = settings, storage, generate
        self.tenant_id, self.tenant_name, self.max_tokens_default = tenant_id, tenant_name, max_tokens_default
        self._known: dict[str, ServedModel | Exception] = {}
        self._lock = threading.Lock()

    def resolve(self, model: str) -> ServedModel:
        """The judge's base and adapter; raises (each time, once known) what resolve_model raised."""
        with self._lock:
            if model not in self._known:
                try:
                    with session_scope(self.settings) as session:
                        self._known[model] = resolve_model(
                            session, self.storage, base_models=self.settings.base_models, model=model,
                            tenant_id=self.tenant_id, tenant_name=self.tenant_name)
                except UNSERVABLE as error:
                    self._known[model] = error
            known = self._known[model]
        if isinstance(known, Exception):
            raise known
        return known

    def remember(self, model: str, failure: Exception) -> None:
        """From now on asking `model` raises `failure` at once (a judge no server held for the whole wait)."""
        with self._lock:
            self._known[model] = failure

    def complete(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> Collected:
        """One judge chat: `params` is dora_graders' sampling {max_tokens, temperature, top_p, seed}."""
        served = self.resolve(model)
        request = GenerationRequest(base_model=served.base_model, adapter=served.adapter,
                                    messages=[ChatMessage(**message) for message in messages],
                                    sampling=SamplingParams(**params, max_tokens_default=self.max_tokens_default))
        return self.generate(request, served.route_key)
