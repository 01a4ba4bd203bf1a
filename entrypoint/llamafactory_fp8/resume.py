"""Resume an interrupted run: the launcher records each run's outcome in its output_dir, and the same command run
again there continues a run that did not finish from its last checkpoint.

LLaMA-Factory resumes on its own only while `overwrite_output_dir` is false, and its own examples set it true, so a
preempted Kubernetes pod would otherwise start over. A run that finished is left to LLaMA-Factory's own rule."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .stop_request import STOPPED_EXIT_CODE

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


def record_path(output_dir: Path, machine_rank: int | None) -> Path:
    """Nodes of one job often share output_dir; each records its own run, as with its Accelerate config."""
    suffix = "" if machine_rank is None else f".node{machine_rank}"
    return output_dir / f"llamafactory_fp8_run{suffix}.json"


def write_run_record(record: RunRecord, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(record)))


def read_run_record(path: Path) -> RunRecord | None:
    try:
        return RunRecord(**json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError):  # none yet, or output_dir unusable (reported later)
        return None


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


def plan_resume(output_dir: Path, record: RunRecord | None, training_values: dict[str, Any]) -> Resume | None:
    """How to continue a run that did not finish here, or None: nothing to continue, or the YAML names its own
    checkpoint."""
    if training_values.get("resume_from_checkpoint") or record is None or record.status == "finished":
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
