"""Loss curves as a PNG."""

from __future__ import annotations

from pathlib import Path

from .cases import Result


def plot_losses(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for r in results:
        if r.losses:
            steps = sorted(r.losses)
            axis.plot(steps, [r.losses[s] for s in steps], label=r.case.name)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
