"""Optimisation settings of a run. A step is one optimiser update over micro_batch_size x
gradient_accumulation_steps examples (the global batch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from dora_contract.base import ContractModel

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_SEED = 2**31 - 1
# greedy answers to validation prompts at each evaluation: few enough to read, and to generate in seconds
MAX_SAMPLE_PROMPTS = 64
MAX_SAMPLE_NEW_TOKENS = 1024
# the shortest max_seq_len a run may ask for; the memory planner plans no shorter sequence either
MIN_SEQ_LEN = 8


class TrainingSettings(ContractModel):
    """Every default here is the one default: `dora train`, the worker and the API all use it."""

    epochs: StrictFloat = Field(1.0, gt=0, description="passes over the training set (max_steps overrides)")
    max_steps: StrictInt | None = Field(None, ge=1, description="optimiser steps; overrides epochs when set")
    micro_batch_size: StrictInt = Field(4, ge=1, description="examples per forward/backward")
    gradient_accumulation_steps: StrictInt = Field(1, ge=1, le=1024, description="micro-batches per optimiser step")
    learning_rate: StrictFloat = Field(2e-4, gt=0, le=1, description="peak learning rate (AdamW)")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="schedule after warm-up")
    warmup_ratio: StrictFloat = Field(0.03, ge=0, le=1, description="fraction of the steps spent warming up")
    weight_decay: StrictFloat = Field(0.0, ge=0, le=10, description="AdamW weight decay")
    max_grad_norm: StrictFloat | None = Field(1.0, gt=0, description="gradient clipping; null turns it off")
    seed: StrictInt = Field(0, ge=0, le=MAX_SEED, description="seeds init, dropout and data order")
    eval_interval: StrictInt | None = Field(
        None, ge=1, description="steps between evaluations; with a validation set it also runs at the end")
    checkpoint_interval: StrictInt = Field(50, ge=1, description="steps between checkpoints")
    keep_checkpoints: StrictInt = Field(2, ge=1, le=100, description="newest checkpoints kept")
    gradient_checkpointing: Literal["auto"] | StrictBool = Field(
        "auto", description="auto: on when the memory plan of a step without it exceeds the GPU's memory "
        "(the machine's on a CPU; dora_contract/memory_plan.py)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that has it, else fp32")
    quantization: Literal["none", "nf4"] = Field(
        "none", description="nf4: the adapted layers' frozen base weights are stored 4-bit (QLoRA's NF4) "
        "and dequantized one layer at a time (QDoRA/QLoRA); the adapter and the merged model stay full precision")
    early_stopping_patience: StrictInt | None = Field(
        None, ge=1, description="evaluations without eval-loss improvement before stopping")
    max_seq_len: StrictInt = Field(1024, ge=MIN_SEQ_LEN, description="tokens per example; longer ones are truncated")
    train_on_inputs: StrictBool = Field(False, description="false: loss on completion/assistant tokens only")
    packing: StrictBool = Field(False, description="pack several examples into one sequence")
    validation_split: StrictFloat = Field(0.0, ge=0, le=0.5, description="held out from train; or a validation file")
    sample_prompts: StrictInt = Field(
        8, ge=0, le=MAX_SAMPLE_PROMPTS,
        description="at each evaluation, greedy answers to the first this many validation prompts; 0: none")
    sample_max_new_tokens: StrictInt = Field(
        64, ge=1, le=MAX_SAMPLE_NEW_TOKENS, description="tokens generated at most per sample answer")
    parallelism: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="with several processes (dora train --nproc): ddp replicates the model on each, fsdp "
        "shards it (FSDP2); auto: ddp when the base weights take at most half a GPU. Same result either way")
