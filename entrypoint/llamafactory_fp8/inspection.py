"""Inspect: everything the decision needs, found once, before anything is decided. The environment's settings,
the training YAML (parsed once, with the DeepSpeed file it names), the node's place in the job, whether output_dir
can be written and what the last run there left, the GPUs (NVML), the model's shape (config.json, fetched alone
where needed), and what this environment has installed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import contract, paths
from .backends import installed_fp8_backends
from .capabilities import refuse_unsupported
from .dataset_files import check_datasets
from .errors import (
    ConfigInvalid,
    DatasetUnusable,
    InstallIncomplete,
    OutputNotOnVolume,
    ResumeMismatch,
    RunFinished,
    RunInProgress,
)
from .gpus import GpuInventory, read_gpus
from .lf_data import DATASET_INFO, DatasetInfoUnreadable, merged_dataset_info, names_a_folder
from .lf_files import lf_data_dir, lf_dir
from .lf_schema import SchemaUnavailable, check_keys, load_schema
from .model_facts import ModelLookup, check_adapters, look_up_model
from .records import read_record
from .request import Request
from .resume import Resume, RunRecord, checkpoint_mismatch, checkpoints, finished_run, plan_resume, record_path
from .run_info import run_dir
from .run_lock import held_elsewhere, lock_path
from .strategies import installed_strategies
from .topology import Topology, read_topology
from .training_config import TrainingConfig, check_writable, load_training_config
from .volumes import ephemeral_mount, own_mount_table


@dataclass(frozen=True, kw_only=True)
class Inspection:
    """What was found; nothing here is a choice."""

    request: Request
    """The launcher's flags."""
    training: TrainingConfig
    """The training YAML with the user's key=value applied."""
    key_warnings: tuple[str, ...]
    """What LLaMA-Factory's schema says of keys that will run, but not as the user may think (max_steps: -5)."""
    deepspeed_json: Mapping | None
    """The DeepSpeed config the YAML's `deepspeed` names (read from its file), or None."""
    deepspeed_from_release: Path | None
    """LLaMA-Factory's own copy of the YAML's relative `deepspeed` file, where workdir has none: its examples name
    examples/deepspeed/... from its source root, which a user's folder is not; None otherwise."""
    dataset_info: Mapping | None
    """The dataset_info.json the run reads: LLaMA-Factory's demo datasets and the user's own, merged; None where
    `dataset_dir` names the Hub."""
    users_dataset_dir: Path
    """The user's dataset_dir, where their files and media are."""
    workdir: Path
    """Where LLaMA-Factory runs: relative paths in the YAML are relative to it."""
    uses_demo: bool
    """Whether this is the built-in demo's YAML."""
    output_dir: Path
    """The YAML's output_dir under workdir."""
    set_aside: Path | None
    """Where --restart moves what output_dir holds before the run; None: nothing to move."""
    outputs_stay_in_container: bool
    """The built-in demo in a container with no volume at its output_dir: it runs, and says so at the end."""
    run_folder: Path
    """This run's own state folder (stop requests, progress), apart from every other run's."""
    topology: Topology
    """This node's place in the job."""
    run_record: Path
    """Where this node records how its run ended, for the next run."""
    resume: Resume | None
    """What the last run in output_dir left to resume; None: nothing to do."""
    gpus: GpuInventory
    """The GPUs NVML sees, as CUDA_VISIBLE_DEVICES filters them."""
    model: ModelLookup
    """The model's shape, or why it is unknown."""
    installed_backends: frozenset[str]
    """The FP8 backends this environment could load."""
    installed_strategies: frozenset[str]
    """The strategies this environment could run."""
    host_memory_gib: float | None
    """The node's memory, which loading and CPU offloading fill."""
    host_memory_is_this_machines: bool = True
    """Read from this machine, not given by LLAMAFACTORY_FP8_HOST_MEMORY_GIB (which a rehearsal takes as the job's
    node's)."""

    def resolve(self, path: str | Path) -> Path:
        return self.workdir / path

    def node_memory(self, processes: int) -> tuple[float | None, str]:
        """The CPU memory of the node a plan of `processes` per node is for, and where the figure comes from. A
        rehearsal plans for the job's node: LLAMAFACTORY_FP8_HOST_MEMORY_GIB where given, else N times this
        machine's for N GPUs like its own (cloud machines scale so), which leaves rank 0 its share here."""
        here, gpus = self.host_memory_gib, self.gpus.count
        if not (self.request.rehearsal and processes > gpus > 0) or here is None:
            return here, "here"
        if not self.host_memory_is_this_machines:
            return here, f"for the job's node ({contract.HOST_MEMORY_GIB.name})"
        scale = processes // gpus
        return here * scale, f"on a node of {scale} such GPUs, {scale} x the {here:.0f} here"


