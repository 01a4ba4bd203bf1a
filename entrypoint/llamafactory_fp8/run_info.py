"""What a running launcher tells the healthcheck, and the one interface the healthcheck reads it through: which
trainer to watch and since when, what each of its ranks reports (progress.py), how far the cache a phase fills
has grown, and whether the GPUs it runs on are still healthy."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import contract
from .gpus import read_gpus
from .progress import FINISHED, PHASES, STOPPED, Phase, RankProgress, read_all
from .records import read_record, write_record


@dataclass(frozen=True)
class RunState:
    trainer_pid: int
    output_dir: str
    device: str
    started_at: float
    exit_code: int | None = None


def state_path(environ: Mapping[str, str] = os.environ) -> Path:
    return contract.STATE_DIR.read(environ) / "run.json"


def ranks_dir(state_file: Path) -> Path:
    """Where this node's ranks write their progress: beside the run's state, one folder per node (pod)."""
    return state_file.parent / "ranks"


def rank_progress(environ: Mapping[str, str] = os.environ) -> list[RankProgress]:
    return read_all(ranks_dir(state_path(environ)))


def ended_well(record: RankProgress) -> bool:
    return record.ended in (FINISHED, STOPPED)


def phase(record: RankProgress) -> Phase:
    return PHASES.get(record.phase, PHASES["starting"])


def last_growth(folder: str | None) -> float | None:
    """When anything under `folder` last changed (a download writing, the tokenized dataset growing)."""
    if not folder or not os.path.isdir(folder):
        return None
    newest = os.stat(folder).st_mtime
    for root, directories, files in os.walk(folder):
        for name in (*directories, *files):
            try:
                newest = max(newest, os.stat(os.path.join(root, name), follow_symlinks=False).st_mtime)
            except OSError:
                continue  # gone since it was listed
    return newest


def write_state(state: RunState, path: Path) -> None:
    write_record(state, path)


def current_run(environ: Mapping[str, str] = os.environ) -> RunState | None:
    """The run this container's launcher started, or None when it has not started one."""
    return read_record(RunState, state_path(environ))


def gpu_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """None when every GPU this process may use is visible to NVML and healthy, else one sentence."""
    gpus = read_gpus(environ)
    if not gpus.count:
        return f"GPUs gone: {gpus.unavailable_reason}"
    sick = [gpu for gpu in gpus.gpus if gpu.health_problem]
    if sick:
        return f"GPU {sick[0].index} ({sick[0].name}) unhealthy: {sick[0].health_problem}"
    return None
