"""A reinforcement job's judge: what the training worker lends its grader's score_model and label_model.

The judge's model is resolved for the job's tenant only (another tenant's `ft:` model is not found),
once per model id per job, and asked through the inference servers as `dora evals` asks them
(worker/judges.py): never a model loaded in the training process, whose GPU holds the model being
trained. One judge call per graded answer, from the training loop's thread; a call whose grader
sets no max_completions_tokens gets what the judge's context leaves (the worker has no
DORA_MAX_COMPLETION_TOKENS: set the grader's sampling_params to bound it).

A judge that cannot answer fails the job rather than train on rewards of 0 it did not give: the
error is a JudgeUnavailableError (dora_graders), which leaves the grading and the training loop.
- Its model no longer resolves for the tenant (deleted since the job was created, its base
  unregistered), or no inference server took the call for DORA_JUDGE_SERVER_WAIT_SECONDS (none
  running for its base, busy, lost; or DORA_INFERENCE_SECRET unset on the worker): a TrainingError
  naming the judge model, so the job fails at once (worker/failures.py), not retried.
- The database failed under the lookup: not a TrainingError, so the attempt is retried.
A judge that refuses one call (a 4xx: the rendered prompt too long for its context) grades that one
answer `model_grader_server_error`, a reward of 0, as any grading failure of one sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dora_core.training.errors import TrainingError
from dora_graders import JudgeReply, JudgeUnavailableError
from store.db import session_factory
from store.inference_client import Collected, GenerationRefusedError, InferenceClient
from store.models import Job, Tenant
from store.storage import Storage
from worker.judges import UNSERVABLE, JudgeModels, ServerWaitError, generate_waiting
from worker.settings import WorkerSettings


def tenant_name(session: Session, *, job_id: str) -> str:
    """The job's tenant's name: an `ft:` judge's id holds it (store/served_models.py parse_ft_name)."""
    return session.scalars(select(Tenant.name).join(Job, Job.tenant_id == Tenant.id).where(Job.id == job_id)).one()


class JudgeFailedError(TrainingError, JudgeUnavailableError):
    """The grader's judge cannot answer (its model, or a server for it): the job fails with this message."""


class TrainingJudge:
    """`complete(model, messages, sampling) -> JudgeReply` for dora_graders' GradingContext; close() after."""

    def __init__(self, settings: WorkerSettings, storage: Storage, *, tenant_id: str, tenant_name: str,
                 give_up: Callable[[], bool] = lambda: False) -> None:
        self.settings, self.give_up = settings, give_up
        self.client = InferenceClient(settings, session_factory(settings), connections=1)  # one call at a time
        self.models = JudgeModels(settings, storage, tenant_id=tenant_id, tenant_name=tenant_name,
                                  generate=self._generate, max_tokens_default=None)

    def close(self) -> None:
        self.client.close()

    def _generate(self, request, route_key: str) -> Collected:
        return generate_waiting(self.client, request, route_key, wait_seconds=self.settings.judge_server_wait_seconds,
                                give_up=self.give_up)

    def __call__(self, model: str, messages: list[dict[str, str]], sampling: dict[str, Any]) -> JudgeReply:
        try:
            collected = self.models.complete(model, messages, sampling)
        except GenerationRefusedError:  # a 4xx for this call's prompt: this answer's grading error
            raise
        except UNSERVABLE as error:
            raise JudgeFailedError(f"the grader's judge model '{model}' cannot be used: {error}") from None
        except ServerWaitError as error:  # none for the whole wait, or DORA_INFERENCE_SECRET unset here
            raise JudgeFailedError(f"the grader's judge model '{model}' did not answer: {error.message}") from None
        except Exception as error:  # the database under the lookup: the attempt is retried
            raise JudgeUnavailableError(f"the grader's judge model '{model}' could not be asked: "
                                        f"{type(error).__name__}: {error}") from error
        return JudgeReply(text=collected.texts[0], total_tokens=collected.usage["total_tokens"])
