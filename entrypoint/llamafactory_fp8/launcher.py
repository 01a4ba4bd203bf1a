"""Start `accelerate launch ... llamafactory_fp8.trainer CONFIG`, turn signals into a stop request, return its exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .stop_request import StopFiles
from .topology import Topology

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def build_command(accelerate_config: Path, training_config: Path, training_keys: dict[str, object]) -> list[str]:
    """LLaMA-Factory's `run_exp` through our trainer module (it adds the stop-on-request callback) under
    `accelerate launch`: `llamafactory-cli train` would re-launch itself through torchrun when it sees several GPUs,
    nesting two launchers. `--quiet`: a failed trainer's own traceback is the one worth reading, not Accelerate's
    on top of it."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--quiet",
        "--config_file", str(accelerate_config),
        "-m", "llamafactory_fp8.trainer",
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
    stop_files: StopFiles,
    cwd: Path | None = None,
    on_start: Callable[[int], None] = lambda pid: None,
) -> int:
    """Run the trainer in its own process group. The first SIGINT, SIGTERM or SIGHUP (Docker and Kubernetes send
    SIGTERM, then wait out a grace period) asks it to checkpoint and stop; a second one ends the whole group at
    once. Return its exit code, or 128+N when signal N ended it."""
    child: subprocess.Popen | None = None
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        if len(received) == 1:
            stop_files.ask()
            print(
                f"llamafactory-fp8: {signal.Signals(signum).name}: the trainer will save a checkpoint and stop after "
                "its current step; send the signal again to stop at once",
                file=sys.stderr,
                flush=True,
            )
        elif child is not None:
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        child = subprocess.Popen(command, env={**env, **stop_files.environment()}, cwd=cwd, start_new_session=True)
        on_start(child.pid)
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - returncode if returncode < 0 else returncode
