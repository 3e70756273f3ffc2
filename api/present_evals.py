"""How eval rows are shown: ORM rows -> the objects of OpenAI's Evals API (api/schemas/evals.py).

A run's stored data source carries the model the API resolved for the executor (RESOLVED_KEY): it is
not shown. An output item's `sample` is what the executor stored, completed to OpenAI's shape (every
field present; an absent error is an empty code and message, as a run's).
"""

from __future__ import annotations

from typing import Any

from api.present import ts
from api.schemas.evals import EvalObject, EvalRunObject, OutputItemObject
from store.eval_execution import RESOLVED_KEY
from store.models import Eval, EvalOutputItem, EvalRun

NO_ERROR = {"code": "", "message": ""}


def report_url(run: EvalRun) -> str:
    """The dashboard's page of the run (a path on this server)."""
    return f"/ui/#/evals/{run.eval_id}/runs/{run.id}"


def eval_out(row: Eval) -> EvalObject:
    return EvalObject(id=row.id, created_at=ts(row.created_at), name=row.name or "", metadata=row.meta,
                      data_source_config=row.data_source_config, testing_criteria=list(row.testing_criteria))


def _error(error: dict[str, Any] | None) -> dict[str, str]:
    if not error:
        return dict(NO_ERROR)
    return {"code": str(error.get("code") or "error"), "message": str(error.get("message") or "")}


def run_out(run: EvalRun) -> EvalRunObject:
    counts = {"total": 0, "passed": 0, "failed": 0, "errored": 0, **(run.result_counts or {})}
    return EvalRunObject(
        id=run.id, eval_id=run.eval_id, created_at=ts(run.created_at), name=run.name or "", status=run.status,
        model=run.model or "", data_source={k: v for k, v in (run.data_source or {}).items() if k != RESOLVED_KEY},
        error=_error(run.error), metadata=run.meta, report_url=report_url(run), result_counts=counts,
        per_testing_criteria_results=list(run.per_testing_criteria_results or []),
        per_model_usage=list(run.per_model_usage or []), cancel_requested=run.cancel_requested,
        started_at=ts(run.started_at), finished_at=ts(run.finished_at))


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        return []
    return [{"role": str(m.get("role") or ""), "content": "" if m.get("content") is None else str(m["content"])}
            for m in value if isinstance(m, dict)]


def sample_out(sample: dict[str, Any] | None) -> dict[str, Any]:
    sample = sample or {}
    usage = sample.get("usage") or {}
    return {
        "input": _messages(sample.get("input")), "output": _messages(sample.get("output")),
        "finish_reason": str(sample.get("finish_reason") or ""), "model": str(sample.get("model") or ""),
        "usage": {key: int(usage.get(key) or 0) for key in ("prompt_tokens", "completion_tokens", "total_tokens",
                                                            "cached_tokens")},
        "error": _error(sample.get("error")),
        "temperature": float(sample.get("temperature") if sample.get("temperature") is not None else 1.0),
        "max_completion_tokens": int(sample.get("max_completion_tokens") or 0),
        "top_p": float(sample.get("top_p") if sample.get("top_p") is not None else 1.0),
        "seed": int(sample.get("seed") or 0),
    }


def output_item_out(row: EvalOutputItem) -> OutputItemObject:
    return OutputItemObject(id=row.id, eval_id=row.eval_id, run_id=row.run_id, created_at=ts(row.created_at),
                            status=row.status, datasource_item_id=row.datasource_item_id,
                            datasource_item=row.datasource_item, results=list(row.results or []),
                            sample=sample_out(row.sample))
