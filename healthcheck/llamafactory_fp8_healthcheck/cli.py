"""`llamafactory-fp8-healthcheck`: exit 0 when healthy, 1 when not, with one line saying why.
Usable as Docker's HEALTHCHECK and as a Kubernetes exec startup and liveness probe. It reads the runs only through
the launcher's public `llamafactory_fp8.run_info`: every run still going under the state folder (a container
usually has one), or the last one, to say how it ended."""

from __future__ import annotations

import time

from llamafactory_fp8 import contract, run_info
from llamafactory_fp8.errors import LaunchError

from .checks import Windows, check_progress, check_trainer_alive


def main() -> int:
    try:
        return _check()
    except LaunchError as error:  # a setting it cannot use; the launcher refused the same at launch
        print(f"unhealthy: {error}")
        return 1


def _check() -> int:
    runs = run_info.runs_to_watch()
    if not runs:
        print(f"unhealthy: no training run recorded under {contract.STATE_DIR.read()}")
        return 1
    windows, now = Windows.from_env(), time.time()
    verdicts = []
    for folder, state in runs:
        problem, how = check_progress(state, run_info.rank_progress(folder), windows, now)
        problem = check_trainer_alive(state) or problem or (run_info.gpu_problem() if state.device == "cuda" else None)
        name = f"{state.output_dir}: " if len(runs) > 1 else ""
        verdicts.append((problem, name + (problem or how)))
    sick = [words for problem, words in verdicts if problem]
    if sick:
        print(f"unhealthy: {'; '.join(sick)}")
        return 1
    print(f"healthy: {'; '.join(words for _, words in verdicts)}")
    return 0
