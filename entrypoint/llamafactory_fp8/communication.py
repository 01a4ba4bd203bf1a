"""Bytes each rank sends per optimizer step under each strategy: an estimate, from the parameter counts, not a
measurement (a rehearsal's collectives carry nothing, and one GPU has no peers to measure against).

Assumptions, each one a term below:
- ring collectives: an all-gather or a reduce-scatter of S bytes over N ranks sends (N-1)/N * S from each rank,
  an all-reduce twice that; the bytes are the same whichever link carries them, the time is not;
- bytes per element (`wire_bytes`): FSDP2 gathers weights and reduces gradients in Accelerate's mixed-precision
  policy's dtype (BF16 and FP8 runs: 2, FP32: 4; torchao's float8 all-gather, where on, would gather 1); DeepSpeed
  under BF16 keeps weights and gradients in BF16 (2) beside its FP32 master copy; DDP reduces the gradients of
  LLaMA-Factory's FP32 trainable parameters (4), and under autocast its weights stay FP32;
- DDP all-reduces the trainable gradients once per optimizer step (Accelerate skips the sync while accumulating);
- ZeRO-2 reduce-scatters the trainable gradients every micro-batch (it has no skipped sync) and all-gathers the
  updated trainable weights once per step;
- FSDP2 and ZeRO-3 all-gather every parameter, frozen ones included, in forward and again in backward (weights
  resharded after forward, as configs/accelerate/fsdp2*.yaml and ZeRO-3 do), and reduce-scatter the trainable
  gradients, every micro-batch (Accelerate does not skip FSDP's sync while accumulating);
- offload moves, per micro-batch, each rank's weight shard to the GPU for each all-gather and its gradient shard
  back: host-device bytes, over PCIe rather than the network, counted apart;
- small parameters DeepSpeed keeps whole (`stage3_param_persistence_threshold`) and the loss's own all-reduce
  are left out."""

from __future__ import annotations

from dataclasses import dataclass

from .strategies import DDP, FSDP2, FSDP2_OFFLOAD, ZERO2, ZERO3, ZERO3_OFFLOAD, Strategy


@dataclass(frozen=True)
class CommunicationEstimate:
    strategy: str
    world_size: int
    network_bytes_per_step: float  # sent by each rank, per optimizer step
    host_device_bytes_per_step: float  # offload's copies between CPU and GPU memory, each rank, per step
    formula: str


def wire_bytes(strategy: Strategy, precision: str) -> tuple[int, int]:
    """(weight, gradient) bytes per element on the wire, for a run in `precision` (fp8, bf16, fp16, fp32)."""
    half = precision in ("fp8", "bf16", "fp16")
    if strategy.buffers == "ddp":
        return 4, 4
    return (2, 2) if half else (4, 4)


def estimate_communication(
    strategy: Strategy,
    world_size: int,
    parameters: int,
    trainable_parameters: int,
    gradient_accumulation_steps: int,
    weight_bytes: int,
    gradient_bytes: int,
) -> CommunicationEstimate:
    n, a = world_size, gradient_accumulation_steps
    ring = (n - 1) / n
    weights, trainable_weights = parameters * weight_bytes, trainable_parameters * weight_bytes
    gradients = trainable_parameters * gradient_bytes
    host_device = 0.0
    if strategy is DDP:
        network, formula = 2 * ring * gradients, "2(N-1)/N * Pt*g"
    elif strategy is ZERO2:
        network = a * ring * gradients + ring * trainable_weights
        formula = "A*(N-1)/N * Pt*g + (N-1)/N * Pt*w"
    elif strategy in (FSDP2, ZERO3, FSDP2_OFFLOAD, ZERO3_OFFLOAD):
        network = a * ring * (2 * weights + gradients)
        formula = "A*(N-1)/N * (2*P*w + Pt*g)"
        if strategy in (FSDP2_OFFLOAD, ZERO3_OFFLOAD):
            host_device = a * (2 * weights + gradients) / n
            formula += "; host-device A*(2*P*w + Pt*g)/N"
    else:
        raise ValueError(f"no communication model for {strategy.name}")
    return CommunicationEstimate(strategy.name, n, network, host_device, formula)
