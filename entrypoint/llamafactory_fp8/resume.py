"""Resume an interrupted run: the launcher records each run's outcome in its output_dir, and the same command run
again there continues a run that did not finish from its last checkpoint.

LLaMA-Factory resumes on its own only while `overwrite_output_dir` is false, and its own examples set it true, so a
preempted Kubernetes pod would otherwise start over. A run that finished is not resumed: LLaMA-Factory would "resume"
it past its last step and delete a checkpoint; the launcher refuses it instead (inspection.py)."""

from __future__ import annotations

import json
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import STOPPED_EXIT_CODE
from .model_facts import ADAPTER_CONFIG_FILE, ModelFacts
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


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why resuming from `checkpoint` would fail, or None. Transformers writes trainer_state.json last, so a
    checkpoint without a readable one was cut short (a kill mid-save); one with it can still hold a truncated or
    damaged file (a full disk, a bad copy), found here from each file's own framing without reading it whole: a
    safetensors file's header names its length, and torch's files are zip archives whose directory sits at the end."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return "cut short, no complete trainer_state.json"
    for path in sorted(checkpoint.rglob("*")):
        problem = _safetensors_problem(path) if path.suffix == ".safetensors" else None
        if path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
            problem = "truncated or damaged (not a complete torch archive)"
        if problem:
            return f"{path.relative_to(checkpoint)} {problem}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with path.open("rb") as file:
            (header_size,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(header_size)) if header_size < size else None
    except (struct.error, ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict):
        return "damaged (no readable header)"
    expected = (
        8
        + header_size
        + max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    )
    return None if size == expected else f"truncated ({size:,} of {expected:,} bytes)"


def plan_resume(output_dir: Path, record: RunRecord | None, users_checkpoint: str | None) -> Resume | None:
    """How to continue a run that did not finish here, or None: nothing to continue, or the user names their own
    checkpoint (`resume_from_checkpoint`). Checkpoints that would fail are passed over, each named with why."""
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
    passed_over = []
    for step in sorted(found, reverse=True):
        problem = checkpoint_problem(found[step])
        if problem is None:
            why = f"the last run in this output_dir {how}"
            return Resume(found[step], why + "".join(f"; passed over {name}: {reason}" for name, reason in passed_over))
        passed_over.append((found[step].name, problem))
    cut = ", ".join(f"{name}: {reason}" for name, reason in reversed(passed_over))
    return Resume(None, f"the last run in this output_dir {how} and left no usable checkpoint ({cut}): starting over")


def finished_run(output_dir: Path, record: RunRecord | None) -> str | None:
    """How the run in output_dir finished, or None where none did: our record says so, or LLaMA-Factory's final
    trainer_state.json (written after the last step, also by runs this launcher never saw) is at its last step."""
    try:
        state = json.loads((output_dir / "trainer_state.json").read_text())
        step, last = int(state.get("global_step", 0)), int(state.get("max_steps", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        step = last = 0
    if 0 < last <= step:
        return f"finished at step {step} of {last}"
    if record is not None and record.status == "finished":
        return "finished"
    return None


def checkpoint_mismatch(checkpoint: Path, finetuning_type: str, lora_rank: int, model: ModelFacts | None) -> str | None:
    """Why `checkpoint` cannot continue this run, or None: a LoRA checkpoint is an adapter (adapter_config.json) of
    the same rank, any other is the whole model, whose config.json must have this model's shape. Found before
    loading, rather than as a `size mismatch` once the model and the data have loaded."""
    adapter = _json(checkpoint / ADAPTER_CONFIG_FILE)
    if finetuning_type == "lora":
        if adapter is None:
            return f"{checkpoint} holds no LoRA adapter (adapter_config.json), and this run is LoRA"
        if adapter.get("r") not in (None, lora_rank):
            return f"{checkpoint} is a LoRA adapter of rank {adapter['r']}, and this run's lora_rank is {lora_rank}"
        return None
    if adapter is not None:
        return f"{checkpoint} is a LoRA adapter, and this run is {finetuning_type} fine-tuning"
    config = _json(checkpoint / "config.json")
    if config is None or model is None:
        return None
    config = config.get("text_config", config)
    expected = {"hidden_size": model.hidden_size, "num_hidden_layers": model.num_layers, "vocab_size": model.vocab_size}
    differs = [
        f"{key} {config[key]} (the model's {value})"
        for key, value in expected.items()
        if config.get(key, value) != value
    ]
    return f"{checkpoint} is of another model: " + ", ".join(differs) if differs else None


def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
