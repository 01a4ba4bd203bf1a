"""Render the Accelerate config of a decision: the precision file of the FP8 backend record (or bf16.yaml), the
layout file of the strategy record on top, then the process count and node placement."""

from __future__ import annotations

from pathlib import Path

import yaml

from .cpu_processes import started_by_torchrun
from .errors import AccelerateConfigInvalid
from .policy import Decision
from .strategies import DDP
from .topology import Topology

NON_FP8_PRECISION_FILE = "bf16.yaml"  # its mixed_precision is replaced for FP16 and FP32
KEPT_STRATEGY_LAYOUT = "multi-gpu.yaml"  # a strategy kept from the YAML is set up by the Trainer from its keys


def render_accelerate_config(
    decision: Decision, topology: Topology, configs_dir: Path
) -> tuple[dict, tuple[Path, ...]]:
    """The config as a mapping, and the files it came from (for the report)."""
    precision_file = decision.backend.accelerate_file if decision.backend else NON_FP8_PRECISION_FILE
    sources = [configs_dir / precision_file]
    values = load_accelerate_config(sources[0])
    values["mixed_precision"] = decision.accelerate_precision
    strategy = decision.strategy.strategy
    if decision.device == "cpu":  # several processes, or a sharded strategy: torchrun starts them (cpu_processes.py)
        layered = started_by_torchrun(strategy, decision.processes_per_node)
    else:
        layered = strategy is not DDP or decision.world_size > 1
    if layered:
        layout = KEPT_STRATEGY_LAYOUT if decision.strategy.kept_from_yaml else strategy.accelerate_layout
        sources.append(configs_dir / layout)
        values.update(
            {key: value for key, value in load_accelerate_config(sources[1]).items() if key != "mixed_precision"}
        )

    values["num_processes"] = decision.world_size
    values["num_machines"] = topology.num_machines
    values["machine_rank"] = topology.machine_rank
    if topology.num_machines > 1:
        values["main_process_ip"] = topology.main_process_ip
        values["main_process_port"] = topology.main_process_port
    if decision.device == "cpu":
        values["use_cpu"] = not layered
    if decision.device == "cpu" and not layered:
        values["distributed_type"] = "MULTI_CPU" if topology.num_machines > 1 else "NO"
    elif values["distributed_type"] == "NO" and layered:
        values["distributed_type"] = "MULTI_GPU"  # DeepSpeed needs the distributed environment torchrun sets up
    return values, tuple(sources)


def load_accelerate_config(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise AccelerateConfigInvalid(f"Accelerate config not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        raise AccelerateConfigInvalid(f"Accelerate config is not valid YAML: {path}") from None
    if not isinstance(values, dict) or "distributed_type" not in values:
        raise AccelerateConfigInvalid(f"not an Accelerate config (no distributed_type): {path}")
    return values


def check_user_config_matches(path: Path, accelerate_precision: str) -> None:
    """A user's own config is used as is, so it must agree with the chosen precision rather than silently win."""
    configured = str(load_accelerate_config(path).get("mixed_precision", "no"))
    if configured != accelerate_precision:
        raise AccelerateConfigInvalid(
            f"{path} sets mixed_precision: {configured} but this run chose {accelerate_precision}; "
            f"pass --{'fp8' if configured == 'fp8' else 'bf16'} or use a matching config"
        )


def write_accelerate_config(values: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=True))
