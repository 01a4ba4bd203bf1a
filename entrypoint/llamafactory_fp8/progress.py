"""Each training process's own account of where it is: its phase, its step, and when it last moved.

The process's main thread writes it at every step and at every phase change, never a side thread: a rank stuck in
a collective, a save or a kernel reads as stuck. Each rank has its own file in the folder the launcher names
(LLAMAFACTORY_FP8_PROGRESS_DIR); the healthcheck reads them all, and the launcher reads how each process ended."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import contract
from .records import read_record, write_record

# How a process ended (`RankProgress.ended`): written by the trainer and its watcher, read by the launcher and the
# healthcheck. The first two are the whole text; the others begin it, followed by the detail.
FINISHED, STOPPED = "finished", "stopped"
KILLED_BY, DISK_FULL, LOST_PEER, FAILED = "killed by ", "disk full: ", "lost peer: ", "failed: "
CONFIG_REFUSED = "config refused: "  # LLaMA-Factory's own argument checks, before anything loads


@dataclass(frozen=True)
class Phase:
    """What a process may be doing, and which window the healthcheck allows it (`startup`: until the first step,
    `step`: a few steps, `save`: a checkpoint's write). The folder whose growth also counts as moving comes with the
    record (`RankProgress.watch`), from where the phase is entered."""

    name: str
    words: str
    window: str


PHASES = {
    phase.name: phase
    for phase in (
        Phase("starting", "starting", "startup"),
        Phase("loading", "loading the model", "startup"),
        Phase("preprocessing", "preprocessing the dataset", "startup"),
        Phase("training", "training", "step"),
        Phase("evaluating", "evaluating", "step"),
        Phase("saving", "saving", "save"),
        Phase("stopping", "stopping on request, saving", "save"),
    )
}


@dataclass(frozen=True)
class RankProgress:
    rank: int
    pid: int
    phase: str
    phase_started_at: float
    updated_at: float
    step: int = 0
    max_steps: int = 0
    first_step: int = 0  # where this run started counting (a resumed run starts past 0)
    step_seconds: float | None = None  # the recent mean time of a step
    detail: str = ""  # what the phase works on: checkpoint-800
    watch: str | None = None  # a folder whose growth is progress in this phase
    ended: str | None = None  # how the process ended: FINISHED, STOPPED, or one of the prefixes above
    # what the launcher's closing line reports, from the end of training
    tokens_per_s: float | None = None  # this process's tokens (attention mask) over its training's wall time
    peak_memory_gib: float | None = None  # the GPU's peak allocation; None on the CPU
    fp8_layers: int = 0  # linear layers that ran in FP8


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank{rank}.json"


def read_all(directory: Path) -> list[RankProgress]:
    """Every rank's record in `directory`, by rank; a file that cannot be read is left out."""
    records = (read_record(RankProgress, path) for path in sorted(directory.glob("rank*.json")))
    return sorted((record for record in records if record is not None), key=lambda record: record.rank)


class ProgressReporter:
    """The writer for one process. Writing is cheap (a small file replaced whole) and happens only at events."""

    STEP_TIME_WEIGHT = 0.2  # of the newest step in the running mean of step times

    def __init__(self, directory: Path, rank: int, clock=time.time):
        self.path, self.clock = rank_file(directory, rank), clock
        now = clock()
        known = read_record(RankProgress, self.path)  # the watcher's, when this is the process it started
        self.record = (
            replace(known, pid=os.getpid()) if known else RankProgress(rank, os.getpid(), "starting", now, now)
        )

    def enter(self, phase: str, detail: str = "", watch: str | None = None) -> None:
        now = self.clock()
        self._write(phase=phase, phase_started_at=now, updated_at=now, detail=detail, watch=watch)

    def begin_training(self, step: int, max_steps: int) -> None:
        """Training starts at `step` (past 0 when resumed); until a step ends, the healthcheck allows start-up's
        window (the first step compiles)."""
        now = self.clock()
        self._write(
            phase="training",
            phase_started_at=now,
            updated_at=now,
            step=step,
            first_step=step,
            max_steps=max_steps,
            detail="",
            watch=None,
        )

    def step(self, step: int) -> None:
        """A step ended. Its time joins the running mean, except the run's first (compilation, warm-up) and a step
        that also held a save or an evaluation (the phase it came back from)."""
        now, record = self.clock(), self.record
        seconds = record.step_seconds
        if record.phase == "training" and record.step > record.first_step and step > record.step:
            newest = (now - record.updated_at) / (step - record.step)
            seconds = (
                newest if seconds is None else (1 - self.STEP_TIME_WEIGHT) * seconds + self.STEP_TIME_WEIGHT * newest
            )
        started = record.phase_started_at if record.phase == "training" else now
        self._write(
            phase="training",
            phase_started_at=started,
            updated_at=now,
            step=step,
            step_seconds=seconds,
            detail="",
            watch=None,
        )

    def back_to_training(self) -> None:
        """A save or an evaluation ended; the step count goes on."""
        now = self.clock()
        self._write(phase="training", phase_started_at=now, updated_at=now, detail="", watch=None)

    def touch(self) -> None:
        """Moving within the phase (an evaluation batch)."""
        self._write(updated_at=self.clock())

    def summarize(self, tokens_per_s: float | None, peak_memory_gib: float | None, fp8_layers: int) -> None:
        self._write(tokens_per_s=tokens_per_s, peak_memory_gib=peak_memory_gib, fp8_layers=fp8_layers)

    def end(self, how: str) -> None:
        self._write(ended=how, updated_at=self.clock())

    def _write(self, **changes) -> None:
        self.record = replace(self.record, **changes)
        write_record(self.record, self.path)


def reporter_from_environment(environ: os._Environ | dict = os.environ) -> ProgressReporter | None:
    directory = contract.PROGRESS_DIR.read(environ)
    if directory is None:
        return None
    return ProgressReporter(directory, int(environ.get("RANK", "0")))
