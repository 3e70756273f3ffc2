"""Job specs as earlier releases stored them, for the tests that old rows still load."""

from __future__ import annotations

from api.present import openai_hyperparameters
from dora_contract import RunSettings


def version_0(spec: dict, *, model: str = "tiny-llama") -> dict:
    """A version 1 spec (its JSON dump) as the API stored the same job before the spec was typed
    (api/services/jobs.py and methods.py then): run_config, the outputs a second time at the top
    level, the OpenAI hyperparameters, and base_model {name, path, public_id}."""
    run = RunSettings.from_data(spec["run"])
    return {"run_config": spec["run"], "outputs": list(run.outputs),
            "openai_hyperparameters": openai_hyperparameters(run),
            "base_model": {"name": model, "path": spec["base_model"]["source"],
                           "public_id": spec["base_model"]["public_id"]},
            "training_file": spec["training_file"], "validation_file": spec["validation_file"]}
