"""One immutable LaunchPlan per run: inspect -> decide -> render, before anything launches.

As Accelerate keeps preparing a launch (`prepare_*_cmd_env` in `utils/launch.py`) apart from running it
(`commands/launch.py`), the plan holds everything the run needs: the final LLaMA-Factory keys each with where it
came from, the Accelerate values, the command and the environment of the ranks, processes and placement, the
resume, the memory estimate and the reasons. The report prints it, `train --dry-run --json` emits it, the launcher
runs it; none of them works anything out again."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from . import __version__, contract, paths
from .accelerate_config import check_user_config_matches, render_accelerate_config
from .cpu_processes import cpu_environment, started_by_torchrun
from .errors import ConfigInvalid
from .gpus import GpuInventory
from .inspection import Inspection, inspect_run
from .model_facts import ModelLookup
from .policy import Decision, decide
from .precedence import Source
from .rehearsal import RehearsalRequest, check_rehearsable, rehearsal_accelerate_config
from .request import Request
from .resume import Resume
from .run_info import ranks_dir, state_path
from .run_lock import lock_path
from .topology import Topology
from .training_config import TrainingConfig

RANK_MODULE = "llamafactory_fp8.rank"  # what `accelerate launch` runs in each process
TRANSFORMERS_DDP_TIMEOUT_S = 1800  # TrainingArguments.ddp_timeout's default


@dataclass(frozen=True, kw_only=True)
class TrainingKey:
    """One LLaMA-Factory key as the trainer will get it."""

    name: str
    """The key."""
    value: object
    """Its final value."""
    source: Source
    """Where the final value came from."""
    argument: str | None = None
    """How it is passed on the command line; None: LLaMA-Factory reads it from the YAML."""
    replaces: tuple[object, ...] = ()
    """(the user's value,) where the final value differs from it."""


@dataclass(frozen=True, kw_only=True)
class AccelerateConfig:
    """The Accelerate config the run launches with."""

    path: Path
    """Where it is written (or the user's own file)."""
    sources: tuple[Path, ...]
    """The shipped files it was layered from; () for the user's own file."""
    values: Mapping[str, object] | None
    """Its values; None for the user's own file, used as is."""


@dataclass(frozen=True, kw_only=True)
class LaunchPlan:
    """Everything a run needs, decided before it starts."""

    version: str
    """This launcher's version."""
    training: TrainingConfig
    """The training YAML with the user's key=value."""
    gpus: GpuInventory
    """The GPUs found."""
    model: ModelLookup
    """The model's shape, or why it is unknown."""
    decision: Decision
    """Precision, backend, processes, strategy, memory and the reasons."""
    topology: Topology
    """This node's place in the job."""
    resume: Resume | None
    """What is resumed, if anything."""
    training_keys: tuple[TrainingKey, ...]
    """The final LLaMA-Factory keys."""
    accelerate: AccelerateConfig
    """The Accelerate config."""
    command: tuple[str, ...]
    """The command the launcher runs."""
    environment: Mapping[str, str]
    """Added to the launcher's own environment for the ranks."""
    workdir: Path
    """Where the command runs."""
    output_dir: Path
    """The run's output_dir."""
    set_aside: Path | None
    """Where the launcher moves what output_dir holds before the run (--restart); None: nothing to move."""
    outputs_stay_in_container: bool
    """Whether the outputs are lost with the container (the built-in demo without a volume)."""
    lock: Path
    """The file whose lock marks this node's live run in output_dir."""
    dataset_info: Mapping | None
    """The merged dataset_info.json the launcher writes into `dataset_dir` (the run's own folder); None: the YAML's
    dataset_dir names the Hub, and is left alone."""
    dataset_dir: Path
    """The folder passed as LLaMA-Factory's dataset_dir."""
    run_record: Path
    """Where this node records how the run ended."""
    state_file: Path
    """Where the launcher leaves its state for the healthcheck."""
    progress_dir: Path
    """Where this node's ranks write their progress."""
    demo_model: Path | None
    """Where the demo's tiny model will be built first, when it is missing."""
    installed_strategies: frozenset[str]
    """The strategies this environment could run."""
    rehearsal: RehearsalRequest | None = None
    """`rehearse`: rank 0 of the planned job, alone on this node's one device; None for a real run."""

    @property
    def replaced(self) -> tuple[TrainingKey, ...]:
        return tuple(key for key in self.training_keys if key.replaces)


def plan_run(request: Request, environ: Mapping[str, str] = os.environ) -> LaunchPlan:
    return make_plan(inspect_run(request, environ))


def make_plan(inspection: Inspection) -> LaunchPlan:
    decision = decide(inspection)
    keys = final_training_keys(inspection, decision)
    accelerate = _accelerate_config(inspection, decision)
    rehearsal = _rehearsal(inspection, decision)
    if rehearsal is not None:
        accelerate = replace(accelerate, values=rehearsal_accelerate_config(dict(accelerate.values)))
    arguments = {key.name: key.argument for key in keys if key.argument is not None}
    demo_missing = inspection.uses_demo and inspection.model.facts is None
    state_file = state_path(inspection.run_folder)
    progress = ranks_dir(inspection.run_folder)
    timeout_s = int(next((key.value for key in keys if key.name == "ddp_timeout"), TRANSFORMERS_DDP_TIMEOUT_S))
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
        command=build_command(accelerate.path, inspection.resolve(inspection.training.path), arguments),
        environment={
            **rank_environment(inspection.topology, decision, progress, timeout_s),
            **(rehearsal.environment() if rehearsal else {}),
        },
        workdir=inspection.workdir,
        output_dir=inspection.output_dir,
        set_aside=inspection.set_aside,
        outputs_stay_in_container=inspection.outputs_stay_in_container,
        lock=lock_path(inspection.output_dir, inspection.topology.node_suffix),
        dataset_info=inspection.dataset_info,
        dataset_dir=_dataset_dir(inspection),
        run_record=inspection.run_record,
        state_file=state_file,
        progress_dir=progress,
        demo_model=inspection.resolve(inspection.training.model) if demo_missing else None,
        installed_strategies=inspection.installed_strategies,
        rehearsal=rehearsal,
    )


