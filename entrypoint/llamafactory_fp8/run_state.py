"""The small file through which the launcher tells the healthcheck which trainer to watch."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_STATE_DIR = "/tmp/llamafactory-fp8"


@dataclass(frozen=True)
class RunState:
    trainer_pid: int
    output_dir: str
    device: str
    started_at: float
    exit_code: int | None = None


def state_path(environ: os._Environ | dict = os.environ) -> Path:
    return Path(environ.get("LLAMAFACTORY_FP8_STATE_DIR", DEFAULT_STATE_DIR)) / "run.json"


def write_run_state(state: RunState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")  # launchers that share a state dir never share this file
    partial.write_text(json.dumps(asdict(state)))
    partial.replace(path)  # the healthcheck never reads half a file


def read_run_state(path: Path) -> RunState | None:
    try:
        return RunState(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None
