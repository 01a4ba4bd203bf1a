"""Each check returns None when healthy or one sentence saying what is wrong."""

from __future__ import annotations

import os
from dataclasses import dataclass

from llamafactory_fp8.run_info import RunState, last_progress


@dataclass(frozen=True)
class Windows:
    """How long start-up may take before the first log line, and how long the log may then stand still."""

    startup_grace_s: float = 1800.0
    stall_after_s: float = 600.0

    @classmethod
    def from_env(cls, environ: os._Environ | dict = os.environ) -> "Windows":
        return cls(
            startup_grace_s=float(environ.get("LLAMAFACTORY_FP8_STARTUP_GRACE_S", cls.startup_grace_s)),
            stall_after_s=float(environ.get("LLAMAFACTORY_FP8_STALL_AFTER_S", cls.stall_after_s)),
        )


def check_trainer_alive(state: RunState) -> str | None:
    if state.exit_code is not None:
        return None if state.exit_code == 0 else f"trainer exited with code {state.exit_code}"
    try:
        os.kill(state.trainer_pid, 0)
    except ProcessLookupError:
        return f"trainer process {state.trainer_pid} is gone"
    except PermissionError:
        pass  # alive, owned by another user
    return None


def check_progress(state: RunState, windows: Windows, now: float) -> str | None:
    if state.exit_code is not None:
        return None
    progress = last_progress(state)
    if progress is None or progress < state.started_at:
        waited = now - state.started_at
        if waited > windows.startup_grace_s:
            return f"no training log after {waited:.0f}s (start-up grace {windows.startup_grace_s:.0f}s)"
        return None
    stalled = now - progress
    if stalled > windows.stall_after_s:
        return f"training log has not advanced for {stalled:.0f}s (limit {windows.stall_after_s:.0f}s)"
    return None
