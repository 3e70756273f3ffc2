"""A whole run: what to train (adapter, training settings, outputs) and on what (model, data).

`RunSettings` is what a job stores (the API knows no local paths); `RunContract` adds the base
model and dataset paths that `dora train` reads from its file and the worker fills in after
downloading.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from dora_contract.adapter import AdapterSettings
from dora_contract.base import ContractModel, distinct
from dora_contract.preference import DpoSettings
from dora_contract.reinforcement import ReinforcementSettings
from dora_contract.training import TrainingSettings

# Every output a run can write; each becomes a downloadable artifact of the same name. gguf is the
# merged model as one GGUF file for llama.cpp and Ollama (dora_contract/architectures.py says for
# which models), left out of the default because it costs another copy of the model.
OUTPUTS = ("adapter", "merged", "gguf")
DEFAULT_OUTPUTS = ("adapter", "merged")
Output = Literal[OUTPUTS]
GGUF_TYPES = ("f16", "bf16", "q8_0")
Outputs = Annotated[tuple[Output, ...], AfterValidator(distinct)]


def check_one_validation_source(*, has_validation_file: bool, validation_split: float) -> None:
    """A run validates on a file or on a split of the training set, not both (ambiguous)."""
    if has_validation_file and validation_split:
        raise PydanticCustomError("conflict", "give a validation file or a validation_split, not both",
                                  {"field": "validation_split"})


class RunSettings(ContractModel):
    adapter: AdapterSettings = Field(default_factory=AdapterSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    outputs: Outputs = Field(DEFAULT_OUTPUTS, description="what the run writes: adapter (PEFT format), merged "
                             "model, gguf (the merged model as model.gguf with an Ollama Modelfile)")
    gguf_type: Literal[GGUF_TYPES] = Field(
        "f16", description="the gguf output's weight type: f16, bf16 or q8_0 (8-bit blocks, about half f16's "
                           "size); norms and biases stay f32")
    dpo: DpoSettings | None = Field(
        None, description="preference tuning: DPO on preference rows, the reference being the model with the "
                          "adapter off; null (the default) is supervised fine-tuning")
    reinforcement: ReinforcementSettings | None = Field(
        None, description="reinforcement fine-tuning: GRPO on prompts, each sampled answer rewarded by a grader; "
                          "null (the default) is supervised fine-tuning")

    @model_validator(mode="after")
    def _dpo_trains_on_pairs(self) -> RunSettings:
        """DPO scores whole completions of unpacked pairs, reinforcement its own sampled answers: packing
        and prompt-token training have no meaning for either."""
        if self.dpo is not None and self.reinforcement is not None:
            raise PydanticCustomError("conflict", "a run is dpo or reinforcement, not both", {"field": "reinforcement"})
        for method, settings in (("DPO", self.dpo), ("reinforcement", self.reinforcement)):
            if settings is None:
                continue
            for name in ("packing", "train_on_inputs"):
                if getattr(self.training, name):
                    raise PydanticCustomError("conflict", f"{method} trains on whole answers, completions only: "
                                              f"{name} must be false", {"field": f"training.{name}"})
        return self


class RunContract(RunSettings):
    """Everything one training run needs; paths are local (the worker downloads first)."""

    base_model: str = Field(min_length=1, pattern=r"\S",
                            description="local folder, hub id (safetensors only), .gguf file or package:<distribution>")
    base_model_id: str | None = Field(
        None, min_length=1,
        description="public id (hub id) an adapter names as its base; null: base_model when it is a hub id, else "
                    "the folder's or file's name (a local path is never written into adapter_config.json)")
    train_file: str = Field(min_length=1, pattern=r"\S", description="JSONL, CSV or Parquet")
    validation_file: str | None = Field(None, description="held-out data; or training.validation_split")
    init_adapter: str | None = Field(
        None, min_length=1, description="folder of a PEFT adapter (adapter_config.json, adapter_model.safetensors) "
        "the adapter starts from, its factors and magnitudes as trained (continued training); it must have this "
        "run's method, rank and target modules; null: a fresh adapter")

    @model_validator(mode="after")
    def _one_validation_source(self) -> RunContract:
        check_one_validation_source(has_validation_file=bool(self.validation_file),
                                    validation_split=self.training.validation_split)
        return self
