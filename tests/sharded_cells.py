"""Running the sharded CPU launches the tests share: the real launcher in the background (`train --allow-cpu
--strategy S --processes N`, or `rehearse`), waiting for it, and reading what it left (losses, the stop's answer, the
per-rank sharding probe that tests/sharded_trainer.py adds to every rank)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .conftest import ROOT, cli_env
from .sharded_trainer import PROBE_DIR_ENV

LORA = ("finetuning_type=lora", "lora_target=all", "lora_rank=8")


def start(strategy: str, processes: int, output_dir: Path, model: Path, *args: str, **env: str) -> subprocess.Popen:
    """The launcher for `strategy` over `processes` CPU processes on the demo (`--rehearse` among `args`: its
    rehearsal), its state and the probe beside output_dir unless `env` says otherwise."""
    beside = {
        "LLAMAFACTORY_FP8_STATE_DIR": f"{output_dir}.state",
        PROBE_DIR_ENV: f"{output_dir}.probe",
        "LLAMAFACTORY_FP8_CALLBACKS": "tests.sharded_trainer:probe_from_environment",
    }
    command = "rehearse" if "--rehearse" in args else "train"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llamafactory_fp8",
            command,
            "--allow-cpu",
            "--strategy",
            strategy,
            "--processes",
            str(processes),
            f"output_dir={output_dir}",
            f"model_name_or_path={model}",
            *(arg for arg in args if arg != "--rehearse"),
        ],
        cwd=ROOT,
        env=cli_env("no-gpu", **{**beside, **env}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(launcher: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    stdout, stderr = launcher.communicate(timeout=timeout)
    return launcher.returncode, stdout, stderr


def wait_for_first_log(output_dir: Path, launcher: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not (output_dir / "trainer_log.jsonl").exists():
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        assert time.time() < deadline, "training never started"
        time.sleep(0.05)


def logged_losses(output_dir: Path) -> dict[int, float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def probes(output_dir: Path) -> list[dict]:
    """What each rank held at its first step (tests/sharded_trainer.py), by rank."""
    folder = Path(str(output_dir) + ".probe")
    return [json.loads(path.read_text()) for path in sorted(folder.glob("rank*.json"))]


def stop_answer(output_dir: Path) -> dict:
    """The stop's answer, in the run's own folder under the state folder beside output_dir."""
    (answer,) = Path(f"{output_dir}.state").glob("runs/*/stop.answer.json")
    return json.loads(answer.read_text())
