"""`/v1/fine_tuning/jobs`: create, list, get, cancel, pause, resume, events, checkpoints, metrics, samples."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Header, Query, Request
from pydantic import WithJsonSchema

from api.deps import JobViewDep, OwnedJobDep, PublisherDep, SessionDep, SettingsDep, StorageDep, TenantDep
from api.errors import bad_request
from api.present import checkpoint_out, event_out, job_out, metric_out, sample_out
from api.schemas.common import MAX_METADATA_VALUE, ListPage
from api.schemas.errors import error_responses
from api.schemas.jobs import (
    CheckpointOut,
    FineTuningJob,
    JobCreate,
    JobEvalScorePage,
    JobEventOut,
    JobSampleOut,
    MetricPage,
)
from api.schemas.params import MAX_STEP, Cursor, Limit, limit_param
from api.services import job_evals
from api.services import jobs as job_service
from api.streams import stream_responses
from store.jobs import JobStatus

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
_METADATA_PARAM = re.compile(r"^metadata\[(.{1,64})\]$")
# documented as the JobStatus enum; checked by the service, whose 400 names the wrong value
StatusFilter = Annotated[str | None, WithJsonSchema({"type": "string", "enum": [s.value for s in JobStatus]})]
# ?stream=true: the list as a text/event-stream instead (api/streams.py)
StreamFlag = Annotated[bool, Query(description="true: a text/event-stream of them as they are written, oldest first")]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=64,
                                           description="With stream=true: resume after this id (what EventSource "
                                                       "sends on a reconnect); wins over `after`")]
MetricsLimit = limit_param(job_service.MAX_METRICS_LIMIT)
StepFilter = Annotated[int | None, Query(ge=0, le=MAX_STEP, description="Only the samples of this step's evaluation")]


def _metadata_filters(query_string: bytes) -> list[tuple[str, str]]:
    """The `metadata...` query parameters, decoded strictly: a name or value that is not UTF-8
    once percent-decoded is a 400 naming it. (Starlette's query_params turn such bytes into
    U+FFFD, a filter that silently matches nothing; stored metadata is valid text.)"""
    filters = []
    for part in query_string.split(b"&"):
        raw_name, _, raw_value = part.replace(b"+", b" ").partition(b"=")
        name_bytes = unquote_to_bytes(raw_name)
        if not name_bytes.startswith(b"metadata"):
            continue
        name = name_bytes.decode("utf-8", "backslashreplace")[:80]
        try:
            filters.append((name_bytes.decode("utf-8"), unquote_to_bytes(raw_value).decode("utf-8")))
        except UnicodeDecodeError as error:
            raise bad_request(f"Invalid metadata filter '{name}': not valid UTF-8 once percent-decoded "
                              f"(byte 0x{error.object[error.start]:02x})", param=name) from None
        if len(filters[-1][1]) > MAX_METADATA_VALUE:  # no stored value is longer: bounded before it reaches SQL
            raise bad_request(f"Invalid metadata filter '{name}': longer than {MAX_METADATA_VALUE} characters, "
                              "which no metadata value is", param=name)
    return filters


def _page(items: list, rows: list, has_more: bool) -> ListPage:
    return ListPage(data=items, has_more=has_more, first_id=rows[0].id if rows else None,
                    last_id=rows[-1].id if rows else None)


@router.post("", response_model=FineTuningJob, responses=error_responses(
    409, 429, d409="The Idempotency-Key was used with another body",
    d429="At the tenant's cap on queued+running jobs (type `insufficient_quota`, code `quota_exceeded`) or its rate"))
def create_job(body: JobCreate, caller: TenantDep, session: SessionDep, settings: SettingsDep,
               publish: PublisherDep, storage: StorageDep,
               idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                                             max_length=255)] = None) -> FineTuningJob:
    """`model` is a base model, or a fine-tuned model or checkpoint of the caller's to train further
    (on its base, from its adapter as trained: api/services/parents.py)."""
    job, created = job_service.create_job(session=session, settings=settings, storage=storage,
                                          tenant_id=caller.tenant_id, tenant_name=caller.tenant_name, request=body,
                                          idempotency_key=idempotency_key)
    if created:
        publish(job.id, job.gpus)  # after the commit; a broker failure leaves the job queued for the reconciler
    return job_out(job)


@router.get("", response_model=ListPage[FineTuningJob])
def list_jobs(request: Request, caller: TenantDep, session: SessionDep, after: Cursor = None,
              limit: Limit = 20, status: StatusFilter = None) -> ListPage[FineTuningJob]:
    metadata = {}
    for name, value in _metadata_filters(request.scope["query_string"]):
        match = _METADATA_PARAM.match(name)
        if match is None:
            raise bad_request(f"Invalid metadata filter '{name[:80]}': use metadata[key]=value", param=name[:80])
        metadata[match.group(1)] = value
    rows, has_more = job_service.list_jobs(session=session, tenant_id=caller.tenant_id, after=after, limit=limit,
                                           status=status, metadata=metadata)
    return _page([job_out(r) for r in rows], rows, has_more)


@router.get("/{job_id}", response_model=FineTuningJob)
async def get_job(job: JobViewDep) -> FineTuningJob:  # no I/O left here: run inline, not in a thread
    return job_out(job)


@router.post("/{job_id}/cancel", response_model=FineTuningJob,
             responses=error_responses(409, d409="The job has already finished"))
def cancel_job(job: OwnedJobDep, session: SessionDep) -> FineTuningJob:
    return job_out(job_service.cancel_job(session=session, job=job))


@router.post("/{job_id}/pause", response_model=FineTuningJob,
             responses=error_responses(400, d400="The job cannot be paused: it ended, is paused or pausing already, "
                                                 "or is being cancelled"))
def pause_job(job: OwnedJobDep, session: SessionDep) -> FineTuningJob:
    """A queued job is paused at once; a running one is asked to pause (`pause_requested`): its
    worker checkpoints at the next step boundary, frees its GPU and the job becomes `paused`."""
    return job_out(job_service.pause_job(session=session, job=job))


@router.post("/{job_id}/resume", response_model=FineTuningJob, responses=error_responses(
    400, 429, d400="The job is not paused", d429="At the tenant's cap on queued+running jobs"))
def resume_job(job: OwnedJobDep, session: SessionDep, settings: SettingsDep, publish: PublisherDep) -> FineTuningJob:
    """Back to `queued`: any worker resumes it from its newest checkpoint."""
    job = job_service.resume_job(session=session, settings=settings, job=job)
    publish(job.id, job.gpus)  # after the commit; a broker failure leaves the job queued for the reconciler
    return job_out(job)


@router.get("/{job_id}/events", response_model=ListPage[JobEventOut], responses=stream_responses("events"))
def list_events(request: Request, job: JobViewDep, caller: TenantDep, session: SessionDep, after: Cursor = None,
                limit: Limit = 20, stream: StreamFlag = False,
                last_event_id: LastEventId = None) -> ListPage[JobEventOut]:
    """Newest first, `after` an event id. With `stream=true`: oldest first, as they are written,
    resuming after the event `Last-Event-ID` or `after` names."""
    if stream:  # JobViewDep, not OwnedJobDep: a stream must not keep the request's session open
        return request.app.state.streams.events(job=job, tenant_id=caller.tenant_id, after=last_event_id or after,
                                                param="Last-Event-ID" if last_event_id else "after")
    rows, has_more = job_service.list_events(session=session, job=job, after=after, limit=limit)
    return _page([event_out(r) for r in rows], rows, has_more)


@router.get("/{job_id}/checkpoints", response_model=ListPage[CheckpointOut])
def list_checkpoints(job: OwnedJobDep, caller: TenantDep, session: SessionDep, after: Cursor = None,
                     limit: Limit = 10) -> ListPage[CheckpointOut]:
    rows, has_more = job_service.list_checkpoints(session=session, job=job, after=after, limit=limit)
    return _page([checkpoint_out(r, job, tenant_name=caller.tenant_name) for r in rows], rows, has_more)


@router.get("/{job_id}/metrics", response_model=MetricPage, responses=stream_responses("metrics"))
def list_metrics(request: Request, job: JobViewDep, caller: TenantDep, session: SessionDep,
                 after: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
                 limit: MetricsLimit = 1000, stream: StreamFlag = False,
                 last_event_id: LastEventId = None) -> MetricPage:
    """Per-step metrics in step order; pass `next_after` back as `after` for the next page. With
    `stream=true`: as they are written, after the step `Last-Event-ID` or `after` names."""
    if stream:
        return request.app.state.streams.metrics(job=job, tenant_id=caller.tenant_id,
                                                 after=last_event_id or after,
                                                 param="Last-Event-ID" if last_event_id else "after")
    rows, has_more = job_service.list_metrics(session=session, job=job, after=after, limit=limit)
    return MetricPage(data=[metric_out(r) for r in rows], has_more=has_more,
                      next_after=rows[-1].step if rows and has_more else None)


@router.get("/{job_id}/samples", response_model=ListPage[JobSampleOut])
def list_samples(job: OwnedJobDep, session: SessionDep, after: Cursor = None, limit: Limit = 20,
                 step: StepFilter = None) -> ListPage[JobSampleOut]:
    """The model's greedy answers to the first validation prompts at each evaluation (run setting
    `sample_prompts`): the newest evaluation first, each in index order; `after` a sample id."""
    rows, has_more = job_service.list_samples(session=session, job=job, after=after, limit=limit, step=step)
    return _page([sample_out(r) for r in rows], rows, has_more)


@router.get("/{job_id}/eval_scores", response_model=JobEvalScorePage)
def list_eval_scores(job: OwnedJobDep, session: SessionDep, limit: MetricsLimit = 1000) -> JobEvalScorePage:
    """The runs of the job's `evals` on each checkpoint and on its fine-tuned model, by step, each with its
    pass rate and each grader's: the score-over-steps curve beside the loss (an addition to OpenAI's API)."""
    rows, has_more = job_evals.scores(session, job=job, limit=limit)
    return JobEvalScorePage(data=rows, has_more=has_more)
