"""Several training processes on the CPU under any strategy the planner knows (`--allow-cpu --processes N`): what
the Accelerate config, LLaMA-Factory's keys and the environment must say for `accelerate launch` to start them and
for each strategy to run on them, and which combinations are refused rather than silently changed.

- `accelerate launch` with `use_cpu` starts one process per node and expects MPI (or the launcher, which names
  the node's rank) to start the others. With the strategy's own layout (`distributed_type` MULTI_GPU or FSDP)
  and `use_cpu: false` it starts `num_processes` through torchrun, on one node or several; each process finds no
  GPU and Accelerate gives it MULTI_CPU over gloo, which fsdp_on_cpu.py turns into FSDP for the FSDP2 layouts.
- One data-parallel process per node keeps the launcher's own path: its faults (a node lost, a node frozen) are
  tested there (tests/test_faults.py), and they failed through torchrun, which starts its workers in sessions of
  their own, so killing a node's process group left them running.
- DeepSpeed: Accelerate turns it off when `cpu=True` (Transformers' `use_cpu`), and Transformers allows BF16 off a
  GPU only with `use_cpu`, so DeepSpeed runs on the CPU in FP32 with `use_cpu: false`; DeepSpeed's CPU accelerator
  falls back to gloo. Its first run on a machine builds two C++ ops (shared-memory collectives, and CPU Adam for
  the offload) into the torch extensions cache: minutes on two cores, then seconds."""

from __future__ import annotations

import os

from .errors import BF16Unavailable, ConfigInvalid
from .strategies import DDP, Strategy


def check_cpu_strategy(strategy: Strategy, processes_per_node: int, world_size: int, precision: str) -> None:
    """Refuse, in one line, what would not run as asked on the CPU: a sharded strategy needs several processes to
    shard over, and DeepSpeed cannot run BF16 there."""
    if processes_per_node < 1:
        raise ConfigInvalid(f"--processes must be 1 or more, got {processes_per_node}")
    if strategy is not DDP and world_size < 2:
        raise ConfigInvalid(
            f"{strategy.label} shards over several processes and this CPU run has one: pass --processes 2 or more"
        )
    if strategy.uses_deepspeed and precision == "bf16":
        raise BF16Unavailable(
            f"BF16 refused: {strategy.label} runs on the CPU in FP32 only (Accelerate turns DeepSpeed off under "
            "use_cpu, which Transformers needs for BF16 off a GPU); drop --bf16, or choose ddp or fsdp2"
        )


def started_by_torchrun(strategy: Strategy, processes_per_node: int) -> bool:
    return processes_per_node > 1 or strategy is not DDP


def cpu_environment(processes_per_node: int, cpu_count: int | None = None) -> dict[str, str]:
    """Each process its share of the node's cores: torchrun would give each one thread."""
    cores = cpu_count or os.cpu_count() or 1
    return {"OMP_NUM_THREADS": str(max(1, cores // processes_per_node))}
