"""FP8's longer start against the run's length. torchao's FP8 runs compiled, and its first step comes later than
BF16's, compiled or eager; its faster steps win that back only after enough micro-batches. A run known to be
shorter (max_steps, or epochs over max_samples) is faster in BF16; where FP8's steps were measured the slower, no
length pays it back. The measured points (backends.Payback) live on the backend's record; bench/payback.py computes
them from bench/results/."""

from __future__ import annotations

from dataclasses import dataclass

from .backends import Payback
from .model_facts import ModelFacts
from .training_config import TrainingConfig


@dataclass(frozen=True)
class RunLengthVerdict:
    """What the run's length says of FP8's longer start, for the block."""

    too_short: bool
    """The run ends before FP8 pays its start back, by every comparable measurement; at a setting where FP8's steps
    were measured slower, every run is."""
    why: str


def weigh_run_length(
    points: tuple[Payback, ...], training: TrainingConfig, model: ModelFacts | None, world: int
) -> RunLengthVerdict | None:
    """The run's length against the measured points; None where the model's size is unknown, or the run's length is
    and FP8's steps were not measured slower. Comparable points are of the same kind, on models at least this size
    (a smaller one gains less a step, and pays back later or never), at the most tokens up to the run's (fewer
    tokens, less to gain a step; the run's own are an upper bound, cutoff_len), else at the fewest; of those, the
    one that pays back soonest, so that auto leaves FP8 only where every comparable measurement had it behind."""
    if model is None:
        return None
    length = training.run_length(world)
    kind = "lora" if training.finetuning_type in ("lora", "oft") else "full"
    setting = (kind, training.gradient_checkpointing, training.torch_compile)
    bf16 = "compiled" if training.torch_compile else "eager"  # the points compared below share the setting
    same = [
        point
        for point in points
        if (point.finetuning, point.checkpointing, point.bf16_compiled) == setting
        and model.num_parameters <= point.parameters
    ]
    checkpointing = "on" if training.gradient_checkpointing else "off"
    run = f"this run trains at most {length.micro_batches:,} micro-batches per GPU ({length.why})" if length else ""
    if not same:
        if length is None:
            return None
        return RunLengthVerdict(
            too_short=False,
            why=f"{run}; FP8's longer start is not weighed against it: not measured for {kind} with checkpointing "
            f"{checkpointing} against BF16 {bf16} on a model this size or larger (bench/README.md)",
        )
    tokens = training.micro_batch_size * training.cutoff_len
    below = [point.tokens for point in same if point.tokens <= tokens]
    level = max(below) if below else min(point.tokens for point in same)
    point = min((p for p in same if p.tokens == level), key=lambda p: p.micro_batches or float("inf"))
    if point.micro_batches is None:
        return RunLengthVerdict(
            too_short=True,
            why=f"FP8's steps were measured slower than BF16 {bf16}'s at {point.tokens} tokens per micro-batch with "
            f"checkpointing {checkpointing} ({point.measured}), and this run's are at most "
            f"{training.micro_batch_size} x {training.cutoff_len}: FP8 would not catch up at any run length",
        )
    if length is None:
        return None
    too_short = length.micro_batches < point.micro_batches
    return RunLengthVerdict(
        too_short=too_short,
        why=f"{run}, and FP8's longer start was measured to pay back {'only ' if too_short else ''}after "
        f"{point.micro_batches:,} micro-batches of {point.tokens} tokens against BF16 {bf16} ({point.measured})",
    )
