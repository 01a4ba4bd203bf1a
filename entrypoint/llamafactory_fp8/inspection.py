"""Inspect: everything the decision needs, found once, before anything is decided. The training YAML (parsed
once), the node's place in the job, whether output_dir can be written and what the last run there left, the GPUs
(NVML), the model's shape (config.json, fetched alone where needed), and what this environment has installed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import paths
from .backends import FP8_BACKENDS, installed_fp8_backends
from .fp8_recipe import RECIPES
from .gpus import GpuInventory, read_gpus
from .model_facts import ModelLookup, look_up_model
from .records import read_record
from .resume import Resume, RunRecord, plan_resume, record_path
from .strategies import STRATEGIES, installed_strategies
from .topology import Topology, read_topology
from .training_config import TrainingConfig, check_output_dir_writable, load_training_config

STRATEGY_CHOICES = ("auto", *(strategy.name for strategy in STRATEGIES))
BACKEND_CHOICES = ("auto", *(backend.name for backend in FP8_BACKENDS))
# auto: the backend record's recipe for the fine-tuning type; default: torchao's and Accelerate's own choice
FP8_RECIPE_CHOICES = ("auto", "default", *RECIPES)


@dataclass(frozen=True)
class Request:
    """What the user asked for with the launcher's own flags (LLaMA-Factory's keys are in `overrides`)."""

    config: Path | None = None  # None: the built-in demo
    overrides: tuple[str, ...] = ()
    precision: Literal["auto", "fp8", "bf16"] = "auto"
    backend: str = "auto"  # one of BACKEND_CHOICES
    fp8_recipe: str = "auto"  # one of FP8_RECIPE_CHOICES
    strategy: str = "auto"  # one of STRATEGY_CHOICES
    allow_cpu: bool = False
    memory_check: bool = True
    accelerate_config: Path | None = None


@dataclass(frozen=True)
class Inspection:
    request: Request
    training: TrainingConfig
    workdir: Path  # where LLaMA-Factory runs: relative paths in the YAML are relative to it
    uses_demo: bool
    output_dir: Path
    topology: Topology
    run_record: Path
    resume: Resume | None
    gpus: GpuInventory
    model: ModelLookup
    installed_backends: frozenset[str]
    installed_strategies: frozenset[str]
    host_memory_gib: float | None

    def resolve(self, path: str | Path) -> Path:
        return self.workdir / path


def inspect_run(request: Request, environ: Mapping[str, str] = os.environ) -> Inspection:
    """Each problem a user can fix ends here in one line, before any decision: YAML, multi-node environment,
    output_dir, a gated or missing model."""
    config_path = paths.demo_config() if request.config is None else request.config
    uses_demo = config_path.is_file() and config_path.samefile(paths.demo_config())
    workdir = paths.project_home() if request.config is None else Path.cwd()
    training = load_training_config(config_path, list(request.overrides))
    topology = read_topology(environ)
    output_dir = workdir / training.output_dir
    check_output_dir_writable(output_dir)
    run_record = record_path(output_dir, topology)
    resume = plan_resume(output_dir, read_record(RunRecord, run_record), training.resume_from_checkpoint)
    gpus = read_gpus(environ)
    if uses_demo and not (workdir / training.model / "config.json").is_file():
        model = ModelLookup(training.model, None, "the demo's tiny model, built offline before training")
    else:
        model = look_up_model(
            training.model, workdir, training.model_revision, training.hf_hub_token, training.cache_dir, environ
        )
    return Inspection(
        request=request,
        training=training,
        workdir=workdir,
        uses_demo=uses_demo,
        output_dir=output_dir,
        topology=topology,
        run_record=run_record,
        resume=resume,
        gpus=gpus,
        model=model,
        installed_backends=installed_fp8_backends(),
        installed_strategies=installed_strategies(),
        host_memory_gib=_host_memory_gib(),
    )


def _host_memory_gib() -> float | None:
    """This node's memory, which CPU offloading fills with the training state."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return None
