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


def comparable_point(
    points: tuple[Payback, ...], training: TrainingConfig, model: ModelFacts, bf16_compiled: bool
) -> Payback | None:
    """The point that speaks for this run against BF16 compiled or eager: of the same kind and checkpointing, on a
    model at least this size (a smaller one gains less a step, and pays back later or never), at the most tokens up
    to the run's (fewer tokens, less to gain a step; the run's own are an upper bound, cutoff_len), else at the
    fewest; of those, the one that pays back soonest, so that auto leaves FP8 only where every comparable
    measurement had it behind. None where none was measured."""
    same = [
        point
        for point in points
        if (point.finetuning, point.checkpointing, point.bf16_compiled)
        == (kind_of(training), training.gradient_checkpointing, bf16_compiled)
        and model.num_parameters <= point.parameters
    ]
    if not same:
        return None
    tokens = training.micro_batch_size * training.cutoff_len
    below = [point.tokens for point in same if point.tokens <= tokens]
    level = max(below) if below else min(point.tokens for point in same)
    return min(
        (p for p in same if p.tokens == level),
        key=lambda p: float("inf") if p.micro_batches is None else p.micro_batches,
    )


def weigh_run_length(
    points: tuple[Payback, ...], training: TrainingConfig, model: ModelFacts | None, world: int
) -> RunLengthVerdict | None:
    """The run's length against the comparable point for BF16 as the YAML runs it; None where the model's size is
    unknown, or the run's length is and FP8's steps were not measured slower."""
    if model is None:
        return None
    length = training.run_length(world)
    bf16 = "compiled" if training.torch_compile else "eager"
    checkpointing = "on" if training.gradient_checkpointing else "off"
    point = comparable_point(points, training, model, training.torch_compile)
    if point is None:
        if length is None:
            return None
        return RunLengthVerdict(
            too_short=False,
            why=f"this run trains at most {length.micro_batches:,} micro-batches per GPU ({length.why}); FP8's "
            f"longer start is not weighed against it: not measured for {kind_of(training)} with checkpointing "
            f"{checkpointing} against BF16 {bf16} on a model this size or larger (bench/README.md)",
        )
    if point.micro_batches is None:
        return RunLengthVerdict(
            too_short=True,
            why=f"{slower_than_bf16(point, training)}: FP8 would not catch up at any run length",
        )
    if length is None:
        return None
    too_short = length.micro_batches < point.micro_batches
    return RunLengthVerdict(
        too_short=too_short,
        why=f"this run trains at most {length.micro_batches:,} micro-batches per GPU ({length.why}), and FP8's "
        f"longer start was measured to pay back {'only ' if too_short else ''}after {point.micro_batches:,} "
        f"micro-batches of {point.tokens} tokens against BF16 {bf16} ({point.measured})",
    )


def compiled_bf16_tip(points: tuple[Payback, ...], training: TrainingConfig, model: ModelFacts | None) -> str | None:
    """For an FP8 run whose YAML leaves BF16 eager: where FP8's steps were measured slower than compiled BF16's,
    FP8 still beats the eager BF16 the YAML asks for, and compiled BF16 beat both. Said, not applied."""
    if training.torch_compile or model is None:
        return None
    point = comparable_point(points, training, model, bf16_compiled=True)
    if point is None or point.micro_batches is not None:
        return None
    return (
        f"{slower_than_bf16(point, training)}: `--bf16` with `torch_compile: true` would run faster than FP8 "
        "(after a longer start than eager BF16's)"
    )


def slower_than_bf16(point: Payback, training: TrainingConfig) -> str:
    bf16 = "compiled" if point.bf16_compiled else "eager"
    checkpointing = "on" if point.checkpointing else "off"
    return (
        f"FP8's steps were measured slower than BF16 {bf16}'s at {point.tokens} tokens per micro-batch with "
        f"checkpointing {checkpointing} ({point.measured}), and this run's are at most "
        f"{training.micro_batch_size} x {training.cutoff_len}"
    )


def kind_of(training: TrainingConfig) -> str:
    """The points' kind: full stands for freeze too, lora for OFT."""
    return "lora" if training.finetuning_type in ("lora", "oft") else "full"
