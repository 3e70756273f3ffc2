"""`dora_step.py --nproc N`: the run's step (ours-dora-run) over N processes of this host.

Measured, not asserted. One JSON line per (shape, dtype, parallelism) with config
"ours-dora-run", `nproc` and `parallelism` (ddp | fsdp, dora_core/training/distributed.py): the
same global batch as the one-process line (shape.batch rows, rank r takes rows r, r + N, ...),
the loss weighted as the training run weights it, gradients reduced over the ranks, an AdamW
step. `step_time_s` and `step_cpu_s` are the slowest rank's medians, `peak_memory_bytes` (CUDA)
the largest rank's peak. Each rank is a process started by torch's elastic launcher (gloo on
the CPU, nccl on CUDA, one GPU per rank); on a CPU the ranks share its cores, so the figure
there shows the communication's cost, not a speed-up.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist

from dora_core.training.distributed import Parallelism, die_with_parent, launch, process_group, rank_device


def measure_processes(shape, dtype_name: str, args) -> list[dict]:
    options = {"device": args.device, "rank": args.rank, "dropout": args.current_dropout, "warmup": args.warmup,
               "steps": args.steps, "shape_name": args.current_shape}
    return [launch(args.nproc, _rank, shape, dtype_name, parallelism, options)[0]
            for parallelism in args.parallelisms]


def _rank(shape, dtype_name: str, parallelism: str, options: dict) -> dict | None:
    from dora_step import DTYPES, build_base, prepare, synchronize  # the script's folder is on sys.path

    die_with_parent()
    device = rank_device("cuda" if options["device"].startswith("cuda") else "cpu")
    with process_group(device):
        world, rank = dist.get_world_size(), dist.get_rank()
        model = prepare("ours-dora-run", build_base(shape, DTYPES[dtype_name], str(device)), options["rank"],
                        options["dropout"])
        parallel = Parallelism(parallelism, device, base_model="")
        parallel.wrap(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        generator = torch.Generator(device="cpu").manual_seed(1)
        ids = torch.randint(0, shape.vocab, (shape.batch, shape.seq), generator=generator)[rank::world].to(device)
        batch, trained_tokens = {"input_ids": ids, "labels": ids}, shape.batch * (shape.seq - 1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times, cpu_times = [], []
        for index in range(options["warmup"] + options["steps"]):
            synchronize(str(device))
            start, cpu_start = time.perf_counter(), time.process_time()
            with parallel.gradient_sync(True):
                (parallel.summed_loss(model, batch).loss_sum / trained_tokens * world).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize(str(device))
            if index >= options["warmup"]:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
        slowest = torch.tensor([statistics.median(times), statistics.median(cpu_times), peak], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=parallel.control)
    if rank != 0:
        return None
    return {"benchmark": "dora_step", "shape": options["shape_name"], "device": options["device"], "dtype": dtype_name,
            "config": "ours-dora-run", "nproc": world, "parallelism": parallelism, "rank": options["rank"],
            "dropout": options["dropout"], "layers": shape.layers, "batch": shape.batch, "seq": shape.seq,
            "step_time_s": float(slowest[0]), "step_cpu_s": float(slowest[1]), "steps": len(times),
            "peak_memory_bytes": int(slowest[2]) or None,
            "trainable_params": sum(p.numel() for p in trainable)}  # a DTensor's numel is the whole tensor's
