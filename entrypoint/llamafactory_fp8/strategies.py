"""How several GPUs share the work, one record per strategy, fastest first: the planner tries them in this order,
the Accelerate config and LLaMA-Factory's `deepspeed` key come from them, and memory.py reads what each splits
over the GPUs or moves to the CPU. Adding a strategy is one record here plus its config file."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

Placement = Literal["replicated", "sharded", "offloaded"]


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """One way of spreading a run over GPUs."""

    name: str
    """As `--strategy` spells it."""
    label: str
    """As the plan's block says it."""
    accelerate_layout: str
    """Under configs/accelerate/, layered on the precision file."""
    deepspeed_config: str | None = None
    """Under configs/deepspeed/, passed as LLaMA-Factory's `deepspeed`; None: not DeepSpeed."""
    module: str | None = None
    """Must be importable for the strategy to run; None: torch alone."""
    weights: Placement
    """Where the weights live (memory.py)."""
    gradients: Placement
    """Where the gradients live (memory.py)."""
    optimizer: Placement
    """Where the optimizer states live (memory.py)."""
    buffers: Literal["ddp", "deepspeed", "fsdp"]
    """Whose communication buffers it allocates (memory.py)."""
    computes_in_bf16: bool
    """Whether the layers compute with bf16 copies of the weights (FSDP2's mixed-precision policy, DeepSpeed's bf16
    module), so the residual stream is bf16 even where LLaMA-Factory keeps trainable weights in fp32 (memory.py)."""
    loads_whole_model_onto_gpu: bool
    """Whether every process holds the whole model on its GPU, trainable weights upcast to fp32, before anything is
    sharded: LLaMA-Factory maps the model onto the process's GPU and upcasts it there, also under FSDP2 with
    fsdp_cpu_ram_efficient_loading: false (Transformers' FSDP loading stays off; rank 0 of 8 rehearsed held ~2 GiB
    of CPU memory, bench/README.md); ZeRO-3 partitions as it builds (memory.py)."""
    carries_fp8: bool
    """Whether an FP8 run stays FP8 under it."""
    fp8_pays_from_tokens: int | None
    """The fewest tokens per GPU micro-batch at which FP8 was measured faster than BF16 under it; None: never
    measured faster. Auto keeps BF16 below it (policy.py)."""
    why: str
    """What it does, in words."""

    @property
    def uses_deepspeed(self) -> bool:
        return self.deepspeed_config is not None

    def fp8_unproven(self, micro_batch_size: int, cutoff_len: int) -> str | None:
        """Why FP8 is not known to pay under this strategy at a run's micro-batch; None where it was measured to."""
        if self.fp8_pays_from_tokens is None:
            return f"FP8 was never measured faster than BF16 under {self.label} (bench/README.md)"
        if micro_batch_size * cutoff_len < self.fp8_pays_from_tokens:
            return (
                f"under {self.label} FP8 was measured faster than BF16 only from {self.fp8_pays_from_tokens} "
                f"tokens per micro-batch, and this run's is at most {micro_batch_size} x {cutoff_len} "
                "(bench/README.md)"
            )
        return None


DDP = Strategy(
    name="ddp",
    label="data parallel",
    accelerate_layout="multi-gpu.yaml",
    weights="replicated",
    gradients="replicated",
    optimizer="replicated",
    buffers="ddp",
    computes_in_bf16=False,
    loads_whole_model_onto_gpu=True,
    carries_fp8=True,
    fp8_pays_from_tokens=0,
    why="each GPU holds the whole model, its gradients and optimizer states; the least communication",
)
ZERO2 = Strategy(
    name="deepspeed-zero2",
    label="DeepSpeed ZeRO-2",
    accelerate_layout="multi-gpu.yaml",
    deepspeed_config="zero2.json",
    module="deepspeed",
    weights="replicated",
    gradients="sharded",
    optimizer="sharded",
    buffers="deepspeed",
    computes_in_bf16=True,
    loads_whole_model_onto_gpu=True,
    carries_fp8=True,
    fp8_pays_from_tokens=4096,
    why="gradients and optimizer states split over the GPUs, weights whole on each",
)
FSDP2 = Strategy(
    name="fsdp2",
    label="FSDP2",
    accelerate_layout="fsdp2.yaml",
    weights="sharded",
    gradients="sharded",
    optimizer="sharded",
    buffers="fsdp",
    computes_in_bf16=True,
    loads_whole_model_onto_gpu=True,
    carries_fp8=True,
    fp8_pays_from_tokens=4096,
    why="weights, gradients and optimizer states split over the GPUs; each layer gathered when it runs",
)
ZERO3 = Strategy(
    name="deepspeed-zero3",
    label="DeepSpeed ZeRO-3",
    accelerate_layout="multi-gpu.yaml",
    deepspeed_config="zero3.json",
    module="deepspeed",
    weights="sharded",
    gradients="sharded",
    optimizer="sharded",
    buffers="deepspeed",
    computes_in_bf16=True,
    loads_whole_model_onto_gpu=False,
    carries_fp8=True,
    fp8_pays_from_tokens=None,
    why="weights, gradients and optimizer states split over the GPUs",
)
FSDP2_OFFLOAD = Strategy(
    name="fsdp2-offload",
    label="FSDP2 with CPU offload",
    accelerate_layout="fsdp2-offload.yaml",
    weights="offloaded",
    gradients="offloaded",
    optimizer="offloaded",
    buffers="fsdp",
    computes_in_bf16=True,
    loads_whole_model_onto_gpu=True,
    carries_fp8=True,
    fp8_pays_from_tokens=None,
    why="weights, gradients and optimizer states in CPU memory; the optimizer steps on the CPU (slow)",
)
ZERO3_OFFLOAD = Strategy(
    name="deepspeed-zero3-offload",
    label="DeepSpeed ZeRO-3 with CPU offload",
    accelerate_layout="multi-gpu.yaml",
    deepspeed_config="zero3-offload.json",
    module="deepspeed",
    weights="offloaded",
    gradients="offloaded",
    optimizer="offloaded",
    buffers="deepspeed",
    computes_in_bf16=True,
    loads_whole_model_onto_gpu=False,
    carries_fp8=False,
    fp8_pays_from_tokens=None,
    why="weights and optimizer states in CPU memory; the optimizer steps on the CPU (slow)",
)

# Fastest first: rank 0 of 8 rehearsed on the 8B at 2 x 2048, compiled, steps 0.37 s (ZeRO-2), 0.45 (FSDP2) and
# 1.09 (ZeRO-3, BF16; Dynamo recompiles DeepSpeed's hooks past its limit). FP8 stays on under both ZeRO stages with
# the pinned Accelerate (223 of 225 layers; accelerate#3611 keeps fp8 there) and pays: under data parallel, as on one
# GPU (the size rule in policy.py); under ZeRO-2 (1.22x) and FSDP2, from 2 sequences of 2048 per GPU; under ZeRO-3 it
# ran at 0.67x (bench/results/rehearsal-8b-zero2, -zero3, rehearsal-8b-compile-layers, rehearsal-8b-product). Under
# CPU offload it was never measured, and under ZeRO-3's offload never run.
STRATEGIES = (DDP, ZERO2, FSDP2, ZERO3, FSDP2_OFFLOAD, ZERO3_OFFLOAD)
BY_NAME = {strategy.name: strategy for strategy in STRATEGIES}


def installed_strategies() -> frozenset[str]:
    """The strategies whose module this Python environment has (DeepSpeed is optional), found without importing."""
    return frozenset(s.name for s in STRATEGIES if s.module is None or importlib.util.find_spec(s.module))
