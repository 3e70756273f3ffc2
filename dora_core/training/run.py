"""One fine-tuning run: (base model, dataset, settings) -> adapter, merged model, metrics.

`run_training` is the single function the worker and `dora train` call. It is a short,
hand-written loop (nanoGPT-sized) rather than transformers' Trainer because the service needs
four things Trainer does not give without overriding private methods that differ between
transformers releases: checkpoints holding only the adapter (not the whole model), written
atomically; a data position that is a pure function of the step, so resume is exact; a
micro-batch that can be halved after a CUDA OOM while keeping the same global batches; and a
should-stop check between micro-batches.

A DPO run (config.dpo set) is the same loop with another loss: each micro-batch is B preference
pairs (2B rows), its loss the summed sigmoid DPO loss against the adapter-off reference
(training/dpo.py), a step normalised by its pairs instead of its trained tokens; each pair's
reference sums are computed once and kept (ReferenceCache, keyed by the micro-batch's example
indices); checkpoints, resume, cancel and OOM halving are unchanged. It runs in one process
(DDP's wrapped forward is the next-token loss).

A reinforcement run (config.reinforcement set) is the same loop too: a step first samples
samples_per_prompt answers to each of its prompts from the model itself and grades them, then
takes one update on the GRPO loss over their tokens (training/grpo.py); its evaluations are the
mean reward of greedy answers to validation prompts, written as samples with their rewards.

Order of work: tokenizer and data first (a bad dataset fails in seconds, before the model
loads), then model + adapter, then resume from the newest checkpoint if one exists.
"""

from __future__ import annotations

import functools
import gc
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import get_scheduler

from dora_core.atomic_io import write_json_atomically
from dora_core.data import prepare_datasets
from dora_core.gguf_import import resolve_model_source
from dora_core.inject import apply_adapter
from dora_core.model_loading import (
    base_model_skeleton,
    load_base_model,
    load_tokenizer,
    resolve_device,
    saved_dtype,
)
from dora_core.peft_format import start_from_adapter
from dora_core.reference import hold_reference_adapter
from dora_core.training.callbacks import CallbackList, TrainingCallback
from dora_core.training.checkpoints import (
    RunState,
    list_checkpoints,
    load_checkpoint,
    read_run_state,
    remove_partial_checkpoints,
    rng_state,
    save_checkpoint,
)
from dora_core.training.distributed import Parallelism
from dora_core.training.dpo import DpoSums, ReferenceCache, count_pairs, dpo_sums
from dora_core.training.errors import TrainingError
from dora_core.training.grpo import GroupSampler, grpo_sums, rollout_batch, step_metrics, validation_rewards
from dora_core.training.loss import count_trained_tokens, summed_loss
from dora_core.training.memory import device_memory_bytes, recommended_gradient_checkpointing
from dora_core.training.outputs import (
    MetricsLog,
    finished_outputs,
    remove_partial_outputs,
    write_adapter,
    write_gguf_output,
    write_manifest,
    write_merged,
)
from dora_core.training.samples import SamplesLog, ValidationSamples
from dora_core.training.schedule import BatchSchedule, micro_batches
from dora_core.training.settings import RunConfig
from dora_graders import GradingContext, asks_a_judge

log = logging.getLogger(__name__)
# what a run starting over keeps of metrics.jsonl and samples.jsonl: nothing, not even step 0's
# records (the base model's samples, a reinforcement run's first eval_reward), which it writes again
BEFORE_ANY_STEP = -1


@dataclass
class RunResult:
    status: str  # "completed" | "stopped" (should_stop asked) | "early_stopped" (eval loss stalled)
    step: int
    total_steps: int
    resumed_from_step: int | None
    final_metrics: dict = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def run_training(config: RunConfig, out_dir: str | Path, *, callbacks: list[TrainingCallback] = (),
                 device: str | None = None, resume: bool = True, grading: GradingContext | None = None,
                 reference_cache: bool = True) -> RunResult:
    """Train, checkpoint and write outputs; resume from out_dir/checkpoints when present.

    resume=False starts over: checkpoints and metrics already in out_dir are deleted. `grading`
    lends a reinforcement run's grader a judge and a python sandbox (default: neither).
    reference_cache=False: a DPO run recomputes every pair's reference at every use, for the tests
    and benchmarks/dpo_quality.py that compare the cache with its absence (the same numbers).
    """
    return TrainingRun(config, Path(out_dir), CallbackList(callbacks), device, grading=grading,
                       reference_cache=reference_cache).execute(resume=resume)


