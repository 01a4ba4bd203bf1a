"""FP8's longer start against the run's length. torchao's FP8 runs compiled, and its first step comes later than
BF16's, compiled or eager; its faster steps win that back only after enough micro-batches. A run known to be
shorter (max_steps, or epochs over max_samples) is faster in BF16. The measured points (backends.Payback) live on
the backend's record; bench/payback.py computes them from bench/results/."""

from __future__ import annotations

from .backends import Payback
from .model_facts import ModelFacts
from .training_config import TrainingConfig


def too_short_for_fp8(
    points: tuple[Payback, ...], training: TrainingConfig, model: ModelFacts | None, world: int
) -> str | None:
    """Why this run ends before FP8 pays back its start, or None: its length is unbounded, nothing comparable was
    measured, or it is long enough. Comparable points are of the same kind, on models at least this size, at the
    most tokens up to the run's (fewer tokens, less to gain a step; the run's own are an upper bound, cutoff_len),
    else at the fewest; of those, the one that pays back soonest, so that auto leaves FP8 only where every
    comparable measurement had it behind."""
    length = training.run_length(world)
    if length is None or model is None:
        return None
    kind = "lora" if training.finetuning_type in ("lora", "oft") else "full"
    same = [
        point
        for point in points
        if (point.finetuning, point.checkpointing, point.bf16_compiled)
        == (kind, training.gradient_checkpointing, training.torch_compile)
        and model.num_parameters <= point.parameters
    ]
    if not same:
        return None
    tokens = training.micro_batch_size * training.cutoff_len
    below = [point.tokens for point in same if point.tokens <= tokens]
    level = max(below) if below else min(point.tokens for point in same)
    point = min((p for p in same if p.tokens == level), key=lambda p: p.micro_batches)
    if length.micro_batches >= point.micro_batches:
        return None
    bf16 = "compiled" if point.bf16_compiled else "eager"
    return (
        f"this run trains at most {length.micro_batches:,} micro-batches per GPU ({length.why}), and FP8's longer "
        f"start was measured to pay back only after {point.micro_batches:,} of {point.tokens} tokens against BF16 "
        f"{bf16} ({point.measured})"
    )
