"""What a running launcher tells the healthcheck, and the one interface the healthcheck reads it through: which
trainer to watch and since when, when its log last moved, and whether the GPUs it runs on are still healthy."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .gpus import read_gpus
from .records import read_record, write_record

DEFAULT_STATE_DIR = "/tmp/llamafactory-fp8"
PROGRESS_FILES = ("trainer_log.jsonl", "trainer_state.json")  # what LLaMA-Factory and Transformers write as they train


@dataclass(frozen=True)
class RunState:
    trainer_pid: int
    output_dir: str
    device: str
    started_at: float
    exit_code: int | None = None


def state_path(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("LLAMAFACTORY_FP8_STATE_DIR", DEFAULT_STATE_DIR)) / "run.json"


def write_state(state: RunState, path: Path) -> None:
    write_record(state, path)


def current_run(environ: Mapping[str, str] = os.environ) -> RunState | None:
    """The run this container's launcher started, or None when it has not started one."""
    return read_record(RunState, state_path(environ))


def last_progress(state: RunState) -> float | None:
    """When the trainer last wrote its log or state, as a Unix time; None before the first log line."""
    output_dir = Path(state.output_dir)
    times = [path.stat().st_mtime for path in (output_dir / name for name in PROGRESS_FILES) if path.exists()]
    return max(times, default=None)


def gpu_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """None when every GPU this process may use is visible to NVML and healthy, else one sentence."""
    gpus = read_gpus(environ)
    if not gpus.count:
        return f"GPUs gone: {gpus.unavailable_reason}"
    sick = [gpu for gpu in gpus.gpus if gpu.health_problem]
    if sick:
        return f"GPU {sick[0].index} ({sick[0].name}) unhealthy: {sick[0].health_problem}"
    return None
