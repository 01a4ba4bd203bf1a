"""The small file through which the launcher tells the healthcheck which trainer to watch."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


