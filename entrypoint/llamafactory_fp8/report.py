"""The one readable block the launcher prints before training: what it found, what it chose and why."""

from __future__ import annotations

import shlex
from pathlib import Path

from . import __version__
from .gpus import GpuInventory
from .model_facts import ModelFacts
from .policy import Decision
from .resume import Resume
from .training_config import TrainingConfig


def describe_gpus(gpus: GpuInventory) -> list[str]:
    if not gpus.count:
        return [f"none ({gpus.unavailable_reason})"]
    lines = [
        f"[{gpu.index}] {gpu.name}, compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}, "
        f"{gpu.memory_total_gib:.1f} GiB" + (", MIG slice" if gpu.is_mig_slice else "")
        + (f", UNHEALTHY: {gpu.health_problem}" if gpu.health_problem else "")
        for gpu in gpus.gpus
    ]
    lines.append(f"driver {gpus.driver_version}, CUDA {gpus.cuda_driver_version}")
    if gpus.hidden_by_cuda_visible_devices:
        lines.append(f"{gpus.hidden_by_cuda_visible_devices} more hidden by CUDA_VISIBLE_DEVICES")
    return lines


def describe_model(model_name: str, model: ModelFacts | None) -> str:
    if model is None:
        return f"{model_name} (no config.json found locally: size unknown)"
    return (
        f"{model_name}: {model.model_type}, {model.num_layers} layers, hidden {model.hidden_size}, "
        f"~{model.billions:.2f}B parameters"
    )


def describe_decision(decision: Decision) -> str:
    precision = decision.precision.upper() + (f" ({decision.backend})" if decision.backend else "")
    processes = f"{decision.num_processes} process{'es' if decision.num_processes > 1 else ''}"
    layout = {"single": "one device", "ddp": "data parallel", "fsdp2": "FSDP2", "deepspeed": "DeepSpeed"}
    stage = f" ZeRO-{decision.deepspeed_stage}" if decision.deepspeed_stage else ""
    return f"{precision} on {decision.device}, {processes}, {layout[decision.strategy]}{stage}"


def render_block(
    gpus: GpuInventory,
    training: TrainingConfig,
    model: ModelFacts | None,
    decision: Decision,
    replaced: dict[str, tuple[object, object]],
    resume: Resume | None,
    accelerate_config: Path,
    accelerate_sources: list[Path],
    command: list[str],
    workdir: Path,
) -> str:
    rows: list[tuple[str, list[str]]] = [
        ("GPUs", describe_gpus(gpus)),
        ("model", [describe_model(training.model, model)]),
        ("training", [f"{training.path}: stage {training.stage}, {training.finetuning_type}, output {training.output_dir}"]),
        ("choice", [describe_decision(decision)]),
        ("why", [f"- {reason}" for reason in decision.reasons]),
    ]
    if replaced:
        rows.append(("replaces", [f"{key}: {old!r} -> {new!r}" for key, (old, new) in replaced.items()]))
    if resume:
        rows.append(("resume", [f"from {resume.checkpoint}: {resume.why}" if resume.checkpoint else resume.why]))
    origin = f" (from {', '.join(p.name for p in accelerate_sources)})" if accelerate_sources else " (yours, as is)"
    rows.append(("accelerate", [f"{accelerate_config}{origin}"]))
    rows.append(("command", [f"cd {shlex.quote(str(workdir))} && {shlex.join(command)}"]))

    width = max(len(label) for label, _ in rows)
    lines = [f"llamafactory-fp8 {__version__}"]
    for label, values in rows:
        for i, value in enumerate(values):
            lines.append(f"  {label if i == 0 else '':<{width}}  {value}")
    return "\n".join(lines)
