"""Render the Accelerate config for a decision: the precision file under configs/accelerate/, the layout file
of the strategy on top, then the process count and node placement."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import AccelerateConfigInvalid
from .policy import Decision
from .topology import Topology

PRECISION_FILES = {"fp8:torchao": "fp8-torchao.yaml", "fp8:te": "fp8-te.yaml"}
DEFAULT_PRECISION_FILE = "bf16.yaml"
LAYOUT_FILES = {"ddp": "multi-gpu.yaml", "deepspeed": "multi-gpu.yaml", "fsdp2": "fsdp2.yaml"}


def render_accelerate_config(decision: Decision, topology: Topology, configs_dir: Path) -> tuple[dict, list[Path]]:
    """The config as a mapping, and the files it came from (for the report)."""
    sources = [configs_dir / PRECISION_FILES.get(f"{decision.precision}:{decision.backend}", DEFAULT_PRECISION_FILE)]
    values = load_accelerate_config(sources[0])
    values["mixed_precision"] = decision.accelerate_precision
    if decision.strategy in LAYOUT_FILES:
        sources.append(configs_dir / LAYOUT_FILES[decision.strategy])
        layout = load_accelerate_config(sources[1])
        values.update({key: value for key, value in layout.items() if key != "mixed_precision"})

    values["num_processes"] = decision.num_processes * topology.num_machines
    values["num_machines"] = topology.num_machines
    values["machine_rank"] = topology.machine_rank
    if topology.num_machines > 1:
        values["main_process_ip"] = topology.main_process_ip
        values["main_process_port"] = topology.main_process_port
    if decision.device == "cpu":
        values["use_cpu"] = True
        values["distributed_type"] = "MULTI_CPU" if topology.num_machines > 1 else "NO"
    elif values["distributed_type"] == "NO" and (values["num_processes"] > 1 or decision.strategy == "deepspeed"):
        values["distributed_type"] = "MULTI_GPU"  # DeepSpeed needs the distributed environment torchrun sets up
    return values, sources


def load_accelerate_config(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise AccelerateConfigInvalid(f"Accelerate config not found: {path}") from None
    except yaml.YAMLError:
        raise AccelerateConfigInvalid(f"Accelerate config is not valid YAML: {path}") from None
    if not isinstance(values, dict) or "distributed_type" not in values:
        raise AccelerateConfigInvalid(f"not an Accelerate config (no distributed_type): {path}")
    return values


def check_user_config_matches(path: Path, decision: Decision) -> None:
    """A user's own config is used as is, so it must agree with the chosen precision rather than silently win."""
    configured = str(load_accelerate_config(path).get("mixed_precision", "no"))
    if configured != decision.accelerate_precision:
        raise AccelerateConfigInvalid(
            f"{path} sets mixed_precision: {configured} but this run chose {decision.accelerate_precision}; "
            f"pass --{'fp8' if configured == 'fp8' else 'bf16'} or use a matching config"
        )


def write_accelerate_config(values: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=True))
