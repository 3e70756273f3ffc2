"""One run over several processes on one host: torch.distributed data parallelism for the loop in run.py.

Why the loop stays the single-process loop. Every rank builds the step's whole global batch (the
data position is still a pure function of the step) and takes the micro-batches i with
i % world_size == rank; the loss is still normalised by the trained tokens of the whole global
batch, which every rank counts from the batches it built (no collective needed for it). The
gradients of the ranks' shares are then summed, so the update is the single-process update up to
the order of the fp32 sums: DDP and FSDP2 average over ranks, so each rank's loss is multiplied
by world_size first (exact for 2, 4, 8 processes). A rank whose share is short (the step has
fewer micro-batches than a multiple of world_size) runs a micro-batch of weight 0, because every
rank must run the same forwards and backwards: FSDP2 gathers parameters in each forward.

Two ways to spread the model (`training.parallelism`):
  ddp   torch's DistributedDataParallel: every rank holds the whole model, the adapter gradients
        are all-reduced in buckets during the backward of the step's last micro-batch (no_sync
        before it). The default whenever the model fits one device.
  fsdp  FSDP2 (`fully_shard`) on every transformer block: a block's base weights and its adapters'
        lora_A, lora_B and magnitude are sharded together (FSDP2 shards parameter by parameter,
        so the DoRA magnitude, a bare Parameter of AdapterLinear, needs no module of its own as
        PEFT's did for FSDP1, peft #1737), gathered for the block's forward and again for its
        backward; gradients are reduce-scattered. Embeddings, the final norm and the head are
        frozen and stay whole on every rank. The block's forward is where AdapterLinear reads
        its parameters, so they are always whole there.

Loading the base without one host copy per rank. With fsdp and an unquantized base, rank 0 alone
reads the weights into host memory; the other ranks build the model on the meta device (shapes,
no storage), shard it the same way, materialise only their shards and receive them from rank 0
one tensor at a time (torchtune and Answer.AI's FSDP+QDoRA do the same), so host memory holds one
copy of the model whatever the number of ranks. An NF4 base is quantized as it loads, and a
quantized weight's FSDP shard is not a plain slice of anything rank 0 could send, so with several
ranks each loads and quantizes its own copy, one rank at a time: host memory holds one
unquantized copy plus the quantized ones (about a quarter each).

Rank 0 alone writes (metrics, checkpoints, outputs, dataset report) and reports through the
callbacks; the other ranks get no callbacks but follow rank 0's should_stop and
checkpoint_on_stop answers, broadcast at the same points of the loop, so a cancel ends every
rank at the same micro-batch. Checkpoints are gathered whole (adapter and optimizer state, in the
single-process format), so a run resumes with any number of processes.

Launching: `launch` starts the ranks as child processes of the caller with torch's elastic
launcher (what `torchrun --standalone` runs), one host only. A multi-host run would give every
host the same rendezvous (`rdzv_backend="c10d"`, `rdzv_endpoint=<host0>:29400`, one run id,
nnodes=N); it is refused for now because the output folder and checkpoints are local files that
only rank 0's host would have. run_training in each rank is processes.py's `train_in_processes`:
run.py imports this module, so this one never imports run.py.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dora_contract.memory_plan import auto_sharding
from dora_core.layers import AdapterLinear
from dora_core.training.callbacks import CallbackList
from dora_core.training.errors import TrainingError
from dora_core.training.loss import LossSums, summed_loss

ADAPTER_PARAMETERS = ("lora_A", "lora_B", "lora_magnitude_vector")


class MultiHostError(ValueError):
    """A run asked for more than one host; the message says why it is refused."""


def launch(nproc: int, entrypoint: Callable[..., Any], *args: Any, nnodes: int = 1) -> dict[int, Any]:
    """Run entrypoint(*args) in `nproc` processes of this host (ranks 0..nproc-1, with RANK,
    LOCAL_RANK, WORLD_SIZE and the rendezvous in their environment); returns {rank: return value}.
    A rank that raises ends the others (the launcher stops them) and raises ChildFailedError here."""
    if nnodes != 1:
        raise MultiHostError(f"{nnodes} hosts: multi-host runs are not supported yet (outputs and checkpoints are "
                             "local files of rank 0's host); run on one host with up to as many processes as GPUs")
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"dora-{uuid.uuid4().hex[:12]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          start_method="spawn")
    return elastic_launch(config, entrypoint)(*args)


def die_with_parent() -> None:
    """A rank outlives a SIGKILLed launcher otherwise (Linux: PR_SET_PDEATHSIG), training on alone."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def rank_device(requested: str | None) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when CUDA is asked for (or auto and available), else the CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if requested == "cuda" or (requested is None and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device(requested or "cpu")


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """The default process group of a launched rank (nccl on CUDA, gloo on the CPU), destroyed on exit.
    On the CPU the ranks share the cores: each takes its part of them (unless OMP_NUM_THREADS says),
    since N ranks of all-core thread pools slow each other down (2 ranks on 2 loaded cores: 2-3x)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda"
                            else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def estimated_weight_bytes(base_model: str) -> int | None:
    """Bytes of a local model folder's safetensors files (None for a hub id): enough to tell
    whether the base weights fit one device before loading them."""
    folder = os.fspath(base_model)
    if not os.path.isdir(folder):
        return None
    return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.name.endswith(".safetensors"))


def choose_strategy(setting: str, device: torch.device, *, processes: int, base_model: str) -> str | None:
    """"ddp" or "fsdp" for a run over `processes` > 1, None for one process: the setting, or for
    "auto" fsdp only when a CUDA device could not hold the base weights beside training
    (dora_contract's auto_sharding). It reads the GPU's memory and the model folder, so a run
    asks once (Parallelism's constructor) and every later decision reads `Parallelism.strategy`."""
    if processes == 1:
        return None
    if setting != "auto":
        return setting
    if device.type != "cuda":
        return "ddp"
    memory = torch.cuda.get_device_properties(device).total_memory
    sharding = auto_sharding(processes=processes, weight_bytes=estimated_weight_bytes(base_model), memory_bytes=memory)
    return "fsdp" if sharding == "fsdp" else "ddp"


class Parallelism:
    """How this run is spread over the processes of the default process group; with none (or
    one process) every method is the single-process behaviour and costs nothing."""

    def __init__(self, setting: str, device: torch.device, base_model: str) -> None:
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world_size > 1 else 0
        self.is_main = self.rank == 0
        self.device = device
        # "ddp" | "fsdp" with several processes, None with one: decided here, once per run, and
        # read by everything that depends on it (how the base loads, gradient checkpointing, wrap)
        self.strategy = choose_strategy(setting, device, processes=self.world_size, base_model=base_model)
        self.ddp: nn.Module | None = None
        self.fsdp_root = None
        # Flags and metric sums travel on a CPU (gloo) group, so they never wait on CUDA streams.
        self.control = None
        if self.world_size > 1:
            self.control = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    # -- set-up ----------------------------------------------------------------------------------
    def callbacks(self, callbacks: CallbackList) -> CallbackList:
        return callbacks if self.world_size == 1 else RankCallbacks(callbacks, self)

    @contextmanager
    def one_rank_at_a_time(self, enabled: bool) -> Iterator[None]:
        """Inside, ranks take turns (rank 0 first): what one rank holds in host memory while
        inside is freed or shrunk before the next rank starts. Every rank must enter. A rank that
        raises inside skips the remaining turns; the launcher then ends the waiting ones."""
        if not enabled or self.world_size == 1:
            yield
            return
        for _ in range(self.rank):
            self.barrier()
        yield
        for _ in range(self.rank, self.world_size):
            self.barrier()

    def wrap(self, model: nn.Module, *, from_rank0: bool = False) -> None:
        """DDP around the loss, or FSDP2 on the blocks (as `strategy` says), after the adapter and
        gradient checkpointing are in. `from_rank0` (fsdp with an unquantized base; see the module
        docstring): every rank but 0 holds a meta-device model, whose shards are materialised here
        and filled from rank 0's."""
        if self.strategy == "ddp":
            self._wrap_ddp(model)
        elif self.strategy == "fsdp":
            self._shard(model, from_rank0=from_rank0)

    def _wrap_ddp(self, model: nn.Module) -> None:
        from torch.nn.parallel import DistributedDataParallel

        trainable = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():  # same seed, same init on every rank; rank 0's copy makes it certain
            for parameter in trainable:
                dist.broadcast(parameter, src=0)
        # init_sync=False: the frozen base weights are the same files on every rank; broadcasting
        # them would move the whole model for nothing. Buffers (rotary tables) never change.
        self.ddp = DistributedDataParallel(_SummedLoss(model), device_ids=[self.device.index] if
                                           self.device.type == "cuda" else None, forward_sync_buffers=False,
                                           init_sync=False, gradient_as_bucket_view=True)

    def _shard(self, model: nn.Module, *, from_rank0: bool) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        _check_nf4_shards(model, self.world_size)
        on_meta = from_rank0 and not self.is_main
        # rank 0's whole tensors, kept through sharding: what it sends the others. Detached: new
        # tensor objects on the same host storage, since fully_shard moves a parameter to the GPU
        # in place (`param.data = param.to(device)`), which would leave the whole model there
        whole = {name: tensor.detach() for name, tensor in _named_tensors(model)} if from_rank0 and self.is_main \
            else None
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        blocks = transformer_blocks(model)
        in_blocks = {id(p) for block in blocks for p in block.parameters()}
        for block in blocks:
            fully_shard(block, mesh=mesh)
        decoder = model.base_model
        # The decoder is FSDP's root (both loss paths call its forward), holding no shards itself:
        # what lies outside the blocks is frozen and stays whole on every rank.
        outside = {p for p in model.parameters() if id(p) not in in_blocks}
        if not on_meta:
            for parameter in outside:
                parameter.data = parameter.data.to(self.device)
            for buffer_owner in model.modules():
                for name, buffer in list(buffer_owner.named_buffers(recurse=False)):
                    setattr(buffer_owner, name, buffer.to(self.device))
        self.fsdp_root = fully_shard(decoder, mesh=mesh, ignored_params=outside)
        if from_rank0:
            if on_meta:
                model.to_empty(device=self.device)  # this rank's shards and the whole outside tensors, unset
            self._fill_from_rank0(model, whole)

    def _fill_from_rank0(self, model: nn.Module, whole: dict[str, torch.Tensor] | None) -> None:
        """Rank 0 sends each of its whole tensors (parameters and buffers, in module order); every
        other rank keeps its shard of it (or all of it, outside the blocks). One tensor crosses at
        a time, so no rank holds more than its shards plus one whole tensor. The CPU RNG state
        follows too: adapter init drew from rank 0's generator only (meta tensors draw nothing)."""
        named = list(_named_tensors(model))
        layout = [(name, tuple(tensor.shape), str(tensor.dtype)) for name, tensor in named]
        theirs = [layout if self.is_main else None]
        dist.broadcast_object_list(theirs, src=0, group=self.control)
        if theirs[0] != layout:
            difference = next((f"{mine} vs rank 0's {rank0}" for mine, rank0 in zip(layout, theirs[0], strict=False)
                               if mine != rank0), f"{len(layout)} tensors vs rank 0's {len(theirs[0])}")
            raise TrainingError(f"rank {self.rank} built the model from its config unlike rank 0 loaded it "
                                f"({difference}); use training.parallelism: ddp")
        # the tensors travel on the default group: nccl on CUDA (device tensors), gloo on the CPU
        with torch.no_grad():
            for name, tensor in named:
                if self.is_main:
                    sent = whole.pop(name).to(self.device)
                else:
                    sent = torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device)
                dist.broadcast(sent, src=0)
                if not self.is_main:
                    mine = _shard_like(sent, tensor).to_local() if _is_dtensor(tensor) else sent
                    (tensor.to_local() if _is_dtensor(tensor) else tensor).copy_(mine)
                del sent
        rng = torch.get_rng_state()
        dist.broadcast(rng, src=0, group=self.control)
        torch.set_rng_state(rng)

    # -- one step --------------------------------------------------------------------------------
    def share(self, items: Sequence[Any]) -> list[tuple[Any, int]]:
        """This rank's part of a step's micro-batches (or an evaluation's batches) as (item,
        weight): every world_size-th one, weight world_size (DDP and FSDP average the gradients;
        the weight makes it a sum), padded with weight-0 repeats so every rank runs as many."""
        if self.world_size == 1:
            return [(item, 1) for item in items]
        mine = [(item, self.world_size) for item in items[self.rank::self.world_size]]
        rounds = -(-len(items) // self.world_size)
        filler = mine[0][0] if mine else items[0]
        return mine + [(filler, 0)] * (rounds - len(mine))

    def gradient_sync(self, enabled: bool):
        """Context for one micro-batch's forward and backward: gradients are reduced across ranks
        only on the step's last one (enabled=True); before it they accumulate locally."""
        if self.strategy == "ddp" and not enabled:
            return self.ddp.no_sync()
        if self.strategy == "fsdp":
            self.fsdp_root.set_requires_gradient_sync(enabled)
        return nullcontext()

    def summed_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> LossSums:
        if self.ddp is not None and torch.is_grad_enabled():
            return self.ddp(batch)  # DDP's forward prepares the reducer for this backward
        return summed_loss(model, batch)

    def sum_over_ranks(self, *values: float) -> tuple[float, ...]:
        """Per-rank sums (loss, tokens, correct predictions) -> the global batch's, in float64."""
        if self.world_size == 1:
            return values
        totals = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(totals, group=self.control)
        return tuple(float(v) if isinstance(old, float) else int(v) for v, old in zip(totals.tolist(), values,
                                                                                       strict=True))

    def rank0_flag(self, flag: bool) -> bool:
        """Rank 0's answer, on every rank (called at the same point of the loop by all of them)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.broadcast(value, src=0, group=self.control)
        return bool(value.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.control)

    def clip_grad_norm(self, parameters: list[nn.Parameter], max_norm: float) -> float:
        """clip_grad_norm_ over every rank's gradients (with FSDP, the norm of sharded DTensors)."""
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return float(norm.full_tensor() if _is_dtensor(norm) else norm)

    # -- whole state for checkpoints and outputs -------------------------------------------------
    @contextmanager
    def whole_state_for_saving(self, model: nn.Module, optimizer) -> Iterator[Any]:
        """Inside: the adapter parameters are whole on every rank and the yielded object's
        state_dict() is the optimizer's in the single-process format (tensors gathered), so
        rank 0 can write a checkpoint any number of processes resumes from. Every rank must enter."""
        if self.strategy != "fsdp":
            yield optimizer
            self.barrier()
            return
        state = optimizer.state_dict()  # its per-parameter dicts are the live ones: build new ones
        state["state"] = {index: {key: value.full_tensor().cpu() if _is_dtensor(value) else value
                                  for key, value in sorted(per_parameter.items())}
                          for index, per_parameter in sorted(state["state"].items())}
        with _whole_adapter_parameters(model, write_back=False):
            yield _SavedOptimizerState(state)
        self.barrier()

    @contextmanager
    def whole_state_for_loading(self, model: nn.Module, optimizer) -> Iterator[None]:
        """Inside, load a checkpoint as one process would; on exit (with FSDP) every rank keeps its
        shard of what was loaded: adapter parameters and optimizer moments."""
        if self.strategy != "fsdp":
            yield
            return
        with _whole_adapter_parameters(model, write_back=True):
            yield
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                for key, value in optimizer.state.get(parameter, {}).items():
                    if _is_dtensor(parameter) and torch.is_tensor(value) and value.shape == parameter.shape \
                            and not _is_dtensor(value):
                        optimizer.state[parameter][key] = _shard_like(value, parameter)

    def model_for_outputs(self, model: nn.Module, *, load_plain: Callable[[], nn.Module]) -> nn.Module | None:
        """The model rank 0 writes outputs from (None on the other ranks). With FSDP no rank holds
        the whole model, so rank 0 builds a plain one: `load_plain()` (the base and an adapter
        on the CPU) with the trained adapter gathered into it."""
        if self.strategy != "fsdp":
            return model if self.is_main else None
        with _whole_adapter_parameters(model, write_back=False):
            if not self.is_main:
                plain = None
            else:
                plain = load_plain()
                with torch.no_grad():
                    for name, layer in adapter_layers(model):
                        target = plain.get_submodule(name)
                        for attribute in ADAPTER_PARAMETERS:
                            if getattr(layer, attribute) is not None:
                                getattr(target, attribute).copy_(getattr(layer, attribute))
        self.barrier()
        return plain


class RankCallbacks(CallbackList):
    """Rank 0 reports through the run's callbacks; the others report nothing. Every rank asks
    should_stop and checkpoint_on_stop at the same points, and all get rank 0's answer."""

    def __init__(self, callbacks: CallbackList, parallel: Parallelism) -> None:
        super().__init__(callbacks.callbacks if parallel.is_main else [])
        self.parallel = parallel

    def should_stop(self) -> bool:
        return self.parallel.rank0_flag(super().should_stop())

    def checkpoint_on_stop(self) -> bool:
        return self.parallel.rank0_flag(super().checkpoint_on_stop())


class _SummedLoss(nn.Module):
    """What DDP wraps: the run's summed loss, so the reducer sees every forward (the chunked loss
    calls the decoder and the head separately, which a DDP around the model would not see)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> LossSums:
        return summed_loss(self.model, batch)


class _SavedOptimizerState:
    """An optimizer as save_checkpoint reads it: state_dict() only, already gathered."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def state_dict(self) -> dict:
        return self.state


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: transformers names their class in _no_split_modules."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    if not blocks:
        raise TrainingError(f"{type(model).__name__} names no transformer block class (_no_split_modules); "
                         "use training.parallelism: ddp")
    return blocks


def _check_nf4_shards(model: nn.Module, shards: int) -> None:
    if any(getattr(layer, "quantized", False) for _, layer in adapter_layers(model)):
        from dora_core.quantization import nf4_sharding_problem

        if problem := nf4_sharding_problem(model, shards):
            raise TrainingError(f"training.parallelism fsdp over {shards} processes: {problem}")


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer (non-persistent ones too: rotary tables), each once, in module order."""
    yield from ((f"parameter {name}", p) for name, p in model.named_parameters())
    yield from ((f"buffer {name}", b) for name, b in model.named_buffers())


def adapter_layers(model: nn.Module) -> list[tuple[str, AdapterLinear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, AdapterLinear)]


@contextmanager
def _whole_adapter_parameters(model: nn.Module, *, write_back: bool) -> Iterator[None]:
    """Swap each sharded adapter parameter (a DTensor) for a whole plain one (all-gathered) while
    inside, so code written for one process (save_adapter, load_adapter_weights) reads and writes
    it; with write_back, each rank copies its shard of the whole tensor back on exit."""
    swapped: list[tuple[AdapterLinear, str, nn.Parameter, nn.Parameter]] = []
    for _, layer in adapter_layers(model):
        for attribute in ADAPTER_PARAMETERS:
            sharded = getattr(layer, attribute, None)
            if sharded is not None and _is_dtensor(sharded):
                whole = nn.Parameter(sharded.full_tensor().detach(), requires_grad=sharded.requires_grad)
                setattr(layer, attribute, whole)  # Module.__setattr__ re-registers the parameter
                swapped.append((layer, attribute, sharded, whole))
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, attribute, sharded, whole in swapped:
                if write_back:
                    sharded.to_local().copy_(_shard_like(whole.detach(), sharded).to_local())
                setattr(layer, attribute, sharded)


def _shard_like(whole: torch.Tensor, like) -> Any:
    """This rank's shard of a whole tensor every rank holds, placed as `like` (no communication)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def _is_dtensor(value: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)
