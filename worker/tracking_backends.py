"""The clients worker/tracking.py delivers through: the real `wandb` and `mlflow` libraries.

Each is created on the worker with the operator's server settings (TrackingSettings) and the
tenant's integration block; `wandb`/`mlflow` are imported on the sink's thread, only for a job
that names them (the optional `tracking` extra). The run is keyed by the job id, so an attempt
that resumes the job logs to the same run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from dora_contract.integrations import Integration, MlflowIntegration, WandbIntegration
from store.settings import TrackingSettings

SAMPLE_COLUMNS = ("step", "index", "prompt", "expected", "answer")
MLFLOW_BATCH = 1000  # MLflow's most metrics in one log_batch
MLFLOW_PARAMS = 100  # and params
MLFLOW_PARAM_LENGTH = 6000


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"training": {"epochs": 3}} -> {"training.epochs": 3} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


class WandbBackend:
    label = "W&B"

    def __init__(self, block: WandbIntegration, settings: TrackingSettings, *, job_id: str, base_model: str,
                 config: dict) -> None:
        self.block, self.settings, self.config = block, settings, config
        self.job_id, self.base_model = job_id, base_model
        self.run = None

    def start(self) -> None:
        import wandb

        os.makedirs(self.settings.wandb_dir, exist_ok=True)
        options: dict[str, Any] = {"console": "off", "silent": True, "x_disable_stats": True,
                                   "init_timeout": self.settings.tracking_timeout_seconds * 3}
        if self.settings.wandb_base_url:
            options["base_url"] = self.settings.wandb_base_url
        if self.settings.wandb_api_key is not None:
            options["api_key"] = self.settings.wandb_api_key.get_secret_value()
        tags = ["dora/finetune", f"dora/{self.base_model}"[:64], f"dora/{self.job_id}"[:64], *self.block.tags]
        self.run = wandb.init(project=self.block.project, entity=self.block.entity, name=self.block.name or self.job_id,
                              id=self.job_id, resume="allow", tags=tags, config=self.config,
                              dir=self.settings.wandb_dir, mode=self.settings.wandb_mode,
                              settings=wandb.Settings(**options), reinit="create_new")

    def log_metrics(self, points: list[tuple[int, dict]]) -> None:
        for step, values in points:
            self.run.log(values, step=step)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        import wandb

        rows = [[step, s.get("index"), s.get("prompt"), s.get("expected"), s.get("answer")] for s in samples]
        self.run.log({"samples": wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


class MlflowBackend:
    label = "MLflow"

    def __init__(self, block: MlflowIntegration, settings: TrackingSettings, *, job_id: str, base_model: str,
                 config: dict) -> None:
        self.block, self.settings, self.config = block, settings, config
        self.job_id, self.base_model = job_id, base_model
        self.client = self.run_id = None

    def start(self) -> None:
        # the sink retries with its own pauses: MLflow's client must fail fast, not back off for minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, self.settings.tracking_timeout_seconds))))
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)
        experiment = self.client.get_experiment_by_name(self.block.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.block.experiment))
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`dora.job_id` = '{self.job_id}'",
                                        max_results=1)
        if found:  # a resumed attempt: the same run
            self.run_id = found[0].info.run_id
            return
        run = self.client.create_run(experiment_id, run_name=self.block.run_name or self.job_id,
                                     tags={"dora.job_id": self.job_id, "dora.base_model": self.base_model})
        params = [Param(key, json.dumps(value) if not isinstance(value, str) else value)
                  for key, value in flat(self.config).items()]
        params = [Param(p.key, p.value[:MLFLOW_PARAM_LENGTH]) for p in params]
        for start in range(0, len(params), MLFLOW_PARAMS):
            self.client.log_batch(run.info.run_id, params=params[start:start + MLFLOW_PARAMS])
        self.client.log_dict(run.info.run_id, self.config, "config.json")
        self.run_id = run.info.run_id

    def log_metrics(self, points: list[tuple[int, dict]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for step, values in points for name, value in values.items()]
        for start in range(0, len(metrics), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + MLFLOW_BATCH])

    def log_samples(self, step: int, samples: list[dict]) -> None:
        self.client.log_dict(self.run_id, samples, f"samples/step-{step:06d}.json")

    def finish(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id)


def backend_for(integration: Integration, settings: TrackingSettings, **job: Any):
    """The client of one integration block (`job`: job_id, base_model, config)."""
    if integration.type == "wandb":
        return WandbBackend(integration.wandb, settings, **job)
    return MlflowBackend(integration.mlflow, settings, **job)
