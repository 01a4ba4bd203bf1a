"""Resume an interrupted run: the launcher records each run's outcome in its output_dir, and the same command run
again there continues a run that did not finish from its last checkpoint.

LLaMA-Factory resumes on its own only while `overwrite_output_dir` is false, and its own examples set it true, so a
preempted Kubernetes pod would otherwise start over. A run that finished is left to LLaMA-Factory's own rule."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import STOPPED_EXIT_CODE
from .topology import Topology

Status = Literal["running", "stopped", "failed", "finished"]
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # Transformers' PREFIX_CHECKPOINT_DIR and step


@dataclass(frozen=True)
class RunRecord:
    status: Status
    exit_code: int | None = None


@dataclass(frozen=True)
class Resume:
    """Continue from checkpoint, or, where the last run left only checkpoints cut short, start over (None)."""

    checkpoint: Path | None
    why: str

    @property
    def training_keys(self) -> dict[str, object]:
        if self.checkpoint is None:
            return {"overwrite_output_dir": True}  # else LLaMA-Factory resumes from the broken one, and fails
        return {"resume_from_checkpoint": str(self.checkpoint)}


def record_path(output_dir: Path, topology: Topology) -> Path:
    return output_dir / f"llamafactory_fp8_run{topology.node_suffix}.json"


def outcome(exit_code: int) -> RunRecord:
    status: Status = {0: "finished", STOPPED_EXIT_CODE: "stopped"}.get(exit_code, "failed")
    return RunRecord(status, exit_code)


def checkpoints(output_dir: Path) -> dict[int, Path]:
    """Transformers' checkpoint folders by step."""
    found = {}
    for child in output_dir.glob("checkpoint-*"):
        step = _CHECKPOINT.match(child.name)
        if step and child.is_dir():
            found[int(step[1])] = child
    return found


def is_complete(checkpoint: Path) -> bool:
    """Transformers writes trainer_state.json after the weights, optimizer and RNG states: a checkpoint without a
    readable one was cut short (a kill mid-save), and resuming from it fails."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return True


def plan_resume(output_dir: Path, record: RunRecord | None, users_checkpoint: str | None) -> Resume | None:
    """How to continue a run that did not finish here, or None: nothing to continue, or the user names their own
    checkpoint (`resume_from_checkpoint`)."""
    if users_checkpoint or record is None or record.status == "finished":
        return None
    found = checkpoints(output_dir)
    if not found:
        return None
    how = {
        "stopped": "was stopped on request",
        "failed": f"failed (exit code {record.exit_code})",
        "running": "ended without a word (killed, or its node lost)",
    }[record.status]
    complete = [step for step in sorted(found) if is_complete(found[step])]
    if not complete:
        cut = ", ".join(found[step].name for step in sorted(found))
        return Resume(None, f"the last run in this output_dir {how} and left no complete checkpoint ({cut}): starting over")
    return Resume(found[complete[-1]], f"the last run in this output_dir {how}")
