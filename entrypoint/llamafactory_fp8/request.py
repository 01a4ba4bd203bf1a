"""What the user asked for with the launcher's own flags, as the command line makes it (cli.py); LLaMA-Factory's
own keys travel in `overrides`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .backends import FP8_BACKENDS
from .fp8_recipe import RECIPES
from .strategies import STRATEGIES

STRATEGY_CHOICES = ("auto", *(strategy.name for strategy in STRATEGIES))
BACKEND_CHOICES = ("auto", *(backend.name for backend in FP8_BACKENDS))
# auto: the backend record's recipe for the fine-tuning type; default: torchao's and Accelerate's own choice
FP8_RECIPE_CHOICES = ("auto", "default", *RECIPES)


@dataclass(frozen=True, kw_only=True)
class Request:
    """The launcher's flags, parsed."""

    config: Path | None = None
    """The training YAML; None: the built-in demo."""
    overrides: tuple[str, ...] = ()
    """LLaMA-Factory keys as typed: key=value."""
    precision: Literal["auto", "fp8", "bf16"] = "auto"
    """--auto, --fp8 or --bf16."""
    backend: str = "auto"
    """--backend: one of BACKEND_CHOICES."""
    fp8_recipe: str = "auto"
    """--fp8-recipe: one of FP8_RECIPE_CHOICES."""
    strategy: str = "auto"
    """--strategy: one of STRATEGY_CHOICES."""
    allow_cpu: bool = False
    """--allow-cpu: train on the CPU where no GPU is visible."""
    memory_check: bool = True
    """False with --no-memory-check: launch even where nothing is estimated to fit."""
    accelerate_config: Path | None = None
    """--accelerate-config: the user's own file, used as is."""
    processes: int | None = None
    """--processes: training processes on this node; None: one per visible GPU, one on the CPU. More than this node
    has GPUs only for a rehearsal."""
    rehearsal: bool = False
    """`rehearse`: run rank 0 of the planned job alone on this node's one device (rehearsal.py)."""
    restart: bool = False
    """--restart: move what output_dir holds aside and start over, instead of resuming or refusing."""
