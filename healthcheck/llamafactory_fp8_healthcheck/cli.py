"""`llamafactory-fp8-healthcheck`: exit 0 when healthy, 1 when not, with one line saying why.
Usable as Docker's HEALTHCHECK and as a Kubernetes exec startup and liveness probe. It reads the run only through
the launcher's public `llamafactory_fp8.run_info`."""

from __future__ import annotations

import time

from llamafactory_fp8 import run_info

from .checks import Windows, check_progress, check_trainer_alive


def main() -> int:
    state = run_info.current_run()
    if state is None:
        print(f"unhealthy: no training run recorded at {run_info.state_path()}")
        return 1
    problem, how = check_progress(state, run_info.rank_progress(), Windows.from_env(), time.time())
    problem = check_trainer_alive(state) or problem or (run_info.gpu_problem() if state.device == "cuda" else None)
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    print(f"healthy: {how}")
    return 0
