"""What a running launcher tells the healthcheck, and the one interface the healthcheck reads it through: which
trainer to watch and since when, what each of its ranks reports (progress.py), how far the cache a phase fills
has grown, and whether the GPUs it runs on are still healthy."""

from __future__ import annotations

import hashlib
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


STATE_FILE = "run.json"


def run_dir(output_dir: Path, node_suffix: str, environ: Mapping[str, str] = os.environ) -> Path:
    """This run's own state folder under LLAMAFACTORY_FP8_STATE_DIR, named by its output_dir (and node, where the
    nodes of one job share a host): runs side by side never read or clear each other's state."""
    where = f"{output_dir.resolve()}{node_suffix}"
    key = hashlib.sha256(where.encode()).hexdigest()[:16]
    return contract.STATE_DIR.read(environ) / "runs" / f"{output_dir.name[:40]}{node_suffix}-{key}"


def state_path(run_folder: Path) -> Path:
    return run_folder / STATE_FILE


def ranks_dir(run_folder: Path) -> Path:
    """Where this run's ranks on this node write their progress."""
    return run_folder / "ranks"


def recorded_runs(environ: Mapping[str, str] = os.environ) -> list[tuple[Path, RunState]]:
    """Every run a launcher recorded under the state folder, oldest first."""
    runs = [
        (folder, state)
        for folder in (contract.STATE_DIR.read(environ) / "runs").glob("*")
        if (state := read_record(RunState, state_path(folder))) is not None
    ]
    return sorted(runs, key=lambda run: run[1].started_at)


def runs_to_watch(environ: Mapping[str, str] = os.environ) -> list[tuple[Path, RunState]]:
    """The runs still going by their launchers' records; where none is, the newest, to say how it ended."""
    runs = recorded_runs(environ)
    going = [run for run in runs if run[1].exit_code is None]
    return going or runs[-1:]


def rank_progress(run_folder: Path) -> list[RankProgress]:
    return read_all(ranks_dir(run_folder))


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


def gpu_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """None when every GPU this process may use is visible to NVML and healthy, else one sentence."""
    gpus = read_gpus(environ)
    if not gpus.count:
        return f"GPUs gone: {gpus.unavailable_reason}"
    sick = [gpu for gpu in gpus.gpus if gpu.health_problem]
    if sick:
        return f"GPU {sick[0].index} ({sick[0].name}) unhealthy: {sick[0].health_problem}"
    return None
