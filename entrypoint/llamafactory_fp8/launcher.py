"""Start `accelerate launch ... llamafactory.launcher CONFIG`, forward signals to it and return its exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .topology import Topology

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def build_command(accelerate_config: Path, training_config: Path, training_keys: dict[str, object]) -> list[str]:
    """LLaMA-Factory's module entry under `accelerate launch`: `llamafactory-cli train` would re-launch itself
    through torchrun when it sees several GPUs, nesting two launchers."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(accelerate_config),
        "-m", "llamafactory.launcher",
        str(training_config),
        *(f"{key}={format_value(value)}" for key, value in training_keys.items()),
    ]  # fmt: skip


def format_value(value: object) -> str:
    """Spell a value the way LLaMA-Factory's OmegaConf command line reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def child_environment(environ: dict[str, str], topology: Topology, device: str) -> dict[str, str]:
    """Logs must reach `docker logs` and the healthcheck as they happen, not when a buffer fills. On the CPU,
    `accelerate launch` starts one process per node and expects MPI to name its rank, so the launcher does."""
    env = {**environ, "PYTHONUNBUFFERED": "1"}
    if device == "cpu" and topology.num_machines > 1:
        env.update(RANK=str(topology.machine_rank), WORLD_SIZE=str(topology.num_machines), LOCAL_RANK="0")
    return env


def run(
    command: list[str],
    env: dict[str, str],
    cwd: Path | None = None,
    on_start: Callable[[int], None] = lambda pid: None,
) -> int:
    """Run the trainer in its own process group so that one SIGTERM from Docker or Kubernetes reaches every
    rank, exactly once; return its exit code, or 128+N when a signal N ended it."""
    child = subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True)
    on_start(child.pid)

    def forward(signum, _frame):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - returncode if returncode < 0 else returncode