def _rehearsal_keys(inspection: Inspection) -> dict[str, object]:
    """A rehearsal trains noise (its collectives carry nothing): it saves nothing, into a folder of its own."""
    if not inspection.request.rehearsal:
        return {}
    return {"save_strategy": "no", "output_dir": str(inspection.output_dir), "overwrite_output_dir": True}


def _rehearsal(inspection: Inspection, decision: Decision) -> RehearsalRequest | None:
    if not inspection.request.rehearsal:
        return None
    check_rehearsable(decision.strategy.strategy)
    if inspection.request.accelerate_config is not None:
        raise ConfigInvalid(
            "rehearse renders its own Accelerate config (one process of the job's): drop --accelerate-config"
        )
    return RehearsalRequest(
        world_size=decision.world_size,
        processes_per_node=decision.processes_per_node,
        strategy=decision.strategy.strategy.name,
        precision=decision.precision,
        report=str(inspection.output_dir / "rehearsal.json"),
        estimate_gib=decision.memory.allocated_gib if decision.memory else None,
    )


def build_command(accelerate_config: Path, training_config: Path, arguments: Mapping[str, str]) -> tuple[str, ...]:
    """LLaMA-Factory's `run_exp` through our per-rank entry (it adds the stop-on-request callback) under
    `accelerate launch`: `llamafactory-cli train` would re-launch itself through torchrun when it sees several GPUs,
    nesting two launchers. `--quiet`: a failed trainer's own traceback is the one worth reading, not Accelerate's
    on top of it."""
    launch = (sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file", str(accelerate_config))
    return (*launch, "-m", RANK_MODULE, str(training_config), *(f"{key}={text}" for key, text in arguments.items()))


def rank_environment(topology: Topology, decision: Decision, progress: Path, timeout_s: int) -> dict[str, str]:
    """What the ranks get on top of the launcher's environment. Logs must reach `docker logs` as they happen,
    not when a buffer fills; each rank reports its progress into `progress`; a collective that waits longer than the
    run's ddp_timeout for a lost node fails. On the CPU, `accelerate launch` starts one process per node and expects
    MPI to name its rank, so the launcher does. The ranks install the plan's FP8 recipe, if any."""
    env = {
        "PYTHONUNBUFFERED": "1",
        contract.PROGRESS_DIR.name: str(progress),
        contract.COLLECTIVE_TIMEOUT_S.name: str(timeout_s),
    }
    if decision.fp8_recipe is not None:
        env[contract.FP8_RECIPE.name] = decision.fp8_recipe
    if decision.device == "cpu" and started_by_torchrun(decision.strategy.strategy, decision.processes_per_node):
        env.update(cpu_environment(decision.processes_per_node))
    elif decision.device == "cpu" and topology.num_machines > 1:
        env.update(RANK=str(topology.machine_rank), WORLD_SIZE=str(topology.num_machines), LOCAL_RANK="0")
    return env


def format_value(value: object) -> str:
    """Spell a value the way LLaMA-Factory's OmegaConf command line reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and yaml.safe_load(value or "''") != value:
        return json.dumps(value)  # text YAML would read as something else: `no` is false to it, "no" is text
    return str(value)


def final_training_keys(inspection: Inspection, decision: Decision) -> tuple[TrainingKey, ...]:
    """The YAML's keys, then the user's key=value, then what the launcher sets (precision, strategy, resume):
    later wins. Every key whose final value differs from the user's own is marked with what it replaces."""
    training = inspection.training
    layers: list[tuple[Source, dict[str, object]]] = [
        ("yaml", dict(training.written)),
        ("override", {name: training.values[name] for name in training.overrides}),
        ("auto", _dataset_keys(inspection)),
        ("auto", _release_file_keys(inspection)),
        ("flag" if decision.precision_source == "flag" else "auto", decision.precision_keys()),
        ("flag" if decision.strategy.source == "flag" else "auto", _strategy_keys(inspection, decision)),
        ("resume", inspection.resume.training_keys if inspection.resume else {}),
        ("auto", _rehearsal_keys(inspection)),
    ]
    final: dict[str, tuple[object, Source]] = {}
    for source, values in layers:
        for name, value in values.items():
            final.pop(name, None)  # the command line lists the launcher's keys in the order they were set
            final[name] = (value, source)
    keys = []
    for name, (value, source) in final.items():
        argument = None
        if source == "override":
            argument = training.overrides[name]  # passed on exactly as typed
        elif source != "yaml":
            argument = format_value(value)
        keys.append(
            TrainingKey(
                name=name, value=value, source=source, argument=argument, replaces=_replaced(training, name, value)
            )
        )
    return tuple(keys)


def _replaced(training: TrainingConfig, name: str, value: object) -> tuple[object, ...]:
    """(the user's value,) where the final value differs from it: a key=value the launcher replaced, else the
    YAML's key, whatever replaced it (the user's key=value included)."""
    if name in training.overrides and training.values[name] != value:
        return (training.values[name],)
    if name in training.written and training.written[name] != value:
        return (training.written[name],)
    return ()


def _dataset_dir(inspection: Inspection) -> Path:
    return inspection.run_folder / "datasets" if inspection.dataset_info is not None else inspection.users_dataset_dir


def _dataset_keys(inspection: Inspection) -> dict[str, object]:
    """LLaMA-Factory reads one dataset_info.json, from dataset_dir: the run's own folder, holding the user's and
    LLaMA-Factory's demo datasets merged (every path in it absolute), while media_dir stays the user's folder."""
    if inspection.dataset_info is None:
        return {}
    keys: dict[str, object] = {"dataset_dir": str(_dataset_dir(inspection))}
    if not inspection.training.values.get("media_dir"):
        keys["media_dir"] = str(inspection.users_dataset_dir)
    return keys


def _release_file_keys(inspection: Inspection) -> dict[str, object]:
    """A `deepspeed` file found in LLaMA-Factory's release rather than under workdir, passed on as the absolute
    path the plan read, for LLaMA-Factory to read the same."""
    found = inspection.deepspeed_from_release
    return {"deepspeed": str(found)} if found is not None else {}


def _strategy_keys(inspection: Inspection, decision: Decision) -> dict[str, object]:
    """LLaMA-Factory's `deepspeed` for a DeepSpeed strategy the launcher chose; the YAML's own strategy keys
    switched off where a flag chose another one."""
    choice = decision.strategy
    if choice.kept_from_yaml:
        return {}
    keys: dict[str, object] = {}
    if choice.source == "flag":
        named = ("deepspeed", "fsdp", "fsdp_config")
        keys.update({name: None for name in named if inspection.training.values.get(name) not in (None, "")})
    if choice.strategy.deepspeed_config:
        keys["deepspeed"] = str(paths.deepspeed_config(choice.strategy.deepspeed_config))
    return keys


def _accelerate_config(inspection: Inspection, decision: Decision) -> AccelerateConfig:
    own = inspection.request.accelerate_config
    if own is not None:
        check_user_config_matches(own, decision.accelerate_precision)
        return AccelerateConfig(path=own.resolve(), sources=(), values=None)
    values, sources = render_accelerate_config(decision, inspection.topology, paths.accelerate_configs_dir())
    path = inspection.output_dir / f"accelerate_config{inspection.topology.node_suffix}.yaml"
    return AccelerateConfig(path=path, sources=sources, values=values)
