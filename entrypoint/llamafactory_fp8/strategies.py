"""How several GPUs share the work, one record per strategy, fastest first: the policy tries them in this order,
the Accelerate config and LLaMA-Factory's `deepspeed` key come from them, and memory.py reads what each splits
over the GPUs or moves to the CPU. Adding a strategy is one record here plus its config file."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

Placement = Literal["replicated", "sharded", "offloaded"]


@dataclass(frozen=True)
class Strategy:
    name: str  # as `--strategy` spells it
    label: str
    accelerate_layout: str  # under configs/accelerate/, on top of the precision file
    deepspeed_config: str | None  # under configs/deepspeed/, passed as LLaMA-Factory's `deepspeed`
    module: str | None  # must be importable for the strategy to run
    # memory terms: where each part of the training state lives (memory.py)
    weights: Placement
    gradients: Placement
    optimizer: Placement
    buffers: Literal["ddp", "deepspeed", "fsdp"]
    carries_fp8: bool  # whether an FP8 run stays FP8 under it
    why: str

    @property
    def uses_deepspeed(self) -> bool:
        return self.deepspeed_config is not None


DDP = Strategy(
    "ddp",
    "data parallel",
    "multi-gpu.yaml",
    None,
    None,
    "replicated",
    "replicated",
    "replicated",
    "ddp",
    True,
    "each GPU holds the whole model, its gradients and optimizer states; the least communication",
)
ZERO2 = Strategy(
    "deepspeed-zero2",
    "DeepSpeed ZeRO-2",
    "multi-gpu.yaml",
    "zero2.json",
    "deepspeed",
    "replicated",
    "sharded",
    "sharded",
    "deepspeed",
    False,
    "gradients and optimizer states split over the GPUs, weights whole on each",
)
FSDP2 = Strategy(
    "fsdp2",
    "FSDP2",
    "fsdp2.yaml",
    None,
    None,
    "sharded",
    "sharded",
    "sharded",
    "fsdp",
    True,
    "weights, gradients and optimizer states split over the GPUs; each layer gathered when it runs",
)
ZERO3 = Strategy(
    "deepspeed-zero3",
    "DeepSpeed ZeRO-3",
    "multi-gpu.yaml",
    "zero3.json",
    "deepspeed",
    "sharded",
    "sharded",
    "sharded",
    "deepspeed",
    False,
    "weights, gradients and optimizer states split over the GPUs",
)
FSDP2_OFFLOAD = Strategy(
    "fsdp2-offload",
    "FSDP2 with CPU offload",
    "fsdp2-offload.yaml",
    None,
    None,
    "offloaded",
    "offloaded",
    "offloaded",
    "fsdp",
    True,
    "weights, gradients and optimizer states in CPU memory; the optimizer steps on the CPU (slow)",
)
ZERO3_OFFLOAD = Strategy(
    "deepspeed-zero3-offload",
    "DeepSpeed ZeRO-3 with CPU offload",
    "multi-gpu.yaml",
    "zero3-offload.json",
    "deepspeed",
    "offloaded",
    "offloaded",
    "offloaded",
    "deepspeed",
    False,
    "weights and optimizer states in CPU memory; the optimizer steps on the CPU (slow)",
)

# Fastest first. Under DeepSpeed, Accelerate may not carry FP8 and FP8 stays off (accelerate#3360; the patched
# LLaMA-Factory then fails the run): an FP8 run that needs sharding gets FSDP2, which has the same memory terms.
STRATEGIES = (DDP, ZERO2, FSDP2, ZERO3, FSDP2_OFFLOAD, ZERO3_OFFLOAD)
BY_NAME = {strategy.name: strategy for strategy in STRATEGIES}


def installed_strategies() -> frozenset[str]:
    """The strategies whose module this Python environment has (DeepSpeed is optional), found without importing."""
    return frozenset(s.name for s in STRATEGIES if s.module is None or importlib.util.find_spec(s.module))