def inspect_run(request: Request, environ: Mapping[str, str] = os.environ) -> Inspection:
    """Each problem a user can fix ends here in one line, before any decision: a setting, the YAML, the multi-node
    environment, output_dir, the DeepSpeed file, a gated or missing model."""
    contract.check_all(environ)
    config_path = paths.demo_config() if request.config is None else request.config
    uses_demo = config_path.is_file() and config_path.samefile(paths.demo_config())
    workdir = paths.project_home() if request.config is None else Path.cwd()
    training = load_training_config(config_path, list(request.overrides))
    refuse_unsupported(training.values, None)  # before the schema, which knows no Megatron or KTransformers key
    key_warnings = _check_keys(training, environ)
    topology = read_topology(environ)
    output_dir = workdir / training.output_dir
    if request.rehearsal:  # a folder of its own: it saves no model, and must not mark the real run's as done
        output_dir = output_dir.with_name(f"{output_dir.name}.rehearsal")
    check_writable(output_dir, "output_dir")
    run_folder = run_dir(output_dir, topology.node_suffix, environ)
    check_writable(run_folder, f"the state folder ({contract.STATE_DIR.name})")
    lost_with = ephemeral_mount(output_dir, own_mount_table())
    if lost_with is not None and request.config is not None:
        raise OutputNotOnVolume(
            f"output_dir {output_dir.resolve()} is not on a mounted volume ({lost_with.point} is the container's "
            f"{lost_with.filesystem}): its model and checkpoints would be lost with the container; mount a volume "
            'there (compose mounts ./outputs and ./saves; docker run -v "$PWD/saves:/workspace/saves")'
        )
    if held_elsewhere(lock_path(output_dir, topology.node_suffix)):
        raise RunInProgress(f"another launcher is running in {output_dir}: wait for it, or choose another output_dir")
    run_record = record_path(output_dir, topology)
    record = read_record(RunRecord, run_record)
    set_aside = _set_aside(output_dir, request.restart)
    # a run that only evaluates or predicts neither continues one nor is continued: it may run again as it is
    continues = training.trains and not request.rehearsal
    finished = finished_run(output_dir, record) if continues else None
    if finished and set_aside is None and not training.resume_from_checkpoint:
        raise RunFinished(
            f"{output_dir} holds a run that {finished}; running again would resume it past its end: "
            "choose a new output_dir, or pass --restart to move it aside and start over"
        )
    resume = plan_resume(output_dir, record, training.resume_from_checkpoint) if continues and not set_aside else None
    gpus = read_gpus(environ)
    if uses_demo and not (workdir / training.model / "config.json").is_file():
        model = ModelLookup(training.model, None, "the demo's tiny model, built offline before training")
    else:
        model = look_up_model(
            training.model, workdir, training.model_revision, training.hf_hub_token, training.cache_dir, environ
        )
    check_adapters(training.adapters, workdir)
    refuse_unsupported(training.values, model.facts)  # and what the model's config.json says it is
    dataset_info = _dataset_info(training, workdir, environ)
    if dataset_info is not None:
        check_datasets(training.values, dataset_info, environ)
    if training.trains and set_aside is None:
        _check_checkpoint(training, workdir, output_dir, resume, model)
    deepspeed_file, from_release = _deepspeed_file(training.deepspeed, workdir, environ)
    return Inspection(
        request=request,
        training=training,
        key_warnings=key_warnings,
        deepspeed_json=_deepspeed_json(training.deepspeed, deepspeed_file),
        deepspeed_from_release=deepspeed_file if from_release else None,
        dataset_info=dataset_info,
        users_dataset_dir=Path(os.path.abspath(workdir / training.dataset_dir)),
        workdir=workdir,
        uses_demo=uses_demo,
        output_dir=output_dir,
        set_aside=set_aside,
        outputs_stay_in_container=lost_with is not None,
        run_folder=run_folder,
        topology=topology,
        run_record=run_record,
        resume=resume,
        gpus=gpus,
        model=model,
        installed_backends=installed_fp8_backends(),
        installed_strategies=installed_strategies(),
        host_memory_gib=_host_memory_gib(environ),
        host_memory_is_this_machines=contract.HOST_MEMORY_GIB.read(environ) is None,
    )


