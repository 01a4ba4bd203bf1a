"""One immutable LaunchPlan per run: inspect -> decide -> render, before anything launches.

As Accelerate keeps preparing a launch (`prepare_*_cmd_env` in `utils/launch.py`) apart from running it
(`commands/launch.py`), the plan holds everything the run needs: the final LLaMA-Factory keys each with where it
came from, the Accelerate values, processes and placement, the resume, the memory estimate and the reasons. The
report prints it, `train --dry-run --json` emits it, the launcher runs it; none of them works anything out again."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import __version__, paths
from .accelerate_config import check_user_config_matches, render_accelerate_config
from .gpus import GpuInventory
from .inspection import Inspection, Request, inspect_run
from .launcher import build_command, child_environment, format_value
from .model_facts import ModelLookup
from .policy import Decision, decide
from .resume import Resume
from .run_info import ranks_dir, state_path
from .topology import Topology
from .training_config import TrainingConfig

KeySource = Literal["yaml", "flag", "auto", "strategy", "resume"]


@dataclass(frozen=True)
class TrainingKey:
    """One LLaMA-Factory key as the trainer will get it. `replaces` holds the user's own value (YAML or key=value)
    where the final value differs from it."""

    name: str
    value: object
    source: KeySource
    argument: str | None = None  # how it is passed on the command line; None: LLaMA-Factory reads it from the YAML
    replaces: tuple[object, ...] = ()  # (the user's value,) where it was replaced


@dataclass(frozen=True)
class AccelerateConfig:
    path: Path
    sources: tuple[Path, ...]  # () when the user's own file is used as is
    values: Mapping[str, object] | None  # None when the user's own file is used as is


@dataclass(frozen=True)
class LaunchPlan:
    version: str
    training: TrainingConfig
    gpus: GpuInventory
    model: ModelLookup
    decision: Decision
    topology: Topology
    resume: Resume | None
    training_keys: tuple[TrainingKey, ...]
    accelerate: AccelerateConfig
    command: tuple[str, ...]
    environment: Mapping[str, str]  # added to the launcher's own for the trainer
    workdir: Path
    output_dir: Path
    run_record: Path
    state_file: Path
    demo_model: Path | None  # where the demo's tiny model will be built first, when it is missing
    installed_strategies: frozenset[str]

    @property
    def replaced(self) -> tuple[TrainingKey, ...]:
        return tuple(key for key in self.training_keys if key.replaces)


def plan_run(request: Request, environ: Mapping[str, str] = os.environ) -> LaunchPlan:
    return make_plan(inspect_run(request, environ), environ)


TRANSFORMERS_DDP_TIMEOUT_S = 1800  # TrainingArguments.ddp_timeout's default


def make_plan(inspection: Inspection, environ: Mapping[str, str] = os.environ) -> LaunchPlan:
    decision = decide(inspection)
    keys = final_training_keys(inspection, decision)
    accelerate = _accelerate_config(inspection, decision)
    command = build_command(
        accelerate.path,
        inspection.resolve(inspection.training.path),
        {k.name: k.argument for k in keys if k.argument is not None},
    )
    demo_missing = inspection.uses_demo and inspection.model.facts is None
    state_file = state_path(environ)
    collective_timeout_s = int(
        next((key.value for key in keys if key.name == "ddp_timeout"), TRANSFORMERS_DDP_TIMEOUT_S)
    )
    return LaunchPlan(
        version=__version__,
        training=inspection.training,
        gpus=inspection.gpus,
        model=inspection.model,
        decision=decision,
        topology=inspection.topology,
        resume=inspection.resume,
        training_keys=keys,
        accelerate=accelerate,
        command=tuple(command),
        environment=child_environment(
            inspection.topology, decision.device, ranks_dir(state_file), collective_timeout_s, decision.fp8_recipe
        ),
        workdir=inspection.workdir,
        output_dir=inspection.output_dir,
        run_record=inspection.run_record,
        state_file=state_file,
        demo_model=inspection.resolve(inspection.training.model) if demo_missing else None,
        installed_strategies=inspection.installed_strategies,
    )


def final_training_keys(inspection: Inspection, decision: Decision) -> tuple[TrainingKey, ...]:
    """The YAML's keys, then the user's key=value, then what the launcher sets (precision, strategy, resume):
    later wins. Every key whose final value differs from the user's own is marked with what it replaces."""
    training = inspection.training
    layers: list[tuple[KeySource, dict[str, object]]] = [
        ("yaml", dict(training.written)),
        ("flag", {name: training.values[name] for name in training.overrides}),
        ("flag" if decision.precision_source == "flag" else "auto", decision.precision_keys()),
        ("flag" if decision.strategy.source == "flag" else "strategy", _strategy_keys(inspection, decision)),
        ("resume", inspection.resume.training_keys if inspection.resume else {}),
    ]
    final: dict[str, tuple[object, KeySource]] = {}
    for source, values in layers:
        for name, value in values.items():
            final.pop(name, None)  # the command line lists the launcher's keys in the order they were set
            final[name] = (value, source)
    keys = []
    for name, (value, source) in final.items():
        argument = None
        if source == "flag" and name in training.overrides and value == training.values[name]:
            argument = training.overrides[name]  # passed on exactly as typed
        elif source != "yaml":
            argument = format_value(value)
        keys.append(TrainingKey(name, value, source, argument, _replaced(training, name, value)))
    return tuple(keys)


def _replaced(training: TrainingConfig, name: str, value: object) -> tuple[object, ...]:
    """(the user's value,) where the final value differs from it: a key=value the launcher replaced, else the
    YAML's key, whatever replaced it (the user's key=value included)."""
    if name in training.overrides and training.values[name] != value:
        return (training.values[name],)
    if name in training.written and training.written[name] != value:
        return (training.written[name],)
    return ()


def _strategy_keys(inspection: Inspection, decision: Decision) -> dict[str, object]:
    """LLaMA-Factory's `deepspeed` for a DeepSpeed strategy the launcher chose; the YAML's own strategy keys
    switched off where a flag chose another one."""
    choice = decision.strategy
    if choice.kept_from_yaml or decision.device == "cpu":
        return {}
    keys: dict[str, object] = {}
    if choice.source == "flag":
        keys.update(
            {
                name: None
                for name in ("deepspeed", "fsdp", "fsdp_config")
                if inspection.training.values.get(name) not in (None, "")
            }
        )
    if choice.strategy.deepspeed_config:
        keys["deepspeed"] = str(paths.deepspeed_config(choice.strategy.deepspeed_config))
    return keys


def _accelerate_config(inspection: Inspection, decision: Decision) -> AccelerateConfig:
    own = inspection.request.accelerate_config
    if own is not None:
        check_user_config_matches(own, decision.accelerate_precision)
        return AccelerateConfig(own.resolve(), (), None)
    values, sources = render_accelerate_config(decision, inspection.topology, paths.accelerate_configs_dir())
    path = inspection.output_dir / f"accelerate_config{inspection.topology.node_suffix}.yaml"
    return AccelerateConfig(path, sources, values)
