"""Rehearse rank 0 of an N-rank job on one device: the training process joins PyTorch's fake process group as rank
0 of N before Accelerate initialises, then runs the same Accelerate config and LLaMA-Factory trainer as the real
job. Collectives return at once and carry nothing, so rank 0's compute, its shard of the model and its memory are
real, and the loss is not (gathered weights are whatever their buffers held). The callback
(rehearsal_measurement.py) measures a few steps and ends the run before LLaMA-Factory's final save, which would
write that noise as the model. The launcher imports this module to plan a rehearsal, so it imports nothing heavy.

DDP cannot be rehearsed: its backward hits an internal assert on the fake group (c10d/comm.cpp, "expected the hook
result is either a Tensor or a TensorList found None"), so the planner refuses it. The launcher runs
the one process with the strategy's config at `num_processes: 1` and sets `save_strategy: "no"`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from . import contract
from .errors import ConfigInvalid
from .strategies import DDP, Strategy


@dataclass(frozen=True)
class RehearsalRequest:
    """What the launcher asks of a rehearsal: the job's world size and processes per node, its strategy and
    precision (for the communication estimate), and where the report goes."""

    world_size: int
    processes_per_node: int
    strategy: str
    precision: str
    report: str
    estimate_gib: float | None = None  # the memory model's allocated peak per GPU for the job, beside the measured

    def environment(self) -> dict[str, str]:
        return {contract.REHEARSAL.name: json.dumps(asdict(self))}

    @classmethod
    def from_environment(cls, environ=os.environ) -> RehearsalRequest | None:
        raw = contract.REHEARSAL.read(environ)
        return cls(**json.loads(raw)) if raw else None


def check_rehearsable(strategy: Strategy) -> None:
    """One line, before anything launches, for the strategy the fake group cannot drive."""
    if strategy is DDP:
        raise ConfigInvalid(
            "data parallel cannot be rehearsed (its backward asserts on the fake process group) and needs none: "
            "each rank runs the whole model, so one device's own run is rank 0's; rehearse a sharded strategy "
            "with --strategy"
        )


def rehearsal_accelerate_config(values: dict) -> dict:
    """The job's Accelerate config for its rehearsal: one process on one machine. FSDP's layout stays (torchrun
    starts the one process with Accelerate's FSDP environment); data parallel's MULTI_GPU becomes NO, which
    Accelerate requires of one process (DeepSpeed comes from LLaMA-Factory's `deepspeed` key, not this file)."""
    one = {key: value for key, value in values.items() if key not in ("main_process_ip", "main_process_port")}
    one.update(num_processes=1, num_machines=1, machine_rank=0)
    if one["distributed_type"] == "MULTI_GPU":
        one["distributed_type"] = "NO"
    return one


def join_fake_process_group(world_size: int, processes_per_node: int) -> None:
    """Rank 0 of `world_size`, in the environment torchrun would give it, so that Accelerate, Transformers and
    DeepSpeed find the group already there and take its size."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    os.environ.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(min(world_size, processes_per_node)),
        MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
        MASTER_PORT=os.environ.get("MASTER_PORT", "29500"),
    )
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
