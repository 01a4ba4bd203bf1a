"""Loss parity of a long run: FP8's mean loss over its last steps against BF16's, beside two BF16 runs' (the noise
band between runs of one precision)."""

from __future__ import annotations

import statistics
from dataclasses import replace

from .cases import Case, Result

LONG_RUN_STEPS = 200  # a run this long is compared for loss parity, and its loss curves plotted
PARITY_WINDOW = 50  # steps at the end of a run whose mean loss is compared


def parity(fp8: Result, results: list[Result]) -> dict | None:
    """FP8's mean loss over its last steps against the first BF16 run's of the same batch and length, beside the
    same for a repeated BF16 run (the noise band; None without one)."""
    runs = bf16_runs(fp8, results)
    if not runs or not final_loss(fp8):
        return None
    base = final_loss(runs[0])
    return {
        "steps": fp8.case.steps,
        "fp8_vs_bf16_rel": round(final_loss(fp8) / base - 1, 4),
        "bf16_repeat_rel": round(final_loss(runs[1]) / base - 1, 4) if len(runs) > 1 else None,
    }


def same_training(case: Case, other: Case) -> bool:
    """The same data, batch, length and compile setting, whatever the precision, recipe or repeat."""
    return (replace(case, repeat=0).pair, case.compile, case.steps) == (
        replace(other, repeat=0).pair,
        other.compile,
        other.steps,
    )


def final_loss(result: Result) -> float | None:
    """The mean loss over the run's last PARITY_WINDOW steps. Each logged loss is already the mean over its logging
    interval, so the logged losses of those steps average them all."""
    last = result.case.steps
    window = [loss for step, loss in result.losses.items() if last - PARITY_WINDOW < step <= last]
    return statistics.mean(window) if window else None


def bf16_runs(fp8: Result, results: list[Result]) -> list[Result]:
    """The BF16 runs an FP8 run is compared with, first run first."""
    runs = [r for r in results if r.case.precision == "bf16" and same_training(r.case, fp8.case) and final_loss(r)]
    return sorted(runs, key=lambda r: r.case.repeat)