def _check_keys(training: TrainingConfig, environ: Mapping[str, str]) -> tuple[str, ...]:
    """Every key against LLaMA-Factory's own schema: the first error is the refusal (exit 13), the rest of what it
    says is for the block."""
    try:
        schema = load_schema(environ)
    except SchemaUnavailable as error:
        raise InstallIncomplete(str(error)) from None
    problems = check_keys(training.values, schema)
    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more: {', '.join(p.key for p in errors[1:])})" if len(errors) > 1 else ""
        raise ConfigInvalid(f"training config: {errors[0]}{more}: {training.path}")
    return tuple(str(problem) for problem in problems)


def _dataset_info(training: TrainingConfig, workdir: Path, environ: Mapping[str, str]) -> Mapping | None:
    """LLaMA-Factory's demo datasets beside the user's, as the run will read them; None for a Hub dataset_dir."""
    if not names_a_folder(training.dataset_dir):
        return None
    users = workdir / training.dataset_dir
    if training.sets("dataset_dir") and not users.is_dir():
        raise DatasetUnusable(f"dataset_dir {training.dataset_dir} is not a folder ({users})")
    lf_data = lf_data_dir(environ)
    if not (lf_data / DATASET_INFO).is_file():
        raise InstallIncomplete(f"LLaMA-Factory's demo datasets are missing ({lf_data}): run scripts/bootstrap")
    try:
        return merged_dataset_info(users, lf_data)
    except DatasetInfoUnreadable as error:
        raise DatasetUnusable(str(error)) from None


def _set_aside(output_dir: Path, restart: bool) -> Path | None:
    """Where --restart moves output_dir: beside it, named by the time, so that nothing of the old run is lost."""
    if not restart or not output_dir.is_dir() or not any(output_dir.iterdir()):
        return None
    return output_dir.with_name(f"{output_dir.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")


def _check_checkpoint(
    training: TrainingConfig, workdir: Path, output_dir: Path, resume: Resume | None, model: ModelLookup
) -> None:
    """The checkpoint the run will continue from, whoever chose it (the launcher's resume, the YAML's
    resume_from_checkpoint, or LLaMA-Factory's own pick of the last one while overwrite_output_dir is off), must be
    of this model and fine-tuning type."""
    if resume is not None:
        checkpoint = resume.checkpoint
    elif training.resume_from_checkpoint:
        checkpoint = workdir / training.resume_from_checkpoint
    elif not training.values.get("overwrite_output_dir") and (found := checkpoints(output_dir)):
        checkpoint = found[max(found)]
    else:
        checkpoint = None
    if checkpoint is None:
        return
    problem = checkpoint_mismatch(checkpoint, training.finetuning_type, training.lora_rank, model.facts)
    if problem:
        raise ResumeMismatch(f"cannot resume: {problem}; choose a new output_dir, or pass --restart")


def _deepspeed_file(value: str | Mapping | None, workdir: Path, environ: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The file a `deepspeed` path names, and whether it is LLaMA-Factory's release copy: relative to workdir, else,
    for a relative path workdir lacks, to LLaMA-Factory's source root (its examples name
    examples/deepspeed/ds_z3_config.json) where the release has it."""
    if value is None or isinstance(value, Mapping):
        return None, False
    path = workdir / value
    release_copy = lf_dir(environ) / value
    if not path.exists() and not Path(value).is_absolute() and release_copy.is_file():
        return release_copy, True
    return path, False


def _deepspeed_json(value: str | Mapping | None, path: Path | None) -> Mapping | None:
    """The YAML's `deepspeed`: a mapping as written, or the JSON object in the file its path names."""
    if path is None:
        return value
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigInvalid(
            f"training config: deepspeed names {value}, which is not a readable DeepSpeed JSON ({path})"
        ) from None
    if not isinstance(config, dict):
        raise ConfigInvalid(f"training config: deepspeed names {value}, which is not a DeepSpeed JSON object ({path})")
    return config


def _host_memory_gib(environ: Mapping[str, str]) -> float | None:
    """The CPU memory this node's processes may use, which loading and CPU offloading fill: the setting, else the
    container's limit (cgroup v2, a pod's `resources.limits.memory`) where it is below the machine's memory."""
    given = contract.HOST_MEMORY_GIB.read(environ)
    if given is not None:
        return given
    try:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return machine
    return min(machine, int(limit) / 2**30) if limit.isdigit() else machine