def _precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise TrainingError(f"precision {precision} needs a CUDA GPU; use fp32 or auto on {device.type}")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class TrainingRun:
    """The state of one run; each method does one phase."""

    def __init__(self, config: RunConfig, out_dir: Path, callbacks: CallbackList, device: str | None,
                 grading: GradingContext | None = None, reference_cache: bool = True) -> None:
        self.config, self.settings = config, config.training
        self.out_dir = out_dir
        self.device = resolve_device(device)
        # one process: every call a no-op; the strategy (ddp, fsdp) is decided here, once
        self.parallel = Parallelism(self.settings.parallelism, self.device, config.base_model)
        self.callbacks = self.parallel.callbacks(callbacks)  # rank 0 reports; every rank follows its stop
        self.dtype = _precision_dtype(self.settings.precision, self.device)
        self.dpo = config.dpo  # None: supervised fine-tuning
        if self.dpo is not None and self.parallel.world_size > 1:
            raise TrainingError("DPO runs in one process for now: run it without --nproc (a job with gpus: 1)")
        # each pair's reference sums, for the run (not checkpointed: a resumed run recomputes them)
        self.references = ReferenceCache() if self.dpo is not None and reference_cache else None
        self.reinforcement = config.reinforcement  # None: not reinforcement fine-tuning
        self.grading = grading or GradingContext()
        if self.reinforcement is not None and self.parallel.world_size > 1:
            raise TrainingError("reinforcement fine-tuning runs in one process for now: run it without --nproc "
                                "(a job with gpus: 1)")
        if self.reinforcement is not None and self.grading.complete is None \
                and asks_a_judge(self.reinforcement.grader):  # it would reward every answer 0, silently
            raise TrainingError("a score_model or label_model grader needs a judge model, which this run has no "
                                "route to: run it as a job of the service (its worker asks the inference servers)")
        self.checkpoint_dir = out_dir / "checkpoints"
        self.validated: tuple[int | None, dict] = (None, {})  # (step, numbers) of this attempt's latest evaluation
        self.samples_log = SamplesLog(out_dir / "samples.jsonl")
        self.metrics = MetricsLog(out_dir / "metrics.jsonl", companions=(self.samples_log,))
        self.state = RunState(micro_batch_size=self.settings.micro_batch_size,
                              gradient_accumulation_steps=self.settings.gradient_accumulation_steps)

    # -- phases ------------------------------------------------------------------------------
    def execute(self, *, resume: bool) -> RunResult:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prepare_data()
        self.prepare_model()
        resumed_from = self.resume_if_possible() if resume else self.start_over()
        self.callbacks.on_start(total_steps=self.schedule.total_steps, start_step=self.state.step, report=self.report)
        status = self.train_with_oom_retries()
        result = RunResult(status, self.state.step, self.schedule.total_steps, resumed_from, self.final_metrics())
        if status != "stopped":
            self.model = self.parallel.model_for_outputs(self.model, load_plain=self.plain_model_on_cpu)
            if self.parallel.is_main:
                result.outputs = self.write_outputs(result)
        return result

    def prepare_data(self) -> None:
        self.callbacks.heartbeat()
        self.base_dir = resolve_model_source(self.config.base_model)  # a GGUF source is converted once
        self.tokenizer = load_tokenizer(self.base_dir)
        self.data = prepare_datasets(
            self.config.train_file, self.tokenizer, max_seq_len=self.settings.max_seq_len,
            validation_path=self.config.validation_file, validation_split=self.settings.validation_split,
            train_on_inputs=self.settings.train_on_inputs, packing=self.settings.packing, seed=self.settings.seed,
            preference=self.dpo is not None, reinforcement=self.reinforcement is not None,
        )
        self.report = self.data.report
        if self.reinforcement is not None:
            self.sampler = GroupSampler(self.reinforcement, self.tokenizer, self.grading,
                                        max_seq_len=self.settings.max_seq_len)
        self.state.fingerprint = self.config.fingerprint(
            (self.report.get("train_sha256"), self.report.get("validation_sha256")))
        if self.parallel.is_main:
            write_json_atomically(self.out_dir / "dataset_report.json", self.report)
        for warning in self.report.get("warnings", []):
            self.callbacks.on_event(warning, level="warning")

    def prepare_model(self) -> None:
        self.callbacks.heartbeat()
        torch.manual_seed(self.settings.seed)  # adapter init (A) is seeded: same seed, same run
        self.base_dtype = saved_dtype(self.base_dir)  # before loading: the merged model is saved in it
        # Where the base is loaded. FSDP: into host memory, and fully_shard moves only this rank's
        # shard of each block to its GPU, so a model larger than one GPU loads; rank 0 alone reads
        # an unquantized base and the other ranks build it on the meta device and receive their
        # shards (wrap), an NF4 base is loaded by one rank after another (distributed.py's
        # docstring says why), so host memory holds one unquantized copy, not one per rank. An
        # NF4 base on a GPU: into host memory too, each adapted layer quantized on the GPU
        # (apply_adapter's layer_device) and the rest moved after, so the GPU never holds the
        # unquantized weights. Otherwise: onto the device.
        quantization = self.settings.quantization
        sharded = self.parallel.strategy == "fsdp"
        from_rank0 = sharded and quantization == "none"  # fsdp implies several processes
        staged = not sharded and quantization == "nf4" and self.device.type == "cuda"
        host = torch.device("cpu")
        with self.parallel.one_rank_at_a_time(quantization == "nf4"):  # an NF4 load passes through host memory
            if from_rank0 and not self.parallel.is_main:
                self.model = base_model_skeleton(self.base_dir, dtype=self.dtype)
            else:
                self.model = load_base_model(self.base_dir, dtype=self.dtype,
                                             device=host if sharded or staged else self.device)
            apply_adapter(self.model, self.config.adapter, quantization=quantization,
                          layer_device=self.device if staged else None)
            if self.config.init_adapter and not (from_rank0 and not self.parallel.is_main):
                start_from_adapter(self.model, self.config.init_adapter)  # continued training: as trained
        if "gguf" in self.config.outputs:  # refused now rather than after training, when it would fail
            from dora_core.gguf_export import gguf_export_problem

            if problem := gguf_export_problem(self.model.config, self.tokenizer):
                raise TrainingError(f"the gguf output cannot be written for this model: {problem}")
        if staged:
            self.model.to(self.device)  # embeddings, norms, head; the NF4 layers are there already
        if self.settings.quantization == "nf4":
            from dora_core.quantization import quantized_weight_bytes

            held, bf16 = quantized_weight_bytes(self.model)
            self.callbacks.on_event(f"nf4 base: adapted weights hold {held / 2**20:.1f} MiB (bf16: {bf16 / 2**20:.1f})")
        if self.gradient_checkpointing_wanted():
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.callbacks.on_event("gradient checkpointing on")
        self.model.config.use_cache = False
        self.parallel.wrap(self.model, from_rank0=from_rank0)  # DDP or FSDP2
        if from_rank0:
            self.callbacks.on_event(f"fsdp: rank 0 loaded the base and sent {self.parallel.world_size - 1} other "
                                    "rank(s) their shards (host memory holds one copy)")
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.initial_adapter = [p.detach().clone() for p in self.trainable]
        if self.config.init_adapter and (self.dpo is not None or self.reinforcement is not None):
            hold_reference_adapter(self.model, self.initial_adapter)  # the reference: the model it started as
        self.initial_rng = torch.get_rng_state()
        self.build_optimizer()

    def gradient_checkpointing_wanted(self) -> bool:
        setting = self.settings.gradient_checkpointing
        if setting != "auto":
            return setting
        sharding = "fsdp" if self.parallel.strategy == "fsdp" else "none"
        config = self.config
        longest_answer = 0
        if self.dpo is not None:  # a micro-batch of B pairs is 2B sequences
            config = config.with_changes(training=self.settings.with_changes(
                micro_batch_size=2 * self.settings.micro_batch_size))
        if self.reinforcement is not None:  # B prompts are B x G sampled sequences
            config = config.with_changes(training=self.settings.with_changes(
                micro_batch_size=self.reinforcement.samples_per_prompt * self.settings.micro_batch_size))
            longest_answer = self.reinforcement.max_completion_tokens  # capped at max_seq_len below
        on, why = recommended_gradient_checkpointing(
            self.model.config.to_dict(), config, dtype_bytes=self.dtype.itemsize,
            memory_bytes=device_memory_bytes(self.device), processes=self.parallel.world_size, sharding=sharding,
            longest_sequence=min(self.settings.max_seq_len, longest_answer + max(
                len(item[key]) for item in self.data.train for key in ("input_ids", "rejected_input_ids")
                if key in item)))
        self.callbacks.on_event(why)
        return on

    def build_optimizer(self) -> None:
        self.schedule = BatchSchedule(
            dataset_size=len(self.data.train),
            global_batch=self.state.micro_batch_size * self.state.gradient_accumulation_steps,
            epochs=self.settings.epochs, max_steps=self.settings.max_steps, seed=self.settings.seed,
        )
        decay = [p for p in self.trainable if p.ndim >= 2]
        no_decay = [p for p in self.trainable if p.ndim < 2]  # DoRA magnitudes are not decayed
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.settings.learning_rate, fused=self.device.type == "cuda",
        )
        total = self.schedule.total_steps
        self.scheduler = get_scheduler(self.settings.lr_scheduler, self.optimizer,
                                       num_warmup_steps=int(self.settings.warmup_ratio * total),
                                       num_training_steps=total)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def start_over(self) -> None:
        """resume=False: earlier checkpoints and metrics in this folder belong to another run."""
        if self.parallel.is_main:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            self.metrics.truncate_after(BEFORE_ANY_STEP)
        self.parallel.barrier()
        return None

    def resume_if_possible(self) -> int | None:
        if self.parallel.is_main:
            remove_partial_checkpoints(self.checkpoint_dir)
            remove_partial_outputs(self.out_dir)
        self.parallel.barrier()
        checkpoints = list_checkpoints(self.checkpoint_dir)
        if not checkpoints:
            if self.parallel.is_main:
                self.metrics.truncate_after(BEFORE_ANY_STEP)
            return None
        step, path = checkpoints[-1]
        self.restore(path)
        self.callbacks.on_resume(step=step)
        return step

    def restore(self, path: Path) -> None:
        wanted = (self.state.micro_batch_size, self.state.gradient_accumulation_steps, self.state.oom_retries)
        fingerprint = self.state.fingerprint
        if read_run_state(path).fingerprint != fingerprint:
            raise TrainingError(f"{path} was written by a run with another config or dataset; use another output "
                                "folder, or start over (resume=False / dora train --no-resume --overwrite)")
        with self.parallel.whole_state_for_loading(self.model, self.optimizer):  # FSDP: each rank keeps its shard
            self.state = load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                         scaler=self.scaler)
        if self.state.oom_retries < wanted[2]:  # an OOM retry shrank the micro-batch since that checkpoint
            self.state.micro_batch_size, self.state.gradient_accumulation_steps, self.state.oom_retries = wanted
        if self.parallel.is_main:
            self.metrics.truncate_after(self.state.step)

    # -- the loop ----------------------------------------------------------------------------
    def train_with_oom_retries(self) -> str:
        while True:
            try:
                return self.train_steps()
            except torch.OutOfMemoryError:
                self.recover_from_oom()

    def recover_from_oom(self) -> None:
        """Halve the micro-batch, double accumulation (same global batch), go back to the last checkpoint."""
        old = self.state.micro_batch_size
        if self.parallel.world_size > 1:  # the other ranks are inside collectives this rank left
            raise TrainingError(f"CUDA out of memory on rank {self.parallel.rank} of {self.parallel.world_size}: "
                                "use a smaller micro_batch_size or max_seq_len, gradient_checkpointing, or "
                                "training.parallelism: fsdp (micro-batch halving is for one process)") from None
        if old == 1:
            raise TrainingError("CUDA out of memory at micro-batch size 1: use a smaller max_seq_len, "
                                "gradient_checkpointing, or a GPU with more memory") from None
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.state.micro_batch_size //= 2
        self.state.gradient_accumulation_steps *= 2
        self.state.oom_retries += 1
        checkpoints = list_checkpoints(self.checkpoint_dir)
        self.build_optimizer()
        if checkpoints:
            self.restore(checkpoints[-1][1])
        else:
            self.restart_from_initial_state()
        self.callbacks.on_event(
            f"out of memory: micro-batch {old} -> {self.state.micro_batch_size}, gradient accumulation "
            f"-> {self.state.gradient_accumulation_steps}, continuing from step {self.state.step}",
            level="warning", data={"micro_batch_size": self.state.micro_batch_size, "step": self.state.step},
        )

    @torch.no_grad()
    def restart_from_initial_state(self) -> None:
        for parameter, initial in zip(self.trainable, self.initial_adapter, strict=True):
            parameter.copy_(initial)
        torch.set_rng_state(self.initial_rng)
        self.state.step, self.state.best_eval_loss, self.state.evaluations_without_improvement = 0, None, 0
        self.metrics.truncate_after(BEFORE_ANY_STEP)

    def train_steps(self) -> str:
        if self.state.early_stopped:
            return "early_stopped"
        if self.state.step == 0:
            self.write_samples()  # the base model's answers, which each evaluation's are compared with
        self.model.train()
        while self.state.step < self.schedule.total_steps:
            if self.callbacks.should_stop():
                return self.stop(rng=None)  # between steps: the generators are where the next step starts
            step_rng = rng_state()
            metrics = self.optimizer_step()
            if metrics is None:
                return self.stop(rng=step_rng)  # inside a step: as it began, before its micro-batches drew
            self.record(metrics, self.callbacks.on_step)
            if self.evaluation_due() and self.evaluate() == "early_stopped":
                self.state.early_stopped = True
                self.validate_for_checkpoint()  # that evaluation's numbers, as full_eval_*
                self.save_checkpoint()
                return "early_stopped"
            if self.state.step % self.settings.checkpoint_interval == 0 or self.state.step == self.schedule.total_steps:
                self.validate_for_checkpoint()
                self.save_checkpoint()  # the last one lets a crash while writing outputs skip retraining
        if self.data.validation is not None and not self.evaluation_due() and self.validated[0] != self.state.step:
            self.evaluate()
        return "completed"

    def stop(self, *, rng: dict | None) -> str:
        """should_stop ended the run. When the callbacks ask (a worker shutting down), first checkpoint
        the last completed step, so that the next attempt resumes there and loses no step; an
        interrupted step's partial gradients were dropped, and `rng` rewinds the generators to it."""
        checkpoints = list_checkpoints(self.checkpoint_dir)
        saved = checkpoints[-1][0] if checkpoints else 0
        if self.state.step > saved and self.callbacks.checkpoint_on_stop():
            self.save_checkpoint(rng=rng)
        return "stopped"

    def optimizer_step(self) -> dict | None:
        """One update over the global batch; None if should_stop fired between micro-batches."""
        if self.reinforcement is not None:
            return self.reinforcement_step()
        started = time.perf_counter()
        chunks = list(micro_batches(self.schedule.indices(self.state.step), self.state.micro_batch_size))
        batches = [self.data.collator([self.data.train[i] for i in chunk]) for chunk in chunks]
        total_tokens = max(1, sum(count_trained_tokens(batch["labels"]) for batch in batches))
        # what the loss is averaged over: trained tokens (SFT) or preference pairs (DPO)
        total = total_tokens if self.dpo is None else sum(count_pairs(batch) for batch in batches)
        loss_sum, correct, seen_tokens, chosen, rejected = 0.0, 0, 0, 0.0, 0.0
        share = self.parallel.share(list(zip(chunks, batches, strict=True)))  # this rank's ((indices, batch), weight)
        for index, ((chunk, batch), weight) in enumerate(share):
            self.callbacks.on_micro_batch(step=self.state.step + 1, micro_batch_size=self.state.micro_batch_size)
            if self.callbacks.should_stop():
                self.optimizer.zero_grad(set_to_none=True)
                return None
            with self.parallel.gradient_sync(index == len(share) - 1):
                sums = self.micro_batch_sums({k: v.to(self.device) for k, v in batch.items()}, chunk)
                scaled = sums.loss_sum / total * weight
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            if weight:
                loss_sum += float(sums.loss_sum.detach())
                correct += sums.correct
                seen_tokens += int(batch["input_ids"].numel() if "attention_mask" not in batch
                                   else batch["attention_mask"].sum())
                if isinstance(sums, DpoSums):
                    chosen, rejected = chosen + sums.chosen_rewards, rejected + sums.rejected_rewards
        loss_sum, correct, seen_tokens = self.parallel.sum_over_ranks(loss_sum, correct, seen_tokens)
        grad_norm = self.clip_and_step()
        self.state.step += 1
        elapsed = time.perf_counter() - started
        if self.dpo is None:
            quality = {"token_accuracy": correct / total}
        else:
            quality = DpoSums(loss_sum=torch.zeros(()), pairs=total, chosen_rewards=chosen, rejected_rewards=rejected,
                              correct=correct).metrics(total)
        return {"step": self.state.step, "epoch": round(self.schedule.epoch_of(self.state.step), 4),
                "loss": loss_sum / total, **quality,
                "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm, "trained_tokens": total_tokens,
                "tokens_per_second": seen_tokens / elapsed, "micro_batch_size": self.state.micro_batch_size,
                **self.memory_metrics()}

    def reinforcement_step(self) -> dict | None:
        """Sample and grade every prompt's group with the current policy, then one update on the GRPO
        loss normalised by the step's completion tokens (TRL's dapo); None if should_stop fired."""
        started = time.perf_counter()
        chunks = list(micro_batches(self.schedule.indices(self.state.step), self.state.micro_batch_size))
        groups = []
        for chunk in chunks:
            self.callbacks.on_micro_batch(step=self.state.step + 1, micro_batch_size=self.state.micro_batch_size)
            if self.callbacks.should_stop():
                return None
            items = [self.data.train[i] for i in chunk]
            groups.append(self.sampler.rollouts(self.model, items, self.data.train_examples))
            self.callbacks.heartbeat()
        total = max(1, sum(len(r.completion_ids) for rollouts in groups for r in rollouts))
        loss_sum, kl_sum, seen_tokens = 0.0, 0.0, 0
        for rollouts in groups:
            if self.callbacks.should_stop():
                self.optimizer.zero_grad(set_to_none=True)
                return None
            batch = {k: v.to(self.device) for k, v in rollout_batch(rollouts, self.tokenizer.pad_token_id).items()}
            sums = grpo_sums(self.model, batch, beta=self.reinforcement.beta)
            scaled = sums.loss_sum / total
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum, kl_sum = loss_sum + float(sums.loss_sum.detach()), kl_sum + sums.kl_sum
            seen_tokens += int(batch["attention_mask"].sum())
        grad_norm = self.clip_and_step()
        self.state.step += 1
        elapsed = time.perf_counter() - started
        rollouts = [r for group in groups for r in group]
        return {"step": self.state.step, "epoch": round(self.schedule.epoch_of(self.state.step), 4),
                "loss": loss_sum / total,
                **step_metrics(rollouts, self.reinforcement.samples_per_prompt, kl_sum=kl_sum, tokens=total),
                "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm, "trained_tokens": total,
                "tokens_per_second": seen_tokens / elapsed, "micro_batch_size": self.state.micro_batch_size,
                **self.memory_metrics()}

    def micro_batch_sums(self, batch: dict[str, torch.Tensor], indices: list[int]):
        """The micro-batch's summed loss: next-token (LossSums) or DPO over its pairs (DpoSums);
        `indices`: its examples in the training set."""
        if self.dpo is None:
            return self.parallel.summed_loss(self.model, batch)
        return self.dpo_sums(batch, "train", indices)

    def dpo_sums(self, batch: dict[str, torch.Tensor], dataset: str, indices: list[int]) -> DpoSums:
        """DPO over the batch's pairs (`indices` in `dataset`), the reference from the cache when on."""
        reference = None if self.references is None else self.references.logprobs(self.model, batch, dataset, indices)
        return dpo_sums(self.model, batch, beta=self.dpo.beta, reference=reference)

    def clip_and_step(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.settings.max_grad_norm or float("inf")
        grad_norm = self.parallel.clip_grad_norm(self.trainable, max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def memory_metrics(self) -> dict:
        if self.device.type != "cuda":
            return {}
        return {"gpu_memory_allocated_bytes": torch.cuda.memory_allocated(),
                "gpu_memory_peak_bytes": torch.cuda.max_memory_allocated()}

    def evaluation_due(self) -> bool:
        interval = self.settings.eval_interval
        return self.data.validation is not None and interval is not None and self.state.step % interval == 0

    def validate_for_checkpoint(self) -> None:
        """The whole validation set's loss at a checkpoint step, sent as `full_eval_*` (the checkpoint's
        full_valid_* metrics, worker/progress.py): the numbers of an evaluation at this step when one
        ran, else measured now. The last step's is the run's final evaluation (samples too), done
        before its checkpoint. Measured-only ones are not evaluations: not in metrics.jsonl, no samples,
        no early-stopping count, so eval_interval's curve is what it was."""
        if self.data.validation is None or self.reinforcement is not None:
            return
        if self.state.step == self.schedule.total_steps and not self.evaluation_due():
            self.evaluate()  # the final evaluation; its early-stopping verdict does not matter at the last step
        step, measured = self.validated
        if step != self.state.step:
            measured = self.validation_loss()
        self.callbacks.on_evaluate({"step": self.state.step, **{f"full_{k}": v for k, v in measured.items()}})
        self.callbacks.heartbeat()

    @torch.no_grad()
    def evaluate(self) -> str | None:
        """Eval loss and token accuracy (DPO: eval loss and rewards) on the validation set; returns
        "early_stopped" when patience ran out; a reinforcement run's: the validation mean reward."""
        if self.reinforcement is not None:
            self.write_samples()  # measures eval_reward as it samples
            return None
        measured = self.validation_loss()
        self.validated = (self.state.step, measured)
        self.record({"step": self.state.step, **measured}, self.callbacks.on_evaluate)
        self.write_samples()
        return self.update_early_stopping(measured["eval_loss"])

    @torch.no_grad()
    def validation_loss(self) -> dict[str, float]:
        """eval_loss and eval_token_accuracy (DPO: eval_loss and its eval_rewards/*) over the whole
        validation set, every rank's share summed."""
        self.model.eval()
        loss_sum, count, correct, chosen, rejected = 0.0, 0, 0, 0.0, 0.0
        items = self.data.validation
        for start, weight in self.parallel.share(range(0, len(items), self.state.micro_batch_size)):
            self.callbacks.heartbeat()
            stop = min(start + self.state.micro_batch_size, len(items))
            batch = self.data.collator([items[i] for i in range(start, stop)])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            sums = (summed_loss(self.model, batch) if self.dpo is None
                    else self.dpo_sums(batch, "validation", list(range(start, stop))))
            if weight:  # weight 0: a repeat that only keeps the ranks in step
                counted = sums.pairs if isinstance(sums, DpoSums) else sums.tokens
                loss_sum, count, correct = loss_sum + float(sums.loss_sum), count + counted, correct + sums.correct
                if isinstance(sums, DpoSums):
                    chosen, rejected = chosen + sums.chosen_rewards, rejected + sums.rejected_rewards
        loss_sum, count, correct = self.parallel.sum_over_ranks(loss_sum, count, correct)
        self.model.train()
        eval_loss = loss_sum / max(count, 1)
        if self.dpo is None:
            quality = {"eval_token_accuracy": correct / max(count, 1)}
        else:
            quality = DpoSums(loss_sum=torch.zeros(()), pairs=count, chosen_rewards=chosen, rejected_rewards=rejected,
                              correct=correct).metrics(max(count, 1), prefix="eval_")
        return {"eval_loss": eval_loss, **quality}

    @functools.cached_property
    def samples(self) -> ValidationSamples:
        return ValidationSamples(self.data.validation_examples, self.tokenizer, count=self.settings.sample_prompts,
                                 max_seq_len=self.settings.max_seq_len,
                                 max_new_tokens=self.settings.sample_max_new_tokens)

    def write_samples(self) -> None:
        """Greedy answers to the first `sample_prompts` validation prompts, after each evaluation."""
        self.callbacks.heartbeat()
        if self.reinforcement is not None:
            return self.write_reward_samples()
        samples = self.samples.generate(self.model, step=self.state.step, batch_size=self.state.micro_batch_size,
                                        device=self.device)
        if samples and self.parallel.is_main:  # every rank generates (FSDP's forwards gather shards); rank 0 writes
            self.samples_log.write(self.state.step, samples)
            self.callbacks.on_samples(step=self.state.step, samples=samples)
            self.callbacks.heartbeat()

    def write_reward_samples(self) -> None:
        """A reinforcement run's evaluation: greedy answers to the first eval_samples validation prompts,
        their mean reward recorded as eval_reward, the first sample_prompts written as samples with
        their rewards. Step 0's is the model before training (the reward curve's start)."""
        if self.data.validation is None:
            return
        items = [self.data.validation[i] for i in range(min(self.reinforcement.eval_samples,
                                                             len(self.data.validation)))]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            mean, samples = validation_rewards(self.model, self.sampler, items, self.data.validation_examples,
                                               step=self.state.step, batch_size=self.state.micro_batch_size,
                                               sample_count=self.settings.sample_prompts)
        self.record({"step": self.state.step, "eval_reward": mean}, self.callbacks.on_evaluate)
        if samples and self.parallel.is_main:
            self.samples_log.write(self.state.step, samples)
            self.callbacks.on_samples(step=self.state.step, samples=samples)
            self.callbacks.heartbeat()

    def update_early_stopping(self, eval_loss: float) -> str | None:
        best = self.state.best_eval_loss
        if best is None or eval_loss < best:
            self.state.best_eval_loss, self.state.evaluations_without_improvement = eval_loss, 0
            return None
        self.state.evaluations_without_improvement += 1
        patience = self.settings.early_stopping_patience
        if patience and self.state.evaluations_without_improvement >= patience:
            self.callbacks.on_event(f"early stopping at step {self.state.step}: eval loss has not improved on "
                                    f"{best:.4f} for {patience} evaluations")
            return "early_stopped"
        return None

    def record(self, metrics: dict, notify) -> None:
        if self.parallel.is_main:
            self.metrics.append(metrics)
        notify(metrics)
        self.callbacks.heartbeat()

    def save_checkpoint(self, *, rng: dict | None = None) -> None:
        with self.parallel.whole_state_for_saving(self.model, self.optimizer) as optimizer:  # every rank gathers
            if self.parallel.is_main:
                path = save_checkpoint(self.checkpoint_dir, model=self.model, optimizer=optimizer,
                                       scheduler=self.scheduler, scaler=self.scaler, state=self.state,
                                       base_model_name=self.config.public_base_model_id,
                                       keep=self.settings.keep_checkpoints, rng=rng)
                self.callbacks.on_checkpoint(step=self.state.step, path=str(path))

    # -- the end -----------------------------------------------------------------------------
    def plain_model_on_cpu(self):
        """The base model with an untrained adapter, on the CPU: what FSDP's outputs are written from."""
        model = load_base_model(self.config.base_model, dtype=self.dtype, device="cpu")
        with torch.random.fork_rng(devices=[]):
            return apply_adapter(model, self.config.adapter)

    def final_metrics(self) -> dict:
        final: dict = {"steps": self.state.step}
        for record in self.metrics.records():
            final.update({k: record[k] for k in ("loss", "token_accuracy", "eval_loss", "eval_token_accuracy",
                                                 "rewards/accuracies", "eval_rewards/accuracies", "reward",
                                                 "eval_reward") if k in record})
        return final

    def write_outputs(self, result: RunResult) -> dict[str, str]:
        self.callbacks.heartbeat()
        if result.resumed_from_step == result.step:  # nothing trained: a finished run's outputs stay as they are
            kept = finished_outputs(self.out_dir, config=self.config.to_dict(), status=result.status, steps=result.step)
            if kept is not None:
                return kept
        outputs: dict[str, str] = {}
        if "adapter" in self.config.outputs:
            public_id = self.config.public_base_model_id
            outputs["adapter"] = str(write_adapter(self.out_dir, self.model, base_model=public_id))
        if "gguf" in self.config.outputs:  # before merged/, which casts the merged weights to the base's dtype
            self.callbacks.heartbeat()
            outputs["gguf"] = str(write_gguf_output(self.out_dir, self.model, self.tokenizer,
                                                    file_type=self.config.gguf_type))
        if "merged" in self.config.outputs:
            self.callbacks.heartbeat()
            outputs["merged"] = str(write_merged(self.out_dir, self.model, self.tokenizer, dtype=self.base_dtype))
        outputs["metrics"] = str(self.metrics.path)
        outputs["manifest"] = str(write_manifest(
            self.out_dir, config=self.config.to_dict(), status=result.status, seed=self.settings.seed,
            steps=result.step, total_steps=result.total_steps, resumed_from_step=result.resumed_from_step,
            oom_retries=self.state.oom_retries, micro_batch_size=self.state.micro_batch_size,
            dataset={"train_sha256": self.report.get("train_sha256"),
                     "validation_sha256": self.report.get("validation_sha256"),
                     "train_rows": self.report.get("train", {}).get("rows")},
            final_metrics=result.final_metrics, outputs=sorted(outputs),
        ))
        return outputs
