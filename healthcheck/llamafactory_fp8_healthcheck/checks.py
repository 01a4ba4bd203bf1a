"""Each check returns None when healthy or one sentence saying what is wrong; `progress` also says what is right.

The trainer's ranks report their own progress (llamafactory_fp8.progress), so each phase gets its own window:
start-up (starting, loading or downloading the model, preprocessing the dataset, the first step) may last as long as
something moves, the model's download or the tokenized dataset included; training and evaluation may stand still
for a few steps' time, never less than a floor; a save has a limit of its own from its start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from llamafactory_fp8 import contract
from llamafactory_fp8.run_info import RankProgress, RunState, ended_well, last_growth, phase

STEPS_IN_WINDOW = 5  # training may stand still this many of its own steps before it counts as stalled


@dataclass(frozen=True)
class Windows:
    """Seconds: start-up without anything moving, training without a step (at least), and one save."""

    startup_grace_s: float
    stall_after_s: float
    save_limit_s: float

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Windows:
        return cls(
            startup_grace_s=contract.STARTUP_GRACE_S.read(environ),
            stall_after_s=contract.STALL_AFTER_S.read(environ),
            save_limit_s=contract.SAVE_LIMIT_S.read(environ),
        )


@dataclass(frozen=True)
class Verdict:
    """One rank's standing: how close it is to its window (0 fresh, 1 at the limit), and in words."""

    load: float
    words: str
    healthy: bool


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


def judge(record: RankProgress, windows: Windows, now: float) -> Verdict:
    """One rank, by its phase's window."""
    kind = phase(record).window
    if record.ended is not None:
        good = ended_well(record)
        return Verdict(0.0 if good else 2.0, f"rank {record.rank} {record.ended}", good)
    if kind == "save":
        held = now - record.phase_started_at
        doing = f"{phase(record).words} {record.detail}"
        words = f"step {record.step}, {doing} for {held:.0f} s (limit {windows.save_limit_s:.0f} s)"
        return Verdict(held / windows.save_limit_s, words.replace("  ", " "), held <= windows.save_limit_s)
    if kind == "startup" or record.step == record.first_step:
        moved = max(record.updated_at, last_growth(record.watch) or 0.0)
        idle = now - moved
        doing = "the first step" if kind == "step" else phase(record).words
        words = f"{doing}, last moved {idle:.0f} s ago (window {windows.startup_grace_s:.0f} s)"
        return Verdict(idle / windows.startup_grace_s, words, idle <= windows.startup_grace_s)
    window = max(windows.stall_after_s, STEPS_IN_WINDOW * (record.step_seconds or 0.0))
    idle = now - record.updated_at
    pace = (
        f"; a step takes ~{record.step_seconds:.{1 if record.step_seconds >= 1 else 3}f} s"
        if record.step_seconds
        else ""
    )
    of = f" of {record.max_steps}" if record.max_steps else ""
    doing = "evaluating" if record.phase == "evaluating" else "last step"
    words = f"step {record.step}{of}, {doing} {idle:.0f} s ago (window {window:.0f} s{pace})"
    return Verdict(idle / window, words, idle <= window)


def check_progress(state: RunState, ranks: list[RankProgress], windows: Windows, now: float) -> tuple[str | None, str]:
    """(the problem or None, the line to print when healthy). Every rank of this node counts: one that stops
    while the others wait for it in a collective leaves them all standing still, and the first out of its
    window makes the node unhealthy."""
    if state.exit_code is not None:
        return None, "training finished" if state.exit_code == 0 else ""
    if not ranks:
        waited = now - state.started_at
        if waited > windows.startup_grace_s:
            return f"no rank has reported after {waited:.0f} s (start-up window {windows.startup_grace_s:.0f} s)", ""
        return None, f"starting for {waited:.0f} s (window {windows.startup_grace_s:.0f} s)"
    verdicts = sorted(((judge(record, windows, now), record) for record in ranks), key=lambda pair: -pair[0].load)
    (worst, record), others = verdicts[0], len(verdicts) - 1
    if not worst.healthy:
        stalled = "" if worst.words.startswith("rank") else f"rank {record.rank} stalled: "
        return stalled + worst.words, ""
    return None, worst.words + (f" (the slowest of {others + 1} ranks)" if others else "")
