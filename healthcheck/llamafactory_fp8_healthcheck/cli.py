"""`llamafactory-fp8-healthcheck`: exit 0 when healthy, 1 when not, with one line saying why.
Usable as Docker's HEALTHCHECK and as a Kubernetes exec liveness probe."""

from __future__ import annotations

import time

from llamafactory_fp8.gpus import read_gpus
from llamafactory_fp8.records import read_record
from llamafactory_fp8.run_state import RunState, state_path

from .checks import Windows, check_gpus, check_progress, check_trainer_alive


def main() -> int:
    path = state_path()
    state = read_record(RunState, path)
    if state is None:
        print(f"unhealthy: no training run recorded at {path}")
        return 1
    problem = (
        check_trainer_alive(state)
        or check_progress(state, Windows.from_env(), time.time())
        or check_gpus(state, read_gpus())
    )
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    print("healthy: " + ("training finished" if state.exit_code == 0 else f"trainer {state.trainer_pid} making progress"))
    return 0
