"""Loss curves of long runs as a PNG: the curves themselves, and each run's distance from the first BF16 run,
where a second BF16 run draws the noise band."""

from __future__ import annotations

from pathlib import Path

from .cases import Result
from .parity import LONG_RUN_STEPS, PARITY_WINDOW, bf16_runs

SMOOTHING = 10  # logged losses averaged in the lower panel: the parity window at the bench's logging_steps of 5


def plot_losses(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long_runs = [r for r in results if r.case.steps >= LONG_RUN_STEPS and r.losses]
    figure, (curves, distance) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, height_ratios=(3, 2))
    color = {r.case.name: f"C{i}" for i, r in enumerate(long_runs)}  # one colour per run in both panels
    for r in long_runs:
        steps = sorted(r.losses)
        curves.plot(steps, [r.losses[s] for s in steps], label=r.case.name, linewidth=1, color=color[r.case.name])
    curves.set_ylabel("training loss (mean over each logged interval)")
    curves.legend(fontsize=7)
    drawn = set()
    for fp8 in (r for r in long_runs if r.case.precision == "fp8"):
        base, *repeats = bf16_runs(fp8, results) or [None]
        if base is None:
            continue
        for other in [*repeats, fp8]:
            if other.case.name in drawn:
                continue  # a BF16 repeat serves every FP8 run beside it
            drawn.add(other.case.name)
            steps = sorted(s for s in set(base.losses) & set(other.losses) if s <= base.case.steps)
            ours = trailing_means([other.losses[s] for s in steps], SMOOTHING)
            theirs = trailing_means([base.losses[s] for s in steps], SMOOTHING)
            relative = [100 * (mine / reference - 1) for mine, reference in zip(ours, theirs, strict=True)]
            label = f"{other.case.name}: {relative[-1]:+.2f}% at the end"
            width = 1.5 if other is fp8 else 1
            distance.plot(steps, relative, label=label, linewidth=width, color=color[other.case.name])
    distance.axhline(0, color="grey", linewidth=0.8)
    distance.set_xlabel("step")
    distance.set_ylabel(f"% from the first BF16 run\n(mean of the last {PARITY_WINDOW} steps)")
    distance.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def trailing_means(values: list[float], window: int) -> list[float]:
    """Each value's mean with the window - 1 values before it (fewer at the start)."""
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]
