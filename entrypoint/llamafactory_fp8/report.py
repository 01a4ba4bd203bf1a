"""Print a LaunchPlan: the one readable block before training, its JSON, and `inspect`'s memory table."""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Mapping
from pathlib import Path

from .gpus import GpuInventory
from .memory import MARGIN
from .model_facts import ModelLookup
from .plan import LaunchPlan
from .policy import Decision
from .strategies import BY_NAME as STRATEGIES


def describe_gpus(gpus: GpuInventory) -> list[str]:
    if not gpus.count:
        return [f"none ({gpus.unavailable_reason})"]
    lines = [
        f"[{gpu.index}] {gpu.name}, compute capability {gpu.compute_capability[0]}.{gpu.compute_capability[1]}, "
        f"{gpu.memory_total_gib:.1f} GiB"
        + (", MIG slice" if gpu.is_mig_slice else "")
        + (f", UNHEALTHY: {gpu.health_problem}" if gpu.health_problem else "")
        for gpu in gpus.gpus
    ]
    lines.append(f"driver {gpus.driver_version}, CUDA {gpus.cuda_driver_version}")
    if gpus.hidden_by_cuda_visible_devices:
        lines.append(f"{gpus.hidden_by_cuda_visible_devices} more hidden by CUDA_VISIBLE_DEVICES")
    return lines


def describe_model(model: ModelLookup) -> str:
    facts = model.facts
    if facts is None:
        return f"{model.name} (size unknown: {model.unknown_because})"
    return (
        f"{model.name}: {facts.model_type}, {facts.num_layers} layers, hidden {facts.hidden_size}, "
        f"~{facts.billions:.2f}B parameters (config.json from the {facts.origin})"
    )


def describe_decision(decision: Decision, num_machines: int) -> str:
    precision = decision.precision.upper() + (f" ({decision.backend.name})" if decision.backend else "")
    processes = decision.processes_per_node
    count = f"{processes} process{'es' if processes > 1 else ''}" + (
        f" on each of {num_machines} nodes" if num_machines > 1 else ""
    )
    origin = {"flag": " (--strategy)", "yaml": " (the YAML's)", "override": " (the command line's key)", "auto": ""}
    return f"{precision} on {decision.device}, {count}, {decision.layout}{origin[decision.strategy.source]}"


def describe_memory(decision: Decision) -> str:
    estimate = decision.memory
    if estimate is None:
        return "not estimated: " + (
            "training on the CPU" if decision.device == "cpu" else "the model's size is unknown"
        )
    terms = " + ".join(f"{name} {gib:.1f}" for name, gib in estimate.terms if gib >= 0.05)
    host = f"; CPU memory ~{estimate.host_gib:.0f} GiB per node" if estimate.host_gib else ""
    if estimate.load_exceeds_peak:
        host += f"; ~{estimate.load_gib:.0f} GiB on each GPU while loading, before sharding"
    size = f"~{estimate.total_gib:.1f} GiB (+{estimate.margin_gib:.1f} margin)"
    return f"{size} of {decision.gpu_memory_gib:.0f} per GPU: {terms}{host}"


def render_block(plan: LaunchPlan) -> str:
    decision = plan.decision
    training = plan.training
    rows: list[tuple[str, list[str]]] = [
        ("GPUs", describe_gpus(plan.gpus)),
        ("model", [describe_model(plan.model)]),
        (
            "training",
            [f"{training.path}: stage {training.stage}, {training.finetuning_type}, output {training.output_dir}"],
        ),
        ("choice", [describe_decision(decision, plan.topology.num_machines)]),
        ("memory", [describe_memory(decision)]),
        ("why", [f"- {reason}" for reason in decision.reasons]),
    ]
    if decision.warnings:
        rows.append(("warning", [f"- {warning}" for warning in decision.warnings]))
    if decision.tips:
        rows.append(("tip", [f"- {tip}" for tip in decision.tips]))
    if plan.replaced:
        rows.append(
            ("replaces", [f"{key.name}: {key.replaces[0]!r} -> {key.value!r} ({key.source})" for key in plan.replaced])
        )
    if plan.rehearsal:
        said = (
            f"rank 0 of {plan.rehearsal.world_size}, alone on a fake process group: its compute and memory are real, "
            f"its collectives carry nothing; nothing is saved; report in {plan.rehearsal.report}"
        )
        rows.append(("rehearsal", [said]))
    if plan.set_aside:
        rows.append(("restart", [f"--restart: the earlier run in {plan.output_dir} moves to {plan.set_aside} first"]))
    if plan.resume:
        rows.append(
            (
                "resume",
                [f"from {plan.resume.checkpoint}: {plan.resume.why}" if plan.resume.checkpoint else plan.resume.why],
            )
        )
    sources = plan.accelerate.sources
    origin = f" (from {', '.join(path.name for path in sources)})" if sources else " (yours, as is)"
    rows.append(("accelerate", [f"{plan.accelerate.path}{origin}"]))
    rows.append(("command", [f"cd {shlex.quote(str(plan.workdir))} && {shlex.join(plan.command)}"]))

    width = max(len(label) for label, _ in rows)
    lines = [f"llamafactory-fp8 {plan.version}"]
    for label, values in rows:
        for i, value in enumerate(values):
            lines.append(f"  {label if i == 0 else '':<{width}}  {value}")
    return "\n".join(lines)


def memory_table(decision: Decision, installed_strategies: frozenset[str]) -> list[str]:
    """`inspect`'s table: the estimate per GPU for each strategy, its margin, and which one train would take."""
    if not decision.memory_table:
        return [f"memory per GPU: {describe_memory(decision)}"]
    lines = [
        f"memory per GPU by strategy, of {decision.gpu_memory_gib:.0f} GiB (fits: the estimate plus {MARGIN:.0%} of "
        "its fitted terms):"
    ]
    width = max(len(s.label) for s in STRATEGIES.values())
    for row in decision.memory_table:
        strategy, estimate = STRATEGIES[row.strategy], row.estimate
        notes = [] if row.fits else ["does not fit"]
        if estimate.host_gib:
            notes.append(f"CPU memory ~{estimate.host_gib:.0f} GiB per node")
        if estimate.load_exceeds_peak:
            notes.append(f"~{estimate.load_gib:.0f} GiB per GPU while loading")
        if strategy.name not in installed_strategies:
            notes.append(f"{strategy.module} not installed")
        if row.strategy == decision.strategy.strategy.name:
            notes.append("<- train's choice")
        size = f"~{estimate.total_gib:7.1f} + {estimate.margin_gib:4.1f} GiB"
        lines.append(f"  {strategy.label:<{width}}  {size}  {', '.join(notes)}".rstrip())
    return lines


def to_json(value) -> object:
    """The plan (or any part of it) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_json(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [to_json(item) for item in (sorted(value) if isinstance(value, (set, frozenset)) else value)]
    if isinstance(value, Path):
        return str(value)
    return value


def plan_json(plan: LaunchPlan) -> str:
    return json.dumps(to_json(plan), indent=2, default=str)
