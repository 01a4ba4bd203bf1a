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
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BF16Unavailable, ConfigInvalid
from .strategies import DDP, Strategy
from .topology import Topology

if TYPE_CHECKING:
    from .policy import Decision


def check_cpu_strategy(strategy: Strategy, processes_per_node: int, world_size: int, precision: str) -> None:
    """Refuse, in one line, what would not run as asked on the CPU: a sharded strategy needs several processes to
    shard over, and DeepSpeed cannot run BF16 there. The policy calls it, so this module imports no policy."""
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


def cpu_accelerate_config(decision: Decision, topology: Topology, configs_dir: Path) -> tuple[dict, tuple[Path, ...]]:
    """The Accelerate config of a CPU run, and the files it came from. Several processes a node, or a sharded
    strategy: the strategy's layout (one kept from the YAML: the data-parallel one, as on GPUs) with `use_cpu:
    false`, so that torchrun starts them. One data-parallel process a node: `use_cpu`, MULTI_CPU over nodes."""
    # imported here: accelerate_config imports the policy, which calls this module
    from .accelerate_config import KEPT_STRATEGY_LAYOUT, load_accelerate_config

    sources = [configs_dir / "bf16.yaml"]
    values = load_accelerate_config(sources[0])
    values["mixed_precision"] = decision.accelerate_precision
    world_size = decision.processes_per_node * topology.num_machines
    torchrun = started_by_torchrun(decision.strategy.strategy, decision.processes_per_node)
    if torchrun:
        choice = decision.strategy
        sources.append(
            configs_dir / (KEPT_STRATEGY_LAYOUT if choice.kept_from_yaml else choice.strategy.accelerate_layout)
        )
        layout = load_accelerate_config(sources[1])
        values.update({key: value for key, value in layout.items() if key != "mixed_precision"})
    values["num_processes"] = world_size
    values["num_machines"] = topology.num_machines
    values["machine_rank"] = topology.machine_rank
    if topology.num_machines > 1:
        values["main_process_ip"] = topology.main_process_ip
        values["main_process_port"] = topology.main_process_port
    values["use_cpu"] = not torchrun
    if not torchrun:
        values["distributed_type"] = "MULTI_CPU" if world_size > 1 else "NO"
    return values, tuple(sources)


def started_by_torchrun(strategy: Strategy, processes_per_node: int) -> bool:
    return processes_per_node > 1 or strategy is not DDP


def cpu_training_keys(decision: Decision) -> dict[str, object]:
    """LLaMA-Factory's keys a CPU run adds to the precision's: DeepSpeed needs `use_cpu` off (see above)."""
    return {"use_cpu": False} if decision.strategy.strategy.uses_deepspeed else {}


def cpu_environment(processes_per_node: int, cpu_count: int | None = None) -> dict[str, str]:
    """Each process its share of the node's cores: torchrun would give each one thread."""
    cores = cpu_count or os.cpu_count() or 1
    return {"OMP_NUM_THREADS": str(max(1, cores // processes_per_node))}
